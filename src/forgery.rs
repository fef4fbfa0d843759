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
