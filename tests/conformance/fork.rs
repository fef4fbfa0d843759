//! Forks (issue 15: `Lifecycle::fork_execution`, `fork_point`), test by test, generic
//! over the backend; part of `lifecycle_suite!`.
//!
//! The contract, as the tests read it:
//! - a fork's events `1..=at` are the source's: same sequences, events and timestamps,
//!   read under the fork's id and the source's tenant; its own appends follow from
//!   `at + 1`; the source goes on independently;
//! - a fork is durable when the call returns (reopen, crash), forks of forks too;
//! - `fork_point` names the parent with the `fork` relation and `at`;
//! - bad requests are refused and record nothing: unknown or deleted source,
//!   `at` outside `1..=latest`, a used id (`InvalidArgument`), a deleted id (`Deleted`);
//! - deleting the source keeps the fork whole; deleting the fork keeps the source;
//!   deleting the tenant takes both.

use super::Backend;
use super::Twins;
use crate::common::*;
use execlog::*;

/// The source's events `1..=at` as the fork must serve them.
fn as_fork(source: &[StoredEvent], at: u64, fork: &ExecutionId) -> Vec<StoredEvent> {
    source
        .iter()
        .take(at as usize)
        .map(|e| StoredEvent {
            execution_id: fork.clone(),
            ..e.clone()
        })
        .collect()
}

fn error_of<T: std::fmt::Debug>(result: anyhow::Result<T>) -> Error {
    let err = result.expect_err("refused");
    let engine = engine_error(&err);
    match engine {
        Error::InvalidArgument(what) => Error::InvalidArgument(what.clone()),
        Error::Deleted => Error::Deleted,
        other => panic!("unexpected error: {other:?}"),
    }
}

