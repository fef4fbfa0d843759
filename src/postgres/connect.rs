//! Opening connections and naming what went wrong with them.
//!
//! Every connection is set up the same way before it serves anything:
//! `synchronous_commit = on` (a commit returns only once its WAL is flushed, whatever
//! the server's or role's default: durable before return is the contract), the
//! store's schema first on the `search_path`, and `application_name = execlog`.
//! The connection's I/O future runs on the store's runtime; the returned
//! [`tokio_postgres::Client`] can be used from any executor.

use std::time::{Duration, Instant};

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

use crate::error::{Error, Result};

/// Where to connect and how to set up each session.
pub(crate) struct Target {
    pub(crate) config: Config,
    /// `host:port/dbname`, for messages (never the password).
    pub(crate) server: String,
    pub(crate) schema: Option<String>,
    pub(crate) reconnect_timeout: Duration,
}

impl Target {
    pub(crate) fn parse(
        url: &str,
        schema: Option<String>,
        connect_timeout: Duration,
    ) -> Result<Self> {
        let mut config: Config = url
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("cannot parse PostgreSQL URL: {e}")))?;
        config.connect_timeout(connect_timeout);
        config.application_name("execlog");
        let server = describe(&config);
        Ok(Target {
            config,
            server,
            schema,
            reconnect_timeout: Duration::from_secs(30),
        })
    }

    /// One connection attempt; must run on the store's runtime (it spawns the
    /// connection's I/O task there).
    pub(crate) async fn connect(&self) -> Result<Client> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| self.unavailable(&e))?;
        tokio::spawn(async move {
            // The error, if any, reaches every request of this client as "closed".
            if let Err(e) = connection.await {
                log::debug!("execlog: PostgreSQL connection ended: {e}");
            }
        });
        client
            .batch_execute(&self.session_setup())
            .await
            .map_err(|e| self.error(&e))?;
        Ok(client)
    }

    /// Connects, retrying with a growing pause until `reconnect_timeout` has passed
    /// since `since`.
    pub(crate) async fn connect_until(&self, since: Instant) -> Result<Client> {
        let mut pause = Duration::from_millis(20);
        loop {
            match self.connect().await {
                Ok(client) => return Ok(client),
                Err(e @ Error::Unavailable { .. }) if since.elapsed() < self.reconnect_timeout => {
                    log::debug!("execlog: reconnecting to {}: {e}", self.server);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn session_setup(&self) -> String {
        let mut sql = String::from("SET synchronous_commit = on;");
        if let Some(schema) = &self.schema {
            // The name was checked by `PgOptions::validate`: [a-z_][a-z0-9_]*.
            sql.push_str(&format!("SET search_path = {schema};"));
        }
        sql
    }

    /// An [`Error::Unavailable`] for this server.
    pub(crate) fn unavailable(&self, e: &tokio_postgres::Error) -> Error {
        Error::Unavailable {
            server: self.server.clone(),
            reason: reason(e),
        }
    }

    /// Classifies a client error: the server's refusals keep their SQLSTATE; the rest
    /// (I/O, a closed connection, a timeout) and a server shutting down or starting up
    /// (SQLSTATE classes 57 and 08) is [`Error::Unavailable`], which callers retry.
    pub(crate) fn error(&self, e: &tokio_postgres::Error) -> Error {
        match e.as_db_error() {
            Some(db) if !is_shutdown(db.code().code()) => Error::Database {
                code: db.code().code().to_owned(),
                message: db.message().to_owned(),
            },
            _ => self.unavailable(e),
        }
    }
}

/// Whether a failed request may have lost its connection (then the client is
/// replaced), as opposed to a refusal by a server that is still there.
pub(crate) fn is_connection_loss(client: &Client, e: &tokio_postgres::Error) -> bool {
    client.is_closed()
        || e.as_db_error()
            .is_none_or(|db| is_shutdown(db.code().code()))
}

/// SQLSTATE class 57 (operator intervention: shutdown, crash) and 08 (connection).
fn is_shutdown(code: &str) -> bool {
    code.starts_with("57") || code.starts_with("08")
}

/// The error's message with its sources, e.g. "error connecting to server: Connection
/// refused (os error 111)".
fn reason(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn describe(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("");
    format!("{host}:{port}/{db}")
}
