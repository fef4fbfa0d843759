//! The `metrics` facade (feature `metrics`, issue 17): a recorder installed while the
//! store opens receives the write path's counters and histograms as appends happen,
//! labelled with the store directory, and what open found.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::step_event;
use execlog::*;
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

/// Records every value, by metric name; checks that each carries the `store` label.
#[derive(Default)]
struct Recorded {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
    gauges: Mutex<HashMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<HashMap<String, Arc<Values>>>,
    store: String,
}

#[derive(Default)]
struct Values(Mutex<Vec<f64>>);

impl HistogramFn for Values {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

impl Recorded {
    fn check_label(&self, key: &Key) {
        let store = key
            .labels()
            .find(|l| l.key() == "store")
            .map(|l| l.value().to_string());
        assert_eq!(
            store.as_deref(),
            Some(self.store.as_str()),
            "{}",
            key.name()
        );
    }

    fn counter(&self, name: &str) -> u64 {
        self.counters.lock().unwrap()[name].load(Ordering::Relaxed)
    }

    fn histogram(&self, name: &str) -> Vec<f64> {
        self.histograms.lock().unwrap()[name]
            .0
            .lock()
            .unwrap()
            .clone()
    }
}

impl Recorder for Recorded {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.check_label(key);
        let mut map = self.counters.lock().unwrap();
        Counter::from_arc(Arc::clone(map.entry(key.name().to_string()).or_default()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.check_label(key);
        let mut map = self.gauges.lock().unwrap();
        Gauge::from_arc(Arc::clone(map.entry(key.name().to_string()).or_default()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.check_label(key);
        let mut map = self.histograms.lock().unwrap();
        Histogram::from_arc(Arc::clone(map.entry(key.name().to_string()).or_default()))
    }
}

#[test]
fn the_facade_moves_with_the_appends() {
    let dir = tempfile::tempdir().unwrap();
    let recorded = Recorded {
        store: dir.path().display().to_string(),
        ..Recorded::default()
    };
    let store = metrics::with_local_recorder(&recorded, || LogStore::open(dir.path()).unwrap());
    assert_eq!(recorded.histogram("execlog_open_seconds").len(), 1);
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    for i in 1..=10 {
        store.append_blocking(&e, &t, step_event(i)).unwrap();
    }
    store
        .append_batch_blocking(&e, &t, (11..=15).map(step_event).collect())
        .unwrap();
    let writes = store.stats().writes;
    assert_eq!(recorded.counter("execlog_appends_total"), 11);
    assert_eq!(recorded.counter("execlog_events_total"), 15);
    assert_eq!(recorded.counter("execlog_bytes_total"), writes.bytes);
    let groups = recorded.counter("execlog_groups_total");
    assert_eq!(groups, writes.groups);
    let sizes = recorded.histogram("execlog_group_appends");
    assert_eq!(sizes.len() as u64, groups);
    assert_eq!(sizes.iter().sum::<f64>(), 11.0);
    let syncs = recorded.histogram("execlog_fdatasync_seconds");
    assert_eq!(syncs.len() as u64, groups);
    assert!(syncs.iter().all(|s| *s >= 0.0 && *s < 60.0));
    store.close().unwrap();
}
