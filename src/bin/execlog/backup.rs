//! `execlog backup DIR DEST`: an online backup of a store, also while another process
//! writes it (`LogStore::backup_to` through a lock-free reader, which copies what the
//! writer has made durable).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args as ClapArgs;
use execlog::LogStore;

/// `execlog backup`.
#[derive(ClapArgs)]
pub struct Args {
    /// The store directory.
    dir: PathBuf,
    /// Where the copy goes: a new or empty directory.
    dest: PathBuf,
}

pub fn run(args: &Args) -> Result<ExitCode, String> {
    if crate::dir_kind(&args.dir)? != crate::DirKind::Store {
        return Err(format!("{} holds no store", args.dir.display()));
    }
    let store = LogStore::open_reader(&args.dir).map_err(|e| e.to_string())?;
    let report = store.backup_to(&args.dest).map_err(|e| e.to_string())?;
    out!(
        "{}",
        serde_json::json!({
            "position": report.position,
            "segments": report.segments,
            "bytes": report.bytes,
            "path": report.path,
        })
    );
    Ok(ExitCode::SUCCESS)
}
