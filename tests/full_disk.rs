//! A full disk, for real (issue 17): a store on a small ext4 file system on a loop
//! device fills it up. The append that meets ENOSPC fails with the full-disk error
//! (`Error::Poisoned` whose `source()` is the operating system's `StorageFull`, and a
//! message that says the disk is full and what to do); nothing uncertain was
//! acknowledged; reads keep working; after space is freed, a reopen has every
//! acknowledged event and appends continue.
//!
//! Needs root (to mount) and mkfs.ext4: `#[ignore]`d, `.ci/run` runs it with
//! `--ignored` when it can, and says loudly when it cannot.

#![allow(clippy::unwrap_used)]

mod common;

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use execlog::*;

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unmounts on drop (`mount -o loop` detaches the loop device with it).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn event(n: u64) -> ExecutionEventData {
    ExecutionEventData::StepCompleted {
        step_id: StepId::from(format!("s{n}")),
        output: Some(format!("{n:08}").repeat(2_000)),
        duration_ms: n,
    }
}

fn mount_small_ext4(work: &Path) -> Mounted {
    let image = work.join("disk.img");
    let mnt = work.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run("truncate", &["-s", "32M", image.to_str().unwrap()]);
    run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
    run(
        "mount",
        &["-o", "loop", image.to_str().unwrap(), mnt.to_str().unwrap()],
    );
    Mounted(mnt)
}

#[test]
#[ignore = "needs root and mkfs.ext4; .ci/run runs it with --ignored"]
fn a_full_disk_fails_clearly_loses_nothing_and_a_reopen_continues() {
    let work = tempfile::tempdir().unwrap();
    let mounted = mount_small_ext4(work.path());
    let dir = mounted.0.join("store");
    // Room to free afterwards.
    std::fs::write(mounted.0.join("filler"), vec![1u8; 6 << 20]).unwrap();
    let options = || Options::default().segment_size_bytes(2 << 20);
    let store = LogStore::open_with(&dir, options()).unwrap();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    let mut acked = 0u64;
    let error = loop {
        let result = if acked.is_multiple_of(3) {
            store.append_batch_blocking(&e, &t, vec![event(acked + 1), event(acked + 2)])
        } else {
            store.append_blocking(&e, &t, event(acked + 1))
        };
        match result {
            Ok(first) => {
                assert_eq!(first, acked + 1);
                acked += if acked.is_multiple_of(3) { 2 } else { 1 };
            }
            Err(error) => break error,
        }
        assert!(acked < 100_000, "the disk never filled up");
    };
    let Error::Poisoned {
        source: Some(source),
        ..
    } = &error
    else {
        panic!("expected the full-disk poison, got {error:?}");
    };
    assert_eq!(source.kind(), std::io::ErrorKind::StorageFull, "{source:?}");
    assert!(error.source().is_some());
    let message = error.to_string();
    assert!(
        message.contains("disk is full") && message.contains("free space"),
        "{message}"
    );
    // Later appends get the same answer; reads keep working.
    let again = store.append_blocking(&e, &t, event(0)).unwrap_err();
    assert!(again.to_string().contains("disk is full"), "{again}");
    let events = store.load_events_blocking(&e).unwrap();
    assert_eq!(events.len() as u64, acked);
    assert!(events.iter().all(|ev| ev.event == event(ev.sequence)));
    let _ = store.close(); // the seal or checkpoint may not fit: said, not fatal
    drop(store);

    std::fs::remove_file(mounted.0.join("filler")).unwrap();
    let store = LogStore::open_with(&dir, options()).unwrap();
    let events = store.load_events_blocking(&e).unwrap();
    assert!(events.len() as u64 >= acked, "acknowledged events lost");
    assert!(events.iter().all(|ev| ev.event == event(ev.sequence)));
    let next = events.len() as u64 + 1;
    assert_eq!(store.append_blocking(&e, &t, event(next)).unwrap(), next);
    store.close().unwrap();
    println!("{acked} events acknowledged before the disk was full; reopen continued at {next}");
}
