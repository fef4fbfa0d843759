//! `execlog import`: an export (docs/FORMAT.md, "Export format (JSON lines)"; written
//! by `export.rs`) read from stdin, line by line, into a store (the decisions:
//! docs/DESIGN.md, "Decisions where the issues were silent").
//!
//! It checks each line as it reads it and holds only the current execution's
//! unwritten events (one chunk at most: `--chunk-events`, and 8 MiB of lines). Its
//! invariants:
//! - Input whose first line is not an export's header opens and creates nothing.
//! - An execution is written once a well-formed line of another execution, or the end
//!   of a complete input, shows that its lines ended. One that fits in a chunk is
//!   written whole or not at all; a longer one chunk by chunk as its lines come (each
//!   chunk all-or-nothing), so an error in its later lines leaves its first chunks.
//! - Nothing is added to an execution the destination already holds: its first line
//!   is refused before anything of it is written.
//! - A chunk is durable (fdatasync, or a committed transaction) before anything after
//!   it is written; "imported" is said only after the end line's counts matched.
//! - The first error stops the import: what was written stays, and the one-line
//!   message names the line and says what stays.

use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use execlog::{ExecutionEventData, ExecutionId, StoredEvent, TenantId};
use serde::Deserialize;

use crate::export::VERSION;
use crate::location::{self, End};

/// An import's chunk also stays under this many bytes of lines.
const CHUNK_BYTES: usize = 8 << 20;
/// The longest line import reads: room for the JSON of the largest event a store
/// takes with default options (16 MiB of payload, escaped).
const MAX_LINE_BYTES: usize = 256 << 20;

// Arguments of `execlog import` (its help text is the variant doc in main.rs).
#[derive(clap::Args)]
pub struct Args {
    /// The store: a directory (created if missing), or a PostgreSQL URL.
    store: PathBuf,
    /// With a URL: the PostgreSQL schema for execlog's tables (default: execlog;
    /// created if missing).
    #[arg(long, value_name = "NAME")]
    schema: Option<String>,
    /// Most events per chunk (one atomic write, one fdatasync or transaction; a chunk
    /// also stays under 8 MiB of lines). A longer execution takes several.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    chunk_events: u32,
}

/// An event line as import reads it: the fields of [`StoredEvent`], no others.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    execution_id: ExecutionId,
    tenant_id: TenantId,
    sequence: u64,
    timestamp: DateTime<Utc>,
    event: ExecutionEventData,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    execlog_export: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndLine {
    execlog_export_end: Counts,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Counts {
    executions: u64,
    events: u64,
}

pub fn run(args: &Args) -> Result<ExitCode, String> {
    let location = match crate::export::parse_location(&args.store, args.schema.as_deref())? {
        Ok(location) => location,
        Err(code) => return Ok(code),
    };
    // Input that is not an export opens (and creates) nothing.
    let mut input = std::io::stdin().lock();
    let header = read_header(&mut input)?;
    let dest = location::open_destination(&location)?;
    let mut importer = Importer {
        dest: &*dest.store,
        chunk_events: args.chunk_events as usize,
        executions: 0,
        events: 0,
        current: None,
        seen: Counts {
            executions: 0,
            events: 0,
        },
        end_line: None,
    };
    let read = importer.read_all(&mut input, header);
    let closed = dest.store.close();
    let name = &dest.name;
    if let Err(why) = read {
        return Err(format!("{why}; {}", importer.what_stays(name)));
    }
    closed.map_err(|e| format!("closing {name}: {e} (every imported event was durable before)"))?;
    eprintln!(
        "execlog: imported {} executions, {} events into {name}",
        importer.executions, importer.events
    );
    Ok(ExitCode::SUCCESS)
}

/// Reads up to the header line (blank lines before it are skipped) and checks it;
/// returns its number.
fn read_header(input: &mut impl BufRead) -> Result<usize, String> {
    let (mut buf, mut n) = (Vec::new(), 0);
    while read_line(input, &mut buf, n + 1)? {
        n += 1;
        if !buf.iter().all(u8::is_ascii_whitespace) {
            check_header(&buf, n)?;
            return Ok(n);
        }
    }
    Err("the input is empty: not an execlog export".into())
}

/// An import in progress (module docs).
struct Importer<'a> {
    dest: &'a dyn End,
    chunk_events: usize,
    /// Executions written whole, and their events.
    executions: u64,
    events: u64,
    /// The execution whose lines are being read.
    current: Option<Current>,
    /// Executions begun and event lines read, for the end line.
    seen: Counts,
    /// The end line's number, once read.
    end_line: Option<usize>,
}

