//! The `fastcdc-gear-v1` content-defined chunker (normative in `docs/format.md`).
//!
//! FastCDC with normalized chunking (level 2): a gear hash starts at `min`
//! bytes into the chunk; up to `avg` a cut needs the `bits + 2` top bits of the
//! hash clear (`MASK_S`), after it only `bits - 2` (`MASK_L`); `max` forces a cut.

use std::sync::OnceLock;

/// Default minimum chunk size in bytes.
pub const DEFAULT_MIN_BYTES: usize = 16 * 1024;
/// Default average (target) chunk size in bytes.
pub const DEFAULT_AVG_BYTES: usize = 64 * 1024;
/// Default maximum chunk size in bytes.
pub const DEFAULT_MAX_BYTES: usize = 256 * 1024;
/// Largest `max` the format allows (16 MiB).
pub const CHUNK_MAX_LIMIT_BYTES: usize = 16 * 1024 * 1024;
/// Smallest `min` the format allows.
pub const CHUNK_MIN_LIMIT_BYTES: usize = 64;

/// The 256-entry gear table: `GEAR[i]` = first 8 bytes (LE) of
/// `BLAKE3(b"dstore-gear-v1" || [i])`.
pub fn gear() -> &'static [u64; 256] {
    static GEAR: OnceLock<[u64; 256]> = OnceLock::new();
    GEAR.get_or_init(|| {
        let mut table = [0u64; 256];
        for (i, entry) in table.iter_mut().enumerate() {
            let mut hasher = blake3::Hasher::new();
            hasher.update(b"dstore-gear-v1");
            hasher.update(&[i as u8]);
            let digest = hasher.finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest.as_bytes()[..8]);
            *entry = u64::from_le_bytes(first);
        }
        table
    })
}

