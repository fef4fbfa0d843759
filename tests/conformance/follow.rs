//! Following a store (issue 14: `Follow`, `Subscription`, positions), test by test,
//! generic over the backend; `follow_suite!` runs them.
//!
//! The contract, as the tests read it:
//! - every delivered event carries a position; positions grow strictly in delivery
//!   order, and delivery order is commit order: an execution's events arrive in
//!   sequence order;
//! - a subscription delivers every durable event its filter matches, exactly once,
//!   history first and then live events, with no gap and no duplicate at the hand-over;
//! - `StartFrom::After(p)` delivers exactly the matching events above `p`, and
//!   `end_position()` bounds every durable event, so `After(end_position())` delivers
//!   only later ones; `StartFrom::End` likewise;
//! - a slow subscriber loses nothing; appenders do not wait for it;
//! - the blocking iterator ends once the store is closed and everything was delivered;
//!   the `Stream` works on any executor.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use futures::StreamExt;

use super::Backend;
use super::Twins;
use crate::common::*;
use execlog::*;

/// Longest a test waits for one event that must come.
const PATIENCE: Duration = Duration::from_secs(30);

/// Runs the follow tests against a backend whose store implements `Follow`.
#[macro_export]
macro_rules! follow_suite {
    ($backend:ty) => {
        $crate::suite!(@tests $backend;
            history_arrives_in_commit_order_with_growing_positions,
            filters_deliver_one_tenant_or_one_execution,
            after_a_position_resumes_without_gap_or_duplicate,
            end_position_bounds_what_is_durable,
            start_at_end_delivers_only_new_events,
            catch_up_hands_over_to_live_without_gap,
            many_appenders_and_subscribers_each_see_exactly_theirs,
            positions_survive_reopen_and_resume_across_it,
            the_iterator_ends_after_close,
            the_stream_works_on_any_executor,
        );
    };
}

/// `n` events from `sub`, waiting for each.
pub fn take(sub: &mut Subscription, n: usize) -> Vec<Delivered> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match sub.next_timeout(PATIENCE).unwrap() {
            Some(d) => out.push(d),
            None => panic!("only {} of {n} events arrived", out.len()),
        }
    }
    out
}

/// Exactly `n` events from `sub`: `n` arrive, and no other within a moment after.
/// (On PostgreSQL an event is deliverable once every transaction that began before it
/// has ended, which other tests' transactions can delay: tests wait for what must come
/// instead of expecting it at once.)
pub fn take_exactly(sub: &mut Subscription, n: usize) -> Vec<Delivered> {
    let got = take(sub, n);
    assert_nothing_more(sub);
    got
}

/// No further event arrives within a moment.
pub fn assert_nothing_more(sub: &mut Subscription) {
    if let Some(d) = sub.next_timeout(Duration::from_millis(200)).unwrap() {
        panic!("unexpected event at position {}: {:?}", d.position, d.event);
    }
    assert!(sub.is_caught_up());
}

/// Everything `sub` has now, up to where it catches up.
pub fn drain(sub: &mut Subscription) -> Vec<Delivered> {
    let mut out = Vec::new();
    while let Some(d) = sub.try_next().unwrap() {
        out.push(d);
    }
    assert!(sub.is_caught_up());
    out
}

/// Positions grow strictly; each execution's sequences are consecutive from its first.
pub fn assert_ordered(delivered: &[Delivered], ctx: &str) {
    for w in delivered.windows(2) {
        assert!(
            w[0].position < w[1].position,
            "{ctx}: positions {} then {}",
            w[0].position,
            w[1].position
        );
    }
    let mut last: HashMap<&ExecutionId, u64> = HashMap::new();
    for d in delivered {
        let e = &d.event;
        if let Some(prev) = last.insert(&e.execution_id, e.sequence) {
            assert_eq!(
                e.sequence,
                prev + 1,
                "{ctx}: {} out of order",
                e.execution_id
            );
        }
    }
}

/// The stored events of `executions`, as `load_events_blocking` returns them.
fn loaded<S: Twins>(store: &S, executions: &[ExecutionId]) -> Vec<StoredEvent> {
    executions
        .iter()
        .flat_map(|e| store.load_events_blocking(e).unwrap())
        .collect()
}

/// Sorts events by execution and sequence, to compare sets.
fn by_execution(mut events: Vec<StoredEvent>) -> Vec<StoredEvent> {
    events.sort_by(|a, b| {
        (a.execution_id.as_str(), a.sequence).cmp(&(b.execution_id.as_str(), b.sequence))
    });
    events
}

