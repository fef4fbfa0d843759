//! Where a command's store is, and opening it there: a local directory, or (feature
//! `postgres`) a PostgreSQL database named by a `postgres://` or `postgresql://` URL.
//! `migrate`, `export` and `import` open their sources and destinations here and use
//! either kind through [`End`]: the blocking calls both stores offer under the same
//! names, plus the migration path (`import_blocking`, `all_executions_blocking`).
//!
//! Invariants: opening a source creates and changes nothing (a directory is opened
//! read-only or as a reader; a PostgreSQL source is connected to with schema
//! migration off, so a database without execlog's tables is refused, not set up); a
//! destination directory that holds other files and no store is refused before
//! anything is written, and a missing or empty one becomes a store. A URL is never
//! printed (it may hold a password): messages name the server as `host:port/db`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use execlog::{Error, ExecutionId, LogStore, StoredEvent, TenantId};

/// A store's place, as a command's argument names it.
pub enum Location {
    /// A store directory.
    Dir(PathBuf),
    /// A PostgreSQL database, and the schema holding execlog's tables (`None`: the
    /// backend's default).
    #[cfg_attr(
        not(feature = "postgres"),
        expect(dead_code, reason = "only a build with PostgreSQL support connects")
    )]
    Postgres { url: String, schema: Option<String> },
}

impl Location {
    /// `arg` is a URL if it starts with `postgres://` or `postgresql://` (a directory
    /// of such a name is written `./postgres:…`), else a directory. `--schema` goes
    /// with a URL only.
    pub fn from_arg(arg: &Path, schema: Option<&str>) -> Result<Location, String> {
        let url = arg
            .to_str()
            .filter(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"));
        match (url, schema) {
            (Some(url), schema) => Ok(Location::Postgres {
                url: url.to_string(),
                schema: schema.map(str::to_string),
            }),
            (None, None) => Ok(Location::Dir(arg.to_path_buf())),
            (None, Some(_)) => Err(format!(
                "--schema goes with a PostgreSQL URL; {} is a directory",
                arg.display()
            )),
        }
    }

    /// Whether this build can open it: a URL needs the `postgres` feature.
    pub fn supported(&self) -> bool {
        matches!(self, Location::Dir(_)) || cfg!(feature = "postgres")
    }
}

/// Says on stderr that this build has no PostgreSQL support and how to get it, for
/// `command`; the exit code of a usage error.
pub fn without_postgres(command: &str) -> ExitCode {
    eprintln!(
        "execlog: this execlog was built without PostgreSQL support; rebuild it with \
         `cargo build --features postgres` to use {command}"
    );
    ExitCode::from(2)
}

/// What both kinds of store offer the commands that copy events.
pub trait End {
    /// Every execution with its latest sequence, oldest first by creation.
    fn executions(&self) -> Result<Vec<(ExecutionId, u64)>, Error>;
    /// A tenant's executions, oldest first by creation.
    fn tenant_executions(&self, tenant: &TenantId) -> Result<Vec<ExecutionId>, Error>;
    /// An execution's latest sequence; `None` if it has no events.
    fn latest(&self, id: &ExecutionId) -> Result<Option<u64>, Error>;
    /// At most `limit` events of `id` after sequence `after`, in order.
    fn read(&self, id: &ExecutionId, after: u64, limit: u64) -> Result<Vec<StoredEvent>, Error>;
    /// Stores consecutive events of one execution with their own sequences and
    /// timestamps, all or nothing, durably; returns the last sequence.
    fn import(&self, events: Vec<StoredEvent>) -> Result<u64, Error>;
    /// Closes the store, reporting what failed at close.
    fn close(&self) -> Result<(), Error>;
}

/// Both stores offer the same blocking calls under the same names.
macro_rules! end {
    ($store:ty) => {
        impl End for $store {
            fn executions(&self) -> Result<Vec<(ExecutionId, u64)>, Error> {
                self.all_executions_blocking()
            }
            fn tenant_executions(&self, tenant: &TenantId) -> Result<Vec<ExecutionId>, Error> {
                let mut newest_first = self.list_executions_blocking(tenant, usize::MAX, 0)?;
                newest_first.reverse();
                Ok(newest_first)
            }
            fn latest(&self, id: &ExecutionId) -> Result<Option<u64>, Error> {
                self.get_latest_sequence_blocking(id)
            }
            fn read(
                &self,
                id: &ExecutionId,
                after: u64,
                limit: u64,
            ) -> Result<Vec<StoredEvent>, Error> {
                let limit = usize::try_from(limit).unwrap_or(usize::MAX);
                self.read_range_blocking(id, after, limit)
            }
            fn import(&self, events: Vec<StoredEvent>) -> Result<u64, Error> {
                self.import_blocking(events)
            }
            fn close(&self) -> Result<(), Error> {
                <$store>::close(self)
            }
        }
    };
}

end!(LogStore);
#[cfg(feature = "postgres")]
end!(execlog::postgres::PgStore);

/// An open store and how messages name it.
pub struct Opened {
    pub store: Box<dyn End>,
    pub name: String,
}

/// How a source directory is opened.
pub enum Share {
    /// `LogStore::open_read_only`: takes the directory lock (a store another process
    /// has open is refused as locked) and reads a fixed snapshot.
    #[cfg_attr(
        not(feature = "postgres"),
        expect(
            dead_code,
            reason = "only `migrate`, which needs PostgreSQL, reads this way"
        )
    )]
    Exclusive,
    /// `LogStore::open_reader`: no lock, through read-only handles; works while
    /// another process writes the store, and serves what that writer made durable.
    Reader,
}

