//! Retention on the embedded engine: pruning executions whose last event is older than
//! a policy allows, on demand (`prune`) and in the background (`execlog-retention`,
//! started when [`Options::retention`] or [`Options::tenant_retention`] is set).
//!
//! A prune walks the executions by number, a chunk at a time: under the store lock it
//! notes each visible execution's latest durable sequence and record position, then,
//! without the lock, reads those records' timestamps, and queues a tombstone for each
//! stale one that nothing was appended to since (`deletion::Target::Unchanged`, checked
//! again under the lock). So an execution appended to while a prune runs is kept, the
//! lock is held for one chunk's bookkeeping at a time, and memory stays one chunk.
//!
//! Invariants: a prune deletes only through tombstones (`deletion.rs`), so it is as
//! durable and as crash-safe as `delete_execution`; the background thread holds no
//! lock while it sleeps and close wakes it at once.
//!
//! [`Options::retention`]: crate::Options::retention
//! [`Options::tenant_retention`]: crate::Options::tenant_retention

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::background::{self, Background};
use crate::deletion::{self, Target};
use crate::error::{Error, Result};
use crate::ids::{ExecutionId, TenantId};
use crate::index::ExecNo;
use crate::log_store::LogStore;
use crate::reader;
use crate::record::Pos;
use crate::state::Shared;
use crate::stop::Stop;
use crate::sync;

/// Executions looked at per chunk.
const CHUNK: u32 = 4096;
/// Longest wait between two background prunes.
const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Shortest wait between two background prunes.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How old an execution of a tenant may get: `None` keeps it forever.
pub(crate) type Policy<'a> = &'a (dyn Fn(&TenantId) -> Option<Duration> + Sync);

/// A prune in progress: the next chunk of executions to look at.
pub(crate) struct Prune<'a> {
    shared: &'a Shared,
    policy: Policy<'a>,
    now_ns: i64,
    next: ExecNo,
}

impl<'a> Prune<'a> {
    pub(crate) fn new(shared: &'a Shared, policy: Policy<'a>) -> Self {
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        Self {
            shared,
            policy,
            now_ns,
            next: 0,
        }
    }

    /// The stale executions of the next chunk, with the latest sequence they were
    /// judged at; `None` once every execution was looked at.
    pub(crate) fn next_chunk(&mut self) -> Result<Option<Vec<(ExecutionId, u64)>>> {
        let mut looked: Vec<(ExecutionId, u64, Pos, i64)> = Vec::new();
        {
            let state = self.shared.state.lock();
            let len = u32::try_from(state.index.len()).unwrap_or(u32::MAX);
            if self.next >= len {
                return Ok(None);
            }
            let end = self.next.saturating_add(CHUNK).min(len);
            for no in self.next..end {
                let Some(e) = state.index.get(no) else {
                    continue;
                };
                if !e.visible() || e.durable_seq == 0 {
                    continue;
                }
                if let Some(keep) = (self.policy)(state.index.tenant_of(e)) {
                    let keep_ns = i64::try_from(keep.as_nanos()).unwrap_or(i64::MAX);
                    let cutoff = self.now_ns.saturating_sub(keep_ns);
                    looked.push((e.id.clone(), e.durable_seq, e.durable_pos, cutoff));
                }
            }
            self.next = end;
        }
        let positions: Vec<Pos> = looked.iter().map(|l| l.2).collect();
        let times = reader::timestamps_at(self.shared, &positions)?;
        Ok(Some(
            looked
                .into_iter()
                .zip(times)
                .filter(|((.., cutoff), time)| time < cutoff)
                .map(|((id, seq, ..), _)| (id, seq))
                .collect(),
        ))
    }
}

/// The tombstone targets of `stale`.
fn targets(stale: &[(ExecutionId, u64)]) -> Vec<Target<'_>> {
    stale
        .iter()
        .map(|(id, seq)| Target::Unchanged(id, *seq))
        .collect()
}

/// Prunes by `policy`, durably; returns how many executions it deleted.
pub(crate) fn prune_blocking(shared: &Shared, policy: Policy<'_>) -> Result<u64> {
    let mut prune = Prune::new(shared, policy);
    let mut deleted = 0;
    while let Some(stale) = prune.next_chunk()? {
        deleted += deletion::delete_blocking(shared, &targets(&stale))?;
    }
    Ok(deleted)
}

/// [`prune_blocking`] that waits for durability without blocking the thread (reading
/// timestamps runs on the calling task, as reads do).
pub(crate) async fn prune_async(shared: &Shared, policy: Policy<'_>) -> Result<u64> {
    shared.verification.settled().await;
    let mut prune = Prune::new(shared, policy);
    let mut deleted = 0;
    while let Some(stale) = prune.next_chunk()? {
        deleted += deletion::delete_async(shared, &targets(&stale)).await?;
    }
    Ok(deleted)
}

impl LogStore {
    /// Deletes, durably, every execution whose last event is older than `older_than`;
    /// returns how many. See [`Lifecycle::prune`](crate::Lifecycle::prune).
    pub fn prune_blocking(&self, older_than: Duration) -> Result<u64> {
        self.check_writable_index()?;
        prune_blocking(self.shared(), &|_: &TenantId| Some(older_than))
    }
}

/// Starts the background pruner of a writable store whose options set a retention.
pub(crate) fn start(shared: &Arc<Shared>) -> Result<Option<Background>> {
    let Some(interval) = shared.options.retention_interval() else {
        return Ok(None);
    };
    if shared.read_only || sync::MODEL_CHECKED {
        return Ok(None);
    }
    background::spawn(shared, "execlog-retention", move |shared, stop| {
        run(&shared, &stop, interval);
    })
    .map(Some)
}

/// Prunes once per `interval`, from open on, until stopped or the store refuses
/// writes (closed, poisoned).
fn run(shared: &Shared, stop: &Stop, interval: Duration) {
    let policy = |tenant: &TenantId| shared.options.retention_of(tenant);
    loop {
        let started = Instant::now();
        match prune_blocking(shared, &policy) {
            Ok(0) => {}
            Ok(n) => log::info!("retention: deleted {n} executions"),
            Err(e @ (Error::Closed | Error::Poisoned { .. })) => {
                log::debug!("retention: stopping: {e}");
                return;
            }
            Err(e) => log::warn!("retention: prune failed, trying again later: {e}"),
        }
        if stop.sleep_until(started + interval) {
            return;
        }
    }
}

/// How often the background pruner runs for retentions as short as `shortest`: a
/// tenth of it, between one second and one hour, so that an execution outlives its
/// retention by at most about a tenth.
pub(crate) fn interval_for(shortest: Duration) -> Duration {
    (shortest / 10).clamp(MIN_INTERVAL, MAX_INTERVAL)
}
