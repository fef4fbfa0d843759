//! The workload behind the read-path instruction counts in benches/compare/NOTES.md:
//! fill 2,000 executions of 100 events (first run only), open, then load N random
//! executions. Run it under callgrind, which counts instructions whatever else the
//! machine is doing:
//!
//! ```sh
//! cargo build --release --example read_profile
//! valgrind --tool=callgrind target/release/examples/read_profile /tmp/read-profile 2000
//! callgrind_annotate --inclusive=yes callgrind.out.* | grep -E 'reader::read|open_mode'
//! ```

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use execlog::{ExecutionEventData, ExecutionId, LogStore, StepId, TenantId};

const EXECUTIONS: u64 = 2_000;

fn event(n: u64) -> ExecutionEventData {
    ExecutionEventData::StepCompleted {
        step_id: StepId::from(format!("step-{n:08}")),
        output: Some(format!("{n:08}{}", "o".repeat(142))),
        duration_ms: n,
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/tmp/read-profile".into()));
    let loads: u64 = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let fill = !dir.exists();
    let store = LogStore::open(&dir)?;
    if fill {
        for e in 0..EXECUTIONS {
            let batch = (0..100).map(|i| event(e * 100 + i)).collect();
            let id = ExecutionId::from(format!("r-{e}"));
            store.append_batch_blocking(&id, &TenantId::from("t"), batch)?;
        }
    }
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    let start = Instant::now();
    let mut events = 0;
    for _ in 0..loads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = ExecutionId::from(format!("r-{}", x % EXECUTIONS));
        events += store.load_events_blocking(&id)?.len();
    }
    let elapsed = start.elapsed();
    println!(
        "{events} events in {elapsed:?}: {:.0} events/s",
        events as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
