//! Opening a store whose newest segment ends in arbitrary bytes: a clean open (torn
//! tail cut) or a clear error, never a panic; acknowledged events before the damage
//! always read back.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(read) = execlog::fuzzing::open_with_damaged_tail(data) {
        // The three executions hold 1 + 2 + 3 acknowledged events before the damage.
        assert!(read >= 6, "acknowledged events lost: read {read}");
    }
});
