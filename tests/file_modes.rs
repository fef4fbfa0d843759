//! Who may read a store (issue 17): what open creates is private to its owner by
//! default (directory 0700, files 0600), or readable by the owner's group with
//! `Options::group_read(true)` (0750 and 0640); never by others. Existing directories
//! and files keep their permissions. The umask still applies, and tests cannot set it
//! safely (it is process-wide and tests run on threads), so every check allows the
//! umask to remove bits but never to add any; where `/proc/self/status` shows the
//! umask, the exact mode is checked too.
//!
//! Every file the store creates is covered: segment files (the first and those rolled
//! to), `LOCK`, `checkpoint.idx` (created as `checkpoint.idx.tmp`) and the cut marker
//! `cut.pending`, which lives only while a torn tail is cut. Transient files are
//! checked as they are created, through a recording wrapper of the real file system.
//!
//! Regression guarded: a creation site without a mode (segments, checkpoint, lock or
//! marker created 0644 and readable by every local user).

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::small_segments;
use execlog::*;

/// Permission bits of `path`.
fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The process umask, where the kernel shows it.
fn umask() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Umask:"))?;
    u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).ok()
}

/// `path` has `wanted` less at most the umask: never a bit more, the owner's bits all
/// there, and exactly `wanted & !umask` where the umask is known.
fn assert_mode(path: &Path, wanted: u32) {
    let got = mode(path);
    assert_eq!(
        got & !wanted,
        0,
        "{}: mode {got:o} has bits beyond {wanted:o}",
        path.display()
    );
    assert_eq!(
        got & 0o700,
        wanted & 0o700,
        "{}: mode {got:o}, owner bits of {wanted:o} missing",
        path.display()
    );
    if let Some(mask) = umask() {
        assert_eq!(got, wanted & !mask, "{}: umask {mask:o}", path.display());
    }
}

/// A file or directory the store created, and its mode right after creation.
type Created = (PathBuf, u32);

/// The real file system, recording what the store creates and its mode then.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<Created>>);

impl Recorder {
    fn note(&self, path: &Path) {
        self.0.lock().unwrap().push((path.into(), mode(path)));
    }

    fn created(&self) -> Vec<Created> {
        self.0.lock().unwrap().clone()
    }
}

impl Io for Recorder {
    fn create_dir_all(&self, dir: &Path, mode: u32) -> std::io::Result<()> {
        let new = !dir.exists();
        RealIo.create_dir_all(dir, mode)?;
        if new {
            self.note(dir);
        }
        Ok(())
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        RealIo.list(dir)
    }
    fn open(&self, path: &Path, read_only: bool) -> std::io::Result<Arc<dyn IoFile>> {
        RealIo.open(path, read_only)
    }
    fn create(&self, path: &Path, mode: u32) -> std::io::Result<Arc<dyn IoFile>> {
        let file = RealIo.create(path, mode)?;
        self.note(path);
        Ok(file)
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        RealIo.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        RealIo.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        RealIo.sync_dir(dir)
    }
    fn try_lock(&self, path: &Path, mode: u32) -> std::io::Result<LockGuard> {
        let new = !path.exists();
        let guard = RealIo.try_lock(path, mode)?;
        if new {
            self.note(path);
        }
        Ok(guard)
    }
}

fn seg(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:010}.seg"))
}

/// Offset of the last record (the seal after a clean close) of a segment's bytes:
/// walks the length fields (docs/FORMAT.md).
fn last_record(bytes: &[u8]) -> usize {
    let (mut at, mut last) = (32, None);
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        last = Some(at);
        at += (56 + len).next_multiple_of(8);
    }
    last.unwrap()
}

/// Uses a store in `dir` the way that makes it create every kind of file: appends
/// rolling over several segments, a clean close (checkpoint), a reopen, a torn seal
/// cut at the next open (cut marker), another close. Returns what was created, with
/// its mode at creation.
fn exercise(dir: &Path, options: impl Fn() -> Options) -> Vec<Created> {
    let rec = Arc::new(Recorder::default());
    let open = || LogStore::open_with(dir, options().io(Arc::clone(&rec) as Arc<dyn Io>)).unwrap();
    let e = ExecutionId::from("e");
    let t = TenantId::from("t");
    let step = |n: u64| ExecutionEventData::StepCompleted {
        step_id: StepId::from(format!("s{n}")),
        output: Some("x".repeat(1024)),
        duration_ms: n,
    };
    let store = open();
    for n in 1..=150 {
        store.append_blocking(&e, &t, step(n)).unwrap();
    }
    store.close().unwrap();
    assert!(dir.join("checkpoint.idx").exists(), "no checkpoint written");
    assert!(seg(dir, 2).exists(), "no segment rolled to");

    let store = open();
    assert_eq!(store.load_events_blocking(&e).unwrap().len(), 150);
    store.append_blocking(&e, &t, step(151)).unwrap();
    store.close().unwrap();

    // Damage the seal of the last segment: the next open cuts it as a torn tail.
    let last = (1..)
        .take_while(|&id| seg(dir, id).exists())
        .last()
        .unwrap();
    let mut bytes = fs::read(seg(dir, last)).unwrap();
    let seal = last_record(&bytes);
    bytes[seal + 20] ^= 1;
    fs::write(seg(dir, last), &bytes).unwrap();
    let store = open();
    assert!(store.recovery_report().truncated_at.is_some(), "no cut");
    assert_eq!(store.load_events_blocking(&e).unwrap().len(), 151);
    store.close().unwrap();
    rec.created()
}

