//! `execlog demo`: the main job on an embedded default.
//!
//! Many writer threads each run simulated agent executions for several tenants: steps,
//! tool calls with JSON payloads, checkpoints, goal evaluations, the odd failure; tool
//! call pairs go in as atomic batches. Every append is durable before it returns. Then
//! everything is read back and compared with what was written, and a summary printed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use execlog::{
    ExecutionError, ExecutionErrorKind, ExecutionEventData as E, ExecutionId, LogStore, StepId,
    StepType, TenantId,
};
use serde_json::json;

// Arguments of `execlog demo` (its help text is the variant doc in main.rs).
#[derive(clap::Args)]
pub struct Args {
    /// Store directory; a new temporary directory when omitted (kept, and printed).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Executions to simulate.
    #[arg(long, default_value_t = 1000)]
    executions: u64,
    /// Concurrent writer threads.
    #[arg(long, default_value_t = 32)]
    writers: u64,
    /// Tenants the executions are spread over.
    #[arg(long, default_value_t = 8)]
    tenants: u64,
}

/// A tiny deterministic generator (xorshift), so runs are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One execution's events, grouped as they are appended (a group of 2+ is a batch).
fn plan(n: u64) -> Vec<Vec<E>> {
    let mut rng = Rng(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut out = vec![vec![E::ExecutionStarted {
        parent: None,
        metadata: Some(json!({"agent": "researcher", "model": "m-large", "run": n})),
    }]];
    let steps = 3 + rng.below(6);
    for s in 0..steps {
        let step = StepId::from(format!("run{n}-step{s}"));
        out.push(vec![E::StepStarted {
            step_id: step.clone(),
            parent_step_id: None,
            step_type: if s % 2 == 0 {
                StepType::LlmCall
            } else {
                StepType::ToolCall
            },
            name: format!("step {s}"),
        }]);
        let call = format!("call-{n}-{s}");
        out.push(vec![
            E::ToolCallStarted {
                step_id: Some(step.clone()),
                tool_call_id: call.clone(),
                tool_name: ["search", "fetch", "python", "sql"][s as usize % 4].into(),
                input: json!({"query": format!("question {n}.{s}"), "top_k": 5}),
            },
            E::ToolCallCompleted {
                step_id: Some(step.clone()),
                tool_call_id: call,
                output: json!({"results": [rng.below(1000), rng.below(1000)], "latency_ms": rng.below(900)}),
            },
        ]);
        if rng.below(15) == 0 {
            out.push(vec![E::StepFailed {
                step_id: step,
                error: ExecutionError::new(ExecutionErrorKind::Tool, "tool returned HTTP 503"),
            }]);
            continue;
        }
        out.push(vec![E::StepCompleted {
            step_id: step.clone(),
            output: Some(format!("summary of step {s}: {}", "lorem ipsum ".repeat(8))),
            duration_ms: rng.below(5000),
        }]);
        if s % 3 == 2 {
            out.push(vec![E::CheckpointSaved {
                step_id: Some(step.clone()),
                checkpoint_id: format!("cp-{n}-{s}"),
                state_hash: format!("{:016x}", rng.next()),
            }]);
            out.push(vec![E::GoalEvaluated {
                step_id: Some(step),
                goal_id: "answer-found".into(),
                status: ["met", "not_met", "progressing"][rng.below(3) as usize].into(),
                score: Some(rng.below(1000) as f64 / 1000.0),
                reason: None,
            }]);
        }
    }
    out.push(vec![if rng.below(20) == 0 {
        E::ExecutionFailed {
            error: ExecutionError::new(ExecutionErrorKind::Model, "context window exceeded"),
        }
    } else {
        E::ExecutionCompleted {
            output: Some("final answer".into()),
            duration_ms: rng.below(60_000),
        }
    }]);
    out
}

fn tenant_of(n: u64, tenants: u64) -> TenantId {
    TenantId::from(format!("tenant-{}", n % tenants.max(1)))
}

fn execution_of(n: u64) -> ExecutionId {
    ExecutionId::from(format!("run-{n:06}"))
}

/// Whether `dir` holds segment files (a missing or unreadable directory holds none; open
/// then reports what is wrong with it).
fn holds_segments(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".seg"))
    })
}