fn events_of(delivered: Vec<Delivered>) -> Vec<StoredEvent> {
    delivered.into_iter().map(|d| d.event).collect()
}

/// Three executions of two tenants, appended interleaved: 10 events each, the last in
/// batches. Returns the executions in creation order.
fn interleaved<S: Twins>(store: &S) -> Vec<(ExecutionId, TenantId)> {
    let owners: Vec<_> = ["a", "b", "a"]
        .into_iter()
        .map(|t| (ExecutionId::new(), TenantId::from(t)))
        .collect();
    for i in 1..=6 {
        for (e, t) in &owners {
            store.append_blocking(e, t, step_event(i)).unwrap();
        }
    }
    for (e, t) in &owners {
        store
            .append_batch_blocking(e, t, (7..=10).map(step_event).collect())
            .unwrap();
    }
    owners
}

/// The history arrives complete, in commit order, positions growing, each event as
/// `load_events` returns it.
pub async fn history_arrives_in_commit_order_with_growing_positions<B: Backend>(b: B)
where
    B::Store: Follow,
{
    let store = b.open();
    let owners = interleaved(&store);
    let mut sub = store
        .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
        .unwrap();
    assert!(!sub.is_caught_up());
    let delivered = take_exactly(&mut sub, 30);
    assert_ordered(&delivered, "all");
    // Commit order: the first six rounds alternate between the executions.
    for (i, d) in delivered.iter().take(18).enumerate() {
        assert_eq!(d.event.execution_id, owners[i % 3].0, "event {i}");
        assert_eq!(d.event.sequence, i as u64 / 3 + 1);
    }
    assert_eq!(sub.last_position(), delivered.last().map(|d| d.position));
    let ids: Vec<_> = owners.iter().map(|o| o.0.clone()).collect();
    assert_eq!(
        by_execution(events_of(delivered)),
        by_execution(loaded(&store, &ids))
    );
}

