//! The conformance suite (tests/conformance/mod.rs) against the embedded `LogStore`.

#![allow(clippy::unwrap_used)]

mod common;
mod conformance;

use execlog::{LogStore, Options};

struct Log {
    dir: tempfile::TempDir,
}

impl conformance::Backend for Log {
    type Store = LogStore;

    fn create() -> Option<Self> {
        Some(Log {
            dir: tempfile::tempdir().unwrap(),
        })
    }

    fn open(&self) -> LogStore {
        LogStore::open(self.dir.path()).unwrap()
    }

    fn open_with_max_event_bytes(&self, bytes: usize) -> LogStore {
        LogStore::open_with(self.dir.path(), Options::default().max_event_bytes(bytes)).unwrap()
    }
}

suite!(Log);
