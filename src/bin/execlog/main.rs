//! `execlog`: run the demo workload, append events, look inside a store, export it as
//! JSON lines and import it, and move it to PostgreSQL and back.
//!
//! Output that scripts read (JSON lines) goes to stdout; logs, progress bars and
//! errors go to stderr. Every failure is one line on stderr and a non-zero exit code:
//! 1 for a problem with the store or the input (and `verify` finding one), 2 for a
//! usage error (clap's), 3 for an execution (`events`, `export`, `delete`) or tenant
//! (`list`, `export`, `delete`) the store does not hold, 4 for an `append` its
//! `--expect` or `--key` refused.

/// `println!` for the commands' output: a closed stdout (`execlog stats DIR | head`)
/// ends the process quietly with success, as for other Unix tools, instead of the
/// panic `println!` raises on a broken pipe. Defined before the command modules so
/// that they see it.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_line(format_args!($($arg)*))
    };
}

mod append;
mod backup;
mod demo;
mod export;
mod import;
mod inspect;
mod lifecycle;
mod location;
mod migrate;
mod tail;
mod timeline;

/// Writes one line to stdout (see [`out!`]).
fn write_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(line)
        .and_then(|()| stdout.write_all(b"\n"));
    match written {
        Ok(()) => {}
        // The reader is gone: nothing more to say. Stores opened for writing were
        // synced before anything was printed about them.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("execlog: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }
}

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Durable execution histories for AI agents: demo, append, inspect, verify, export,
/// import, migrate.
#[derive(Parser)]
#[command(name = "execlog", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate a realistic multi-tenant agent workload, write it durably, read it back,
    /// check it, and print a summary.
    ///
    /// Example: execlog demo --dir /tmp/agents --executions 500
    Demo(demo::Args),
    /// Append events read as JSON lines (the contract's form) from stdin. A new store
    /// needs --create.
    ///
    /// Example: echo '{"type":"execution_resumed"}' | execlog append /tmp/agents --execution run-1 --tenant acme --create
    Append(append::Args),
    /// Print an execution's events as JSON lines (or a table with --pretty). An
    /// execution the store does not hold is said on stderr and exits 3.
    ///
    /// Example: execlog events /tmp/agents run-1 --after 10 --pretty
    Events {
        /// The store directory.
        dir: PathBuf,
        /// The execution id.
        execution: String,
        /// Only events with a sequence greater than this.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// A readable table instead of JSON lines.
        #[arg(long, conflicts_with = "timeline")]
        pretty: bool,
        /// Steps nested with their tool calls, outcomes and durations.
        #[arg(long)]
        timeline: bool,
    },
    /// List a tenant's executions, newest first, as JSON lines. A tenant without
    /// executions in the store is said on stderr and exits 3.
    ///
    /// Example: execlog list /tmp/agents --tenant acme --limit 20 --offset 40
    List {
        /// The store directory.
        dir: PathBuf,
        /// The tenant (without it: every tenant's executions, each line naming its
        /// tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// At most this many executions.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Skip this many first.
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// List the tenants of a store with their number of executions, as JSON lines.
    ///
    /// Example: execlog tenants /tmp/agents
    Tenants {
        /// The store directory.
        dir: PathBuf,
    },
    /// Print counts and sizes of a store and what opening it found.
    ///
    /// Example: execlog stats /tmp/agents
    Stats {
        /// The store directory.
        dir: PathBuf,
        /// Print one JSON object (for scripts) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Write every event of a store (or of one tenant or execution) to stdout as JSON
    /// lines, each with its execution, tenant, sequence and timestamp, between a header
    /// and an end line (docs/FORMAT.md, "Export format"). STORE is a directory or, in a
    /// build with --features postgres, a PostgreSQL URL. An unknown tenant or execution
    /// is said on stderr and exits 3.
    ///
    /// Example: execlog export /tmp/agents --tenant acme > acme.jsonl
    Export(export::Args),
    /// Read an export from stdin into a store (a directory, created if missing, or a
    /// PostgreSQL URL), keeping sequences, tenants and timestamps. Every line is checked;
    /// a bad line or an execution the store already holds stops the import with exit 1,
    /// naming the line; what was imported before it stays (said on stderr).
    ///
    /// Example: execlog import /tmp/agents-copy < acme.jsonl
    Import(import::Args),
    /// Copy a store into PostgreSQL (--to) or from PostgreSQL into a local store
    /// (--from), keeping sequences, tenants and timestamps; resumable (run it again after
    /// an interruption), and ends by comparing counts and a content hash per execution.
    /// Needs a build with --features postgres.
    ///
    /// Example: execlog migrate /tmp/agents --to postgres://execlog@127.0.0.1:5432/execlog
    Migrate(migrate::Args),
    /// Print events in commit order with their positions, as JSON lines (or a table
    /// with --pretty); with -f keep following new events until interrupted. Resume
    /// with --after the last position printed. Works while another process writes
    /// the store.
    ///
    /// Example: execlog tail /tmp/agents --tenant acme --from-start -f
    Tail(tail::Args),
    /// Read every record without modifying anything, check every CRC and that the
    /// index agrees with the log; exit 0 when clean, 1 when not.
    ///
    /// Example: execlog verify /tmp/agents
    Verify {
        /// The store directory.
        dir: PathBuf,
    },
    /// Delete an execution, or every execution of a tenant, durably: it is gone for
    /// readers and its id is never reused. Nothing to delete exits 3.
    ///
    /// Prints {"deleted_executions":N}. Deleting a fork's source keeps the fork whole.
    /// The event bytes stay in the segment files until they are erased (`execlog
    /// compact`, or the store's hourly background pass). Like `prune` and `compact`,
    /// it opens the store for writing: while another process has it open, it fails
    /// with "locked" (exit 1); delete through that process's `LogStore` instead.
    ///
    /// Example: execlog delete /tmp/agents --execution run-1
    Delete(lifecycle::DeleteArgs),
    /// Delete every execution whose last event is older than --older-than.
    ///
    /// Prints {"deleted_executions":N} (0 when none was old enough: exit 0). There is
    /// no dry run, and `--older-than 0s` deletes every execution. Needs the store
    /// for writing, like `delete`. For retention that runs by itself, use
    /// `Options::retention` in the program that writes the store.
    ///
    /// Example: execlog prune /tmp/agents --older-than 30d
    Prune(lifecycle::PruneArgs),
    /// Erase now the event bytes of deleted executions from every segment file and
    /// give their space back (otherwise done in the background, hourly by default).
    ///
    /// Prints what it did as JSON: segments_rewritten, records_erased, bytes_erased,
    /// bytes_written. Erased records are zeroed in place (positions never change), so
    /// space comes back only for whole 4 KiB pages that hold nothing live: when
    /// deleted and live executions were written interleaved, the files do not shrink.
    /// What stays: execution ids and tenant ids (ids are never reused), and the
    /// shared events of a deleted source that a live fork still reads. The active
    /// segment is first sealed, which starts a new segment file (zero-filled ahead,
    /// 4 MiB), so on a small store disk use grows. Needs the store for writing, like
    /// `delete`; backups taken before hold the deleted events until compacted too.
    ///
    /// Example: execlog compact /tmp/agents
    Compact(lifecycle::CompactArgs),
    /// Copy the store, as of its durable end now, into a new or empty directory,
    /// durably, while it keeps being written (also by another process). The copy
    /// opens as a store; the printed position is the last one it holds.
    ///
    /// The copy is the log as it is on disk: deletions are in it, but the events of
    /// deleted executions not yet erased are copied too (run `execlog compact` on the
    /// copy, or on the store before the backup, to erase them).
    ///
    /// Example: execlog backup /tmp/agents /backups/agents-2026-12-03
    Backup(backup::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Append(args) => append::run(&args),
        Command::Events {
            dir,
            execution,
            after,
            pretty,
            timeline,
        } => {
            let view = match (pretty, timeline) {
                (_, true) => inspect::View::Timeline,
                (true, false) => inspect::View::Pretty,
                (false, false) => inspect::View::Json,
            };
            inspect::events(&dir, &execution, after, view)
        }
        Command::List {
            dir,
            tenant,
            limit,
            offset,
        } => inspect::list(&dir, tenant.as_deref(), limit, offset),
        Command::Tenants { dir } => inspect::tenants(&dir),
        Command::Stats { dir, json } => inspect::stats(&dir, json),
        Command::Verify { dir } => inspect::verify(&dir),
        Command::Export(args) => export::run(&args),
        Command::Import(args) => import::run(&args),
        Command::Migrate(args) => migrate::run(&args),
        Command::Tail(args) => tail::run(&args),
        Command::Delete(args) => lifecycle::delete(&args),
        Command::Prune(args) => lifecycle::prune(&args),
        Command::Compact(args) => lifecycle::compact(&args),
        Command::Backup(args) => backup::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("execlog: {message}");
            ExitCode::FAILURE
        }
    }
}

