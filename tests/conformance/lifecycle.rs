//! The lifecycle of executions (issue 15: `Lifecycle`: delete an execution, delete a
//! tenant, prune), test by test, generic over the backend; `lifecycle_suite!` runs them.
//!
//! The contract, as the tests read it:
//! - a deletion is durable when it returns (it survives reopen and a crash); from then
//!   on the execution is gone for readers: loads, counts, `execution_exists`, latest
//!   sequence, listings, the owner lookup, and subscriptions (also events a running
//!   subscription has not delivered yet);
//! - every append to a deleted execution fails with `Error::Deleted`, whatever its
//!   tenant, idempotency key (an old one too) or expected sequence, after reopen and
//!   after a crash too: a deleted id is never reused;
//! - deleting a tenant deletes the executions it has then; the tenant can start new
//!   ones later; other tenants are untouched;
//! - deleting what is not there returns `false` / `0`;
//! - `prune(d)` deletes exactly the executions whose last event is older than `d`.

use std::time::Duration;

use super::Backend;
use super::Twins;
use crate::common::*;
use execlog::*;

/// Runs the lifecycle tests against a backend whose store implements `Lifecycle`.
#[macro_export]
macro_rules! lifecycle_suite {
    ($backend:ty) => {
        $crate::suite!(@tests $backend;
            a_deleted_execution_is_gone_for_every_read,
            appends_to_a_deleted_execution_fail_with_deleted,
            deletions_survive_reopen_and_crash,
            deleting_a_tenant_deletes_its_executions_only,
            deleting_what_is_not_there_records_nothing,
            subscriptions_stop_delivering_a_deleted_execution,
            prune_deletes_only_executions_idle_longer_than_asked,
            appends_racing_a_delete_are_stored_before_it_or_refused,
            lifecycle_arguments_are_checked_and_a_closed_store_refuses,
            a_fork_reads_the_source_prefix_then_its_own_events,
            forks_survive_reopen_and_crash,
            bad_forks_are_refused,
            deleting_a_source_keeps_its_forks,
            subscriptions_deliver_a_forks_own_events_only,
        );
    };
}

fn deleted(result: anyhow::Result<u64>) -> bool {
    match result {
        Ok(s) => panic!("an append to a deleted execution was stored as {s}"),
        Err(e) => matches!(engine_error(&e), Error::Deleted),
    }
}

/// Every read of `e` answers as for an execution that never existed.
async fn assert_gone<S: GuardedEventStore>(store: &S, e: &ExecutionId, t: &TenantId) {
    assert!(store.load_events(e).await.unwrap().is_empty());
    assert!(store.load_events_after(e, 0).await.unwrap().is_empty());
    assert_eq!(store.get_latest_sequence(e).await.unwrap(), None);
    assert!(!store.execution_exists(e).await.unwrap());
    assert_eq!(store.count_events(e).await.unwrap(), 0);
    assert!(!store.list_executions(t, 100, 0).await.unwrap().contains(e));
    assert_eq!(store.execution_tenant(e).await.unwrap(), None);
    assert!(store.tenant(t).load_events(e).await.unwrap().is_empty());
}

/// A deleted execution reads as unknown; its neighbours are untouched.
pub async fn a_deleted_execution_is_gone_for_every_read<B: Backend>(b: B)
where
    B::Store: Lifecycle,
{
    let store = b.open();
    let t = TenantId::from("t");
    let (gone, kept) = (ExecutionId::new(), ExecutionId::new());
    for i in 1..=5 {
        store.append(&gone, &t, step_event(i)).await.unwrap();
        store.append(&kept, &t, step_event(i)).await.unwrap();
    }
    assert!(store.delete_execution(&gone).await.unwrap());
    assert_gone(&store, &gone, &t).await;
    assert_eq!(store.load_events(&kept).await.unwrap().len(), 5);
    assert_eq!(
        store.list_executions(&t, 100, 0).await.unwrap(),
        vec![kept.clone()]
    );
    assert_eq!(store.append(&kept, &t, step_event(6)).await.unwrap(), 6);
    store.close().unwrap();
}

