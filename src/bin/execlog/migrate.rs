//! `execlog migrate`: copies a store from a local directory into PostgreSQL
//! (`--to URL`) or back (`--from URL`), keeping every execution's sequences, tenant and
//! timestamps (feature `postgres`; docs/POSTGRES.md, "Migrating").
//!
//! 1. List the source's executions, oldest first by creation.
//! 2. For each, in that order: ask the destination for its latest sequence, read the
//!    source's events after it, and import them in chunks (`import_blocking`: their own
//!    sequences and times, all or nothing, only as the execution's next sequence).
//!    Creation order is thereby kept, and with it `list`'s order. An interrupted run
//!    leaves the destination at a chunk boundary, and the next run continues there: it
//!    never duplicates nor skips an event.
//! 3. Verify, per listed execution: the number of events and a content hash of them,
//!    on the source up to the sequence listed in step 1 (appends made meanwhile are
//!    left for the next run), on the destination all of them. Every difference is a
//!    JSON line on stdout and the exit code is 1.

use std::path::PathBuf;
#[cfg(not(feature = "postgres"))]
use std::process::ExitCode;

// Arguments of `execlog migrate` (its help text is the variant doc in main.rs).
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("direction").required(true).args(["to", "from"])))]
pub struct Args {
    /// The local store directory: the source with --to, the destination with --from
    /// (created if missing).
    dir: PathBuf,
    /// Copy DIR into the PostgreSQL database at this URL (postgres://user@host:port/db).
    #[arg(long, value_name = "URL")]
    to: Option<String>,
    /// Copy the PostgreSQL database at this URL into DIR.
    #[arg(long, value_name = "URL")]
    from: Option<String>,
    /// The PostgreSQL schema holding execlog's tables (default: the server's
    /// search_path); created by --to if missing.
    #[arg(long, value_name = "NAME")]
    schema: Option<String>,
    /// Most events per chunk: one transaction in PostgreSQL, one atomic batch in a
    /// local store (a chunk also stays under about 8 MiB of event JSON).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    chunk_events: u32,
}

#[cfg(not(feature = "postgres"))]
pub fn run(_args: &Args) -> Result<ExitCode, String> {
    Ok(crate::location::without_postgres("`execlog migrate`"))
}

#[cfg(feature = "postgres")]
pub use with_postgres::run;

#[cfg(feature = "postgres")]
mod with_postgres {
    use std::process::ExitCode;

    use execlog::{Error, ExecutionId, StoredEvent};

    use super::Args;
    use crate::location::{self, End, Location, Share};

    /// Chunks stay under this many bytes of event JSON, an estimate of their encoded
    /// size (which is about the same or smaller), far below `max_batch_bytes`.
    const CHUNK_JSON_BYTES: usize = 8 << 20;
    /// Events read at a time while verifying.
    const VERIFY_PAGE: u64 = 1024;

    pub fn run(args: &Args) -> Result<ExitCode, String> {
        let local = Location::Dir(args.dir.clone());
        let (source, dest) = match (&args.to, &args.from) {
            (Some(url), None) => {
                let server = Location::Postgres {
                    url: url.clone(),
                    schema: args.schema.clone(),
                };
                let source = location::open_source(&local, Share::Exclusive)?;
                (source, location::open_destination(&server)?)
            }
            (None, Some(url)) => {
                let server = Location::Postgres {
                    url: url.clone(),
                    schema: args.schema.clone(),
                };
                // Before connecting: a directory of other files is not taken over.
                location::check_destination(&args.dir)?;
                let source = location::open_source(&server, Share::Exclusive)?;
                (source, location::open_destination(&local)?)
            }
            // clap's group: exactly one of the two.
            _ => return Err("give exactly one of --to URL and --from URL".into()),
        };
        let names = (source.name, dest.name);
        let code = migrate(&*source.store, &*dest.store, &names, args.chunk_events)?;
        dest.store
            .close()
            .map_err(|e| format!("closing {}: {e}", names.1))?;
        Ok(code)
    }

