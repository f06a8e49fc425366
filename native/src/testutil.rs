//! Helpers shared by the unit tests of the plain Rust modules.

/// `n` pseudo-random bytes: the BLAKE3 extendable output keyed by `seed`.
pub fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; n];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}
