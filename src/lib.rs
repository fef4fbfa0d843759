//! execlog: an embedded, durable, append-only store for the execution histories of AI
//! agents (steps, tool calls, checkpoints, goal evaluations), for many tenants at once.
//!
//! # Use
//!
//! - [`LogStore::open`] a directory (one process at a time; share the store with an
//!   `Arc` inside it), then use the [`EventStore`] trait (async) or the blocking twins
//!   (`append_blocking`, `load_events_blocking`, …). `append` returns once the event is
//!   on disk (fdatasync); concurrent appends share one fdatasync.
//! - Retries and concurrent writers: [`GuardedEventStore::append_with`] with an
//!   idempotency key (a retry never stores twice) or an [`ExpectedSequence`]
//!   (optimistic concurrency); [`TenantView`] reads as one tenant.
//! - Liveness: [`StorageBackend::health_check`] (import `StorageBackend` too; it is the
//!   supertrait of `EventStore`).
//! - Errors are [`Error`] (the blocking API) or `anyhow::Error` wrapping it (the traits:
//!   `err.downcast_ref::<execlog::Error>()`).
//! - Tuning: [`Options`]; what open found: [`LogStore::recovery_report`]; sizes:
//!   [`LogStore::stats`].
//! - More machines: with the feature `postgres`, `postgres::PgStore` implements the same
//!   traits on a PostgreSQL server (docs/POSTGRES.md); one conformance suite checks that
//!   both backends answer alike.
//!
//! ```no_run
//! use execlog::{ExecutionEventData, ExecutionId, LogStore, TenantId};
//!
//! let store = LogStore::open("/tmp/agent-history")?;
//! let run = ExecutionId::new();
//! let tenant = TenantId::from("acme");
//! let seq = store.append_blocking(&run, &tenant, ExecutionEventData::ExecutionResumed)?;
//! assert_eq!(store.load_events_blocking(&run)?[0].sequence, seq);
//! # Ok::<(), execlog::Error>(())
//! ```
//!
//! # Durability
//!
//! `append` and `append_batch` return `Ok` only after an fdatasync covering the event's
//! bytes returned (and, for a new segment, after its directory entry was fsynced).
//! Readers see only such events. A failed write or sync poisons the store
//! ([`Error::Poisoned`]) instead of acknowledging anything uncertain.
//!
//! # How it works
//!
//! Three flows, each visible in the source's file list (docs/DESIGN.md has the whole
//! story, docs/FORMAT.md the bytes):
//! - **append** → `append.rs` (validate, `codec.rs` encode, reserve, `record.rs` frame)
//!   → `queue.rs` → `committer.rs` (one write + one fdatasync per group) → segment files
//!   (`segment.rs`, `segments.rs`).
//! - **open** → `open.rs`, one step per file: `store_dir.rs` (list) → `saved_index.rs`
//!   (load a `checkpoint.rs` if its segment checksums match and it describes the
//!   records) → `segment_maps.rs` (map) → `tail_scan.rs` (`scan.rs` every record after
//!   it, verify CRCs, refuse corruption; `tail_check.rs` reads the last commit group
//!   back past the page cache) → `repair.rs` (the only step that writes: journaled cuts
//!   of a torn or never-synced tail) → `index.rs` rebuilt in memory, and one
//!   `CommitStart` handed to `committer.rs`.
//! - **read** → `index.rs` entry point → `reader.rs` walks the execution's own records
//!   back through `mmap.rs` views → `codec.rs` decode.
//! - **scrub** → `scrubber.rs` (a paced thread of a writable store) → `scrub.rs`
//!   re-checks every record of the sealed segments; a damaged range is refused by
//!   every later read ([`LogStore::scrub_now`] on demand, [`Options::scrub`] to tune).

mod append;
mod background;
mod backup;
mod checkpoint;
mod checkpoint_directory;
mod checkpoint_encode;
mod checkpoint_walk;
mod checkpointer;
mod codec;
mod committer;
mod damage;
mod deferred_verification;
mod deletion;
mod eraser;
mod erasure;
mod error;
mod event;
mod event_store;
#[cfg(feature = "fault-injection")]
pub mod fault;
mod follow;
#[cfg(feature = "fault-injection")]
#[doc(hidden)]
pub mod forgery;
mod fork;
mod frozen_index;
#[cfg(any(feature = "fuzzing", all(test, feature = "fault-injection")))]
pub mod fuzzing;
mod guard;
mod guarded_append;
mod id_table;
mod idempotency;
mod ids;
mod import;
mod index;
mod index_tally;
mod io;
mod lazy_index;
mod lifecycle;
mod log_store;
mod metrics;
mod mmap;
mod open;
mod options;
#[cfg(feature = "postgres")]
pub mod postgres;
mod prescan;
mod published_end;
mod queue;
mod reader;
mod rebuild;
mod record;
mod recovery_report;
mod refresh;
mod refuted_marker;
mod repair;
mod retention;
mod salvage;
mod saved_index;
mod scan;
mod scrub;
mod scrub_progress;
mod scrub_window;
mod scrubber;
mod segment;
mod segment_maps;
mod segments;
mod sidecar;
mod state;
mod stop;
mod store_dir;
mod subscription;
mod sync;
mod tail_check;
mod tail_scan;
mod verify;
mod watch;

pub use backup::BackupReport;
pub use damage::{SegmentSurvey, survey_damage};
pub use erasure::CompactReport;
pub use error::{Error, Result};
pub use event::{
    ExecutionError, ExecutionErrorKind, ExecutionEventData, ParentLink, ParentRelation,
    StepSourceType, StepType, StoredEvent,
};
pub use event_store::{EventStore, StorageBackend};
pub use fork::ForkPoint;
pub use guard::{
    AppendOptions, AppendOutcome, ExpectedSequence, GuardedEventStore, MAX_IDEMPOTENCY_KEY_BYTES,
    TenantView,
};
pub use ids::{ExecutionId, MAX_ID_BYTES, StepId, TenantId};
#[cfg(feature = "fault-injection")]
pub use io::{Io, IoFile, LockGuard, Mapped, RealIo};
pub use lifecycle::Lifecycle;
pub use log_store::{LogStore, Stats};
pub use metrics::{Histogram, WriteMetrics};
#[doc(hidden)]
pub use options::WritePath;
pub use options::{MIN_SCRUB_BYTES_PER_SECOND, Options, ScrubRate, VERIFY_AFTER_OPEN_FROM_BYTES};
pub use recovery_report::RecoveryReport;
pub use salvage::{Salvage, SalvageReport, SalvagedExecution, salvage};
pub use scrub::{DamagedRange, ScrubReport, ScrubStats};
pub use subscription::{Delivered, Follow, StartFrom, Subscription, SubscriptionFilter};
pub use tail_check::TailCheck;
pub use verify::VerifyReport;

/// The README, so that `cargo test --doc` compiles its Rust blocks (the quickstart)
/// and they cannot drift from the API. Blocks in other languages are not Rust to
/// rustdoc; the PostgreSQL fragment is `ignore`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
