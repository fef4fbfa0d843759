//! What open reports through the `log` facility (the library never prints): a damaged
//! checkpoint is named, with its reason, at warning level.
//!
//! Regression guarded: a checkpoint ignored silently (only `RecoveryReport` said so,
//! and without naming the file).

#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use execlog::*;

/// Collects every record logged in this test binary.
struct Collect(Mutex<Vec<(log::Level, String)>>);

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = record.args().to_string();
        self.0.lock().unwrap().push((record.level(), line));
    }

    fn flush(&self) {}
}

static LOGGED: Collect = Collect(Mutex::new(Vec::new()));

fn warnings() -> Vec<String> {
    let logged = LOGGED.0.lock().unwrap();
    logged
        .iter()
        .filter(|(level, _)| *level == log::Level::Warn)
        .map(|(_, line)| line.clone())
        .collect()
}

#[test]
fn an_ignored_checkpoint_is_named_in_a_warning() {
    log::set_logger(&LOGGED).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let event = ExecutionEventData::StepCompleted {
        step_id: StepId::from("s1"),
        output: Some("done".into()),
        duration_ms: 1,
    };
    store
        .append_blocking(&ExecutionId::from("run-1"), &TenantId::from("t"), event)
        .unwrap();
    store.close().unwrap();
    let path = dir.path().join("checkpoint.idx");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();

    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(
        store.recovery_report().checkpoint_ignored.as_deref(),
        Some("CRC mismatch")
    );
    let said = warnings();
    assert!(
        said.iter()
            .any(|w| w.contains("checkpoint.idx") && w.contains("CRC mismatch")),
        "warnings: {said:?}"
    );
    assert_eq!(
        store
            .load_events_blocking(&ExecutionId::from("run-1"))
            .unwrap()
            .len(),
        1
    );
}
