//! The engine's one error type.
//!
//! Every failure the engine can report is a variant of [`Error`], with the context a
//! user needs to act on it: the path for I/O, the segment and offset for corruption.
//! `Display` says what happened and what to do next; `source()` exposes the underlying
//! `std::io::Error` where there is one. The `EventStore` trait wraps these in
//! `anyhow::Error`, from which `err.downcast_ref::<execlog::Error>()` recovers them.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in execlog.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed.
    Io {
        /// What the engine was doing, e.g. "fdatasync".
        op: &'static str,
        /// The file or directory it was doing it to.
        path: PathBuf,
        /// The error the operating system returned.
        source: std::io::Error,
    },
    /// Stored bytes are damaged somewhere other than a torn tail.
    Corrupt {
        /// The segment file's id (its file name without extension).
        segment: u32,
        /// Byte offset of the damaged record or header inside that segment.
        offset: u64,
        /// What exactly is wrong.
        reason: String,
    },
    /// A segment was written by a format version this build does not read.
    UnsupportedFormat {
        /// The segment file.
        path: PathBuf,
        /// The version found in its header.
        version: u32,
    },
    /// Another `LogStore` (in this process or another) holds the directory lock.
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// An earlier write or fsync failed, or the checkpoint an open trusted failed its
    /// verification after open; the store refuses further writes (and, in the second
    /// case, reads). The cause says which.
    Poisoned {
        /// A description of the failure that poisoned the store.
        cause: String,
        /// The operating system's error behind it, if an I/O call failed (also
        /// [`std::error::Error::source`]): `kind()` tells a full disk
        /// (`StorageFull`) from a failing one.
        source: Option<Arc<std::io::Error>>,
    },
    /// The execution belongs to another tenant. Which tenant owns it is not said: the
    /// caller may not know it, and the execution may not even be acknowledged yet.
    TenantMismatch {
        /// The execution appended to.
        execution_id: String,
        /// The tenant named in the rejected append.
        given: String,
    },
    /// A guarded append's expected sequence did not hold; nothing was written and no
    /// sequence was used up.
    WrongExpectedSequence {
        /// What the append expected.
        expected: crate::guard::ExpectedSequence,
        /// The execution's latest sequence (handed out, possibly not yet durable), or
        /// `None` when the execution does not exist.
        actual: Option<u64>,
    },
    /// An append reused an idempotency key of its execution with other events than the
    /// ones stored under that key; nothing was written.
    IdempotencyConflict,
    /// The append names an execution that was deleted (`Lifecycle`). A deleted
    /// execution stays deleted: its id is never reused, so no later append to it is
    /// accepted, whatever its tenant, key or expectation; nothing was written.
    Deleted,
    /// The store was closed.
    Closed,
    /// An argument was rejected before anything was written.
    InvalidArgument(String),
    /// An append exceeds a capacity limit (an event or a batch larger than the
    /// configured maximum, more executions than a store numbers); nothing was written.
    TooLarge {
        /// What is too large, and which option sets the limit, if one does.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A check of the engine's own state failed: a bug in execlog (please report it),
    /// not a problem with the input or the disk. Nothing uncertain was acknowledged.
    Internal(String),
    /// The database server cannot be reached (PostgreSQL backend): connecting failed,
    /// or the connection was lost and did not come back within the reconnect timeout.
    /// An append that fails so was not stored, unless `reason` says its outcome is
    /// unknown (docs/POSTGRES.md, "In-doubt commits").
    Unavailable {
        /// The server, without credentials, e.g. `127.0.0.1:5432/execlog`.
        server: String,
        /// What failed.
        reason: String,
    },
    /// The database server refused a request (PostgreSQL backend), e.g. a missing
    /// privilege or a schema newer than this build.
    Database {
        /// The SQLSTATE code, e.g. `42501`; empty when the refusal is execlog's own.
        code: String,
        /// The server's message.
        message: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, path, source } if is_full(source) => write!(
                f,
                "the disk is full: {op} on {} failed ({source}); free space on that file \
                 system, then reopen the store",
                path.display()
            ),
            Error::Io { op, path, source } => write!(
                f,
                "I/O error during {op} on {}: {source}; check the disk and permissions, then reopen the store",
                path.display()
            ),
            Error::Corrupt {
                segment,
                offset,
                reason,
            } => write!(
                f,
                "corrupt store: segment {segment} at offset {offset}: {reason}; acknowledged data is damaged: \
                 restore the segment from a backup, survey it with `execlog verify`, or copy \
                 out what survived with `execlog export --salvage`"
            ),
            Error::UnsupportedFormat { path, version } => write!(
                f,
                "{} has format version {version}, which this build of execlog cannot read; \
                 open it with a newer execlog",
                path.display()
            ),
            Error::Locked { path } => write!(
                f,
                "store {} is locked by another LogStore (in this or another process); \
                 close that one first",
                path.display()
            ),
            Error::Poisoned {
                cause,
                source: Some(source),
            } if is_full(source) => write!(
                f,
                "the disk is full, so the store stopped taking appends ({cause}); nothing \
                 uncertain was acknowledged and reads keep working: free space on that file \
                 system, then close and reopen the store to continue"
            ),
            Error::Poisoned { cause, .. } => write!(
                f,
                "store is poisoned ({cause}); nothing uncertain was acknowledged: close and \
                 reopen the store, which recovers what is durable or, if acknowledged data is \
                 damaged, refuses to open and names it"
            ),
            Error::TenantMismatch {
                execution_id,
                given,
            } => write!(
                f,
                "execution {execution_id:?} belongs to another tenant than {given:?}; nothing was written"
            ),
            Error::WrongExpectedSequence { expected, actual } => {
                let actual = match actual {
                    Some(n) => format!("its latest sequence is {n}"),
                    None => "it does not exist".to_string(),
                };
                write!(
                    f,
                    "the append expected {expected} but {actual}; nothing was written: \
                     reload the execution and decide again"
                )
            }
            Error::IdempotencyConflict => write!(
                f,
                "the idempotency key was used on this execution for other events; nothing \
                 was written: a retry must send the same events, new events need a new key"
            ),
            Error::Deleted => write!(
                f,
                "the execution was deleted, and a deleted execution id is never reused; \
                 nothing was written: start a new execution under a new id"
            ),
            Error::Closed => write!(f, "store is closed; open it again to continue"),
            Error::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
            Error::TooLarge { what, size, limit } => write!(
                f,
                "{what}: {size} is over the limit of {limit}; nothing was stored"
            ),
            Error::Internal(what) => write!(
                f,
                "internal error in execlog (a bug; please report it): {what}; nothing \
                 uncertain was acknowledged"
            ),
            Error::Unavailable { server, reason } => write!(
                f,
                "database server {server} cannot be reached ({reason}); check that the server \
                 runs and accepts connections, then retry"
            ),
            Error::Database { code, message } if code.is_empty() => {
                write!(f, "database refused the request: {message}")
            }
            Error::Database { code, message } => {
                write!(
                    f,
                    "database refused the request (SQLSTATE {code}): {message}"
                )
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Poisoned {
                source: Some(source),
                ..
            } => Some(source.as_ref()),
            _ => None,
        }
    }
}