pub fn run(args: &Args) -> Result<ExitCode, String> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            std::env::temp_dir().join(format!("execlog-demo-{}-{stamp}", std::process::id()))
        }
    };
    if holds_segments(&dir) {
        return Err(format!(
            "{} already holds a store: the demo writes only into a new or empty directory, \
             so that its simulated runs never mix with real ones",
            dir.display()
        ));
    }
    eprintln!("execlog demo: store in {}", dir.display());
    let store = Arc::new(LogStore::open(&dir).map_err(|e| e.to_string())?);
    let plans: u64 = args.executions;
    let next = Arc::new(AtomicU64::new(0));
    let bar = crate::progress(plans, "executions");
    let started = Instant::now();
    let workers: Vec<_> = (0..args.writers.max(1))
        .map(|_| {
            let (store, next, bar) = (store.clone(), next.clone(), bar.clone());
            let tenants = args.tenants;
            std::thread::spawn(move || -> Result<(Vec<Duration>, u64), String> {
                let mut latencies = Vec::new();
                let mut events = 0;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= plans {
                        return Ok((latencies, events));
                    }
                    let (e, t) = (execution_of(n), tenant_of(n, tenants));
                    for group in plan(n) {
                        let t0 = Instant::now();
                        events += group.len() as u64;
                        let result = if group.len() == 1 {
                            group
                                .into_iter()
                                .try_for_each(|ev| store.append_blocking(&e, &t, ev).map(drop))
                        } else {
                            store.append_batch_blocking(&e, &t, group).map(drop)
                        };
                        result.map_err(|err| format!("append to {e} failed: {err}"))?;
                        latencies.push(t0.elapsed());
                    }
                    bar.inc(1);
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut events = 0;
    for w in workers {
        let (l, n) = w
            .join()
            .map_err(|_| "a writer thread panicked".to_string())??;
        latencies.extend(l);
        events += n;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    let check_started = Instant::now();
    for n in 0..plans {
        let expected: Vec<E> = plan(n).into_iter().flatten().collect();
        let stored = store
            .load_events_blocking(&execution_of(n))
            .map_err(|e| e.to_string())?;
        let got: Vec<&E> = stored.iter().map(|s| &s.event).collect();
        if got.len() != expected.len() || got.iter().zip(&expected).any(|(a, b)| *a != b) {
            return Err(format!("read-back mismatch in {}", execution_of(n)));
        }
    }
    let check = check_started.elapsed();
    store.close().map_err(|e| e.to_string())?;
    // Sizes as `execlog stats` reports them: of the closed store (its seal included),
    // with the index as an open builds it (a live index carries growth slack).
    let stats = LogStore::open_reader(&dir)
        .map_err(|e| e.to_string())?
        .stats();

    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    out!("execlog demo: every event read back and checked");
    out!("  {:<28} {}", "executions", plans);
    out!("  {:<28} {}", "tenants", args.tenants);
    out!("  {:<28} {}", "writers (threads)", args.writers);
    out!("  {:<28} {}", "events (durable)", events);
    out!("  {:<28} {}", "appends (single or batch)", latencies.len());
    out!(
        "  {:<28} {:.0}",
        "events/s (durable)",
        events as f64 / elapsed.as_secs_f64()
    );
    out!(
        "  {:<28} {:.0} / {:.0}",
        "append latency p50/p99 (µs)",
        pct(0.5),
        pct(0.99)
    );
    out!(
        "  {:<28} {:.0}",
        "read-back events/s",
        events as f64 / check.as_secs_f64()
    );
    out!(
        "  {:<28} {} ({:.0} per event)",
        "disk bytes (data)",
        stats.data_bytes,
        stats.data_bytes as f64 / events.max(1) as f64
    );
    out!(
        "  {:<28} {} ({:.2} per event)",
        "index bytes",
        stats.index_bytes,
        stats.index_bytes as f64 / events.max(1) as f64
    );
    out!("  {:<28} {}", "store", dir.display());
    Ok(ExitCode::SUCCESS)
}
