//! What the disk allows, measured in the same run: the bounds every system is compared
//! against.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded, unbounded};

use crate::Sample;

fn preallocated(path: &Path, bytes: u64) -> File {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("create baseline file");
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < bytes {
        f.write_all_at(&zeros, at).expect("preallocate");
        at += zeros.len() as u64;
    }
    f.sync_all().expect("sync");
    f
}

/// One writer: write one event's bytes into a preallocated file, fdatasync, repeat.
pub fn raw_fdatasync(dir: &Path, event_bytes: usize, seconds: f64) -> Sample {
    let f = preallocated(&dir.join("raw.bin"), 256 << 20);
    let buf = vec![7u8; event_bytes];
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut at = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        f.write_all_at(&buf, at).expect("write");
        f.sync_data().expect("fdatasync");
        lat.push(t.elapsed());
        at = (at + event_bytes as u64) % (255 << 20);
    }
    Sample::new(lat.len() as u64, start.elapsed(), lat)
}

/// The ideal group-commit loop: writers hand their bytes to one thread, which writes
/// everything queued with one write and one fdatasync, then wakes them.
pub fn ideal_group_commit(dir: &Path, writers: usize, event_bytes: usize, seconds: f64) -> Sample {
    let f = preallocated(&dir.join("group.bin"), 512 << 20);
    let (tx, rx) = unbounded::<(Vec<u8>, Sender<()>)>();
    let committer = std::thread::spawn(move || {
        let mut at = 0u64;
        let mut buf = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            group.extend(rx.try_iter());
            buf.clear();
            for (b, _) in &group {
                buf.extend_from_slice(b);
            }
            if at + buf.len() as u64 > (511 << 20) {
                at = 0;
            }
            f.write_all_at(&buf, at).expect("write");
            f.sync_data().expect("fdatasync");
            at += buf.len() as u64;
            for (_, done) in group {
                let _ = done.send(());
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let tx = Arc::new(tx);
    let handles: Vec<_> = (0..writers)
        .map(|_| {
            let tx = Arc::clone(&tx);
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let (done_tx, done_rx) = bounded(1);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    tx.send((vec![7u8; event_bytes], done_tx.clone()))
                        .expect("send");
                    done_rx.recv().expect("ack");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.join().expect("writer"));
    }
    let elapsed = start.elapsed();
    drop(tx);
    committer.join().expect("committer");
    Sample::new(lat.len() as u64, elapsed, lat)
}

/// Sequential write bandwidth: 1 MiB writes into a new file, fdatasync every 16 MiB.
pub fn sequential_write_mb_s(dir: &Path, total_mb: u64) -> f64 {
    let path = dir.join("seq.bin");
    let f = File::create(&path).expect("create");
    let buf = vec![9u8; 1 << 20];
    let start = Instant::now();
    for i in 0..total_mb {
        f.write_all_at(&buf, i << 20).expect("write");
        if i % 16 == 15 {
            f.sync_data().expect("fdatasync");
        }
    }
    f.sync_data().expect("fdatasync");
    let mb_s = total_mb as f64 / start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(path);
    mb_s
}

/// Reads every segment file in `dir` through one reused 1 MiB buffer and CRCs it: the
/// least work that touches every byte once. (Reading each file into a fresh buffer
/// made the baseline swing between 54 and 112 ms for the same bytes, with the page
/// faults of the new allocation.)
pub fn raw_scan(dir: &Path) -> (Duration, u64) {
    use std::io::Read;
    let start = Instant::now();
    let mut bytes = 0;
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    paths.sort();
    for path in paths {
        let mut f = File::open(&path).expect("open");
        loop {
            let n = f.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            bytes += n as u64;
            crc.update(&buf[..n]);
        }
    }
    std::hint::black_box(crc.finalize());
    (start.elapsed(), bytes)
}