/// Checks a store directory created by `exercise` with the modes `dir_mode` and
/// `file_mode`: the directory, every file left in it, every file created on the way.
fn assert_store_modes(dir: &Path, created: &[Created], dir_mode: u32, file_mode: u32) {
    assert_mode(dir, dir_mode);
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        assert!(path.is_file(), "{}", path.display());
        assert_mode(&path, file_mode);
        names.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    for name in ["LOCK", "checkpoint.idx", "0000000001.seg", "0000000002.seg"] {
        assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
    }
    let mask = umask().unwrap_or(0);
    for (path, got) in created {
        let wanted = if path == dir { dir_mode } else { file_mode };
        assert_eq!(got & !wanted, 0, "{} created {got:o}", path.display());
        if umask().is_some() {
            assert_eq!(*got, wanted & !mask, "{} created {got:o}", path.display());
        }
    }
    let created_names: Vec<String> = created
        .iter()
        .filter_map(|(p, _)| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    for name in [
        "LOCK",
        "checkpoint.idx.tmp",
        "cut.pending",
        "0000000002.seg",
    ] {
        assert!(
            created_names.iter().any(|n| n == name),
            "{name} never created: {created_names:?}"
        );
    }
    assert!(
        created.iter().any(|(p, _)| p == dir),
        "directory not created"
    );
}

#[test]
fn a_new_store_is_private_to_its_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let created = exercise(&dir, small_segments);
    assert_store_modes(&dir, &created, 0o700, 0o600);
    // Nothing for the group or others, whatever the umask.
    assert_eq!(mode(&dir) & 0o077, 0);
    for entry in fs::read_dir(&dir).unwrap() {
        assert_eq!(mode(&entry.unwrap().path()) & 0o077, 0);
    }
}

#[test]
fn group_read_lets_the_group_read_and_no_one_else() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let created = exercise(&dir, || small_segments().group_read(true));
    assert_store_modes(&dir, &created, 0o750, 0o640);
    // The group never writes, others never get anything, whatever the umask.
    assert_eq!(mode(&dir) & 0o027, 0);
    for entry in fs::read_dir(&dir).unwrap() {
        assert_eq!(mode(&entry.unwrap().path()) & 0o027, 0);
    }
    // And reading as the group is what it asked for, unless the umask took it away.
    if umask().is_some_and(|m| m & 0o040 == 0) {
        assert_eq!(mode(&dir.join("checkpoint.idx")) & 0o040, 0o040);
        assert_eq!(mode(&dir) & 0o050, 0o050);
    }
}

#[test]
fn an_existing_directory_and_existing_files_keep_their_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let e = ExecutionId::from("e");
    let t = TenantId::from("t");
    let store = LogStore::open(&dir).unwrap();
    store
        .append_blocking(&e, &t, ExecutionEventData::ExecutionResumed)
        .unwrap();
    store.close().unwrap();
    assert_eq!(mode(&dir), 0o755, "open chmod-ed an existing directory");
    // What the store created in it is private all the same.
    assert_mode(&seg(&dir, 1), 0o600);
    assert_mode(&dir.join("LOCK"), 0o600);

    // Files an operator opened up stay as they are across opens and appends.
    for name in ["LOCK", "0000000001.seg"] {
        fs::set_permissions(dir.join(name), fs::Permissions::from_mode(0o644)).unwrap();
    }
    let store = LogStore::open(&dir).unwrap();
    store
        .append_blocking(&e, &t, ExecutionEventData::ExecutionResumed)
        .unwrap();
    store.close().unwrap();
    assert_eq!(mode(&dir), 0o755);
    assert_eq!(mode(&dir.join("LOCK")), 0o644);
    assert_eq!(mode(&seg(&dir, 1)), 0o644);
}

#[test]
fn missing_parents_get_the_default_mode_and_only_the_store_is_private() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().join("a").join("b");
    let dir = parent.join("store");
    drop(LogStore::open(&dir).unwrap());
    assert_mode(&dir, 0o700);
    for d in [tmp.path().join("a"), parent] {
        // Created as `mkdir -p` would: 0777 less the umask.
        assert_mode(&d, 0o777);
    }
}

#[test]
fn a_file_in_place_of_the_store_directory_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    fs::write(&dir, b"not a directory").unwrap();
    assert!(LogStore::open(&dir).is_err());
}
