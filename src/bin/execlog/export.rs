//! `execlog export`: a store's events (or one tenant's, or one execution's) as JSON
//! lines on stdout, in the format docs/FORMAT.md, "Export format (JSON lines)", gives
//! (the decisions: docs/DESIGN.md, "Decisions where the issues were silent";
//! reading it back: `import.rs`).
//!
//! A header line `{"execlog_export":1}`, one line per event, exactly what `execlog
//! events` prints for it, and an end line `{"execlog_export_end":{"executions":E,
//! "events":N}}`. Executions come oldest first by creation (so an import recreates
//! `list`'s order), each whole and in sequence order up to its latest sequence when
//! the store listed it.
//!
//! Invariants: export holds the chosen execution ids and one page of events, never
//! the store; it writes the end line only after every event line was written, so an
//! export cut short (a full disk, a kill, a closed pipe) has none and import refuses
//! it; it writes no event JSON would change (a NaN or infinite goal score stops it).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use execlog::{ExecutionEventData, ExecutionId, StoredEvent, TenantId};

use crate::location::{self, End, Location, Share};

/// The format version this build writes and reads.
pub const VERSION: u64 = 1;
/// Events read from the source at a time.
const PAGE: u64 = 1024;

// Arguments of `execlog export` (its help text is the variant doc in main.rs).
#[derive(clap::Args)]
pub struct Args {
    /// The store: a directory, or a PostgreSQL URL (postgres://user@host:port/db).
    store: PathBuf,
    /// Only the executions of this tenant.
    #[arg(long, conflicts_with = "execution")]
    tenant: Option<String>,
    /// Only this execution.
    #[arg(long)]
    execution: Option<String>,
    /// With a URL: the PostgreSQL schema holding execlog's tables (default: execlog).
    #[arg(long, value_name = "NAME")]
    schema: Option<String>,
    /// Read a damaged store that does not open (a directory), without opening it:
    /// every execution up to its first damaged or missing event. Exits 1 if anything
    /// was left out (said on stderr); the export is complete for what survived.
    #[arg(long, conflicts_with_all = ["tenant", "execution", "schema"])]
    salvage: bool,
}

/// The location `arg` names, or the exit code of a build that cannot open it.
pub fn parse_location(
    arg: &Path,
    schema: Option<&str>,
) -> Result<Result<Location, ExitCode>, String> {
    let location = Location::from_arg(arg, schema)?;
    if !location.supported() {
        return Ok(Err(location::without_postgres("a PostgreSQL URL")));
    }
    Ok(Ok(location))
}

