//! The record decoder on arbitrary bytes: Ok or Err, never a panic, never an
//! allocation sized by a forged length.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = execlog::fuzzing::decode_record(data);
});
