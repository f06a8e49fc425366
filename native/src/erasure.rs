//! Systematic Reed–Solomon over GF(2^16) (`reed-solomon-simd` 3.x, Leopard-RS).
//!
//! Data shards are the padded pack's own bytes; parity shards come from the
//! crate unchanged (that is the format). Because the crate codes each 64-byte
//! column block of the shards independently, a large shard is split into
//! 64-byte-aligned column ranges coded on separate threads; the result is
//! identical to coding it whole (a unit test checks this).

use std::cell::RefCell;

use rayon::prelude::*;
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use crate::hash::ChunkHash;

thread_local! {
    /// One encoder and one decoder per thread, reset for each use: their work
    /// buffers are several MiB, and fresh pages cost more than the coding.
    static ENCODER: RefCell<Option<ReedSolomonEncoder>> = const { RefCell::new(None) };
    static DECODER: RefCell<Option<ReedSolomonDecoder>> = const { RefCell::new(None) };
}

fn with_encoder<R>(
    k: usize,
    m: usize,
    width: usize,
    f: impl FnOnce(&mut ReedSolomonEncoder) -> Result<R, ErasureError>,
) -> Result<R, ErasureError> {
    ENCODER.with(|cell| {
        let mut slot = cell.borrow_mut();
        match slot.as_mut() {
            Some(enc) => enc.reset(k, m, width).map_err(rs_err)?,
            None => *slot = Some(ReedSolomonEncoder::new(k, m, width).map_err(rs_err)?),
        }
        f(slot.as_mut().expect("set above"))
    })
}

fn with_decoder<R>(
    k: usize,
    m: usize,
    width: usize,
    f: impl FnOnce(&mut ReedSolomonDecoder) -> Result<R, ErasureError>,
) -> Result<R, ErasureError> {
    DECODER.with(|cell| {
        let mut slot = cell.borrow_mut();
        match slot.as_mut() {
            Some(dec) => dec.reset(k, m, width).map_err(rs_err)?,
            None => *slot = Some(ReedSolomonDecoder::new(k, m, width).map_err(rs_err)?),
        }
        f(slot.as_mut().expect("set above"))
    })
}

fn rs_err(e: reed_solomon_simd::Error) -> ErasureError {
    ErasureError(e.to_string())
}

/// Largest `k + m` the format allows.
pub const SHARDS_MAX: usize = 256;
/// Column ranges below this many bytes are not split further across threads.
const SPLIT_MIN_BYTES: usize = 64 * 1024;

/// Why encoding or reconstruction was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErasureError(pub String);

impl std::fmt::Display for ErasureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ErasureError {}

fn err<T>(msg: String) -> Result<T, ErasureError> {
    Err(ErasureError(msg))
}

/// Checks `1 <= k`, `0 <= m`, `k + m <= 256` and a non-zero, even shard size.
pub fn check_geometry(k: usize, m: usize, shard_size: usize) -> Result<(), ErasureError> {
    if k == 0 || k + m > SHARDS_MAX {
        return err(format!(
            "need 1 <= k and k + m <= {SHARDS_MAX}, got k={k} m={m}"
        ));
    }
    if shard_size == 0 || shard_size % 2 != 0 {
        return err(format!(
            "shard size must be even and non-zero, got {shard_size}"
        ));
    }
    Ok(())
}

/// Column ranges `[a, b)` of a shard coded independently (64-byte aligned).
pub(crate) fn column_ranges(shard_size: usize, parts: usize) -> Vec<(usize, usize)> {
    if shard_size % 64 != 0 || parts <= 1 || shard_size < 2 * SPLIT_MIN_BYTES {
        return vec![(0, shard_size)];
    }
    let blocks = shard_size / 64;
    let parts = parts.min(shard_size / SPLIT_MIN_BYTES).max(1);
    (0..parts)
        .map(|p| (blocks * p / parts * 64, blocks * (p + 1) / parts * 64))
        .filter(|(a, b)| a < b)
        .collect()
}

fn parallel_parts() -> usize {
    rayon::current_num_threads().max(1)
}