/// The execution whose lines are being read.
struct Current {
    id: ExecutionId,
    tenant: TenantId,
    first_line: usize,
    /// The last line's number, sequence and timestamp.
    line: usize,
    sequence: u64,
    timestamp: DateTime<Utc>,
    /// Events read and not yet written, the line of the first, and their lines' bytes.
    pending: Vec<StoredEvent>,
    pending_line: usize,
    pending_bytes: usize,
    /// The last sequence written (0: none yet).
    written: u64,
}

impl Current {
    /// Checks that `event`, on line `n`, continues this execution.
    fn check(&self, event: &Line, n: usize) -> Result<(), String> {
        let id = &self.id;
        if event.tenant_id != self.tenant {
            return Err(format!(
                "line {n}: execution {id} belongs to tenant {} here and to tenant {} at line \
                 {}; an execution has one tenant",
                event.tenant_id, self.tenant, self.first_line
            ));
        }
        if event.sequence != self.sequence + 1 {
            return Err(format!(
                "line {n}: execution {id} has sequence {} where {} was due (a gap, a repeat, or \
                 lines out of order)",
                event.sequence,
                self.sequence + 1
            ));
        }
        if event.timestamp < self.timestamp {
            return Err(format!(
                "line {n}: event {} of execution {id} is timed before the event at line {} \
                 (timestamps do not decrease within an execution)",
                event.sequence, self.line
            ));
        }
        Ok(())
    }

    /// Takes `event`, line `n` of `bytes` bytes, into the pending chunk.
    fn push(&mut self, event: Line, n: usize, bytes: usize) {
        if self.pending.is_empty() {
            self.pending_line = n;
        }
        (self.line, self.sequence, self.timestamp) = (n, event.sequence, event.timestamp);
        self.pending_bytes += bytes;
        self.pending.push(StoredEvent {
            sequence: event.sequence,
            execution_id: event.execution_id,
            tenant_id: event.tenant_id,
            event: event.event,
            timestamp: event.timestamp,
        });
    }
}

