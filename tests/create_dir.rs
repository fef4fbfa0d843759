//! Opening a store in a directory that does not exist creates it durably: before open
//! returns, the new directory and the parent of every directory it created are
//! fsynced (`Io::sync_dir`), so the first acknowledged appends do not depend on a
//! directory entry a crash could lose. Opening an existing directory fsyncs no parent.
//!
//! The simulated file system (`execlog::fault::SimIo`) keeps directories themselves
//! across a power loss (only file entries are modelled as durable or not), so these
//! tests record the calls the store makes instead of cutting power.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::step_event;
use execlog::fault::SimIo;
use execlog::*;

/// A call the store made: ("create_dir_all" | "sync_dir", path).
type Call = (&'static str, PathBuf);

/// [`SimIo`], recording directory calls, and failing `sync_dir` of one path if asked.
#[derive(Clone)]
struct Recorder {
    sim: SimIo,
    calls: Arc<Mutex<Vec<Call>>>,
    fail_sync_of: Option<PathBuf>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recorder")
    }
}

impl Recorder {
    fn new(sim: &SimIo) -> Self {
        Self {
            sim: sim.clone(),
            calls: Arc::default(),
            fail_sync_of: None,
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn synced(&self) -> Vec<PathBuf> {
        self.calls()
            .into_iter()
            .filter(|c| c.0 == "sync_dir")
            .map(|c| c.1)
            .collect()
    }

    fn open(&self, dir: &Path) -> Result<LogStore> {
        LogStore::open_with(dir, Options::default().io(Arc::new(self.clone())))
    }
}

impl Io for Recorder {
    fn create_dir_all(&self, dir: &Path, mode: u32) -> std::io::Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(("create_dir_all", dir.to_path_buf()));
        self.sim.create_dir_all(dir, mode)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        self.sim.list(dir)
    }
    fn open(&self, path: &Path, read_only: bool) -> std::io::Result<Arc<dyn IoFile>> {
        self.sim.open(path, read_only)
    }
    fn create(&self, path: &Path, mode: u32) -> std::io::Result<Arc<dyn IoFile>> {
        self.sim.create(path, mode)
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        self.sim.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.sim.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(("sync_dir", dir.to_path_buf()));
        if self.fail_sync_of.as_deref() == Some(dir) {
            return Err(std::io::Error::other("injected sync_dir failure"));
        }
        self.sim.sync_dir(dir)
    }
    fn try_lock(&self, path: &Path, mode: u32) -> std::io::Result<LockGuard> {
        self.sim.try_lock(path, mode)
    }
}

/// Whether `path` was fsynced after the store directory was created.
fn synced_after_create(calls: &[Call], path: &str) -> bool {
    let Some(created) = calls.iter().position(|c| c.0 == "create_dir_all") else {
        return false;
    };
    calls[created..]
        .iter()
        .any(|c| c.0 == "sync_dir" && c.1 == Path::new(path))
}

#[test]
fn a_new_store_directory_and_its_parent_are_fsynced() {
    let sim = SimIo::new();
    sim.create_dir_all(Path::new("/data"), 0o700).unwrap();
    let rec = Recorder::new(&sim);
    let store = rec.open(Path::new("/data/store")).unwrap();
    let calls = rec.calls();
    assert!(
        synced_after_create(&calls, "/data"),
        "parent not fsynced: {calls:?}"
    );
    assert!(synced_after_create(&calls, "/data/store"), "{calls:?}");
    store
        .append_blocking(
            &ExecutionId::from("e"),
            &TenantId::from("t"),
            ExecutionEventData::ExecutionResumed,
        )
        .unwrap();
    drop(store);

    // Reopening the existing store fsyncs no parent.
    let rec = Recorder::new(&sim);
    drop(rec.open(Path::new("/data/store")).unwrap());
    assert!(
        !rec.synced().contains(&PathBuf::from("/data")),
        "{:?}",
        rec.calls()
    );
}

#[test]
fn every_directory_created_is_fsynced_in_its_parent() {
    let sim = SimIo::new();
    sim.create_dir_all(Path::new("/data"), 0o700).unwrap();
    let rec = Recorder::new(&sim);
    drop(rec.open(Path::new("/data/a/b/store")).unwrap());
    let calls = rec.calls();
    for dir in ["/data/a/b/store", "/data/a/b", "/data/a", "/data"] {
        assert!(
            synced_after_create(&calls, dir),
            "{dir} not fsynced: {calls:?}"
        );
    }
}

#[test]
fn a_failed_parent_fsync_fails_the_open() {
    let sim = SimIo::new();
    sim.create_dir_all(Path::new("/data"), 0o700).unwrap();
    let mut rec = Recorder::new(&sim);
    rec.fail_sync_of = Some(PathBuf::from("/data"));
    let err = rec.open(Path::new("/data/store")).unwrap_err();
    assert!(
        matches!(&err, Error::Io { path, .. } if path == Path::new("/data")),
        "{err:?}"
    );
}

/// The same on the real file system: a store opened in a new directory of a
/// temporary directory fsyncs that temporary directory.
#[test]
fn a_new_store_directory_is_fsynced_on_the_real_file_system() {
    let tmp = tempfile::tempdir().unwrap();
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();

    #[derive(Debug)]
    struct RealRecorder(Arc<Mutex<Vec<Call>>>);
    impl Io for RealRecorder {
        fn create_dir_all(&self, dir: &Path, mode: u32) -> std::io::Result<()> {
            self.0.lock().unwrap().push(("create_dir_all", dir.into()));
            RealIo.create_dir_all(dir, mode)
        }
        fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
            RealIo.list(dir)
        }
        fn open(&self, path: &Path, read_only: bool) -> std::io::Result<Arc<dyn IoFile>> {
            RealIo.open(path, read_only)
        }
        fn create(&self, path: &Path, mode: u32) -> std::io::Result<Arc<dyn IoFile>> {
            RealIo.create(path, mode)
        }
        fn remove(&self, path: &Path) -> std::io::Result<()> {
            RealIo.remove(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            RealIo.rename(from, to)
        }
        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            self.0.lock().unwrap().push(("sync_dir", dir.into()));
            RealIo.sync_dir(dir)
        }
        fn try_lock(&self, path: &Path, mode: u32) -> std::io::Result<LockGuard> {
            RealIo.try_lock(path, mode)
        }
    }

