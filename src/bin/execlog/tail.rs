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
    wait_for_store(args)?;
    let store = LogStore::open_reader(&args.dir).map_err(|e| e.to_string())?;
    let filter = match (&args.tenant, &args.execution) {
        (Some(t), _) => SubscriptionFilter::Tenant(TenantId::from(t.as_str())),
        (None, Some(e)) => SubscriptionFilter::Execution(ExecutionId::from(e.as_str())),
        (None, None) => SubscriptionFilter::All,
    };
    if let Some(code) = say_what_is_missing(&store, args)? {
        return Ok(code);
    }
    let start = match (args.from_start, args.after) {
        (true, _) => StartFrom::Beginning,
        (false, Some(p)) => StartFrom::After(p),
        (false, None) => StartFrom::End,
    };
    let mut sub = store.subscribe(filter, start).map_err(|e| e.to_string())?;
    if args.pretty {
        out!(
            "{:>20}  {:<26}  {:<16}  {:<36}  {:>6}  {:<20}  summary",
            "position",
            "time (UTC)",
            "tenant",
            "execution",
            "seq",
            "type"
        );
    }
    let mut printed = false;
    loop {
        let next = if args.follow {
            sub.next_timeout(WAIT)
        } else {
            sub.try_next()
        };
        match next.map_err(|e| e.to_string())? {
            Some(d) => {
                print(&d, args.pretty)?;
                printed = true;
            }
            // Idle: a reader that went away (`| head`) ends the command now, not at
            // the next event.
            None if args.follow && stdout_closed() => return Ok(ExitCode::SUCCESS),
            None if args.follow => {}
            None => {
                if !printed && !args.from_start && args.after.is_none() {
                    eprintln!(
                        "execlog: nothing new: tail starts at the end of the store; use \
                         --from-start for its history, or -f to follow new events"
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

/// With `-f`, waits for a store to appear at DIR (the follower may start before the
/// writer); without, a missing or empty DIR is an error.
fn wait_for_store(args: &Args) -> Result<(), String> {
    let mut said = false;
    loop {
        match crate::dir_kind(&args.dir)? {
            // A store being created: its writer publishes its end once it is open.
            crate::DirKind::Store if !said || args.dir.join("published.end").exists() => {
                return Ok(());
            }
            crate::DirKind::Missing | crate::DirKind::Empty | crate::DirKind::Store
                if args.follow =>
            {
                if !said {
                    eprintln!(
                        "execlog: waiting for a store to appear in {}",
                        args.dir.display()
                    );
                    said = true;
                }
                if stdout_closed() {
                    return Err("stdout closed while waiting".into());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            _ => return Ok(()), // open_reader says what is wrong
        }
    }
}

/// Says on stderr when the filter or the start position matches nothing yet. Without
/// `-f` an unknown execution or tenant exits 3, as `events` and `list` do; with `-f`
/// the command waits for it.
fn say_what_is_missing(store: &LogStore, args: &Args) -> Result<Option<ExitCode>, String> {
    let dir = args.dir.display();
    let missing = if let Some(e) = &args.execution {
        let known = store
            .get_latest_sequence_blocking(&ExecutionId::from(e.as_str()))
            .map_err(|e| e.to_string())?;
        known
            .is_none()
            .then(|| format!("no execution {e} in {dir}"))
    } else if let Some(t) = &args.tenant {
        let listed = store
            .list_executions_blocking(&TenantId::from(t.as_str()), 1, 0)
            .map_err(|e| e.to_string())?;
        listed.is_empty().then(|| format!("no tenant {t} in {dir}"))
    } else {
        None
    };
    if let Some(missing) = missing {
        if !args.follow {
            eprintln!("execlog: {missing}");
            return Ok(Some(ExitCode::from(crate::inspect::NOT_FOUND)));
        }
        eprintln!("execlog: {missing} yet; following until it appears");
    }
    let end = store.end_position().map_err(|e| e.to_string())?;
    if let Some(after) = args.after.filter(|&p| p > end) {
        eprintln!(
            "execlog: position {after} is beyond the end of the store ({end}); \
             only events stored past it will be printed"
        );
    }
    Ok(None)
}

/// Whether the reader of stdout went away (a pipe whose read end is closed polls as
/// an error); a terminal or a file never is.
fn stdout_closed() -> bool {
    use rustix::event::{PollFd, PollFlags, poll};
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    poll(&mut fds, Some(&zero))
        .is_ok_and(|_| fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP))
}

fn print(d: &Delivered, pretty: bool) -> Result<(), String> {
    let e = &d.event;
    if pretty {
        let (kind, summary) = crate::inspect::describe(&e.event);
        out!(
            "{:>20}  {:<26}  {:<16}  {:<36}  {:>6}  {kind:<20}  {summary}",
            d.position,
            e.timestamp.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
            e.tenant_id.as_str(),
            e.execution_id.as_str(),
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