/// ENOSPC and EDQUOT: no space left for this writer.
fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

impl Error {
    /// The error a poisoned store answers with.
    pub(crate) fn poisoned(cause: impl Into<String>) -> Self {
        Error::Poisoned {
            cause: cause.into(),
            source: None,
        }
    }

    /// Builds an [`Error::Io`] from its parts.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Corrupt`] from its parts.
    pub(crate) fn corrupt(segment: u32, offset: u64, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            segment,
            offset,
            reason: reason.into(),
        }
    }

    /// A copy of this error for another waiter of the same failed commit.
    ///
    /// `std::io::Error` is not `Clone`; the copy keeps its kind and message.
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Error::Io { op, path, source } => Error::Io {
                op,
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Error::Corrupt {
                segment,
                offset,
                reason,
            } => Error::corrupt(*segment, *offset, reason.clone()),
            Error::UnsupportedFormat { path, version } => Error::UnsupportedFormat {
                path: path.clone(),
                version: *version,
            },
            Error::Locked { path } => Error::Locked { path: path.clone() },
            Error::Poisoned { cause, source } => Error::Poisoned {
                cause: cause.clone(),
                source: source.clone(),
            },
            Error::TenantMismatch {
                execution_id,
                given,
            } => Error::TenantMismatch {
                execution_id: execution_id.clone(),
                given: given.clone(),
            },
            Error::WrongExpectedSequence { expected, actual } => Error::WrongExpectedSequence {
                expected: *expected,
                actual: *actual,
            },
            Error::IdempotencyConflict => Error::IdempotencyConflict,
            Error::Deleted => Error::Deleted,
            Error::Closed => Error::Closed,
            Error::InvalidArgument(what) => Error::InvalidArgument(what.clone()),
            Error::TooLarge { what, size, limit } => Error::TooLarge {
                what,
                size: *size,
                limit: *limit,
            },
            Error::Internal(what) => Error::Internal(what.clone()),
            Error::Unavailable { server, reason } => Error::Unavailable {
                server: server.clone(),
                reason: reason.clone(),
            },
            Error::Database { code, message } => Error::Database {
                code: code.clone(),
                message: message.clone(),
            },
        }
    }
}