/// Plain, batched, guarded and keyed appends to a deleted execution all fail with
/// `Deleted`, from any tenant, and store nothing.
pub async fn appends_to_a_deleted_execution_fail_with_deleted<B: Backend>(b: B)
where
    B::Store: Lifecycle,
{
    let store = b.open();
    let (e, t, other) = (ExecutionId::new(), TenantId::from("t"), TenantId::from("o"));
    store.append(&e, &t, step_event(1)).await.unwrap();
    let keyed = AppendOptions::key("the-key");
    store
        .append_with(&e, &t, vec![step_event(2)], keyed.clone())
        .await
        .unwrap();
    assert!(store.delete_execution(&e).await.unwrap());
    assert_refused(&store, &e, &t, &other, &keyed).await;
    store.close().unwrap();
}

async fn assert_refused<S: GuardedEventStore>(
    store: &S,
    e: &ExecutionId,
    t: &TenantId,
    other: &TenantId,
    keyed: &AppendOptions,
) {
    assert!(deleted(store.append(e, t, step_event(3)).await));
    assert!(deleted(store.append(e, other, step_event(3)).await));
    assert!(deleted(
        store
            .append_batch(e, t, vec![step_event(3), step_event(4)])
            .await
    ));
    let retry = store
        .append_with(e, t, vec![step_event(2)], keyed.clone())
        .await;
    assert!(deleted(retry.map(|o| o.first_sequence)));
    for expected in [
        ExpectedSequence::Any,
        ExpectedSequence::NoExecution,
        ExpectedSequence::Exactly(2),
    ] {
        let guarded = store
            .append_with(e, t, vec![step_event(3)], AppendOptions::expect(expected))
            .await;
        assert!(deleted(guarded.map(|o| o.first_sequence)), "{expected:?}");
    }
    assert_gone(store, e, t).await;
}

/// A deletion is durable when it returns: reopened and crashed stores agree.
pub async fn deletions_survive_reopen_and_crash<B: Backend>(b: B)
where
    B::Store: Lifecycle,
{
    let (t, other) = (TenantId::from("t"), TenantId::from("o"));
    let ids: Vec<ExecutionId> = (0..6).map(|_| ExecutionId::new()).collect();
    let keyed = AppendOptions::key("k1");
    {
        let store = b.open();
        for (i, e) in ids.iter().enumerate() {
            store
                .append_with(e, &t, vec![step_event(1)], keyed.clone())
                .await
                .unwrap();
            store.append(e, &t, step_event(i as u64)).await.unwrap();
        }
        for e in ids.iter().step_by(2) {
            assert!(store.delete_execution(e).await.unwrap());
        }
        store.close().unwrap();
    }
    let store = b.open();
    for (i, e) in ids.iter().enumerate() {
        if i % 2 == 0 {
            assert_refused(&store, e, &t, &other, &keyed).await;
        } else {
            assert_eq!(store.count_events(e).await.unwrap(), 2);
        }
    }
    // Deleted while open, then a crash: still deleted, still refused.
    assert!(store.delete_execution(&ids[1]).await.unwrap());
    let crashed = b.open_crashed(&store);
    for (i, e) in ids.iter().enumerate() {
        if i % 2 == 0 || i == 1 {
            assert_refused(&crashed, e, &t, &other, &keyed).await;
        } else {
            assert_eq!(crashed.count_events(e).await.unwrap(), 2);
        }
    }
    let listed = crashed.list_executions(&t, 100, 0).await.unwrap();
    assert_eq!(listed, vec![ids[5].clone(), ids[3].clone()]);
    crashed.close().unwrap();
    store.close().unwrap();
}