/// Opens `location` to read from; creates and changes nothing (module docs).
pub fn open_source(location: &Location, share: Share) -> Result<Opened, String> {
    match location {
        Location::Dir(dir) => {
            let name = dir.display().to_string();
            crate::dir_kind(dir)?; // a file is named as such
            let opened = match share {
                Share::Exclusive => LogStore::open_read_only(dir),
                Share::Reader => LogStore::open_reader(dir),
            };
            let store = opened.map_err(|e| format!("cannot open the source {name}: {e}"))?;
            Ok(Opened {
                store: Box::new(store),
                name,
            })
        }
        #[cfg(feature = "postgres")]
        Location::Postgres { url, schema } => postgres::open_source(url, schema.as_deref()),
        #[cfg(not(feature = "postgres"))]
        Location::Postgres { .. } => {
            Err("this execlog was built without PostgreSQL support".into())
        }
    }
}

/// Opens `location` to write into: a store, or a missing or empty directory that
/// becomes one; a directory of other files is refused before anything is written.
pub fn open_destination(location: &Location) -> Result<Opened, String> {
    match location {
        Location::Dir(dir) => {
            let name = dir.display().to_string();
            check_destination(dir)?;
            let store = LogStore::open(dir)
                .map_err(|e| format!("cannot open the destination {name}: {e}"))?;
            Ok(Opened {
                store: Box::new(store),
                name,
            })
        }
        #[cfg(feature = "postgres")]
        Location::Postgres { url, schema } => postgres::open_destination(url, schema.as_deref()),
        #[cfg(not(feature = "postgres"))]
        Location::Postgres { .. } => {
            Err("this execlog was built without PostgreSQL support".into())
        }
    }
}

/// Refuses a destination directory that holds other files and no store (before a
/// command does anything else, such as connecting to its source).
pub fn check_destination(dir: &Path) -> Result<(), String> {
    if crate::dir_kind(dir)? == crate::DirKind::NotAStore {
        return Err(format!(
            "the destination {} holds other files and no store; give a store, a new or an \
             empty directory; nothing was written",
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(feature = "postgres")]
mod postgres {
    use execlog::Error;
    use execlog::postgres::{PgOptions, PgStore};

    use super::Opened;

    fn options(schema: Option<&str>) -> PgOptions {
        match schema {
            Some(schema) => PgOptions::default().schema(schema),
            None => PgOptions::default(),
        }
    }

    fn opened(store: PgStore, schema: Option<&str>) -> Opened {
        let name = match schema {
            Some(schema) => format!("postgres {} (schema {schema})", store.server()),
            None => format!("postgres {}", store.server()),
        };
        Opened {
            store: Box::new(store),
            name,
        }
    }

    /// The source's tables must exist: connecting must not create them.
    pub fn open_source(url: &str, schema: Option<&str>) -> Result<Opened, String> {
        let store = PgStore::connect_with(url, options(schema).auto_migrate(false)).map_err(
            |e| match e {
                Error::Database { .. } => format!(
                    "cannot open the source: {e} (is it an execlog database? name the schema \
                     holding its tables with --schema)"
                ),
                e => format!("cannot open the source: {e}"),
            },
        )?;
        Ok(opened(store, schema))
    }

    /// Creates or migrates execlog's tables as a connection does by default.
    pub fn open_destination(url: &str, schema: Option<&str>) -> Result<Opened, String> {
        let store = PgStore::connect_with(url, options(schema))
            .map_err(|e| format!("cannot open the destination: {e}"))?;
        Ok(opened(store, schema))
    }
}
