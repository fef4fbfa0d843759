//! For tests that forge on-disk files (feature `fault-injection`): what a forger who
//! knows the format would do to make a changed file consistent again, so that the
//! tests reach the checks behind the checksums.

/// Makes a checkpoint changed in place consistent again: its directory, trailer and
/// CRC recomputed from the rest of the file, as far as the rest decodes (else only
/// the CRC).
pub fn reseal_checkpoint(bytes: &mut [u8]) {
    crate::checkpoint::reseal(bytes);
}

/// Makes a segment sidecar changed in place consistent again: its trailing CRC
/// recomputed over the rest.
pub fn reseal_sidecar(bytes: &mut [u8]) {
    crate::sidecar::reseal(bytes);
}

/// The sidecar the checkpoint thread would write for segment `id` if its records
/// ended at `end` (`bytes`: the segment's file): what a forger who knows the format
/// writes to make a sidecar consistent with a part of its segment. `Err` if the bytes
/// up to `end` do not scan as a sealed segment's would.
pub fn sidecar_for(id: u32, bytes: &[u8], end: u64) -> Result<Vec<u8>, String> {
    crate::sidecar::summarize_part(id, bytes, end)
        .map(|s| crate::sidecar::encode(&s))
        .map_err(|e| e.to_string())
}

/// Makes a segment sidecar changed in place consistent again with its segment's file
/// `segment` as well: the CRC of the segment's bytes before the end it states, then
/// its own CRC (a forger who can read the segment).
pub fn reseal_sidecar_against(bytes: &mut [u8], segment: &[u8]) {
    crate::sidecar::reseal_against(bytes, segment);
}
