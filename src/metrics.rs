//! Counters of the write path, for operators: what was committed, in how many groups,
//! and how long each group's fdatasync took.
//!
//! The commit thread updates them with relaxed atomic adds, a handful per commit group
//! (never per append on the appenders' side), so they cost nothing measurable;
//! [`LogStore::stats`](crate::LogStore::stats) reads them as a snapshot. Counts start
//! at zero when the store opens; what open found is in the recovery report.
//!
//! With the `metrics` feature, the same figures also go to the `metrics` crate's
//! facade (to Prometheus, StatsD, … through the recorder the program installed), each
//! with the label `store` = the store directory:
//! `execlog_appends_total`, `execlog_events_total`, `execlog_bytes_total`,
//! `execlog_groups_total` (counters), `execlog_group_appends` and
//! `execlog_fdatasync_seconds` (histograms), recorded by the commit thread once per
//! group through handles registered at open; and at open `execlog_open_seconds`
//! (histogram), `execlog_open_records` and `execlog_open_bytes_truncated` (gauges).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets of a histogram: bucket `i` counts values in `[2^(i-1), 2^i)` (bucket 0: 0).
const BUCKETS: usize = 32;

/// The write path's counters of one open store.
#[derive(Default)]
pub(crate) struct Metrics {
    appends: AtomicU64,
    events: AtomicU64,
    bytes: AtomicU64,
    groups: AtomicU64,
    group_appends: Buckets,
    fdatasync_us: Buckets,
    #[cfg(feature = "metrics")]
    facade: Option<Facade>,
}

/// Handles into the `metrics` facade, registered once per store.
#[cfg(feature = "metrics")]
struct Facade {
    appends: metrics::Counter,
    events: metrics::Counter,
    bytes: metrics::Counter,
    groups: metrics::Counter,
    group_appends: metrics::Histogram,
    fdatasync: metrics::Histogram,
}

#[derive(Default)]
struct Buckets([AtomicU64; BUCKETS]);

impl Buckets {
    fn add(&self, value: u64) {
        let i = (u64::BITS - value.leading_zeros()) as usize;
        if let Some(bucket) = self.0.get(i.min(BUCKETS - 1)) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> Histogram {
        Histogram {
            counts: self.0.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
        }
    }
}

impl Metrics {
    /// Counters of the store in `dir`; with the `metrics` feature, also reports what
    /// open found and registers the facade's handles (with the recorder installed now).
    #[cfg(not(feature = "metrics"))]
    pub(crate) fn for_store(_dir: &std::path::Path, _opened: &crate::RecoveryReport) -> Self {
        Metrics::default()
    }

    /// Counters of the store in `dir`; also reports what open found to the `metrics`
    /// facade and registers its handles (with the recorder installed now).
    #[cfg(feature = "metrics")]
    pub(crate) fn for_store(dir: &std::path::Path, opened: &crate::RecoveryReport) -> Self {
        let store = dir.display().to_string();
        let label = || ("store", store.clone());
        metrics::histogram!("execlog_open_seconds", &[label()])
            .record(opened.duration.as_secs_f64());
        metrics::gauge!("execlog_open_records", &[label()]).set(opened.records as f64);
        metrics::gauge!("execlog_open_bytes_truncated", &[label()])
            .set(opened.bytes_truncated as f64);
        let facade = Facade {
            appends: metrics::counter!("execlog_appends_total", &[label()]),
            events: metrics::counter!("execlog_events_total", &[label()]),
            bytes: metrics::counter!("execlog_bytes_total", &[label()]),
            groups: metrics::counter!("execlog_groups_total", &[label()]),
            group_appends: metrics::histogram!("execlog_group_appends", &[label()]),
            fdatasync: metrics::histogram!("execlog_fdatasync_seconds", &[label()]),
        };
        Metrics {
            facade: Some(facade),
            ..Metrics::default()
        }
    }

    /// A commit group made durable: `appends` appends of `events` events in `bytes`
    /// bytes, whose final fdatasync took `sync`.
    pub(crate) fn group(&self, appends: u64, events: u64, bytes: u64, sync: Duration) {
        self.appends.fetch_add(appends, Ordering::Relaxed);
        self.events.fetch_add(events, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.groups.fetch_add(1, Ordering::Relaxed);
        self.group_appends.add(appends);
        self.fdatasync_us
            .add(u64::try_from(sync.as_micros()).unwrap_or(u64::MAX));
        #[cfg(feature = "metrics")]
        if let Some(f) = &self.facade {
            f.appends.increment(appends);
            f.events.increment(events);
            f.bytes.increment(bytes);
            f.groups.increment(1);
            f.group_appends.record(appends as f64);
            f.fdatasync.record(sync.as_secs_f64());
        }
    }

    pub(crate) fn snapshot(&self) -> WriteMetrics {
        WriteMetrics {
            appends: self.appends.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            groups: self.groups.load(Ordering::Relaxed),
            appends_per_group: self.group_appends.snapshot(),
            fdatasync_micros: self.fdatasync_us.snapshot(),
        }
    }
}

/// What the write path committed since the store opened (a snapshot).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct WriteMetrics {
    /// Appends (single events and batches) made durable.
    pub appends: u64,
    /// Events in them.
    pub events: u64,
    /// Record bytes written for them.
    pub bytes: u64,
    /// Commit groups (one write and one fdatasync each, or one per segment crossed).
    pub groups: u64,
    /// Appends per commit group.
    pub appends_per_group: Histogram,
    /// Latency of each group's final fdatasync, in microseconds.
    pub fdatasync_micros: Histogram,
}

/// A histogram with power-of-two buckets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Histogram {
    /// `counts[i]`: values in `[2^(i-1), 2^i)`; `counts[0]`: zeros; the last bucket also
    /// holds everything larger.
    pub counts: Vec<u64>,
}

impl Histogram {
    /// Values counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// An upper bound of the `q`-quantile (`0.0..=1.0`): the top of the bucket that
    /// holds it; `None` when empty.
    pub fn quantile_upper_bound(&self, q: f64) -> Option<u64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(if i == 0 { 0 } else { (1u64 << i.min(63)) - 1 });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_quantiles() {
        let m = Metrics::default();
        for us in [0u64, 1, 3, 100, 100, 5000] {
            m.group(1, 1, 10, Duration::from_micros(us));
        }
        let s = m.snapshot();
        assert_eq!((s.appends, s.groups, s.bytes), (6, 6, 60));
        let h = s.fdatasync_micros;
        assert_eq!(h.total(), 6);
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[2], 1);
        assert_eq!(h.counts[7], 2); // 64..128
        assert_eq!(h.quantile_upper_bound(0.5), Some(3));
        assert_eq!(h.quantile_upper_bound(1.0), Some(8191));
        assert_eq!(Histogram::default().quantile_upper_bound(0.5), None);
    }
}
