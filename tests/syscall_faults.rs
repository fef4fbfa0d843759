//! I/O errors injected into the real binary by the kernel's tracer: `strace` makes the
//! n-th `fdatasync` (or `pwrite64`) of `execlog append` fail with EIO, for every n of a
//! small run. The command must fail with one clear line, print (acknowledge) only
//! sequences whose fdatasync succeeded, and a later read must show every printed
//! sequence. A failure after the last acknowledgement (sealing or checkpointing at close)
//! still fails the command, with every sequence printed. `#[ignore]`d: needs strace; `.ci/run` installs it and runs this with
//! `--ignored`.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::output_with_stdin;

fn has_strace() -> bool {
    Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
#[ignore = "needs strace; .ci/run runs it with --ignored"]
fn injected_eio_is_never_acknowledged() {
    assert!(has_strace(), "NOT RUN: strace is missing");
    let bin = env!("CARGO_BIN_EXE_execlog");
    let input = "{\"type\":\"execution_resumed\"}\n".repeat(6);
    let mut runs = 0;
    for syscall in ["fdatasync", "pwrite64"] {
        for n in 1..=12 {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path().to_str().unwrap();
            let out = output_with_stdin(
                Command::new("strace")
                    .args([
                        "-f",
                        "-qq",
                        "-o",
                        "/dev/null",
                        "-e",
                        &format!("inject={syscall}:error=EIO:when={n}"),
                        bin,
                    ])
                    .args(["append", d, "--execution", "e", "--tenant", "t", "--create"]),
                &input,
            );
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(!stderr.contains("panicked"), "{syscall} #{n}: {stderr}");
            let acked: Vec<u64> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.parse().unwrap())
                .collect();
            let in_order: Vec<u64> = (1..=acked.len() as u64).collect();
            assert_eq!(acked, in_order, "{syscall} #{n}");
            if out.status.success() {
                assert_eq!(acked.len(), 6, "{syscall} #{n}");
            } else {
                assert_eq!(stderr.lines().count(), 1, "{syscall} #{n}: {stderr}");
            }
            // Whatever was acknowledged is there (a store that never got created is
            // "not a store", which is only allowed when nothing was acknowledged).
            let read = Command::new(bin).args(["events", d, "e"]).output().unwrap();
            let stored = String::from_utf8_lossy(&read.stdout).lines().count() as u64;
            assert!(
                stored >= acked.len() as u64,
                "{syscall} #{n}: acknowledged {} but {stored} stored",
                acked.len()
            );
            runs += 1;
        }
    }
    println!("{runs} injected-failure runs of the real binary");
}
