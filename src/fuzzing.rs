//! Entry points for cargo-fuzz and the codec micro-benchmarks (feature `fuzzing`): the
//! record encoder and decoder, and a whole open on hostile bytes. The decoding entry
//! points must return, never panic, and never allocate more than their input justifies.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::fault::SimIo;
use crate::record;
use crate::scan::{Scanner, Step};
use crate::{ExecutionEventData, ExecutionId, LogStore, Options, StepId, TenantId};

/// Decodes `bytes` as one record (header, CRC, body), scans them as a segment's record
/// area, and decodes them as an index checkpoint whose trailing CRC is made to match
/// (so that the fuzzer explores the checkpoint's fields, not its CRC). Returns how many
/// decodes succeeded.
pub fn decode_record(bytes: &[u8]) -> usize {
    let mut decoded = usize::from(record::decode_event(bytes).is_ok());
    for step in Scanner::new(bytes, 0) {
        if let Step::Record { body, .. } = step {
            decoded += usize::from(crate::codec::decode_body(body).is_ok());
        }
    }
    let mut checkpoint = bytes.to_vec();
    checkpoint.extend_from_slice(&record::crc32(bytes).to_le_bytes());
    decoded += usize::from(crate::checkpoint::decode(&checkpoint, 16).is_ok());
    decoded + find_in_directory(checkpoint)
}

/// Opens `checkpoint` as open does before the index is decoded, and looks up the ids
/// its bytes could hold (every run of printable bytes): how many were found.
fn find_in_directory(checkpoint: Vec<u8>) -> usize {
    let Ok(opened) = crate::checkpoint_directory::Directory::open(Arc::new(checkpoint), 16) else {
        return 0;
    };
    let bytes = opened.directory.file();
    bytes
        .split(|b| !b.is_ascii_graphic())
        .filter_map(|run| std::str::from_utf8(run).ok())
        .filter(|id| !id.is_empty())
        .filter(|id| opened.directory.find(id).is_some())
        .count()
}

/// Frames `event` as the first record of an execution, exactly as the append path
/// does (body encoding, header, CRC), appending it to `out`.
pub fn encode_event_record(event: ExecutionEventData, out: &mut Vec<u8>) -> Result<(), String> {
    let mut body = Vec::new();
    crate::codec::encode_event(event, &mut body)?;
    let declaration = crate::codec::Declaration {
        execution_id: "exec".into(),
        tenant_id: "tenant".into(),
    };
    let mut decl = Vec::new();
    crate::codec::encode_declaration(Some(&declaration), &mut decl);
    let header = record::Header {
        kind: record::Kind::Event,
        group_start: 0,
        execution: 1,
        sequence: 1,
        timestamp_ns: 0,
        prev: None,
        batch_remaining: 0,
    };
    record::encode(&header, &[&decl, &body], out);
    Ok(())
}

/// Verifies and decodes one record into its typed event, as a read does.
pub fn decode_event_record(bytes: &[u8]) -> Result<ExecutionEventData, String> {
    record::decode_event(bytes).map(|(_, _, event)| event)
}

