//! `execlog tail`: prints a store's events in commit order with their positions, and
//! with `-f` keeps following the store while another process writes it.
//!
//! It opens the store with `LogStore::open_reader`: no lock, nothing written, only
//! what the writer has made durable. A consumer that stopped can resume with
//! `--after` the last position it printed, and sees every later event exactly once.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use execlog::{Delivered, ExecutionId, Follow, LogStore, StartFrom, SubscriptionFilter, TenantId};

/// `execlog tail` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store directory.
    dir: PathBuf,
    /// Only the executions of this tenant.
    #[arg(long, conflicts_with = "execution")]
    tenant: Option<String>,
    /// Only this execution.
    #[arg(long)]
    execution: Option<String>,
    /// Start with the first event of the store (default: only events that come after
    /// the start, which needs -f to show anything).
    #[arg(long, conflicts_with = "after")]
    from_start: bool,
    /// Start after this position (the last one a previous run printed).
    #[arg(long, value_name = "POS")]
    after: Option<u64>,
    /// Keep following new events until interrupted (Ctrl-C).
    #[arg(short = 'f', long)]
    follow: bool,
    /// A readable table instead of JSON lines.
    #[arg(long)]
    pretty: bool,
}

/// How long one wait for a new event lasts before it looks again (a closed stdout is
/// noticed at the next write).
const WAIT: Duration = Duration::from_millis(500);

pub fn run(args: &Args) -> Result<ExitCode, String> {
    crate::dir_kind(&args.dir)?;
    let store = LogStore::open_reader(&args.dir).map_err(|e| e.to_string())?;
    let filter = match (&args.tenant, &args.execution) {
        (Some(t), _) => SubscriptionFilter::Tenant(TenantId::from(t.as_str())),
        (None, Some(e)) => SubscriptionFilter::Execution(ExecutionId::from(e.as_str())),
        (None, None) => SubscriptionFilter::All,
    };
    let start = match (args.from_start, args.after) {
        (true, _) => StartFrom::Beginning,
        (false, Some(p)) => StartFrom::After(p),
        (false, None) => StartFrom::End,
    };
    let mut sub = store.subscribe(filter, start).map_err(|e| e.to_string())?;
    if args.pretty {
        out!(
            "{:>20}  {:<26}  {:<36}  {:>6}  {:<20}  summary",
            "position",
            "time (UTC)",
            "execution",
            "seq",
            "type"
        );
    }
    loop {
        let next = if args.follow {
            sub.next_timeout(WAIT)
        } else {
            sub.try_next()
        };
        match next.map_err(|e| e.to_string())? {
            Some(d) => print(&d, args.pretty)?,
            None if args.follow => {}
            None => return Ok(ExitCode::SUCCESS),
        }
    }
}

fn print(d: &Delivered, pretty: bool) -> Result<(), String> {
    let e = &d.event;
    if pretty {
        let (kind, summary) = crate::inspect::describe(&e.event);
        out!(
            "{:>20}  {:<26}  {:<36}  {:>6}  {kind:<20}  {summary}",
            d.position,
            e.timestamp.format("%Y-%m-%d %H:%M:%S%.6f"),
            e.execution_id,
            e.sequence
        );
        return Ok(());
    }
    let mut value = serde_json::to_value(e).map_err(|e| format!("cannot print event: {e}"))?;
    if let serde_json::Value::Object(fields) = &mut value {
        fields.insert("position".into(), d.position.into());
    }
    out!("{value}");
    Ok(())
}
