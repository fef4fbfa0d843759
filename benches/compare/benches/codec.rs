//! Micro-benchmarks of the codec and CRC path, per event of the comparison's workload
//! (a `StepCompleted` with a 150-byte output, ~250 bytes stored):
//! - `encode`: event -> framed record (bincode body, declaration, header, CRC), as an
//!   append does before it takes the store lock;
//! - `decode`: record -> typed event (CRC check, header, body), as a read does;
//! - `crc32`: the CRC-32 (crc32fast) of the same record bytes alone, the floor under both;
//! - `json_encode` / `json_decode`: serde_json on the same event, which is what the
//!   SQLite peer stores and parses.
//!
//! `cargo bench --manifest-path benches/compare/Cargo.toml --bench codec`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use execlog::fuzzing::{decode_event_record, encode_event_record};
use execlog::{ExecutionEventData, StepId};

fn event() -> ExecutionEventData {
    ExecutionEventData::StepCompleted {
        step_id: StepId::from("step-0042"),
        output: Some("o".repeat(150)),
        duration_ms: 1234,
    }
}

fn codec(c: &mut Criterion) {
    let mut record = Vec::new();
    encode_event_record(event(), &mut record).expect("the event encodes");
    let json = serde_json::to_vec(&event()).expect("the event serializes");

    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Bytes(record.len() as u64));
    group.bench_function("encode", |b| {
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            out.clear();
            encode_event_record(black_box(event()), &mut out).expect("the event encodes");
            black_box(out.len())
        })
    });
    group.bench_function("decode", |b| {
        b.iter(|| decode_event_record(black_box(&record)).expect("the record decodes"))
    });
    group.bench_function("crc32", |b| b.iter(|| crc32fast::hash(black_box(&record))));
    group.bench_function("json_encode", |b| {
        b.iter(|| serde_json::to_vec(black_box(&event())).expect("the event serializes"))
    });
    group.bench_function("json_decode", |b| {
        b.iter(|| {
            serde_json::from_slice::<ExecutionEventData>(black_box(&json))
                .expect("the event parses")
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