/// Builds a small valid store in a simulated file system (once per process; every call
/// works on a fresh copy), writes `bytes` over the end of its newest segment's data (as
/// a crash or an attacker might leave it), opens it, and reads every execution back.
/// Returns the number of events read, or the error.
///
/// Seven inputs in eight (by their first byte) open read-only: the same recovery scan,
/// torn-tail and corruption rules, without the commit thread, whose start and stop
/// (a thread and its stack each time) took more time than the recovery itself. The
/// eighth opens for writing, which also cuts the tail and starts the commit thread.
///
/// The segment file ends where `bytes` end, as if zeroing ahead had reached no
/// further (a file is always zeroed to its length, in steps): recovery's zero scans then
/// cover the input, not 64 KiB of zeros, which under coverage instrumentation was most
/// of the time of an execution, and each run copies a few hundred bytes, not 64 KiB.
pub fn open_with_damaged_tail(bytes: &[u8]) -> Result<usize, crate::Error> {
    static BASE: OnceLock<Result<(SimIo, usize), String>> = OnceLock::new();
    let (base, end) = match BASE.get_or_init(|| build_base().map_err(|e| e.to_string())) {
        Ok(base) => base,
        Err(why) => panic!("cannot build the fuzzing base store: {why}"),
    };
    let sim = base.snapshot();
    let path = base_dir().join(crate::store_dir::segment_name(1));
    let mut file = sim.read_file(&path).unwrap_or_default();
    debug_assert_eq!(file.len(), *end);
    file.extend_from_slice(bytes);
    file.resize(file.len().next_multiple_of(crate::record::RECORD_ALIGN), 0);
    sim.write_file(&path, file);
    let read_only = bytes.first().is_some_and(|b| b % 8 != 0);
    let store = LogStore::open_mode(base_dir(), base_options(&sim), read_only)?;
    let mut read = 0;
    for id in base_ids() {
        read += store.load_events_blocking(&id)?.len();
    }
    Ok(read)
}

fn base_dir() -> &'static Path {
    Path::new("/fuzz")
}

fn base_options(sim: &SimIo) -> Options {
    Options::default()
        .segment_size_bytes(64 * 1024)
        .io(Arc::new(sim.clone()))
}

fn base_ids() -> Vec<ExecutionId> {
    (0..3).map(|i| ExecutionId::from(format!("e{i}"))).collect()
}

/// Three executions of 1, 2 and 3 events; returns the file system and where the data
/// ends. The first two are covered by an index checkpoint (a clean close), the third
/// was appended after it (closed without writing a new one): opens verify and load the
/// checkpoint, then scan the rest and the fuzzer's bytes, or, when the damage reaches
/// the covered records, ignore it and scan everything.
fn build_base() -> Result<(SimIo, usize), crate::Error> {
    let sim = SimIo::new();
    let mut store = LogStore::open_with(base_dir(), base_options(&sim))?;
    for (i, id) in base_ids().iter().enumerate() {
        if i == 2 {
            store.close()?;
            drop(store);
            store = LogStore::open_with(base_dir(), base_options(&sim).index_checkpoint(false))?;
        }
        let events = (0..=i)
            .map(|k| ExecutionEventData::StepCompleted {
                step_id: StepId::from(format!("s{k}")),
                output: Some("out".into()),
                duration_ms: k as u64,
            })
            .collect();
        store.append_batch_blocking(id, &TenantId::from("t"), events)?;
    }
    let end = store.stats().data_bytes as usize;
    store.close()?;
    // Cut after the data (the seal and the zeros go): each run copies only this much.
    let path = base_dir().join(crate::store_dir::segment_name(1));
    let mut file = sim.read_file(&path).unwrap_or_default();
    file.truncate(end);
    sim.write_file(&path, file);
    Ok((sim, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_tail_keeps_the_acknowledged_events() {
        assert_eq!(open_with_damaged_tail(&[]).ok(), Some(6));
        assert_eq!(open_with_damaged_tail(&[0xAB; 300]).ok(), Some(6));
        assert_eq!(open_with_damaged_tail(&[0xA8; 300]).ok(), Some(6));
        // Each call starts from the same base: damage does not accumulate.
        assert_eq!(open_with_damaged_tail(&[0; 8]).ok(), Some(6));
    }

    #[test]
    fn the_base_store_opens_from_its_checkpoint() {
        let (sim, _) = build_base().unwrap_or_else(|e| panic!("{e}"));
        let store = LogStore::open_mode(base_dir(), base_options(&sim), true)
            .unwrap_or_else(|e| panic!("{e}"));
        let report = store.recovery_report();
        assert!(report.checkpoint_bytes > 0, "{report:?}");
        assert_eq!(report.records, 6);
    }
}
