//! The degraded read: rebuilding a pack's missing data shards from parity.
//!
//! A get with peers down rebuilds most packs, so the rebuild's cost per byte
//! is what a degraded get pays on top of a healthy one. The code is linear
//! over GF(2^16), symbol by symbol: every missing data shard is a fixed
//! combination of the k shards given, `missing[o] = Σ_g c[o][g] · given[g]`.
//! Decoding whole shards with the FFT decoder costs about one multiply pass
//! per shard of its (power-of-two) work buffer per FFT layer, ~100 passes for
//! 10+4; applying the combination costs k passes per missing shard (10 to 40
//! for 10+4). The coefficients come from the decoder itself, run once per
//! pack on one 64-byte block where given shard `g` holds the unit symbol at
//! position `g` (so position `g` of restored shard `o` is `c[o][g]`).

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rayon::prelude::*;
use reed_solomon_simd::ReedSolomonDecoder;
use reed_solomon_simd::engine::{DefaultEngine, Engine, GfElement, tables, utils};

use crate::erasure::{ErasureError, column_ranges, split_shard_columns};
use crate::{ByteBuf, geometry, rebuild_missing, shard_bufs};

/// Symbols per 64-byte block (its 32 low bytes, then their 32 high bytes).
const SYMBOLS_PER_BLOCK: usize = 32;
/// Bytes of each shard combined at a time: the scratch term and the output
/// block stay in L1/L2 while the k terms are added in.
const STRIP_BYTES: usize = 16 * 1024;

/// The shards the rebuild combines: every present data shard, then parity in
/// order, k in all (what `erasure::reconstruct_into` gives the decoder).
fn given_shards(shards: &[Option<&[u8]>], k: usize) -> Vec<usize> {
    (0..shards.len())
        .filter(|&i| shards[i].is_some())
        .take(k)
        .collect()
}

/// `c[o][g]`: missing data shard `missing[o]` = Σ_g c[o][g] · shard `given[g]`.
fn coefficients(
    k: usize,
    m: usize,
    given: &[usize],
    missing: &[usize],
) -> Result<Vec<Vec<GfElement>>, ErasureError> {
    let rs = |e: reed_solomon_simd::Error| ErasureError(e.to_string());
    let width = 64 * k.div_ceil(SYMBOLS_PER_BLOCK);
    let mut dec = ReedSolomonDecoder::new(k, m, width).map_err(rs)?;
    let mut unit = vec![0u8; width];
    for (g, &i) in given.iter().enumerate() {
        unit.fill(0);
        unit[g / SYMBOLS_PER_BLOCK * 64 + g % SYMBOLS_PER_BLOCK] = 1;
        if i < k {
            dec.add_original_shard(i, &unit).map_err(rs)?;
        } else {
            dec.add_recovery_shard(i - k, &unit).map_err(rs)?;
        }
    }
    let result = dec.decode().map_err(rs)?;
    missing
        .iter()
        .map(|&i| {
            let r = result
                .restored_original(i)
                .ok_or_else(|| ErasureError(format!("shard {i} was not restored")))?;
            Ok((0..given.len())
                .map(|g| {
                    let at = g / SYMBOLS_PER_BLOCK * 64 + g % SYMBOLS_PER_BLOCK;
                    GfElement::from(r[at]) | GfElement::from(r[at + SYMBOLS_PER_BLOCK]) << 8
                })
                .collect())
        })
        .collect()
}

