//! The conformance suite (tests/conformance/mod.rs) against the embedded `LogStore`.

#![allow(clippy::unwrap_used)]

mod common;
mod conformance;

use execlog::{LogStore, Options};

struct Log {
    dir: tempfile::TempDir,
    /// Copies made by `open_crashed`, kept while the test runs.
    crash_images: parking_lot::Mutex<Vec<tempfile::TempDir>>,
}

impl conformance::Backend for Log {
    type Store = LogStore;

    fn create() -> Option<Self> {
        Some(Log {
            dir: tempfile::tempdir().unwrap(),
            crash_images: parking_lot::Mutex::new(Vec::new()),
        })
    }

    fn open(&self) -> LogStore {
        LogStore::open(self.dir.path()).unwrap()
    }

    fn open_with_max_event_bytes(&self, bytes: usize) -> LogStore {
        LogStore::open_with(self.dir.path(), Options::default().max_event_bytes(bytes)).unwrap()
    }

    /// The files as a kill -9 of the idle `running` store leaves them (the page cache
    /// survives a killed process): copied as they are, without the lock, and opened.
    fn open_crashed(&self, running: &LogStore) -> LogStore {
        let image = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(running.path()).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name() != "LOCK" {
                std::fs::copy(entry.path(), image.path().join(entry.file_name())).unwrap();
            }
        }
        let store = LogStore::open(image.path()).unwrap();
        self.crash_images.lock().push(image);
        store
    }
}

suite!(Log);