/// Deleting a tenant deletes its executions of that moment and nothing else.
pub async fn deleting_a_tenant_deletes_its_executions_only<B: Backend>(b: B)
where
    B::Store: Lifecycle,
{
    let store = b.open();
    let (a, other) = (TenantId::from("tenant-a"), TenantId::from("tenant-b"));
    let of_a: Vec<ExecutionId> = (0..3).map(|_| ExecutionId::new()).collect();
    let of_b: Vec<ExecutionId> = (0..2).map(|_| ExecutionId::new()).collect();
    for e in &of_a {
        store.append(e, &a, step_event(1)).await.unwrap();
    }
    for e in &of_b {
        store.append(e, &other, step_event(1)).await.unwrap();
    }
    assert!(store.delete_execution(&of_a[0]).await.unwrap());
    assert_eq!(store.delete_tenant(&a).await.unwrap(), 2);
    for e in &of_a {
        assert_gone(&store, e, &a).await;
        assert!(deleted(store.append(e, &a, step_event(2)).await));
    }
    for e in &of_b {
        assert_eq!(store.count_events(e).await.unwrap(), 1);
    }
    assert_eq!(store.list_executions(&other, 10, 0).await.unwrap().len(), 2);
    // The tenant id stays usable: a new execution of it is not deleted.
    let later = ExecutionId::new();
    assert_eq!(store.append(&later, &a, step_event(1)).await.unwrap(), 1);
    assert_eq!(
        store.list_executions(&a, 10, 0).await.unwrap(),
        vec![later.clone()]
    );
    store.close().unwrap();
    drop(store);
    let store = b.open();
    for e in &of_a {
        assert_gone(&store, e, &a).await;
    }
    assert_eq!(store.count_events(&later).await.unwrap(), 1);
    assert_eq!(store.delete_tenant(&a).await.unwrap(), 1);
    assert_gone(&store, &later, &a).await;
    assert_eq!(store.list_executions(&other, 10, 0).await.unwrap().len(), 2);
    store.close().unwrap();
}

/// Unknown executions and tenants, and second deletions, delete nothing and do not
/// reserve the id.
pub async fn deleting_what_is_not_there_records_nothing<B: Backend>(b: B)
where
    B::Store: Lifecycle,
{
    let store = b.open();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    assert!(!store.delete_execution(&e).await.unwrap());
    assert_eq!(
        store
            .delete_tenant(&TenantId::from("nobody"))
            .await
            .unwrap(),
        0
    );
    // Deleting an unknown id does not reserve it.
    assert_eq!(store.append(&e, &t, step_event(1)).await.unwrap(), 1);
    assert!(store.delete_execution(&e).await.unwrap());
    assert!(!store.delete_execution(&e).await.unwrap());
    assert_eq!(store.delete_tenant(&t).await.unwrap(), 0);
    store.close().unwrap();
}

/// A subscription does not deliver a deleted execution's events, also those it had
/// not reached yet when the deletion returned; new subscriptions never see them.
pub async fn subscriptions_stop_delivering_a_deleted_execution<B: Backend>(b: B)
where
    B::Store: Lifecycle + Follow,
{
    let store = b.open();
    let t = TenantId::from("t");
    let (gone, kept) = (ExecutionId::new(), ExecutionId::new());
    let mut early = store
        .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
        .unwrap();
    for i in 1..=3 {
        store.append(&gone, &t, step_event(i)).await.unwrap();
        store.append(&kept, &t, step_event(i)).await.unwrap();
    }
    // The first event is delivered before the deletion; the rest of `gone` must not be.
    let first = super::follow::take(&mut early, 1);
    assert_eq!(first[0].event.execution_id, gone);
    assert!(store.delete_execution(&gone).await.unwrap());
    store.append(&kept, &t, step_event(4)).await.unwrap();
    let rest = super::follow::take(&mut early, 4);
    assert!(
        rest.iter().all(|d| d.event.execution_id == kept),
        "{rest:?}"
    );
    super::follow::assert_nothing_more(&mut early);
    for filter in [
        SubscriptionFilter::All,
        SubscriptionFilter::Tenant(t.clone()),
        SubscriptionFilter::Execution(gone.clone()),
    ] {
        let mut late = store
            .subscribe(filter.clone(), StartFrom::Beginning)
            .unwrap();
        let wanted = if matches!(filter, SubscriptionFilter::Execution(_)) {
            0
        } else {
            4
        };
        let got = super::follow::take(&mut late, wanted);
        assert!(got.iter().all(|d| d.event.execution_id == kept));
        super::follow::assert_nothing_more(&mut late);
    }
    store.close().unwrap();
}