/// Parity of `k` data shards of `shard_size` bytes each, laid end to end in
/// `padded`; writes the `m` parity shards end to end into `parity`
/// (`m * shard_size` bytes).
pub fn encode_into(
    padded: &[u8],
    k: usize,
    m: usize,
    parity: &mut [u8],
) -> Result<(), ErasureError> {
    if k == 0 || padded.len() % k != 0 {
        return err(format!(
            "pack of {} bytes does not split into k={k} equal shards",
            padded.len()
        ));
    }
    let shard_size = padded.len() / k;
    check_geometry(k, m, shard_size)?;
    if parity.len() != m * shard_size {
        return err(format!(
            "parity buffer is {} bytes, need {}",
            parity.len(),
            m * shard_size
        ));
    }
    if m == 0 {
        return Ok(());
    }
    if !ReedSolomonEncoder::supports(k, m) {
        return err(format!("k={k} m={m} is not supported by the erasure code"));
    }
    let ranges = column_ranges(shard_size, parallel_parts());
    let mut outs = split_columns(parity, shard_size, &ranges);
    ranges
        .par_iter()
        .zip(outs.par_iter_mut())
        .try_for_each(|(&(a, b), out)| {
            with_encoder(k, m, b - a, |enc| {
                for i in 0..k {
                    let start = i * shard_size;
                    enc.add_original_shard(&padded[start + a..start + b])
                        .map_err(rs_err)?;
                }
                let result = enc.encode().map_err(rs_err)?;
                for (dst, src) in out.iter_mut().zip(result.recovery_iter()) {
                    dst.copy_from_slice(src);
                }
                Ok(())
            })
        })
}

/// Splits shards laid end to end in `buf` into, per column range, the list
/// of that range's piece of every shard (disjoint, so ranges fill in parallel).
fn split_columns<'a>(
    buf: &'a mut [u8],
    shard_size: usize,
    ranges: &[(usize, usize)],
) -> Vec<Vec<&'a mut [u8]>> {
    split_shard_columns(buf.chunks_mut(shard_size), ranges)
}

/// `split_columns` for shards in separate buffers.
pub(crate) fn split_shard_columns<'a>(
    shards: impl IntoIterator<Item = &'a mut [u8]>,
    ranges: &[(usize, usize)],
) -> Vec<Vec<&'a mut [u8]>> {
    let mut outs: Vec<Vec<&mut [u8]>> = ranges.iter().map(|_| Vec::new()).collect();
    for shard in shards {
        let mut rest = shard;
        let mut done = 0;
        for (r, &(a, b)) in ranges.iter().enumerate() {
            debug_assert_eq!(a, done);
            let (piece, tail) = rest.split_at_mut(b - a);
            outs[r].push(piece);
            rest = tail;
            done = b;
        }
    }
    outs
}

/// Parity shards of a padded pack, end to end.
pub fn encode(padded: &[u8], k: usize, m: usize) -> Result<Vec<u8>, ErasureError> {
    let shard_size = padded.len().checked_div(k).unwrap_or(0);
    let mut parity = vec![0u8; m * shard_size];
    encode_into(padded, k, m, &mut parity)?;
    Ok(parity)
}

/// Digest (`hash`) of each shard (data shards from `padded`, then parity), concatenated.
pub fn shard_digests(padded: &[u8], parity: &[u8], shard_size: usize, hash: ChunkHash) -> Vec<u8> {
    let shards: Vec<&[u8]> = padded
        .chunks(shard_size)
        .chain(parity.chunks(shard_size))
        .collect();
    let digests: Vec<[u8; 32]> = shards.par_iter().map(|s| hash.digest(s)).collect();
    digests.concat()
}

/// Rebuilds the `k` data shards from any `k` of the `k + m` shards
/// (`None` = missing). Present data shards are returned as they are.
pub fn reconstruct(
    shards: &[Option<&[u8]>],
    k: usize,
    m: usize,
) -> Result<Vec<Vec<u8>>, ErasureError> {
    let shard_size = check_shards(shards, k, m)?;
    let missing = shards[..k].iter().filter(|s| s.is_none()).count();
    let mut rebuilt = vec![0u8; missing * shard_size];
    reconstruct_into(
        shards,
        k,
        m,
        rebuilt.chunks_mut(shard_size.max(1)).collect(),
    )?;
    let mut restored = rebuilt.chunks(shard_size.max(1));
    Ok((0..k)
        .map(|i| match shards[i] {
            Some(s) => s.to_vec(),
            None => restored.next().expect("one per missing shard").to_vec(),
        })
        .collect())
}

/// Checks a shard list for `reconstruct`; returns the shard size.
pub fn check_shards(shards: &[Option<&[u8]>], k: usize, m: usize) -> Result<usize, ErasureError> {
    if shards.len() != k + m {
        return err(format!(
            "got {} shards, expected k + m = {}",
            shards.len(),
            k + m
        ));
    }
    let shard_size = match shards.iter().flatten().next() {
        Some(s) => s.len(),
        None => return err("no shard present".into()),
    };
    check_geometry(k, m, shard_size)?;
    if let Some(bad) = shards.iter().flatten().find(|s| s.len() != shard_size) {
        return err(format!(
            "shards differ in size: {} and {}",
            shard_size,
            bad.len()
        ));
    }
    let present = shards.iter().filter(|s| s.is_some()).count();
    if present < k {
        return err(format!("need {k} shards to rebuild, got {present}"));
    }
    Ok(shard_size)
}