/// A tenant filter delivers that tenant's executions only; an execution filter one
/// execution, also one created after the subscription.
pub async fn filters_deliver_one_tenant_or_one_execution<B: Backend>(b: B)
where
    B::Store: Follow,
{
    let store = b.open();
    let owners = interleaved(&store);
    let later = ExecutionId::new();
    let mut of_a = store
        .subscribe(
            SubscriptionFilter::Tenant(TenantId::from("a")),
            StartFrom::Beginning,
        )
        .unwrap();
    let mut of_later = store
        .subscribe(
            SubscriptionFilter::Execution(later.clone()),
            StartFrom::Beginning,
        )
        .unwrap();
    let mut of_nobody = store
        .subscribe(
            SubscriptionFilter::Tenant(TenantId::from("nobody")),
            StartFrom::Beginning,
        )
        .unwrap();
    let a = take_exactly(&mut of_a, 20);
    assert!(a.iter().all(|d| d.event.tenant_id.as_str() == "a"));
    assert_ordered(&a, "tenant a");
    assert_nothing_more(&mut of_later);
    store
        .append_batch_blocking(&later, &TenantId::from("b"), vec![step_event(1); 3])
        .unwrap();
    store
        .append_blocking(&owners[0].0, &owners[0].1, step_event(11))
        .unwrap();
    let l = take(&mut of_later, 3);
    assert!(l.iter().all(|d| d.event.execution_id == later));
    assert_eq!(
        l.iter().map(|d| d.event.sequence).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let more_a = take(&mut of_a, 1);
    assert_eq!(more_a[0].event.execution_id, owners[0].0);
    assert_eq!(more_a[0].event.sequence, 11);
    assert!(more_a[0].position > a.last().unwrap().position);
    assert_nothing_more(&mut of_nobody);
}

/// Resuming after the position of any delivered event delivers exactly the rest.
pub async fn after_a_position_resumes_without_gap_or_duplicate<B: Backend>(b: B)
where
    B::Store: Follow,
{
    let store = b.open();
    interleaved(&store);
    let all = take_exactly(
        &mut store
            .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
            .unwrap(),
        30,
    );
    for cut in [0, 1, 7, 17, 18, 25, 29] {
        let p = all[cut].position;
        let rest = take_exactly(
            &mut store
                .subscribe(SubscriptionFilter::All, StartFrom::After(p))
                .unwrap(),
            29 - cut,
        );
        assert_eq!(rest, all[cut + 1..], "after the event #{cut}");
    }
    let tenant_b = SubscriptionFilter::Tenant(TenantId::from("b"));
    let b_all = take_exactly(
        &mut store
            .subscribe(tenant_b.clone(), StartFrom::Beginning)
            .unwrap(),
        10,
    );
    // A position of another tenant's event is a valid resume point too.
    let expected: Vec<_> = b_all
        .into_iter()
        .filter(|d| d.position > all[12].position)
        .collect();
    let rest = take_exactly(
        &mut store
            .subscribe(tenant_b, StartFrom::After(all[12].position))
            .unwrap(),
        expected.len(),
    );
    assert_eq!(rest, expected);
    assert_nothing_more(
        &mut store
            .subscribe(SubscriptionFilter::All, StartFrom::After(u64::MAX - 1))
            .unwrap(),
    );
}

/// Every durable event's position is at most `end_position()`; later events are above.
pub async fn end_position_bounds_what_is_durable<B: Backend>(b: B)
where
    B::Store: Follow,
{
    let store = b.open();
    let empty_end = store.end_position().unwrap();
    interleaved(&store);
    let end = store.end_position().unwrap();
    assert!(end >= empty_end);
    let all = take_exactly(
        &mut store
            .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
            .unwrap(),
        30,
    );
    assert!(all.iter().all(|d| d.position <= end));
    assert!(all.iter().all(|d| d.position > empty_end));
    let mut after_end = store
        .subscribe(SubscriptionFilter::All, StartFrom::After(end))
        .unwrap();
    assert_nothing_more(&mut after_end);
    let (e, t) = (ExecutionId::new(), TenantId::from("c"));
    store.append_blocking(&e, &t, step_event(1)).unwrap();
    let new = take(&mut after_end, 1);
    assert!(new[0].position > end);
    assert_eq!(new[0].event.execution_id, e);
    assert!(store.end_position().unwrap() >= new[0].position);
}

/// `StartFrom::End` skips the history and delivers what comes after.
pub async fn start_at_end_delivers_only_new_events<B: Backend>(b: B)
where
    B::Store: Follow,
{
    let store = b.open();
    let owners = interleaved(&store);
    let mut sub = store
        .subscribe(SubscriptionFilter::All, StartFrom::End)
        .unwrap();
    assert_nothing_more(&mut sub);
    store
        .append_blocking(&owners[1].0, &owners[1].1, step_event(11))
        .unwrap();
    let got = take(&mut sub, 1);
    assert_eq!(got[0].event.execution_id, owners[1].0);
    assert_eq!(got[0].event.sequence, 11);
    assert_nothing_more(&mut sub);
}

/// A subscriber reading while appenders run: it catches up, then follows live, and
/// sees every event once, in order, across the hand-over.
pub async fn catch_up_hands_over_to_live_without_gap<B: Backend>(b: B)
where
    B::Store: Follow,
{
    let store = Arc::new(b.open());
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    for i in 1..=50 {
        store.append_blocking(&e, &t, step_event(i)).unwrap();
    }
    let mut sub = store
        .subscribe(
            SubscriptionFilter::Execution(e.clone()),
            StartFrom::Beginning,
        )
        .unwrap();
    let writer = std::thread::spawn({
        let (store, e, t) = (Arc::clone(&store), e.clone(), t.clone());
        move || {
            for i in 51..=400 {
                store.append_blocking(&e, &t, step_event(i)).unwrap();
            }
        }
    });
    let got = tokio::task::spawn_blocking(move || {
        let got = take(&mut sub, 400);
        (got, sub)
    })
    .await
    .unwrap();
    writer.join().unwrap();
    let (got, mut sub) = got;
    assert_ordered(&got, "live");
    assert_eq!(
        got.iter().map(|d| d.event.sequence).collect::<Vec<_>>(),
        (1..=400).collect::<Vec<_>>()
    );
    assert!(
        got.iter()
            .all(|d| event_number(&d.event.event) == Some(d.event.sequence))
    );
    assert_nothing_more(&mut sub);
}

/// 16 appenders on 8 executions of 2 tenants; 4 subscribers: everything from the
/// start, one tenant, one execution, and a slow one that starts after a position in
/// the middle of the history. Each sees exactly its events, once, in order.
pub async fn many_appenders_and_subscribers_each_see_exactly_theirs<B: Backend>(b: B)
where
    B::Store: Follow,
{
    const APPENDERS: usize = 16;
    const PER_APPENDER: u64 = 60;
    let store = Arc::new(b.open());
    let owners: Vec<(ExecutionId, TenantId)> = (0..8)
        .map(|i| (ExecutionId::new(), TenantId::from(["x", "y"][i % 2])))
        .collect();
    // Some history before the subscribers start.
    for (e, t) in &owners {
        store.append_blocking(e, t, step_event(0)).unwrap();
    }
    let history = take_exactly(
        &mut store
            .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
            .unwrap(),
        owners.len(),
    );
    let middle = history[3].position;
    let total = owners.len() as u64 + APPENDERS as u64 * PER_APPENDER;
    // How many events each subscriber must get, known once the appenders are done.
    let targets: Arc<OnceLock<[usize; 4]>> = Arc::new(OnceLock::new());
    let subscribers: Vec<_> = [
        (SubscriptionFilter::All, StartFrom::Beginning, false),
        (
            SubscriptionFilter::Tenant(TenantId::from("y")),
            StartFrom::Beginning,
            false,
        ),
        (
            SubscriptionFilter::Execution(owners[2].0.clone()),
            StartFrom::Beginning,
            false,
        ),
        (SubscriptionFilter::All, StartFrom::After(middle), true),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (filter, start, slow))| {
        let mut sub = store.subscribe(filter.clone(), start).unwrap();
        let targets = Arc::clone(&targets);
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let deadline = std::time::Instant::now() + 4 * PATIENCE;
            while targets.get().is_none_or(|t| got.len() < t[i]) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "subscriber {i} stalled"
                );
                if let Some(d) = sub.next_timeout(Duration::from_millis(50)).unwrap() {
                    got.push(d);
                    if slow && got.len() % 50 == 0 {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
            assert_nothing_more(&mut sub);
            (filter, got)
        })
    })
    .collect();
    let appenders: Vec<_> = (0..APPENDERS)
        .map(|k| {
            let store = Arc::clone(&store);
            let (e, t) = owners[k % owners.len()].clone();
            std::thread::spawn(move || {
                for i in 0..PER_APPENDER {
                    if i % 10 == 0 {
                        store
                            .append_batch_blocking(&e, &t, vec![step_event(k as u64); 2])
                            .unwrap();
                    } else {
                        store.append_blocking(&e, &t, step_event(k as u64)).unwrap();
                    }
                }
            })
        })
        .collect();
    for a in appenders {
        a.join().unwrap();
    }
    let ids: Vec<_> = owners.iter().map(|o| o.0.clone()).collect();
    let stored = loaded(store.as_ref(), &ids);
    assert_eq!(
        stored.len() as u64,
        total + APPENDERS as u64 * PER_APPENDER / 10
    );
    let count = |keep: &dyn Fn(&StoredEvent) -> bool| stored.iter().filter(|e| keep(e)).count();
    // The slow one starts after the fourth event of the history.
    let _ = targets.set([
        stored.len(),
        count(&|e| e.tenant_id.as_str() == "y"),
        count(&|e| e.execution_id == owners[2].0),
        stored.len() - 4,
    ]);
    let results = tokio::task::spawn_blocking(move || {
        subscribers
            .into_iter()
            .map(|s| s.join().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let all = &results[0].1;
    for (i, (filter, got)) in results.iter().enumerate() {
        assert_ordered(got, &format!("subscriber {i}"));
        let expected: Vec<StoredEvent> = match filter {
            SubscriptionFilter::All if i == 3 => all
                .iter()
                .filter(|d| d.position > middle)
                .map(|d| d.event.clone())
                .collect(),
            SubscriptionFilter::All => stored.clone(),
            SubscriptionFilter::Tenant(t) => stored
                .iter()
                .filter(|e| &e.tenant_id == t)
                .cloned()
                .collect(),
            SubscriptionFilter::Execution(x) => stored
                .iter()
                .filter(|e| &e.execution_id == x)
                .cloned()
                .collect(),
            _ => unreachable!(),
        };
        assert_eq!(
            by_execution(got.iter().map(|d| d.event.clone()).collect()),
            by_execution(expected),
            "subscriber {i}"
        );
    }
    // The subscribers agree on the positions of the events they share.
    let position_of: HashMap<_, _> = all
        .iter()
        .map(|d| ((d.event.execution_id.clone(), d.event.sequence), d.position))
        .collect();
    for (_, got) in &results[1..] {
        for d in got {
            assert_eq!(
                position_of[&(d.event.execution_id.clone(), d.event.sequence)],
                d.position
            );
        }
    }
}

/// Positions are the same after a reopen, and a resume across the reopen continues
/// exactly where the consumer stopped.
pub async fn positions_survive_reopen_and_resume_across_it<B: Backend>(b: B)
where
    B::Store: Follow,
{
    let store = b.open();
    interleaved(&store);
    let before = take_exactly(
        &mut store
            .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
            .unwrap(),
        30,
    );
    let resume_at = before[20].position;
    store.close().unwrap();
    drop(store);
    let store = b.open();
    let after = take_exactly(
        &mut store
            .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
            .unwrap(),
        30,
    );
    assert_eq!(before, after);
    let (e, t) = (ExecutionId::new(), TenantId::from("a"));
    store.append_blocking(&e, &t, step_event(1)).unwrap();
    let resumed = take_exactly(
        &mut store
            .subscribe(SubscriptionFilter::All, StartFrom::After(resume_at))
            .unwrap(),
        10,
    );
    assert_eq!(resumed[..9], before[21..]);
    assert_eq!(resumed.len(), 10);
    assert_eq!(resumed[9].event.execution_id, e);
    assert!(resumed[9].position > before[29].position);
}

/// The blocking iterator delivers what is durable, then ends when the store closes.
pub async fn the_iterator_ends_after_close<B: Backend>(b: B)
where
    B::Store: Follow,
{
    let store = Arc::new(b.open());
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    for i in 1..=5 {
        store.append_blocking(&e, &t, step_event(i)).unwrap();
    }
    let sub = store
        .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
        .unwrap();
    let reader = tokio::task::spawn_blocking(move || {
        Iterator::map(sub, |d| d.unwrap().event.sequence).collect::<Vec<_>>()
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.append_blocking(&e, &t, step_event(6)).unwrap();
    store.close().unwrap();
    let got = tokio::time::timeout(PATIENCE, reader)
        .await
        .expect("the iterator ends after close")
        .unwrap();
    assert_eq!(got, (1..=6).collect::<Vec<_>>());
    assert!(
        store
            .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
            .is_err()
    );
}

/// The stream: on this tokio runtime, on a current-thread one, and under
/// `futures::executor::block_on`, each woken by appends made elsewhere.
pub async fn the_stream_works_on_any_executor<B: Backend>(b: B)
where
    B::Store: Follow,
{
    let store = Arc::new(b.open());
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    store.append_blocking(&e, &t, step_event(1)).unwrap();
    let appender = |from: u64| {
        let (store, e, t) = (Arc::clone(&store), e.clone(), t.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            for i in from..from + 5 {
                store.append_blocking(&e, &t, step_event(i)).unwrap();
            }
        })
    };
    let sequences = |got: Vec<Result<Delivered>>| -> Vec<u64> {
        got.into_iter().map(|d| d.unwrap().event.sequence).collect()
    };
    // This multi-thread runtime.
    let sub = store
        .subscribe(
            SubscriptionFilter::Execution(e.clone()),
            StartFrom::Beginning,
        )
        .unwrap();
    let a = appender(2);
    let got = tokio::time::timeout(PATIENCE, StreamExt::take(sub, 6).collect::<Vec<_>>())
        .await
        .unwrap();
    a.join().unwrap();
    assert_eq!(sequences(got), (1..=6).collect::<Vec<_>>());
    // A current-thread runtime and a plain executor, each on a thread of its own.
    let after = store.end_position().unwrap();
    let sub = store
        .subscribe(SubscriptionFilter::All, StartFrom::After(after))
        .unwrap();
    let current_thread = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(StreamExt::take(sub, 5).collect::<Vec<_>>())
    });
    let sub = store
        .subscribe(SubscriptionFilter::All, StartFrom::After(after))
        .unwrap();
    let plain = std::thread::spawn(move || {
        futures::executor::block_on(StreamExt::take(sub, 5).collect::<Vec<_>>())
    });
    let a = appender(7);
    a.join().unwrap();
    let expected: Vec<u64> = (7..12).collect();
    assert_eq!(sequences(current_thread.join().unwrap()), expected);
    assert_eq!(sequences(plain.join().unwrap()), expected);
}