/// A fork serves the source's prefix under its own id, then its own events.
pub async fn a_fork_reads_the_source_prefix_then_its_own_events<B: Backend>(b: B)
where
    B::Store: Lifecycle,
{
    let store = b.open();
    let (source, fork, t) = (ExecutionId::new(), ExecutionId::new(), TenantId::from("t"));
    let variants = every_variant();
    for (i, ev) in variants.iter().enumerate().take(10) {
        store.append(&source, &t, ev.clone()).await.unwrap();
        if i == 4 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    let before = store.load_events(&source).await.unwrap();
    store.fork_execution(&source, 4, &fork).await.unwrap();
    assert_eq!(
        store.load_events(&fork).await.unwrap(),
        as_fork(&before, 4, &fork)
    );
    assert_eq!(store.get_latest_sequence(&fork).await.unwrap(), Some(4));
    assert_eq!(
        store.execution_tenant(&fork).await.unwrap(),
        Some(t.clone())
    );
    assert_eq!(store.append(&fork, &t, step_event(100)).await.unwrap(), 5);
    assert_eq!(store.append(&source, &t, step_event(11)).await.unwrap(), 11);
    let forked = store.load_events(&fork).await.unwrap();
    assert_eq!(forked.len(), 5);
    assert_eq!(forked[..4], as_fork(&before, 4, &fork)[..]);
    assert_eq!(event_number(&forked[4].event), Some(100));
    let after = store.load_events_after(&fork, 2).await.unwrap();
    assert_eq!(after, forked[2..].to_vec());
    assert_eq!(store.count_events(&source).await.unwrap(), 11);
    assert!(
        store
            .list_executions(&t, 10, 0)
            .await
            .unwrap()
            .contains(&fork)
    );
    let point = store.fork_point(&fork).await.unwrap().unwrap();
    assert_eq!(
        (
            point.parent.execution_id.clone(),
            point.parent.relation,
            point.at_sequence
        ),
        (source.clone(), ParentRelation::Fork, 4)
    );
    assert_eq!(store.fork_point(&source).await.unwrap(), None);
    assert_eq!(store.fork_point(&ExecutionId::new()).await.unwrap(), None);
    // Guarded appends see the fork's latest sequence; the tenant is the source's.
    let o = store
        .append_with(
            &fork,
            &t,
            vec![step_event(101)],
            AppendOptions::expect(ExpectedSequence::Exactly(5)),
        )
        .await
        .unwrap();
    assert_eq!(o.first_sequence, 6);
    let err = store
        .append(&fork, &TenantId::from("other"), step_event(1))
        .await;
    assert!(matches!(
        engine_error(&err.unwrap_err()),
        Error::TenantMismatch { .. }
    ));
    store.close().unwrap();
}

/// Forks (and forks of forks, at and beyond the index's stride) are durable.
pub async fn forks_survive_reopen_and_crash<B: Backend>(b: B)
where
    B::Store: Lifecycle,
{
    let t = TenantId::from("t");
    let (source, fork, fork2) = (ExecutionId::new(), ExecutionId::new(), ExecutionId::new());
    let (want_fork, want_fork2) = {
        let store = b.open();
        for i in 1..=100 {
            store.append(&source, &t, step_event(i)).await.unwrap();
        }
        store.fork_execution(&source, 37, &fork).await.unwrap();
        for i in 0..20 {
            store.append(&fork, &t, step_event(1000 + i)).await.unwrap();
        }
        store.fork_execution(&fork, 50, &fork2).await.unwrap();
        store.append(&fork2, &t, step_event(2000)).await.unwrap();
        let want = (
            store.load_events(&fork).await.unwrap(),
            store.load_events(&fork2).await.unwrap(),
        );
        assert_eq!(want.1.len(), 51);
        assert_eq!(want.1[..50], as_fork(&want.0, 50, &fork2)[..]);
        store.close().unwrap();
        want
    };
    let store = b.open();
    assert_eq!(store.load_events(&fork).await.unwrap(), want_fork);
    assert_eq!(store.load_events(&fork2).await.unwrap(), want_fork2);
    let fork3 = ExecutionId::new();
    store.fork_execution(&fork2, 51, &fork3).await.unwrap();
    let crashed = b.open_crashed(&store);
    assert_eq!(crashed.load_events(&fork2).await.unwrap(), want_fork2);
    assert_eq!(
        crashed.load_events(&fork3).await.unwrap(),
        as_fork(&want_fork2, 51, &fork3)
    );
    assert_eq!(crashed.append(&fork3, &t, step_event(1)).await.unwrap(), 52);
    crashed.close().unwrap();
    store.close().unwrap();
}

/// Bad fork requests are refused and record nothing.
pub async fn bad_forks_are_refused<B: Backend>(b: B)
where
    B::Store: Lifecycle,
{
    let store = b.open();
    let t = TenantId::from("t");
    let (source, used, gone, fresh) = (
        ExecutionId::new(),
        ExecutionId::new(),
        ExecutionId::new(),
        ExecutionId::new(),
    );
    for e in [&source, &used, &gone] {
        for i in 1..=3 {
            store.append(e, &t, step_event(i)).await.unwrap();
        }
    }
    assert!(store.delete_execution(&gone).await.unwrap());
    let unknown = ExecutionId::new();
    for (what, result) in [
        (
            "unknown source",
            store.fork_execution(&unknown, 1, &fresh).await,
        ),
        (
            "deleted source",
            store.fork_execution(&gone, 1, &fresh).await,
        ),
        ("at 0", store.fork_execution(&source, 0, &fresh).await),
        (
            "beyond the latest",
            store.fork_execution(&source, 4, &fresh).await,
        ),
        ("a used id", store.fork_execution(&source, 2, &used).await),
        (
            "the source's own id",
            store.fork_execution(&source, 2, &source).await,
        ),
    ] {
        assert!(
            matches!(error_of(result), Error::InvalidArgument(_)),
            "{what}"
        );
    }
    let err = error_of(store.fork_execution(&source, 2, &gone).await);
    assert!(
        matches!(err, Error::Deleted),
        "a deleted id is never reused"
    );
    assert!(!store.execution_exists(&fresh).await.unwrap());
    assert_eq!(store.count_events(&used).await.unwrap(), 3);
    // Nothing was reserved: the id is still free.
    store.fork_execution(&source, 3, &fresh).await.unwrap();
    assert_eq!(store.count_events(&fresh).await.unwrap(), 3);
    store.close().unwrap();
}

/// Deleting a source keeps its forks; deleting a fork keeps its source; deleting the
/// tenant takes both.
pub async fn deleting_a_source_keeps_its_forks<B: Backend>(b: B)
where
    B::Store: Lifecycle,
{
    let store = b.open();
    let t = TenantId::from("t");
    let (source, fork, other_fork) = (ExecutionId::new(), ExecutionId::new(), ExecutionId::new());
    for i in 1..=5 {
        store.append(&source, &t, step_event(i)).await.unwrap();
    }
    store.fork_execution(&source, 3, &fork).await.unwrap();
    store.fork_execution(&source, 5, &other_fork).await.unwrap();
    let want = store.load_events(&fork).await.unwrap();
    assert!(store.delete_execution(&other_fork).await.unwrap());
    assert_eq!(store.count_events(&source).await.unwrap(), 5);
    assert!(store.delete_execution(&source).await.unwrap());
    assert_eq!(store.load_events(&fork).await.unwrap(), want);
    assert_eq!(store.append(&fork, &t, step_event(9)).await.unwrap(), 4);
    assert!(store.load_events(&source).await.unwrap().is_empty());
    store.close().unwrap();
    drop(store);
    let store = b.open();
    assert_eq!(store.count_events(&fork).await.unwrap(), 4);
    assert_eq!(store.load_events(&fork).await.unwrap()[..3], want[..]);
    assert_eq!(store.delete_tenant(&t).await.unwrap(), 1);
    assert!(store.load_events(&fork).await.unwrap().is_empty());
    store.close().unwrap();
}

/// Subscriptions deliver a fork's own events only: its shared events are the source's,
/// delivered once, under the source's id (a fork is not an event). So with every
/// filter, from the beginning, live, resumed, and after the source was deleted.
pub async fn subscriptions_deliver_a_forks_own_events_only<B: Backend>(b: B)
where
    B::Store: Lifecycle + Follow,
{
    use super::follow::{take, take_exactly};
    let store = b.open();
    let t = TenantId::from("t");
    let (source, fork) = (ExecutionId::new(), ExecutionId::new());
    let names = |delivered: &[Delivered]| -> Vec<(ExecutionId, u64)> {
        delivered
            .iter()
            .map(|d| (d.event.execution_id.clone(), d.event.sequence))
            .collect()
    };
    let mut live = store
        .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
        .unwrap();
    let mut live_fork = store
        .subscribe(
            SubscriptionFilter::Execution(fork.clone()),
            StartFrom::Beginning,
        )
        .unwrap();
    for i in 1..=3 {
        store.append(&source, &t, step_event(i)).await.unwrap();
    }
    store.fork_execution(&source, 2, &fork).await.unwrap();
    store.append(&fork, &t, step_event(30)).await.unwrap();
    store.append(&source, &t, step_event(4)).await.unwrap();
    let want = vec![
        (source.clone(), 1),
        (source.clone(), 2),
        (source.clone(), 3),
        (fork.clone(), 3),
        (source.clone(), 4),
    ];
    let delivered = take_exactly(&mut live, 5);
    assert_eq!(names(&delivered), want, "a live subscription");
    assert_eq!(
        delivered[3].event,
        store.load_events(&fork).await.unwrap()[2]
    );
    assert_eq!(
        names(&take_exactly(&mut live_fork, 1)),
        [(fork.clone(), 3)],
        "a live subscription to the fork"
    );
    for filter in [
        SubscriptionFilter::All,
        SubscriptionFilter::Tenant(t.clone()),
    ] {
        let mut sub = store.subscribe(filter, StartFrom::Beginning).unwrap();
        assert_eq!(
            names(&take_exactly(&mut sub, 5)),
            want,
            "from the beginning"
        );
    }
    let mut sub = store
        .subscribe(
            SubscriptionFilter::Execution(fork.clone()),
            StartFrom::Beginning,
        )
        .unwrap();
    assert_eq!(names(&take_exactly(&mut sub, 1)), [(fork.clone(), 3)]);
    let mut resumed = store
        .subscribe(
            SubscriptionFilter::All,
            StartFrom::After(delivered[1].position),
        )
        .unwrap();
    assert_eq!(names(&take_exactly(&mut resumed, 3)), want[2..], "resumed");

    assert!(store.delete_execution(&source).await.unwrap());
    store.append(&fork, &t, step_event(31)).await.unwrap();
    assert_eq!(
        names(&take(&mut live, 1)),
        [(fork.clone(), 4)],
        "live, after the source's deletion"
    );
    let mut sub = store
        .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
        .unwrap();
    assert_eq!(
        names(&take_exactly(&mut sub, 2)),
        [(fork.clone(), 3), (fork.clone(), 4)],
        "from the beginning, after the source's deletion"
    );
    store.close().unwrap();
}