/// Rebuilds the missing data shards into `outs`, one `shard_size` buffer per
/// missing data shard in index order (present data shards are not touched).
pub fn reconstruct_into(
    shards: &[Option<&[u8]>],
    k: usize,
    m: usize,
    mut outs: Vec<&mut [u8]>,
) -> Result<(), ErasureError> {
    let shard_size = check_shards(shards, k, m)?;
    let missing: Vec<usize> = (0..k).filter(|&i| shards[i].is_none()).collect();
    if outs.len() != missing.len() || outs.iter().any(|o| o.len() != shard_size) {
        return err(format!(
            "need {} output buffers of {shard_size} bytes",
            missing.len()
        ));
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !ReedSolomonDecoder::supports(k, m) {
        return err(format!("k={k} m={m} is not supported by the erasure code"));
    }
    if shard_size % 64 == 0 {
        return crate::degraded::rebuild_by_combination(
            shards,
            k,
            m,
            shard_size,
            outs,
            parallel_parts(),
        );
    }
    let ranges = column_ranges(shard_size, parallel_parts());
    let mut cols = split_shard_columns(outs.iter_mut().map(|o| &mut **o), &ranges);
    ranges
        .par_iter()
        .zip(cols.par_iter_mut())
        .try_for_each(|(&(a, b), out)| {
            with_decoder(k, m, b - a, |dec| {
                // Give the decoder exactly k shards: every present data shard, then parity.
                let mut given = 0;
                for (i, s) in shards[..k].iter().enumerate() {
                    if let Some(s) = s {
                        dec.add_original_shard(i, &s[a..b]).map_err(rs_err)?;
                        given += 1;
                    }
                }
                for (j, s) in shards[k..].iter().enumerate() {
                    if given == k {
                        break;
                    }
                    if let Some(s) = s {
                        dec.add_recovery_shard(j, &s[a..b]).map_err(rs_err)?;
                        given += 1;
                    }
                }
                let result = dec.decode().map_err(rs_err)?;
                for (dst, &i) in out.iter_mut().zip(&missing) {
                    let src = result
                        .restored_original(i)
                        .ok_or_else(|| ErasureError(format!("shard {i} was not restored")))?;
                    dst.copy_from_slice(src);
                }
                Ok(())
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::random;

    #[test]
    fn split_encode_equals_whole_encode() {
        let (k, m, shard) = (5, 3, 256 * 1024);
        let padded = random(k * shard, 1);
        let split = encode(&padded, k, m).unwrap();
        let shards: Vec<&[u8]> = padded.chunks(shard).collect();
        let whole = reed_solomon_simd::encode(k, m, shards).unwrap().concat();
        assert_eq!(split, whole);
    }

    #[test]
    fn every_erasure_set_rebuilds_small_codes() {
        for (k, m) in [(1, 0), (1, 1), (1, 3), (2, 2), (3, 2), (4, 3), (5, 1)] {
            for shard in [64usize, 128, 2 * SPLIT_MIN_BYTES] {
                let padded = random(k * shard, (k * 31 + m) as u64);
                let parity = encode(&padded, k, m).unwrap();
                assert_eq!(parity.len(), m * shard);
                let all: Vec<&[u8]> = padded.chunks(shard).chain(parity.chunks(shard)).collect();
                for mask in 0u32..(1 << (k + m)) {
                    if mask.count_ones() as usize != m {
                        continue;
                    }
                    let given: Vec<Option<&[u8]>> = (0..k + m)
                        .map(|i| {
                            if mask >> i & 1 == 1 {
                                None
                            } else {
                                Some(all[i])
                            }
                        })
                        .collect();
                    let rebuilt = reconstruct(&given, k, m).unwrap();
                    assert_eq!(rebuilt.concat(), padded, "k={k} m={m} mask={mask:b}");
                }
            }
        }
    }

    #[test]
    fn bad_geometry_is_an_error() {
        assert!(encode(&[0u8; 100], 0, 1).is_err());
        assert!(encode(&[0u8; 99], 3, 1).is_err());
        assert!(encode(&[0u8; 3], 1, 1).is_err());
        assert!(encode(&[], 1, 1).is_err());
        assert!(encode(&[0u8; 64 * 200], 200, 57).is_err());
        assert!(encode(&[0u8; 64 * 200], 200, 56).is_ok());
        let s = [0u8; 64];
        assert!(reconstruct(&[Some(&s[..]), None], 2, 1).is_err());
        assert!(reconstruct(&[None, None, Some(&s[..])], 2, 1).is_err());
        assert!(reconstruct(&[Some(&s[..]), Some(&s[..32]), None], 2, 1).is_err());
        assert!(reconstruct(&[None, None], 1, 1).is_err());
    }
}
