//! The conformance suite (tests/conformance/mod.rs) against the embedded `LogStore`;
//! again (module `colliding`) with idempotency-key hashes cut to 3 bits, so that keys
//! of an execution collide all the time and the exact check behind the in-memory hash
//! answers every guarded test, races included.

#![allow(clippy::unwrap_used)]

mod common;
mod conformance;

use execlog::{LogStore, Options};

/// A `LogStore` in a temporary directory, keeping `HASH_BITS` bits of key hashes.
struct Log<const HASH_BITS: u32> {
    dir: tempfile::TempDir,
    /// Copies made by `open_crashed`, kept while the test runs.
    crash_images: parking_lot::Mutex<Vec<tempfile::TempDir>>,
}

impl<const HASH_BITS: u32> Log<HASH_BITS> {
    fn options() -> Options {
        Options::default().idempotency_hash_bits(HASH_BITS)
    }
}

impl<const HASH_BITS: u32> conformance::Backend for Log<HASH_BITS> {
    type Store = LogStore;

    fn create() -> Option<Self> {
        Some(Log {
            dir: tempfile::tempdir().unwrap(),
            crash_images: parking_lot::Mutex::new(Vec::new()),
        })
    }

    fn open(&self) -> LogStore {
        LogStore::open_with(self.dir.path(), Self::options()).unwrap()
    }

    fn open_with_max_event_bytes(&self, bytes: usize) -> LogStore {
        LogStore::open_with(self.dir.path(), Self::options().max_event_bytes(bytes)).unwrap()
    }

    /// The files as a kill -9 of the idle `running` store leaves them (the page cache
    /// survives a killed process): copied as they are, without the lock, and opened.
    fn open_crashed(&self, running: &LogStore) -> LogStore {
        let image = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(running.path()).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            // A running checkpoint's tmp file is never read, and may vanish meanwhile.
            if name != "LOCK" && !name.to_string_lossy().ends_with(".tmp") {
                std::fs::copy(entry.path(), image.path().join(&name)).unwrap();
            }
        }
        let store = LogStore::open_with(image.path(), Self::options()).unwrap();
        self.crash_images.lock().push(image);
        store
    }
}

suite!(Log<64>);
follow_suite!(Log<64>);
lifecycle_suite!(Log<64>);

mod colliding {
    use super::*;

    crate::suite!(Log<3>);
}