/// What a command's DIR argument names, looked at before a store is opened.
#[derive(Debug, PartialEq, Eq)]
enum DirKind {
    /// Nothing at that path.
    Missing,
    /// A directory with nothing in it but possibly the lock file of a store whose
    /// creation stopped before its first segment.
    Empty,
    /// A directory that holds other files and no segment file.
    NotAStore,
    /// A directory with at least one segment file (`0000000001.seg`).
    Store,
}

/// Looks at `dir` without changing anything; a path that is not a directory is an
/// error that says so.
fn dir_kind(dir: &std::path::Path) -> Result<DirKind, String> {
    let shown = dir.display();
    let entries = match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DirKind::Missing),
        Err(e) => return Err(format!("cannot look at {shown}: {e}")),
        Ok(meta) if !meta.is_dir() => {
            return Err(format!(
                "{shown} is a file, not a store directory (a store is a directory of segment files)"
            ));
        }
        Ok(_) => std::fs::read_dir(dir).map_err(|e| format!("cannot list {shown}: {e}"))?,
    };
    let mut kind = DirKind::Empty;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {shown}: {e}"))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_segment = name
            .strip_suffix(".seg")
            .is_some_and(|digits| digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()));
        if is_segment {
            return Ok(DirKind::Store);
        }
        if name != "LOCK" {
            kind = DirKind::NotAStore;
        }
    }
    Ok(kind)
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} ({per_sec}, {eta})")
    {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar
}