    let dir = tmp.path().join("new").join("store");
    let options = Options::default().io(Arc::new(RealRecorder(Arc::clone(&calls))));
    drop(LogStore::open_with(&dir, options).unwrap());
    let calls = calls.lock().unwrap().clone();
    for d in [dir.as_path(), &tmp.path().join("new"), tmp.path()] {
        assert!(
            synced_after_create(&calls, d.to_str().unwrap()),
            "{} not fsynced: {calls:?}",
            d.display()
        );
    }
}

/// `Io::exists` tells files and directories from nothing, on the real file system, on
/// the simulated one, and through the default method (the recorder does not override
/// it). An open that does not list the directory relies on it to find the segment
/// after the ones its checkpoint covers.
#[test]
fn exists_finds_files_and_directories() {
    let real = tempfile::tempdir().unwrap();
    std::fs::write(real.path().join("file"), b"x").unwrap();
    let sim = SimIo::new();
    sim.create_dir_all(Path::new("/s"), 0o700).unwrap();
    sim.create(Path::new("/s/file"), 0o600).unwrap();
    let recorder = Recorder::new(&sim);
    let cases: [(&dyn Io, &Path); 3] = [
        (&RealIo, real.path()),
        (&sim, Path::new("/s")),
        (&recorder, Path::new("/s")),
    ];
    for (io, dir) in cases {
        assert!(io.exists(dir).unwrap(), "{io:?}: {}", dir.display());
        assert!(io.exists(&dir.join("file")).unwrap(), "{io:?}: file");
        assert!(!io.exists(&dir.join("missing")).unwrap(), "{io:?}: missing");
        assert!(!io.exists(&dir.join("missing/deeper")).unwrap(), "{io:?}");
    }
}

/// `Options::create_if_missing(false)` refuses a directory without a store (missing,
/// empty, or holding other files) with `InvalidArgument` and creates nothing there,
/// and opens an existing store as usual, whether it holds a checkpoint or not.
#[test]
fn create_if_missing_false_refuses_what_is_not_a_store_and_creates_nothing() {
    let root = tempfile::tempdir().unwrap();
    let strict = || Options::default().create_if_missing(false);
    let missing = root.path().join("typo");
    let err = LogStore::open_with(&missing, strict()).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!missing.exists(), "the directory was created");

    let other = root.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "not a store").unwrap();
    let err = LogStore::open_with(&other, strict()).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(err.to_string().contains("no segment files"), "{err}");
    let names: Vec<_> = std::fs::read_dir(&other).unwrap().collect();
    assert_eq!(
        names.len(),
        1,
        "open created files in a directory it refused"
    );

    let store_dir = root.path().join("store");
    let e = ExecutionId::from("run");
    let t = TenantId::from("t");
    let store = LogStore::open(&store_dir).unwrap();
    store.append_blocking(&e, &t, step_event(1)).unwrap();
    drop(store);
    // After a clean close (a checkpoint) and without one (segments only).
    for checkpoint in [true, false] {
        if !checkpoint {
            std::fs::remove_file(store_dir.join("checkpoint.idx")).unwrap();
        }
        let store = LogStore::open_with(&store_dir, strict()).unwrap();
        assert_eq!(store.load_events_blocking(&e).unwrap().len(), 1);
        store.close().unwrap();
    }
    let made = LogStore::open_with(root.path().join("new"), Options::default()).unwrap();
    assert!(made.path().exists(), "the default still creates");
}
