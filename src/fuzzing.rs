//! Entry points for cargo-fuzz and the codec micro-benchmarks (feature `fuzzing`): the
//! record encoder and decoder, and a whole open on hostile bytes. The decoding entry
//! points must return, never panic, and never allocate more than their input justifies.

use std::path::Path;
use std::sync::Arc;

use crate::fault::SimIo;
use crate::record;
use crate::scan::{Scanner, Step};
use crate::{ExecutionEventData, ExecutionId, LogStore, Options, StepId, TenantId};

/// Decodes `bytes` as one record (header, CRC, body) and, separately, scans them as a
/// segment's record area. Returns how many records decoded.
pub fn decode_record(bytes: &[u8]) -> usize {
    let mut decoded = usize::from(record::decode_event(bytes).is_ok());
    for step in Scanner::new(bytes, 0) {
        if let Step::Record { body, .. } = step {
            decoded += usize::from(crate::codec::decode_body(body).is_ok());
        }
    }
    decoded
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

/// Builds a small valid store in a simulated file system, appends `bytes` to the end
/// of its newest segment's data (as a crash or an attacker might leave it), opens it,
/// and reads every execution back. Returns the number of events read, or the error.
pub fn open_with_damaged_tail(bytes: &[u8]) -> Result<usize, crate::Error> {
    let dir = Path::new("/fuzz");
    let sim = SimIo::new();
    let options = Options::default()
        .segment_size_bytes(64 * 1024)
        .io(Arc::new(sim.clone()));
    let ids: Vec<ExecutionId> = (0..3).map(|i| ExecutionId::from(format!("e{i}"))).collect();
    let end = {
        let store = LogStore::open_with(dir, options.clone())?;
        for (i, id) in ids.iter().enumerate() {
            let events = (0..=i)
                .map(|k| ExecutionEventData::StepCompleted {
                    step_id: StepId::from(format!("s{k}")),
                    output: Some("out".into()),
                    duration_ms: k as u64,
                })
                .collect();
            store.append_batch_blocking(id, &TenantId::from("t"), events)?;
        }
        store.stats().data_bytes as usize
    };
    let path = dir.join(crate::segment::file_name(1));
    let mut file = sim.read_file(&path).unwrap_or_default();
    let tail_at = end.min(file.len());
    let stop = (tail_at + bytes.len()).min(file.len());
    if let (Some(dst), Some(src)) = (file.get_mut(tail_at..stop), bytes.get(..stop - tail_at)) {
        dst.copy_from_slice(src);
    }
    sim.write_file(&path, file);
    let store = LogStore::open_with(dir, options)?;
    let mut read = 0;
    for id in &ids {
        read += store.load_events_blocking(id)?.len();
    }
    Ok(read)
}
