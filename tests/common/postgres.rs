//! The PostgreSQL server the tests use: `EXECLOG_PG_URL`, set by
//! `scripts/postgres.sh run -- …`. Without it, a CI run fails loudly and a local run
//! says on the terminal that the test was skipped and how to run it.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// How to run the PostgreSQL tests, for skip messages.
pub const HOW: &str = "scripts/postgres.sh run -- cargo test --features postgres --test conformance_pg --test postgres_server --test adversary_pg --test cli_migrate";

/// The server's URL, or `None` (after saying so) when there is none and this is not CI.
pub fn url(test: &str) -> Option<String> {
    match std::env::var("EXECLOG_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("EXECLOG_PG_URL is not set in CI: {test} needs a PostgreSQL server ({HOW})")
        }
        _ => {
            // Straight to the terminal: libtest captures `eprintln!`.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: no PostgreSQL server (EXECLOG_PG_URL unset); run: {HOW}"
            );
            None
        }
    }
}

/// A schema name no other test (in this or another process) uses.
pub fn fresh_schema() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000_000);
    format!(
        "t_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// Runs SQL with psql (Debian's postgresql-client) and returns its unaligned output;
/// panics with psql's message if the statement fails.
pub fn psql(url: &str, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([
            url,
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .expect("psql runs (Debian package postgresql-client)");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("psql prints UTF-8")
}