/// `prune(d)` deletes the executions idle for longer than `d`, keeps the others, and
/// keeps an old execution that was appended to again.
pub async fn prune_deletes_only_executions_idle_longer_than_asked<B: Backend>(b: B)
where
    B::Store: Lifecycle,
{
    let store = b.open();
    let (t, u) = (TenantId::from("t"), TenantId::from("u"));
    let (old, old_other, revived, fresh) = (
        ExecutionId::new(),
        ExecutionId::new(),
        ExecutionId::new(),
        ExecutionId::new(),
    );
    store.append(&old, &t, step_event(1)).await.unwrap();
    store.append(&old_other, &u, step_event(1)).await.unwrap();
    store.append(&revived, &t, step_event(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    store.append(&revived, &t, step_event(2)).await.unwrap();
    store.append(&fresh, &t, step_event(1)).await.unwrap();
    assert_eq!(store.prune(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(store.prune(Duration::from_millis(1000)).await.unwrap(), 2);
    assert_gone(&store, &old, &t).await;
    assert_gone(&store, &old_other, &u).await;
    assert!(deleted(store.append(&old, &t, step_event(2)).await));
    assert_eq!(store.count_events(&revived).await.unwrap(), 2);
    assert_eq!(store.count_events(&fresh).await.unwrap(), 1);
    assert_eq!(store.prune(Duration::from_millis(1000)).await.unwrap(), 0);
    store.close().unwrap();
}

/// Appends racing a deletion: each one either was stored before it (and is then
/// gone with the execution) or fails with `Deleted`; none succeeds after a refusal,
/// and the log holds nothing of the execution after its deletion (a crash image and a
/// reopen replay it to the same answer). Ten rounds, to meet the moment between the
/// deletion being queued and being durable.
pub async fn appends_racing_a_delete_are_stored_before_it_or_refused<B: Backend>(b: B)
where
    B::Store: Lifecycle,
{
    let store = std::sync::Arc::new(b.open());
    let t = TenantId::from("t");
    let mut raced = Vec::new();
    for _ in 0..10 {
        let e = ExecutionId::new();
        race_one_deletion(&store, &e, &t).await;
        raced.push(e);
    }
    let crashed = b.open_crashed(&store);
    for e in &raced {
        assert_gone(&crashed, e, &t).await;
        assert!(deleted(crashed.append(e, &t, step_event(1)).await));
    }
    crashed.close().unwrap();
    store.close().unwrap();
    drop(store);
    let reopened = b.open();
    for e in &raced {
        assert_gone(&reopened, e, &t).await;
    }
    reopened.close().unwrap();
}

async fn race_one_deletion<S: GuardedEventStore + Lifecycle + 'static>(
    store: &std::sync::Arc<S>,
    e: &ExecutionId,
    t: &TenantId,
) {
    store.append(e, t, step_event(0)).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let (store, e, t) = (std::sync::Arc::clone(store), e.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let mut stored = Vec::new();
            for i in 0..100_000u64 {
                match store.append(&e, &t, step_event(w * 1_000_000 + i)).await {
                    Ok(s) => stored.push(s),
                    Err(err) => {
                        assert!(matches!(engine_error(&err), Error::Deleted), "{err:#}");
                        return stored;
                    }
                }
            }
            panic!("the deletion never reached writer {w}");
        }));
    }
    while store.get_latest_sequence(e).await.unwrap().unwrap_or(0) < 20 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(store.delete_execution(e).await.unwrap());
    let mut sequences: Vec<u64> = vec![1];
    for task in tasks {
        sequences.extend(task.await.unwrap());
    }
    sequences.sort_unstable();
    let expected: Vec<u64> = (1..=sequences.len() as u64).collect();
    assert_eq!(sequences, expected, "acknowledged sequences have a gap");
    assert_gone(&**store, e, t).await;
}

/// Invalid ids are refused before anything is recorded; a closed store refuses.
pub async fn lifecycle_arguments_are_checked_and_a_closed_store_refuses<B: Backend>(b: B)
where
    B::Store: Lifecycle,
{
    let store = b.open();
    let bad = ExecutionId::from("");
    let err = store.delete_execution(&bad).await.unwrap_err();
    assert!(
        matches!(engine_error(&err), Error::InvalidArgument(_)),
        "{err:#}"
    );
    let err = store.delete_tenant(&TenantId::from("")).await.unwrap_err();
    assert!(
        matches!(engine_error(&err), Error::InvalidArgument(_)),
        "{err:#}"
    );
    store.close().unwrap();
    let err = store
        .delete_execution(&ExecutionId::new())
        .await
        .unwrap_err();
    assert!(matches!(engine_error(&err), Error::Closed), "{err:#}");
    let err = store.delete_tenant(&TenantId::from("t")).await.unwrap_err();
    assert!(matches!(engine_error(&err), Error::Closed), "{err:#}");
    let err = store.prune(Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(engine_error(&err), Error::Closed), "{err:#}");
}