/// Rebuilds the missing data shards into `outs` (one per missing data shard,
/// in index order) as combinations of k present shards. Shards must be a
/// multiple of 64 bytes (every pack's are, docs/format.md); callers check the
/// shard list with `erasure::check_shards` first.
pub fn rebuild_by_combination(
    shards: &[Option<&[u8]>],
    k: usize,
    m: usize,
    shard_size: usize,
    mut outs: Vec<&mut [u8]>,
    threads: usize,
) -> Result<(), ErasureError> {
    debug_assert_eq!(shard_size % 64, 0);
    let missing: Vec<usize> = (0..k).filter(|&i| shards[i].is_none()).collect();
    let given = given_shards(shards, k);
    let coef = coefficients(k, m, &given, &missing)?;
    let exp_log = tables::get_exp_log();
    // log of each coefficient; None for a zero one (that term adds nothing)
    let logs: Vec<Vec<Option<GfElement>>> = coef
        .iter()
        .map(|row| {
            row.iter()
                .map(|&c| (c != 0).then(|| exp_log.log[c as usize]))
                .collect()
        })
        .collect();
    let sources: Vec<&[u8]> = given
        .iter()
        .map(|&i| shards[i].expect("given shards are present"))
        .collect();
    let ranges = column_ranges(shard_size, threads);
    let mut cols = split_shard_columns(outs.iter_mut().map(|o| &mut **o), &ranges);
    ranges
        .par_iter()
        .zip(cols.par_iter_mut())
        .for_each(|(&(a, b), outs)| {
            let engine = DefaultEngine::new();
            let mut term = vec![[0u8; 64]; STRIP_BYTES / 64];
            let mut at = a;
            while at < b {
                let end = (at + STRIP_BYTES).min(b);
                let n_blocks = (end - at) / 64;
                let term = &mut term[..n_blocks];
                for (out, row) in outs.iter_mut().zip(&logs) {
                    let out = blocks_mut(&mut out[at - a..end - a]);
                    out.fill([0u8; 64]);
                    for (src, log_c) in sources.iter().zip(row) {
                        let Some(log_c) = *log_c else { continue };
                        let src = blocks(&src[at..end]);
                        if log_c == 0 {
                            utils::xor(out, src); // c = 1
                        } else {
                            term.copy_from_slice(src);
                            engine.mul(term, log_c);
                            utils::xor(out, term);
                        }
                    }
                }
                at = end;
            }
        });
    Ok(())
}

/// Only the missing data shards of a pack, rebuilt from any k present shards
/// (None = missing), in index order; the present ones are not copied.
#[pyfunction]
fn reconstruct_missing<'py>(
    py: Python<'py>,
    shards: Vec<Option<Bound<'py, PyAny>>>,
    k: i64,
    m: i64,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let (k, m) = geometry(k, m)?;
    let bufs = shard_bufs(&shards)?;
    let slices: Vec<Option<&[u8]>> = bufs
        .iter()
        .map(|b| b.as_ref().map(ByteBuf::as_slice))
        .collect();
    rebuild_missing(py, &slices, k, m)
}

/// `bytes` (a multiple of 64 long) as the engine's 64-byte blocks
/// (`<[u8]>::as_chunks` needs Rust 1.88; the crate supports 1.85).
fn blocks(bytes: &[u8]) -> &[[u8; 64]] {
    assert_eq!(bytes.len() % 64, 0);
    // SAFETY: [u8; 64] has alignment 1 and the layout of 64 u8s; the length
    // is a whole number of blocks, and the borrow is carried over.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), bytes.len() / 64) }
}

/// [`blocks`], mutable.
fn blocks_mut(bytes: &mut [u8]) -> &mut [[u8; 64]] {
    assert_eq!(bytes.len() % 64, 0);
    // SAFETY: as in `blocks`; the exclusive borrow is carried over.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast(), bytes.len() / 64) }
}

/// Adds `reconstruct_missing` to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(reconstruct_missing, m)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::random;

    /// Every erasure pattern of up to m data shards (plus lost parity) rebuilds
    /// the original bytes, for codes with k below, at and above one block of symbols.
    #[test]
    fn combination_rebuild_equals_the_original_shards() {
        for (k, m, shard) in [
            (10, 4, 1 << 20),
            (3, 2, 64),
            (1, 1, 128),
            (40, 8, 64 * 300),
            (10, 4, STRIP_BYTES + 192),
        ] {
            let padded = random(k * shard, (k * 31 + m) as u64);
            let parity = crate::erasure::encode(&padded, k, m).unwrap();
            let all: Vec<&[u8]> = padded.chunks(shard).chain(parity.chunks(shard)).collect();
            let lost_sets: Vec<Vec<usize>> = vec![
                (0..m.min(k)).collect(),
                vec![k - 1],
                (0..m).map(|j| (j * 7 + 2) % (k + m)).collect(),
                vec![k], // only parity lost: nothing to rebuild
            ];
            for lost in lost_sets {
                let shards: Vec<Option<&[u8]>> = (0..k + m)
                    .map(|i| (!lost.contains(&i)).then_some(all[i]))
                    .collect();
                let missing: Vec<usize> = (0..k).filter(|i| lost.contains(i)).collect();
                for threads in [1, 3] {
                    let mut out = vec![0u8; missing.len() * shard];
                    let outs = out.chunks_mut(shard).collect();
                    rebuild_by_combination(&shards, k, m, shard, outs, threads).unwrap();
                    for (got, &i) in out.chunks(shard).zip(&missing) {
                        assert!(
                            got == all[i],
                            "k={k} m={m} lost {lost:?}: shard {i} differs"
                        );
                    }
                }
            }
        }
    }
}
