//! An open store with nothing to do uses no CPU: no thread of the engine spins or polls
//! while no append is in flight, with subscribers waiting on it, blocking and async.
//!
//! One test in its own binary, so that the process's threads are this test's alone. It
//! counts wake-ups (voluntary context switches of every thread, from /proc), which
//! also catches a thread that polls every few milliseconds at a cost too small for the
//! CPU-time clock, and CPU time (from /proc/self/stat).

use std::time::Duration;

use execlog::*;

/// User + system CPU time of this process, in clock ticks (1/100 s on Linux).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 of the rest.
    let field = |i: usize| fields[i].parse::<u64>().expect("a number of ticks");
    field(11) + field(12)
}

/// Voluntary context switches of every thread of this process: one per wake-up.
fn wakeups() -> u64 {
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    let mut total = 0;
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

fn step(n: u64) -> ExecutionEventData {
    ExecutionEventData::StepCompleted {
        step_id: StepId::from(format!("step-{n}")),
        output: None,
        duration_ms: n,
    }
}

#[test]
fn an_idle_store_with_waiting_subscribers_uses_no_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let (e, t) = (ExecutionId::from("e"), TenantId::from("t"));
    store.append_blocking(&e, &t, step(0)).unwrap();

    // A blocking subscriber waiting with a timeout longer than the window...
    let mut blocking = store
        .subscribe(SubscriptionFilter::All, StartFrom::End)
        .unwrap();
    let waiter = std::thread::spawn(move || blocking.next_timeout(Duration::from_secs(4)));
    // ...and an async one, awaited on a current-thread runtime.
    let stream = store
        .subscribe(SubscriptionFilter::Execution(e.clone()), StartFrom::End)
        .unwrap();
    let awaiting = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut stream = stream;
            futures::StreamExt::next(&mut stream).await
        })
    });

    // Past the commit thread's idle spin and the subscribers' first polls.
    std::thread::sleep(Duration::from_millis(200));
    let (ticks, woken) = (cpu_ticks(), wakeups());
    std::thread::sleep(Duration::from_secs(2));
    let (ticks, woken) = (cpu_ticks() - ticks, wakeups() - woken);
    // The test's own thread wakes once from its sleep (and reading /proc may count).
    assert!(
        ticks <= 2 && woken <= 5,
        "an idle store's threads woke {woken} times and used {ticks} ticks (1/100 s) of CPU time in 2 s"
    );

    // The waiting subscribers still see the next append.
    store.append_blocking(&e, &t, step(1)).unwrap();
    let seen = awaiting.join().unwrap().expect("the stream delivers");
    assert_eq!(seen.unwrap().event.sequence, 2);
    let seen = waiter.join().unwrap();
    assert!(
        matches!(seen, Ok(Some(ref d)) if d.event.sequence == 2),
        "{seen:?}"
    );
}