pub fn run(args: &Args) -> Result<ExitCode, String> {
    if args.salvage {
        return salvage(&args.store);
    }
    let location = match parse_location(&args.store, args.schema.as_deref())? {
        Ok(location) => location,
        Err(code) => return Ok(code),
    };
    let source = location::open_source(&location, Share::Reader)?;
    let (store, name) = (&*source.store, &source.name);
    let err = |e: execlog::Error| format!("reading {name}: {e}");
    let chosen = match (&args.tenant, &args.execution) {
        (None, None) => store.executions().map_err(err)?,
        (Some(tenant), _) => {
            let ids = store
                .tenant_executions(&TenantId::from(tenant.as_str()))
                .map_err(err)?;
            if ids.is_empty() {
                eprintln!("execlog: no executions of tenant {tenant} in {name}");
                return Ok(ExitCode::from(crate::inspect::NOT_FOUND));
            }
            let mut chosen = Vec::with_capacity(ids.len());
            for id in ids {
                let last = store.latest(&id).map_err(err)?.unwrap_or(0);
                chosen.push((id, last));
            }
            chosen
        }
        (None, Some(execution)) => {
            let id = ExecutionId::from(execution.as_str());
            let Some(last) = store.latest(&id).map_err(err)? else {
                eprintln!("execlog: no execution {execution} in {name}");
                return Ok(ExitCode::from(crate::inspect::NOT_FOUND));
            };
            vec![(id, last)]
        }
    };
    let total: u64 = chosen.iter().map(|(_, last)| last).sum();
    let bar = crate::progress(total, "exporting events");
    let mut out = Output(BufWriter::new(std::io::stdout().lock()));
    out.line(&format!(r#"{{"execlog_export":{VERSION}}}"#))?;
    for (id, last) in &chosen {
        write_execution(store, &mut out, id, *last, &bar)?;
    }
    out.line(&format!(
        r#"{{"execlog_export_end":{{"executions":{},"events":{total}}}}}"#,
        chosen.len()
    ))?;
    out.flush()?;
    bar.finish_and_clear();
    eprintln!(
        "execlog: exported {} executions, {total} events from {name}",
        chosen.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `--salvage`: what `execlog::salvage` finds in the store at `dir`, as an export.
fn salvage(dir: &Path) -> Result<ExitCode, String> {
    let scanned = execlog::salvage(dir).map_err(|e| format!("salvaging {}: {e}", dir.display()))?;
    let mut out = Output(BufWriter::new(std::io::stdout().lock()));
    out.line(&format!(r#"{{"execlog_export":{VERSION}}}"#))?;
    let (mut executions, mut events, mut unreadable) = (0u64, 0u64, 0u64);
    for salvaged in scanned.executions() {
        let id = &salvaged.execution_id;
        let page = match salvaged.events {
            Ok(page) => page,
            Err(why) => {
                eprintln!("execlog: left out execution {id}: {why}");
                unreadable += 1;
                continue;
            }
        };
        for e in &page {
            faithful(e)?;
            let line = serde_json::to_string(e)
                .map_err(|why| format!("cannot print event {} of {id}: {why}", e.sequence))?;
            out.line(&line)?;
        }
        executions += 1;
        events += page.len() as u64;
    }
    out.line(&format!(
        r#"{{"execlog_export_end":{{"executions":{executions},"events":{events}}}}}"#
    ))?;
    out.flush()?;
    let report = scanned.report();
    let mut ranges = 0;
    for s in &report.segments {
        for (from, to, reason) in &s.damaged {
            eprintln!(
                "execlog: damaged: segment {} bytes {from}..{to}: {reason}",
                s.segment
            );
            ranges += 1;
        }
    }
    for (id, kept, left_out) in &report.cut {
        match kept {
            0 => eprintln!("execlog: lost: {id}: its first event is damaged or missing"),
            _ => eprintln!(
                "execlog: cut: {id} keeps events 1..={kept}; {left_out} later events left out"
            ),
        }
    }
    eprintln!(
        "execlog: salvaged {executions} executions, {events} events from {}; {ranges} \
         damaged ranges; left out: {} events after a gap, {} executions whose first event \
         is damaged, {} whose id is unknown (their first record is damaged), {unreadable} \
         whose chain did not read back; {} deleted executions skipped",
        dir.display(),
        report.events_after_gaps,
        report.lost_executions,
        report.unnamed_executions,
        report.deleted_executions
    );
    Ok(if report.is_whole() && unreadable == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Writes the events of `id` up to sequence `last`, a page at a time.
fn write_execution(
    store: &dyn End,
    out: &mut Output,
    id: &ExecutionId,
    last: u64,
    bar: &indicatif::ProgressBar,
) -> Result<(), String> {
    let mut after = 0;
    while after < last {
        let page = store
            .read(id, after, PAGE.min(last - after))
            .map_err(|e| format!("reading execution {id}: {e}"))?;
        let Some(newest) = page.last().map(|e| e.sequence) else {
            return Err(format!(
                "execution {id} ends at sequence {after}, before the {last} the store listed"
            ));
        };
        for e in &page {
            faithful(e)?;
            let line = serde_json::to_string(e)
                .map_err(|why| format!("cannot print event {} of {id}: {why}", e.sequence))?;
            out.line(&line)?;
        }
        bar.inc(page.len() as u64);
        after = newest;
    }
    Ok(())
}

/// Refuses an event that JSON cannot carry as it is stored: a goal score that is not
/// a finite number (JSON has neither NaN nor infinity; it would print as `null`, and
/// come back as no score).
fn faithful(e: &StoredEvent) -> Result<(), String> {
    if let ExecutionEventData::GoalEvaluated {
        score: Some(score), ..
    } = &e.event
        && !score.is_finite()
    {
        return Err(format!(
            "event {} of execution {} has the goal score {score}, which JSON cannot carry; \
             the export stops here, without its end line (`execlog migrate` copies such \
             events unchanged)",
            e.sequence, e.execution_id
        ));
    }
    Ok(())
}

/// Stdout, buffered. A closed stdout (`| head`) ends the process quietly, as `out!`
/// does; any other failure (a full disk under `> file`) is an error.
struct Output(BufWriter<std::io::StdoutLock<'static>>);

impl Output {
    fn line(&mut self, line: &str) -> Result<(), String> {
        let written = self
            .0
            .write_all(line.as_bytes())
            .and_then(|()| self.0.write_all(b"\n"));
        stdout_result(written)
    }

    fn flush(&mut self) -> Result<(), String> {
        stdout_result(self.0.flush())
    }
}

fn stdout_result(result: std::io::Result<()>) -> Result<(), String> {
    match result {
        Ok(()) => Ok(()),
        // The reader is gone; a source is only read, so there is nothing to close.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(format!("cannot write to stdout: {e}")),
    }
}