    /// Steps 2 and 3 of the module docs; `names` are (source, destination).
    fn migrate(
        source: &dyn End,
        dest: &dyn End,
        names: &(String, String),
        chunk_events: u32,
    ) -> Result<ExitCode, String> {
        let (from, to) = names;
        let executions = source
            .executions()
            .map_err(|e| format!("cannot list the executions of {from}: {e}"))?;
        let total: u64 = executions.iter().map(|(_, last)| last).sum();
        let bar = crate::progress(total, "copying events");
        let mut copied = 0;
        for (id, last) in &executions {
            let n = copy(source, dest, (id, *last), chunk_events, &bar).map_err(|e| {
                // A refusal (another tenant, a destination that is further along) would
                // be refused again; anything else may pass on the next run.
                let hint = match e {
                    Error::InvalidArgument(_) | Error::TenantMismatch { .. } => {
                        "; nothing more was copied"
                    }
                    _ => "; run the same command again to continue where it stopped",
                };
                format!("copying execution {id} from {from} to {to}: {e}{hint}")
            })?;
            copied += n;
        }
        bar.finish_and_clear();

        let bar = crate::progress(executions.len() as u64, "verifying executions");
        let mut differ = 0;
        for (id, last) in &executions {
            let want = digest(source, id, Some(*last))
                .map_err(|e| format!("verifying execution {id} in {from}: {e}"))?;
            let got = digest(dest, id, None)
                .map_err(|e| format!("verifying execution {id} in {to}: {e}"))?;
            if want != got {
                differ += 1;
                out!(
                    "{}",
                    serde_json::json!({ "mismatch": {
                        "execution_id": id,
                        "source": { "events": want.events, "hash": want.hex() },
                        "destination": { "events": got.events, "hash": got.hex() },
                    }})
                );
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        out!(
            "{}",
            serde_json::json!({
                "executions": executions.len(),
                "events": total,
                "copied": copied,
                "already_present": total.saturating_sub(copied),
                "mismatches": differ,
            })
        );
        if differ > 0 {
            eprintln!(
                "execlog: verification FAILED: {differ} of {} executions differ between {from} \
                 and {to} (listed on stdout); the destination holds other events than the \
                 source, so running again will not fix it",
                executions.len()
            );
            return Ok(ExitCode::FAILURE);
        }
        eprintln!(
            "execlog: migrated {} executions, {total} events, from {from} to {to}: {copied} \
             copied, {} already there; counts and content hashes match",
            executions.len(),
            total.saturating_sub(copied)
        );
        Ok(ExitCode::SUCCESS)
    }

    /// Copies the events of `id` up to `last` that the destination lacks; returns how
    /// many. A destination that is already further is left alone (verification
    /// reports it).
    fn copy(
        source: &dyn End,
        dest: &dyn End,
        (id, last): (&ExecutionId, u64),
        chunk_events: u32,
        bar: &indicatif::ProgressBar,
    ) -> Result<u64, Error> {
        let mut done = dest.latest(id)?.unwrap_or(0);
        bar.inc(done.min(last));
        let mut copied = 0;
        while done < last {
            let page = source.read(id, done, u64::from(chunk_events).min(last - done))?;
            if page.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "the source ends at sequence {done}, before the {last} it listed"
                )));
            }
            for chunk in split(page) {
                let n = chunk.len() as u64;
                done = dest.import(chunk)?;
                copied += n;
                bar.inc(n);
            }
        }
        Ok(copied)
    }

    /// `page` cut where its event JSON passes [`CHUNK_JSON_BYTES`] (at least one event
    /// per chunk).
    fn split(page: Vec<StoredEvent>) -> Vec<Vec<StoredEvent>> {
        let mut chunks = Vec::new();
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for event in page {
            let len = serde_json::to_vec(&event.event).map_or(0, |j| j.len());
            if !chunk.is_empty() && bytes + len > CHUNK_JSON_BYTES {
                chunks.push(std::mem::take(&mut chunk));
                bytes = 0;
            }
            bytes += len;
            chunk.push(event);
        }
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
        chunks
    }

    /// An execution's event count and content hash.
    #[derive(PartialEq, Eq)]
    struct Digest {
        events: u64,
        hash: u64,
    }

    impl Digest {
        fn hex(&self) -> String {
            format!("{:016x}", self.hash)
        }
    }

    /// FNV-1a, 64 bits: a content hash for comparing two copies, not a defence against
    /// forgery (no cryptographic hash is among our dependencies, and none is needed to
    /// catch a copy that went wrong).
    struct Fnv(u64);

    impl Fnv {
        fn write(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }

        /// A length prefix, so that field boundaries are part of what is hashed.
        fn write_field(&mut self, bytes: &[u8]) {
            self.write(&(bytes.len() as u64).to_le_bytes());
            self.write(bytes);
        }
    }

    /// Count and hash of the events of `id` (up to `last` if given), each hashed as
    /// sequence (u64 LE), time in ns (i64 LE), tenant and the event's JSON (each with
    /// its length, u64 LE, in front). The execution id is what both sides are asked
    /// for, so it is not hashed.
    fn digest(end: &dyn End, id: &ExecutionId, last: Option<u64>) -> Result<Digest, Error> {
        let mut fnv = Fnv(0xcbf2_9ce4_8422_2325);
        let (mut events, mut after) = (0, 0);
        loop {
            let limit = last.map_or(VERIFY_PAGE, |l| l.saturating_sub(after).min(VERIFY_PAGE));
            if limit == 0 {
                break;
            }
            let page = end.read(id, after, limit)?;
            let Some(newest) = page.last().map(|e| e.sequence) else {
                break;
            };
            for e in &page {
                let json = serde_json::to_vec(&e.event)
                    .map_err(|why| Error::InvalidArgument(format!("cannot print event: {why}")))?;
                fnv.write(&e.sequence.to_le_bytes());
                let ns = e.timestamp.timestamp_nanos_opt().unwrap_or(i64::MIN);
                fnv.write(&ns.to_le_bytes());
                fnv.write_field(e.tenant_id.as_str().as_bytes());
                fnv.write_field(&json);
            }
            events += page.len() as u64;
            after = newest;
        }
        Ok(Digest {
            events,
            hash: fnv.0,
        })
    }
}
