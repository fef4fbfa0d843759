use execlog::*;
#[test]
fn smoke() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let e = ExecutionId::new();
    let t = TenantId::from("t");
    for i in 1..=40u64 {
        let s = store.append_blocking(&e, &t, ExecutionEventData::StepCompleted { step_id: StepId::new(), output: Some("x".into()), duration_ms: i }).unwrap();
        assert_eq!(s, i);
    }
    let evs = store.load_events_blocking(&e).unwrap();
    assert_eq!(evs.len(), 40);
    let evs = store.read_range_blocking(&e, 5, 10).unwrap();
    assert_eq!(evs.iter().map(|e| e.sequence).collect::<Vec<_>>(), (6..=15).collect::<Vec<_>>());
    drop(store);
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.load_events_blocking(&e).unwrap().len(), 40);
    println!("{:?} {:?}", store.recovery_report(), store.stats());
}
