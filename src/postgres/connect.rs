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
    pub(crate) connect_timeout: Duration,
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
        // A peer that vanishes (a partition, a powered-off host) is noticed by the
        // kernel within seconds instead of the default two hours.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(5));
        config.keepalives_interval(Duration::from_secs(2));
        config.keepalives_retries(3);
        config.tcp_user_timeout(Duration::from_secs(15));
        let server = describe(&config);
        Ok(Target {
            config,
            server,
            schema,
            connect_timeout,
            reconnect_timeout: Duration::from_secs(30),
        })
    }

    /// One connection attempt, startup and session setup included, within
    /// `connect_timeout`; must run on the store's runtime (it spawns the connection's
    /// I/O task there).
    pub(crate) async fn connect(&self) -> Result<Client> {
        let timeout = self.connect_timeout;
        match tokio::time::timeout(timeout, self.connect_now()).await {
            Ok(result) => result,
            Err(_) => Err(Error::Unavailable {
                server: self.server.clone(),
                reason: format!("no answer within {timeout:?} (connect_timeout)"),
            }),
        }
    }

    async fn connect_now(&self) -> Result<Client> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| self.connect_error(&e))?;
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
            sql.push_str(&format!("SET search_path = \"{schema}\";"));
        }
        sql
    }

    /// A failed connection attempt: wrong credentials, an unknown database or role,
    /// or a refused privilege are the server's refusals ([`Error::Database`], not
    /// retried); a configuration the client cannot use is [`Error::InvalidArgument`];
    /// anything else is [`Error::Unavailable`].
    fn connect_error(&self, e: &tokio_postgres::Error) -> Error {
        if let Some(db) = e.as_db_error()
            && !is_shutdown(db.code().code())
        {
            return self.error(e);
        }
        let text = e.to_string();
        if text.starts_with("invalid configuration") {
            return Error::InvalidArgument(format!(
                "PostgreSQL connection settings: {}",
                reason(e)
            ));
        }
        if text.contains("TLS") {
            return Error::InvalidArgument(format!(
                "{}: this build of execlog connects without TLS; use sslmode=disable or prefer, \
                 or a TLS-terminating proxy",
                reason(e)
            ));
        }
        self.unavailable(e)
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

/// The server going away: SQLSTATE 57P01 to 57P05 (shutdown, crash, cannot connect
/// now, idle timeout) and class 08 (connection exceptions). Not 57014 (a cancelled
/// statement), which is an answer from a server that is there (a group retries it).
fn is_shutdown(code: &str) -> bool {
    matches!(code, "57P01" | "57P02" | "57P03" | "57P04" | "57P05") || code.starts_with("08")
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
