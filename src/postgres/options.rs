//! [`PgOptions`]: how a [`PgStore`](super::PgStore) connects and groups its commits.
//!
//! The size limits have the same names, defaults and errors as the embedded store's
//! [`Options`](crate::Options), so that both backends accept and refuse the same appends.

use std::time::Duration;

use crate::error::{Error, Result};

/// Settings of a [`PgStore`](super::PgStore), built like [`Options`](crate::Options).
#[derive(Clone, Debug)]
pub struct PgOptions {
    pub(crate) write_connections: usize,
    pub(crate) read_connections: usize,
    pub(crate) guarded_connections: usize,
    pub(crate) schema: Option<String>,
    pub(crate) auto_migrate: bool,
    pub(crate) reconnect_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_event_bytes: usize,
    pub(crate) max_batch_bytes: usize,
    pub(crate) group_max_appends: usize,
    pub(crate) group_max_bytes: usize,
    pub(crate) queue_capacity: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        let embedded = crate::Options::default();
        PgOptions {
            write_connections: 2,
            read_connections: 2,
            guarded_connections: 2,
            schema: Some("execlog".into()),
            auto_migrate: true,
            reconnect_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_event_bytes: embedded.max_event_bytes,
            max_batch_bytes: embedded.max_batch_bytes,
            group_max_appends: 512,
            group_max_bytes: 8 << 20,
            queue_capacity: 16 * 1024,
        }
    }
}

impl PgOptions {
    /// Connections that commit appends, each running one group transaction at a time
    /// (default 2: on a 2-core machine, 2 gave 20% more appends/s than 4 at 16 and 64
    /// writers, because fewer connections make bigger groups; see docs/BENCHMARKS.md). More connections let more groups be in flight: a group waiting for
    /// a row lock held elsewhere stalls only the appends inside it.
    pub fn write_connections(mut self, n: usize) -> Self {
        self.write_connections = n;
        self
    }

    /// Connections that serve reads, pipelined (default 2).
    pub fn read_connections(mut self, n: usize) -> Self {
        self.read_connections = n;
        self
    }

    /// Connections that run guarded appends (an idempotency key or an expected
    /// sequence, `GuardedEventStore::append_with`), each append a transaction of its
    /// own (default 2, made on first use). Unguarded appends never wait for them.
    pub fn guarded_connections(mut self, n: usize) -> Self {
        self.guarded_connections = n;
        self
    }

    /// The PostgreSQL schema (namespace) holding the tables, created if missing
    /// (default `execlog`). Every connection names it explicitly, so the tables never
    /// depend on a role's `search_path`. Lower-case letters, digits and `_`, starting
    /// with a letter or `_`.
    pub fn schema(mut self, name: impl Into<String>) -> Self {
        self.schema = Some(name.into());
        self
    }

    /// Whether connecting brings the schema up to date (default `true`). With `false`,
    /// connecting to an older schema fails with [`Error::Database`] and
    /// [`migrate`](super::migrate) must run first.
    pub fn auto_migrate(mut self, enabled: bool) -> Self {
        self.auto_migrate = enabled;
        self
    }

    /// How long a request keeps retrying a lost connection before it fails with
    /// [`Error::Unavailable`] (default 30 s): a server restart shorter than this is
    /// invisible to callers except as latency.
    pub fn reconnect_timeout(mut self, timeout: Duration) -> Self {
        self.reconnect_timeout = timeout;
        self
    }

    /// How long one connection attempt may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Largest accepted encoded event, as [`Options::max_event_bytes`](crate::Options::max_event_bytes).
    pub fn max_event_bytes(mut self, bytes: usize) -> Self {
        self.max_event_bytes = bytes;
        self
    }

    /// Largest accepted encoded batch, as [`Options::max_batch_bytes`](crate::Options::max_batch_bytes).
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.max_batch_bytes = bytes;
        self
    }

    /// Most appends merged into one transaction (default 512).
    pub fn group_max_appends(mut self, n: usize) -> Self {
        self.group_max_appends = n;
        self
    }

    /// Most encoded event bytes merged into one transaction (default 8 MiB; a single
    /// larger batch still goes alone).
    pub fn group_max_bytes(mut self, bytes: usize) -> Self {
        self.group_max_bytes = bytes;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.write_connections == 0
            || self.read_connections == 0
            || self.guarded_connections == 0
        {
            return Err(Error::InvalidArgument(
                "write_connections, read_connections and guarded_connections must be at least 1"
                    .into(),
            ));
        }
        if self.max_event_bytes == 0 || self.max_event_bytes > self.max_batch_bytes {
            return Err(Error::InvalidArgument(format!(
                "max_event_bytes {} must be between 1 and max_batch_bytes {}",
                self.max_event_bytes, self.max_batch_bytes
            )));
        }
        if self.group_max_appends == 0 {
            return Err(Error::InvalidArgument(
                "group_max_appends must be at least 1".into(),
            ));
        }
        if let Some(schema) = &self.schema {
            let mut chars = schema.chars();
            let first_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
            let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !first_ok || !rest_ok || schema.len() > 63 {
                return Err(Error::InvalidArgument(format!(
                    "schema name {schema:?} must be 1 to 63 of a-z, 0-9 and _, not starting with a digit"
                )));
            }
        }
        Ok(())
    }
}
