//! `execlog delete`, `execlog prune` and `execlog compact`: the lifecycle of
//! executions from the command line (`Lifecycle`, `LogStore::compact_now`, docs/DESIGN.md
//! "The lifecycle of executions").
//!
//! Both open an existing store for writing (never create one) and print one JSON line
//! saying what they deleted once the deletion is durable. Deleting what the store does
//! not hold is said on stderr and exits 3, like `events` and `list`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args as ClapArgs;
use execlog::{ExecutionId, LogStore, TenantId};

/// `execlog delete`.
#[derive(ClapArgs)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["execution", "tenant"])))]
pub struct DeleteArgs {
    /// The store directory.
    dir: PathBuf,
    /// Delete this execution.
    #[arg(long)]
    execution: Option<String>,
    /// Delete every execution of this tenant.
    #[arg(long)]
    tenant: Option<String>,
}

/// `execlog prune`.
#[derive(ClapArgs)]
pub struct PruneArgs {
    /// The store directory.
    dir: PathBuf,
    /// Delete executions whose last event is older than this: a number and a unit,
    /// one of ms, s, m, h, d, w (e.g. 30d, 12h).
    #[arg(long, value_parser = parse_age)]
    older_than: Duration,
}

/// `execlog compact`.
#[derive(ClapArgs)]
pub struct CompactArgs {
    /// The store directory.
    dir: PathBuf,
}

/// Opens an existing store for writing; refuses to create one.
fn open(dir: &Path) -> Result<LogStore, String> {
    if crate::dir_kind(dir)? != crate::DirKind::Store {
        return Err(format!("{} holds no store", dir.display()));
    }
    LogStore::open(dir).map_err(|e| e.to_string())
}

pub fn delete(args: &DeleteArgs) -> Result<ExitCode, String> {
    let store = open(&args.dir)?;
    let (what, deleted) = match (&args.execution, &args.tenant) {
        (Some(id), _) => {
            let deleted = store.delete_execution_blocking(&ExecutionId::from(id.as_str()));
            (
                format!("execution {id}"),
                u64::from(deleted.map_err(|e| e.to_string())?),
            )
        }
        (None, Some(tenant)) => {
            let deleted = store.delete_tenant_blocking(&TenantId::from(tenant.as_str()));
            (
                format!("tenant {tenant}"),
                deleted.map_err(|e| e.to_string())?,
            )
        }
        (None, None) => return Err("say --execution ID or --tenant T".into()),
    };
    store.close().map_err(|e| e.to_string())?;
    if deleted == 0 {
        eprintln!("execlog: the store holds no {what} to delete (unknown, or deleted already)");
        return Ok(ExitCode::from(3));
    }
    out!("{}", serde_json::json!({ "deleted_executions": deleted }));
    Ok(ExitCode::SUCCESS)
}

pub fn prune(args: &PruneArgs) -> Result<ExitCode, String> {
    let store = open(&args.dir)?;
    let deleted = store
        .prune_blocking(args.older_than)
        .map_err(|e| e.to_string())?;
    store.close().map_err(|e| e.to_string())?;
    out!("{}", serde_json::json!({ "deleted_executions": deleted }));
    Ok(ExitCode::SUCCESS)
}

pub fn compact(args: &CompactArgs) -> Result<ExitCode, String> {
    let store = open(&args.dir)?;
    let report = store.compact_now().map_err(|e| e.to_string())?;
    store.close().map_err(|e| e.to_string())?;
    out!(
        "{}",
        serde_json::json!({
            "segments_rewritten": report.segments_rewritten,
            "records_erased": report.records_erased,
            "bytes_erased": report.bytes_erased,
            "bytes_written": report.bytes_written,
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// Parses an age such as `30d`, `12h`, `90s` or `500ms`.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit: say e.g. 30d, 12h, 15m, 90s or 500ms"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    if unit.starts_with('.') {
        return Err(format!(
            "{text:?}: ages are whole numbers of a unit (say 90m, not 1.5h)"
        ));
    }
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}: use ms, s, m, h, d or w"
            ));
        }
    };
    n.checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_in_every_unit() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("90s", Duration::from_secs(90)),
            ("15m", Duration::from_secs(900)),
            ("12h", Duration::from_secs(43_200)),
            ("30d", Duration::from_secs(2_592_000)),
            ("2w", Duration::from_secs(1_209_600)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_age(text), Ok(want), "{text}");
        }
        for bad in ["", "30", "d", "30x", "-1d", "1.5h", "99999999999999999999d"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }
}