impl Importer<'_> {
    /// Reads and imports `input`, whose line `header` was the header, to its end or
    /// to its first error.
    fn read_all(&mut self, input: &mut impl BufRead, header: usize) -> Result<(), String> {
        let (mut buf, mut n) = (Vec::new(), header);
        while read_line(input, &mut buf, n + 1)? {
            n += 1;
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if let Some(end) = self.end_line {
                return Err(format!(
                    "line {n}: more after the end line (line {end}); one input holds one export"
                ));
            }
            self.line(&buf, n)?;
        }
        if self.end_line.is_none() {
            return Err(format!(
                "the input ends at line {n} without the export's end line: it was cut short"
            ));
        }
        self.finish()
    }

    /// One line after the header.
    fn line(&mut self, line: &[u8], n: usize) -> Result<(), String> {
        let event: Line = match serde_json::from_slice(line) {
            Ok(event) => event,
            Err(why) => return self.not_an_event(line, n, &why),
        };
        if self
            .current
            .as_ref()
            .is_none_or(|c| c.id != event.execution_id)
        {
            // A well-formed line of another execution: the current one is whole.
            self.finish()?;
            self.current = Some(self.begin(&event, n)?);
        }
        let Some(c) = self.current.as_mut() else {
            return Err(format!("line {n}: internal error: no current execution"));
        };
        c.check(&event, n)?;
        c.push(event, n, line.len());
        self.seen.events += 1;
        if c.pending.len() >= self.chunk_events || c.pending_bytes >= CHUNK_BYTES {
            self.write()?;
        }
        Ok(())
    }

    /// The execution whose first line, `n`, is `event`'s, unless the destination
    /// already holds it.
    fn begin(&mut self, event: &Line, n: usize) -> Result<Current, String> {
        let id = &event.execution_id;
        let there = self.dest.latest(id).map_err(|e| format!("line {n}: {e}"))?;
        if let Some(last) = there {
            return Err(format!(
                "line {n}: execution {id} is already in the destination ({last} events); \
                 import never adds to an existing execution, and imported nothing of it"
            ));
        }
        self.seen.executions += 1;
        Ok(Current {
            id: id.clone(),
            tenant: event.tenant_id.clone(),
            first_line: n,
            line: n,
            sequence: 0,
            timestamp: event.timestamp,
            pending: Vec::new(),
            pending_line: n,
            pending_bytes: 0,
            written: 0,
        })
    }

    /// A line that is not a well-formed event line: the end line, or an error.
    fn not_an_event(
        &mut self,
        line: &[u8],
        n: usize,
        why: &serde_json::Error,
    ) -> Result<(), String> {
        if let Ok(end) = serde_json::from_slice::<EndLine>(line) {
            let (want, seen) = (end.execlog_export_end, &self.seen);
            if (want.executions, want.events) != (seen.executions, seen.events) {
                return Err(format!(
                    "line {n}: the end line counts {} executions and {} events, the lines before \
                     it hold {} and {}: lines were lost or added",
                    want.executions, want.events, seen.executions, seen.events
                ));
            }
            self.end_line = Some(n);
            return Ok(());
        }
        if serde_json::from_slice::<Header>(line).is_ok() {
            return Err(format!(
                "line {n}: a second header line; one input holds one export"
            ));
        }
        Err(json_error(n, why))
    }

    /// Writes the current execution's pending events as one chunk.
    fn write(&mut self) -> Result<(), String> {
        let Some(c) = self.current.as_mut() else {
            return Ok(());
        };
        let Some(first) = c.pending.first().map(|e| e.sequence) else {
            return Ok(());
        };
        let events = std::mem::take(&mut c.pending);
        c.written = self.dest.import(events).map_err(|e| {
            format!(
                "lines {}..={} (execution {}, sequences {first}..={}): {e}",
                c.pending_line, c.line, c.id, c.sequence
            )
        })?;
        c.pending_bytes = 0;
        Ok(())
    }

    /// Writes what is left of the current execution, which is whole.
    fn finish(&mut self) -> Result<(), String> {
        self.write()?;
        if let Some(c) = self.current.take() {
            self.executions += 1;
            self.events += c.written;
        }
        Ok(())
    }

    /// What an import that stopped leaves in the destination `name`, for its message.
    fn what_stays(&self, name: &str) -> String {
        let partial = self.current.as_ref().filter(|c| c.written > 0);
        if self.executions == 0 && partial.is_none() {
            return format!("nothing was imported into {name}");
        }
        let mut said = format!(
            "kept in {name}: {} whole {} ({} events)",
            self.executions,
            if self.executions == 1 {
                "execution"
            } else {
                "executions"
            },
            self.events
        );
        match &self.current {
            Some(c) if c.written > 0 => said.push_str(&format!(
                ", and events 1..={} of execution {} (from line {}); its later events were \
                 not imported",
                c.written, c.id, c.first_line
            )),
            Some(c) => said.push_str(&format!(
                "; execution {} (from line {}) was not imported",
                c.id, c.first_line
            )),
            None => {}
        }
        said
    }
}

/// Checks the first line.
fn check_header(line: &[u8], n: usize) -> Result<(), String> {
    match serde_json::from_slice::<Header>(line) {
        Ok(Header {
            execlog_export: VERSION,
        }) => Ok(()),
        Ok(Header { execlog_export }) => Err(format!(
            "line {n}: export format version {execlog_export}; this execlog reads version \
             {VERSION}"
        )),
        Err(_) => Err(format!(
            "line {n}: not an execlog export: its first line must be {{\"execlog_export\":\
             {VERSION}}} (docs/FORMAT.md, \"Export format (JSON lines)\")"
        )),
    }
}

/// A JSON error, with the column of the line it is on (serde's own line number
/// counts within the line, so it is left out).
fn json_error(n: usize, why: &serde_json::Error) -> String {
    let text = why.to_string();
    let what = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(what, _)| what);
    format!("line {n}, column {}: {what}", why.column())
}

/// Reads line `n` into `buf`, without its newline; `false` at the end of the input.
fn read_line(input: &mut impl BufRead, buf: &mut Vec<u8>, n: usize) -> Result<bool, String> {
    buf.clear();
    let limit = MAX_LINE_BYTES as u64 + 1;
    let read = input
        .by_ref()
        .take(limit)
        .read_until(b'\n', buf)
        .map_err(|e| format!("cannot read stdin at line {n}: {e}"))?;
    if read == 0 {
        return Ok(false);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > MAX_LINE_BYTES {
        return Err(format!(
            "line {n} is longer than {} MiB: not a line of an export",
            MAX_LINE_BYTES >> 20
        ));
    }
    Ok(true)
}