/// Hex BLAKE3 of the gear table's 256 entries as little-endian `u64`s.
pub fn gear_digest() -> String {
    let mut hasher = blake3::Hasher::new();
    for entry in gear() {
        hasher.update(&entry.to_le_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// Validated chunker parameters with their masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Minimum chunk size in bytes (no cut before it, except at end of data).
    pub min: usize,
    /// Average chunk size in bytes, a power of two.
    pub avg: usize,
    /// Maximum chunk size in bytes.
    pub max: usize,
    mask_s: u64,
    mask_l: u64,
}

/// Why chunker parameters were rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamsError(pub String);

impl std::fmt::Display for ParamsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParamsError {}

impl Params {
    /// Checks `64 <= min < avg < max <= 16 MiB` and that `avg` is a power of two.
    pub fn new(min: usize, avg: usize, max: usize) -> Result<Self, ParamsError> {
        if !avg.is_power_of_two() {
            return Err(ParamsError(format!("avg_size {avg} is not a power of two")));
        }
        if !(CHUNK_MIN_LIMIT_BYTES <= min && min < avg && avg < max && max <= CHUNK_MAX_LIMIT_BYTES)
        {
            return Err(ParamsError(format!(
                "chunker sizes must satisfy 64 <= min < avg < max <= 16 MiB, got min={min} avg={avg} max={max}"
            )));
        }
        let bits = avg.trailing_zeros();
        // avg >= 128 here (min >= 64 and min < avg), so bits >= 7 and both shifts are in range.
        let mask_s = ((1u64 << (bits + 2)) - 1) << (64 - bits - 2);
        let mask_l = ((1u64 << (bits - 2)) - 1) << (64 - bits + 2);
        Ok(Self {
            min,
            avg,
            max,
            mask_s,
            mask_l,
        })
    }

    /// The default parameters (16 KiB / 64 KiB / 256 KiB).
    pub fn default_params() -> Self {
        Self::new(DEFAULT_MIN_BYTES, DEFAULT_AVG_BYTES, DEFAULT_MAX_BYTES)
            .expect("default chunker parameters are valid")
    }

    /// `MASK_S` (before `avg`).
    pub fn mask_s(&self) -> u64 {
        self.mask_s
    }

    /// `MASK_L` (from `avg` to `max`).
    pub fn mask_l(&self) -> u64 {
        self.mask_l
    }
}

/// How a dataset's files are cut: content-defined (FastCDC) or fixed-size.
///
/// Fixed-size chunks (the `unixfs-v1-2025` profile's 1 MiB) are written with
/// `min == avg == max` in the manifest's chunker map, and so here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunker {
    /// `fastcdc-gear-v1` with these parameters.
    Cdc(Params),
    /// Chunks of exactly this many bytes, the last one shorter.
    Fixed(usize),
}

impl From<Params> for Chunker {
    fn from(p: Params) -> Self {
        Self::Cdc(p)
    }
}

impl Chunker {
    /// Fixed-size when `min == avg == max` (any size from 64 bytes to 16 MiB), else FastCDC (`Params::new`).
    pub fn new(min: usize, avg: usize, max: usize) -> Result<Self, ParamsError> {
        if min == avg && avg == max {
            if !(CHUNK_MIN_LIMIT_BYTES..=CHUNK_MAX_LIMIT_BYTES).contains(&max) {
                return Err(ParamsError(format!(
                    "fixed chunk size must be 64 bytes to 16 MiB, got {max}"
                )));
            }
            return Ok(Self::Fixed(max));
        }
        Params::new(min, avg, max).map(Self::Cdc)
    }

    /// The largest chunk it cuts.
    pub fn max(&self) -> usize {
        match self {
            Self::Cdc(p) => p.max,
            Self::Fixed(size) => *size,
        }
    }

    /// The typical chunk size (for reserving).
    pub fn avg(&self) -> usize {
        match self {
            Self::Cdc(p) => p.avg,
            Self::Fixed(size) => *size,
        }
    }

    /// Lengths of the chunks cut from the start of `data` (see `chunk_lengths`
    /// for `final_`: without it, cutting stops while fewer than `max` bytes remain).
    pub fn lengths(&self, data: &[u8], final_: bool) -> Vec<usize> {
        match self {
            Self::Cdc(p) => chunk_lengths(data, final_, p),
            Self::Fixed(size) => fixed_lengths(data.len(), *size, final_),
        }
    }
}

/// Lengths of fixed `size`-byte chunks over `len` bytes; the short rest is a
/// chunk only with `final_` (then nothing is left over).
pub fn fixed_lengths(len: usize, size: usize, final_: bool) -> Vec<usize> {
    let mut lengths = vec![size; len / size];
    let rest = len % size;
    if final_ && rest > 0 {
        lengths.push(rest);
    }
    lengths
}

/// Scans `data` with the gear hash continuing from `h`, returning the index of
/// the first byte after which `h & mask == 0`, and the final hash otherwise.
#[inline(always)]
fn scan(gear: &[u64; 256], data: &[u8], mut h: u64, mask: u64) -> Result<usize, u64> {
    // Unrolled by 8: the dependency chain is one `lea` per byte, the table loads
    // and tests are off the chain. Slice iteration keeps bounds checks out.
    let mut blocks = data.chunks_exact(8);
    let mut base = 0usize;
    for block in &mut blocks {
        let b: &[u8; 8] = block.try_into().expect("chunks_exact(8)");
        macro_rules! step {
            ($j:expr) => {
                h = (h << 1).wrapping_add(gear[b[$j] as usize]);
                if h & mask == 0 {
                    return Ok(base + $j);
                }
            };
        }
        step!(0);
        step!(1);
        step!(2);
        step!(3);
        step!(4);
        step!(5);
        step!(6);
        step!(7);
        base += 8;
    }
    for (j, &byte) in blocks.remainder().iter().enumerate() {
        h = (h << 1).wrapping_add(gear[byte as usize]);
        if h & mask == 0 {
            return Ok(base + j);
        }
    }
    Err(h)
}

/// Length of the next chunk cut from the start of `data` (the whole of `data`
/// is the rest of the stream as far as this cut can see: pass at least `max`
/// bytes unless at end of stream). Returns 0 only for empty `data`.
pub fn cut(data: &[u8], params: &Params) -> usize {
    let n = data.len();
    if n <= params.min {
        return n;
    }
    let gear = gear();
    let end_s = params.avg.min(n);
    let end_l = params.max.min(n);
    let h = match scan(gear, &data[params.min..end_s], 0, params.mask_s) {
        Ok(j) => return params.min + j + 1,
        Err(h) => h,
    };
    if end_s < end_l {
        if let Ok(j) = scan(gear, &data[end_s..end_l], h, params.mask_l) {
            return end_s + j + 1;
        }
    }
    end_l
}

/// Lengths of the chunks cut from the start of `data`.
///
/// With `final == false`, cutting stops while fewer than `max` bytes remain, so
/// the boundaries never depend on how a stream was split into buffers: the
/// caller keeps the remaining bytes and puts them in front of the next buffer.
pub fn chunk_lengths(data: &[u8], final_: bool, params: &Params) -> Vec<usize> {
    if data.len() >= PARALLEL_MIN_BYTES {
        chunk_lengths_parallel(data, final_, params)
    } else {
        chunk_lengths_sequential(data, final_, params)
    }
}

/// Inputs at least this long are cut with the parallel candidate scan.
pub const PARALLEL_MIN_BYTES: usize = 1024 * 1024;
/// Bytes of input scanned by one candidate-scan task.
const SCAN_BLOCK_BYTES: usize = 1024 * 1024;
/// The gear hash only remembers the last 64 bytes it saw.
const WINDOW: usize = 64;

/// Positions `p` in `[from, to)` where the 64-byte windowed gear hash
/// `H(p) = sum(GEAR[d[j]] << (p - j) for j in p-63..=p)` has `MASK_L` clear,
/// appended as `p << 1 | (H(p) & MASK_S == 0)`. `MASK_L` is a subset of
/// `MASK_S`, so these are all the places a cut can happen past the warm-up.
///
/// The range is split in two halves hashed in one loop: two independent
/// dependency chains keep the core busy where one chain waits on the last add.
fn scan_candidates(data: &[u8], from: usize, to: usize, params: &Params, out: &mut Vec<usize>) {
    const LANES: usize = 4;
    let gear = gear();
    let lane = (to - from) / LANES;
    let starts: [usize; LANES] = std::array::from_fn(|l| from + l * lane);
    let warm = |at: usize| {
        data[at.saturating_sub(WINDOW - 1)..at]
            .iter()
            .fold(0u64, |h, &b| (h << 1).wrapping_add(gear[b as usize]))
    };
    let mut h: [u64; LANES] = std::array::from_fn(|l| warm(starts[l]));
    let (mask_l, mask_s) = (params.mask_l, params.mask_s);
    let flag = |h: u64| usize::from(h & mask_s == 0);
    let mut found: [Vec<usize>; LANES] = std::array::from_fn(|_| Vec::new());
    let lanes: [&[u8]; LANES] = std::array::from_fn(|l| &data[starts[l]..starts[l] + lane]);
    for i in 0..lane {
        let mut any = false;
        for l in 0..LANES {
            // SAFETY: every lane is exactly `lane` bytes long and i < lane.
            let byte = unsafe { *lanes[l].get_unchecked(i) };
            h[l] = (h[l] << 1).wrapping_add(gear[byte as usize]);
            any |= h[l] & mask_l == 0;
        }
        if any {
            for l in 0..LANES {
                if h[l] & mask_l == 0 {
                    found[l].push((starts[l] + i) << 1 | flag(h[l]));
                }
            }
        }
    }
    // Bytes left over at the end belong to the last lane.
    let last = LANES - 1;
    let tail_from = starts[last] + lane;
    for (i, &y) in data[tail_from..to].iter().enumerate() {
        h[last] = (h[last] << 1).wrapping_add(gear[y as usize]);
        if h[last] & mask_l == 0 {
            found[last].push((tail_from + i) << 1 | flag(h[last]));
        }
    }
    for f in &found {
        out.extend_from_slice(f);
    }
}

/// Every candidate cut position in `data`, scanned in parallel blocks.
fn candidates(data: &[u8], params: &Params) -> Vec<usize> {
    use rayon::prelude::*;
    let blocks: Vec<(usize, usize)> = (0..data.len())
        .step_by(SCAN_BLOCK_BYTES)
        .map(|a| (a, (a + SCAN_BLOCK_BYTES).min(data.len())))
        .collect();
    let parts: Vec<Vec<usize>> = blocks
        .par_iter()
        .with_max_len(1)
        .map(|&(a, b)| {
            let mut out = Vec::new();
            scan_candidates(data, a, b, params, &mut out);
            out
        })
        .collect();
    parts.concat()
}

/// Like `cut` for the chunk starting at `start`, using precomputed candidates;
/// `next` is a cursor into `cands` that only moves forward.
fn cut_at(data: &[u8], start: usize, params: &Params, cands: &[usize], next: &mut usize) -> usize {
    let n = data.len() - start;
    if n <= params.min {
        return n;
    }
    let gear = gear();
    let end_s = start + params.avg.min(n);
    let end_l = start + params.max.min(n);
    let hash_from = start + params.min;
    // Until 64 bytes have been hashed, h differs from the window hash H: do those exactly.
    let exact_end = (hash_from + WINDOW - 1).min(end_l);
    let mut h = 0u64;
    for (i, &b) in data[hash_from..exact_end].iter().enumerate() {
        h = (h << 1).wrapping_add(gear[b as usize]);
        let mask = if hash_from + i < end_s {
            params.mask_s
        } else {
            params.mask_l
        };
        if h & mask == 0 {
            return i + 1 + params.min;
        }
    }
    let mut j = *next;
    while j < cands.len() && cands[j] >> 1 < exact_end {
        j += 1;
    }
    *next = j;
    while j < cands.len() {
        let p = cands[j] >> 1;
        if p >= end_l {
            break;
        }
        if p >= end_s || cands[j] & 1 == 1 {
            return p + 1 - start;
        }
        j += 1;
    }
    end_l - start
}

/// `chunk_lengths` on all cores: a parallel scan finds every position where a
/// cut could fall, then a sequential pass over those few candidates picks the
/// cuts. Gives exactly the boundaries of the sequential definition.
pub fn chunk_lengths_parallel(data: &[u8], final_: bool, params: &Params) -> Vec<usize> {
    let cands = candidates(data, params);
    let mut lengths = Vec::with_capacity(data.len() / params.avg + 1);
    let mut pos = 0usize;
    let mut next = 0usize;
    while pos < data.len() {
        if !final_ && data.len() - pos < params.max {
            break;
        }
        let len = cut_at(data, pos, params, &cands, &mut next);
        lengths.push(len);
        pos += len;
    }
    lengths
}

/// Sequential `chunk_lengths` (one cut after another).
pub fn chunk_lengths_sequential(data: &[u8], final_: bool, params: &Params) -> Vec<usize> {
    let mut lengths = Vec::with_capacity(data.len() / params.avg + 1);
    let mut pos = 0usize;
    while pos < data.len() {
        let rest = &data[pos..];
        if !final_ && rest.len() < params.max {
            break;
        }
        let len = cut(rest, params);
        lengths.push(len);
        pos += len;
    }
    lengths
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's pseudo-code, transcribed literally.
    fn cut_reference(d: &[u8], p: &Params) -> usize {
        let n = d.len();
        if n <= p.min {
            return n;
        }
        let g = gear();
        let mut h: u64 = 0;
        let mut i = p.min;
        while i < p.avg.min(n) {
            h = (h << 1).wrapping_add(g[d[i] as usize]);
            if h & p.mask_s() == 0 {
                return i + 1;
            }
            i += 1;
        }
        while i < p.max.min(n) {
            h = (h << 1).wrapping_add(g[d[i] as usize]);
            if h & p.mask_l() == 0 {
                return i + 1;
            }
            i += 1;
        }
        p.max.min(n)
    }

    fn xorshift_bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn parallel_matches_sequential() {
        let params = [
            (64, 128, 129),
            (64, 256, 1024),
            (100, 128, 4096),
            (1000, 1024, 1100),
            (4096, 8192, 65536),
            (16384, 65536, 262144),
            (65536, 1 << 20, 16 << 20),
        ];
        let mut low_entropy = xorshift_bytes(3, 3 << 20);
        for b in low_entropy.iter_mut() {
            *b &= 0x03;
        }
        let inputs = [
            xorshift_bytes(1, (3 << 20) + 12345),
            low_entropy,
            vec![0u8; 3 << 20],
            xorshift_bytes(2, 70_000),
        ];
        for (min, avg, max) in params {
            let p = Params::new(min, avg, max).unwrap();
            for data in &inputs {
                for final_ in [true, false] {
                    assert_eq!(
                        chunk_lengths_parallel(data, final_, &p),
                        chunk_lengths_sequential(data, final_, &p),
                        "{min}/{avg}/{max} len {} final {final_}",
                        data.len()
                    );
                }
            }
        }
    }

    #[test]
    fn fixed_size_chunks() {
        assert_eq!(fixed_lengths(0, 64, true), Vec::<usize>::new());
        assert_eq!(fixed_lengths(10, 64, true), vec![10]);
        assert_eq!(fixed_lengths(10, 64, false), Vec::<usize>::new());
        assert_eq!(fixed_lengths(128, 64, true), vec![64, 64]);
        assert_eq!(fixed_lengths(129, 64, true), vec![64, 64, 1]);
        assert_eq!(fixed_lengths(129, 64, false), vec![64, 64]);
        let mib = 1 << 20;
        assert_eq!(Chunker::new(mib, mib, mib), Ok(Chunker::Fixed(mib)));
        assert!(Chunker::new(63, 63, 63).is_err());
        assert!(
            Chunker::new(
                CHUNK_MAX_LIMIT_BYTES + 1,
                CHUNK_MAX_LIMIT_BYTES + 1,
                CHUNK_MAX_LIMIT_BYTES + 1
            )
            .is_err()
        );
        let cdc = Chunker::new(DEFAULT_MIN_BYTES, DEFAULT_AVG_BYTES, DEFAULT_MAX_BYTES).unwrap();
        assert_eq!(cdc, Chunker::Cdc(Params::default_params()));
        let data = xorshift_bytes(9, 3 * mib + 5);
        assert_eq!(
            Chunker::Fixed(mib).lengths(&data, true),
            vec![mib, mib, mib, 5]
        );
        assert_eq!(
            cdc.lengths(&data, false),
            chunk_lengths(&data, false, &Params::default_params())
        );
    }

    #[test]
    fn masks_match_spec() {
        let p = Params::default_params();
        let bits = 16u32;
        assert_eq!(p.mask_s(), ((1u64 << (bits + 2)) - 1) << (64 - bits - 2));
        assert_eq!(p.mask_s().count_ones(), 18);
        assert_eq!(p.mask_l().count_ones(), 14);
        assert_eq!(p.mask_l().leading_ones(), 14);
        assert_eq!(p.mask_s().leading_ones(), 18);
    }

    #[test]
    fn params_are_validated() {
        assert!(Params::new(64, 128, 129).is_ok());
        assert!(Params::new(63, 128, 256).is_err());
        assert!(Params::new(64, 100, 256).is_err());
        assert!(Params::new(128, 128, 256).is_err());
        assert!(Params::new(64, 128, 128).is_err());
        assert!(Params::new(64, 128, CHUNK_MAX_LIMIT_BYTES + 1).is_err());
        assert!(Params::new(64, 1 << 20, CHUNK_MAX_LIMIT_BYTES).is_ok());
        assert!(Params::new(0, 0, 0).is_err());
    }

    #[test]
    fn fast_cut_matches_reference() {
        for (min, avg, max) in [
            (64, 256, 1024),
            (64, 128, 129),
            (100, 512, 700),
            (16384, 65536, 262144),
        ] {
            let p = Params::new(min, avg, max).unwrap();
            for seed in 1..6u64 {
                let data = xorshift_bytes(seed, 3 * max + 17);
                for start in [0usize, 1, 7, 63, 64, 65] {
                    for len in [
                        0,
                        1,
                        min - 1,
                        min,
                        min + 1,
                        avg - 1,
                        avg,
                        avg + 1,
                        max - 1,
                        max,
                        max + 1,
                        2 * max,
                    ] {
                        let d = &data[start..start + len];
                        assert_eq!(
                            cut(d, &p),
                            cut_reference(d, &p),
                            "{min}/{avg}/{max} seed {seed} start {start} len {len}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn zeros_cut_at_max_and_streaming_is_split_independent() {
        let p = Params::new(64, 256, 1024).unwrap();
        // Constant input: the hash of zeros may or may not hit the mask; whatever it
        // does, all chunks but the last are equal.
        let data = vec![0u8; 10_000];
        let lens = chunk_lengths(&data, true, &p);
        assert_eq!(lens.iter().sum::<usize>(), data.len());
        let data = xorshift_bytes(9, 50_000);
        let whole = chunk_lengths(&data, true, &p);
        for step in [1usize, 100, 1023, 1024, 1025, 4096] {
            let mut got = Vec::new();
            let mut buf: Vec<u8> = Vec::new();
            let mut fed = 0;
            while fed < data.len() {
                let end = (fed + step).min(data.len());
                buf.extend_from_slice(&data[fed..end]);
                fed = end;
                let lens = chunk_lengths(&buf, fed == data.len(), &p);
                let used: usize = lens.iter().sum();
                got.extend(lens);
                buf.drain(..used);
            }
            assert_eq!(got, whole, "step {step}");
        }
        assert!(chunk_lengths(&[], true, &p).is_empty());
        assert!(chunk_lengths(&data[..1023], false, &p).is_empty());
    }
}
