//! `execlog append`: events as JSON lines from stdin into a store.
//!
//! Every line is parsed and checked (JSON, event type, and size against the store's
//! `Options::max_event_bytes`) before anything is written, so bad input, reported with
//! its line number, stores nothing, with or without `--batch`. With `--batch` the
//! events also form one atomic batch.
//!
//! `--expect N|none` and `--key K` make the events one guarded batch
//! (`GuardedEventStore::append_with`): stored only if the execution's latest sequence
//! is N (or it does not exist), and at most once per key. A refused guard exits 4 with
//! nothing stored; a retry with the same key and events prints the stored sequences
//! again and says on stderr that they were stored before.
//!
//! A new store is made only with `--create`, in a missing or empty directory: a
//! mistyped path, or a directory of other files, is an error, not a new store.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use execlog::{
    AppendOptions, Error, ExecutionEventData, ExecutionId, ExpectedSequence, LogStore, TenantId,
};

use crate::DirKind;

// Arguments of `execlog append` (its help text is the variant doc in main.rs).
#[derive(clap::Args)]
pub struct Args {
    /// The store directory.
    dir: PathBuf,
    /// Make a new store if DIR is missing or an empty directory (without it, DIR must
    /// already be a store, so that a mistyped path is an error).
    #[arg(long)]
    create: bool,
    /// The execution to append to.
    #[arg(long)]
    execution: String,
    /// The tenant that owns (or will own) the execution.
    #[arg(long)]
    tenant: String,
    /// Store all events as one atomic batch.
    #[arg(long)]
    batch: bool,
    /// Store the events (as one batch) only if the execution's latest sequence is N,
    /// or, with `none`, only if the execution does not exist yet. Exit 4 otherwise.
    #[arg(long, value_name = "N|none", value_parser = parse_expected)]
    expect: Option<ExpectedSequence>,
    /// Idempotency key: store the events (as one batch) at most once under KEY on this
    /// execution. A retry with the same events prints the sequences stored the first
    /// time; with other events it exits 4.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
}

fn parse_expected(text: &str) -> Result<ExpectedSequence, String> {
    match text {
        "none" => Ok(ExpectedSequence::NoExecution),
        n => n
            .parse::<u64>()
            .map(ExpectedSequence::Exactly)
            .map_err(|_| format!("expected a sequence number or `none`, not {n:?}")),
    }
}

/// Exit code of an append its guard refused (`--expect`, `--key`).
const REFUSED: u8 = 4;

pub fn run(args: &Args) -> Result<ExitCode, String> {
    // (line number, event) for every non-blank line.
    let mut events: Vec<(usize, ExecutionEventData)> = Vec::new();
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.map_err(|e| format!("cannot read stdin: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let event: ExecutionEventData = serde_json::from_str(&line)
            .map_err(|e| format!("line {}: not a valid event: {e}; nothing was stored", n + 1))?;
        events.push((n + 1, event));
    }
    if events.is_empty() {
        return Err("no events on stdin; nothing was stored".into());
    }
    // Everything about the input is checked before the store is opened, so that bad
    // input never creates a store (`--create`). The store applies the same checks.
    for (what, id) in [("execution", &args.execution), ("tenant", &args.tenant)] {
        if id.is_empty() || id.len() > execlog::MAX_ID_BYTES {
            return Err(format!(
                "the {what} id must be 1 to {} bytes; nothing was stored",
                execlog::MAX_ID_BYTES
            ));
        }
    }
    let options = execlog::Options::default();
    for (line, event) in &events {
        options
            .check_event(event)
            .map_err(|e| format!("line {line}: {e}; nothing was stored"))?;
    }
    // Checked after stdin was read, as the lock is, so that a writer into the pipe does
    // not see it closed early.
    check_dir(args)?;
    let store = LogStore::open(&args.dir).map_err(|e| e.to_string())?;
    // The library reports repairs through `log`, which this tool does not route: say
    // here what open cut or removed.
    let report = store.recovery_report();
    if let Some((segment, offset)) = report.truncated_at {
        eprintln!(
            "execlog: open cut {} bytes at segment {segment} offset {offset}: {}",
            report.bytes_truncated,
            report.torn_reason.as_deref().unwrap_or("torn tail")
        );
    }
    if !report.removed_segments.is_empty() {
        eprintln!(
            "execlog: open set aside unfinished segments {:?}",
            report.removed_segments
        );
    }
    // What an append would refuse of an event alone (its encoded size), for every line
    // before the first write: without `--batch`, a refusal at append time would come
    // after the earlier lines were stored.
    for (line, event) in &events {
        store
            .check_event(event)
            .map_err(|e| format!("line {line}: {e}; nothing was stored"))?;
    }
    let execution = ExecutionId::from(args.execution.as_str());
    let tenant = TenantId::from(args.tenant.as_str());
    if args.expect.is_some() || args.key.is_some() {
        let options = AppendOptions {
            expected: args.expect.unwrap_or_default(),
            idempotency_key: args.key.clone(),
        };
        let events = events.into_iter().map(|(_, event)| event).collect();
        let outcome = match store.append_with_blocking(&execution, &tenant, events, options) {
            Ok(outcome) => outcome,
            Err(e @ (Error::WrongExpectedSequence { .. } | Error::IdempotencyConflict)) => {
                eprintln!("execlog: {e}");
                store.close().map_err(|e| e.to_string())?;
                return Ok(ExitCode::from(REFUSED));
            }
            Err(e) => return Err(e.to_string()),
        };
        if outcome.replayed {
            eprintln!(
                "execlog: these events were stored before under this key; nothing was stored now"
            );
        }
        for seq in outcome.first_sequence..=outcome.last_sequence {
            out!("{seq}");
        }
    } else if args.batch {
        let count = events.len() as u64;
        let events = events.into_iter().map(|(_, event)| event).collect();
        let first = store
            .append_batch_blocking(&execution, &tenant, events)
            .map_err(|e| e.to_string())?;
        for seq in first..first + count {
            out!("{seq}");
        }
    } else {
        for (_, event) in events {
            let seq = store
                .append_blocking(&execution, &tenant, event)
                .map_err(|e| e.to_string())?;
            out!("{seq}");
        }
    }
    store.close().map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// Refuses a DIR that `LogStore::open` would turn into a new store unless `--create`
/// asks for one, and never makes a store among other files.
fn check_dir(args: &Args) -> Result<(), String> {
    let shown = args.dir.display();
    match crate::dir_kind(&args.dir)? {
        DirKind::Store => Ok(()),
        DirKind::Missing | DirKind::Empty if args.create => Ok(()),
        DirKind::Missing => Err(format!(
            "{shown} does not exist; nothing was stored (pass --create to make a new store there)"
        )),
        DirKind::Empty => Err(format!(
            "{shown} is not an execlog store (it is empty); nothing was stored (pass --create to make a new store in it)"
        )),
        DirKind::NotAStore => Err(format!(
            "{shown} is not an execlog store (it holds other files and no segment files); nothing was stored (a new store needs a new or empty directory)"
        )),
    }
}
