//! The per-chunk zstd decision and bounded decompression.
//!
//! A chunk is stored as one zstd frame (`codec = 1`) when that saves at least
//! 5% of its bytes, raw (`codec = 0`) otherwise. Incompressible chunks (already
//! compressed images, audio, random bytes) are rejected by compressing a small
//! sample at level 1 first, so they cost almost nothing beyond hashing.

use std::cell::RefCell;
use std::mem::MaybeUninit;

/// Codec number of a chunk stored raw.
pub const CODEC_RAW: u8 = 0;
/// Codec number of a chunk stored as one zstd frame.
pub const CODEC_ZSTD: u8 = 1;
/// Largest decompressed chunk accepted (the format's largest `max`).
pub const DECOMPRESSED_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Bytes from the start of a chunk compressed at level 1 to test compressibility.
pub const SAMPLE_BYTES: usize = 4096;
/// Chunks below this size skip the sample test and are compressed directly.
const SAMPLE_MIN_CHUNK_BYTES: usize = 4 * SAMPLE_BYTES;

/// Largest stored size that still "saves at least 5%" of `len` bytes.
pub fn max_worthwhile_bytes(len: usize) -> usize {
    // len - c >= len / 20  <=>  c <= len - ceil(len / 20)
    len - len.div_ceil(20)
}

thread_local! {
    /// Reusable compression contexts per thread (rayon workers live long): one
    /// for the level-1 sample test, one for the chunk's own level. Creating a
    /// context costs far more than compressing a 64 KiB chunk.
    static SAMPLE_COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    /// One reusable decompression context per thread.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

type CompressorSlot = RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>>;

fn with_compressor<R>(
    key: &'static std::thread::LocalKey<CompressorSlot>,
    level: i32,
    f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> R,
) -> R {
    key.with(|cell| {
        let mut slot = cell.borrow_mut();
        match slot.as_mut() {
            Some((lvl, ctx)) if *lvl != level => {
                ctx.set_compression_level(level).expect("valid zstd level");
                *lvl = level;
            }
            Some(_) => {}
            None => {
                let ctx = zstd::bulk::Compressor::new(level).expect("zstd compressor context");
                *slot = Some((level, ctx));
            }
        }
        let (_, ctx) = slot.as_mut().expect("set above");
        f(ctx)
    })
}

/// Compresses `data` at `level` into `out` (cleared first) if the result is at
/// most `limit` bytes. Returns false (and leaves `out` unspecified) otherwise.
fn compress_within(
    key: &'static std::thread::LocalKey<CompressorSlot>,
    data: &[u8],
    level: i32,
    limit: usize,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    out.reserve(limit);
    with_compressor(key, level, |ctx| {
        // A destination of exactly `limit` bytes: zstd fails with "dst too small"
        // as soon as the frame would not pay, which is also the decision.
        let mut dst = std::mem::take(out);
        let ok = match ctx.compress_to_buffer(data, &mut dst) {
            Ok(n) => n <= limit,
            Err(_) => false,
        };
        *out = dst;
        ok
    })
}

/// Cheap test: does a level-1 frame of the first `SAMPLE_BYTES` save at least ~3%?
pub fn looks_compressible(data: &[u8]) -> bool {
    if data.len() < SAMPLE_MIN_CHUNK_BYTES {
        return true;
    }
    let sample = &data[..SAMPLE_BYTES];
    let limit = SAMPLE_BYTES - SAMPLE_BYTES * 3 / 100;
    let mut out = Vec::new();
    compress_within(&SAMPLE_COMPRESSOR, sample, 1, limit, &mut out)
}

/// Compresses `data` into a fresh frame when that saves at least 5%.
pub fn compress_chunk(data: &[u8], level: i32) -> Option<Vec<u8>> {
    if level == 0 || data.len() < 32 || !looks_compressible(data) {
        return None;
    }
    let limit = max_worthwhile_bytes(data.len());
    let mut frame = Vec::new();
    compress_within(&COMPRESSOR, data, level, limit, &mut frame).then_some(frame)
}

/// Why a stored chunk could not be decompressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecompressError {
    /// The caller asked for more than `DECOMPRESSED_MAX_BYTES`.
    TooLarge(usize),
    /// The bytes are not exactly one zstd frame of exactly the expected size.
    Corrupt(String),
}

/// Decompresses one zstd frame into `out`, which must be exactly the
/// chunk's length; fails unless the frame is the whole of `frame` and
/// decompresses to exactly `out.len()` bytes.
pub fn decompress_exact(frame: &[u8], out: &mut [u8]) -> Result<(), DecompressError> {
    // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have the same layout, and the
    // callee only ever writes initialized bytes through it.
    let uninit = unsafe { &mut *(out as *mut [u8] as *mut [MaybeUninit<u8>]) };
    decompress_exact_uninit(frame, uninit).map(|_| ())
}

/// `decompress_exact` into memory that need not be initialized; on success
/// returns `out` as the initialized chunk bytes.
pub fn decompress_exact_uninit<'a>(
    frame: &[u8],
    out: &'a mut [MaybeUninit<u8>],
) -> Result<&'a mut [u8], DecompressError> {
    let len = out.len();
    if len > DECOMPRESSED_MAX_BYTES {
        return Err(DecompressError::TooLarge(len));
    }
    match zstd::zstd_safe::find_frame_compressed_size(frame) {
        Ok(n) if n == frame.len() => {}
        Ok(n) => {
            return Err(DecompressError::Corrupt(format!(
                "frame is {n} bytes, stored length {}",
                frame.len()
            )));
        }
        Err(_) => return Err(DecompressError::Corrupt("not a zstd frame".into())),
    }
    match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(size)) if size != len as u64 => {
            return Err(DecompressError::Corrupt(format!(
                "frame holds {size} bytes, expected {len}"
            )));
        }
        Ok(_) => {}
        Err(_) => return Err(DecompressError::Corrupt("bad zstd frame header".into())),
    }
    let mut dst = UninitOut {
        ptr: out.as_mut_ptr().cast::<u8>(),
        cap: len,
        filled: 0,
    };
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().expect("zstd decompressor context"));
        }
        let ctx = slot.as_mut().expect("set above");
        match ctx.decompress_to_buffer(frame, &mut dst) {
            Ok(n) if n == len => Ok(()),
            Ok(n) => Err(DecompressError::Corrupt(format!(
                "frame decompressed to {n} bytes, expected {len}"
            ))),
            Err(e) => Err(DecompressError::Corrupt(e.to_string())),
        }
    })?;
    debug_assert_eq!(dst.filled, len);
    // SAFETY: zstd reported writing exactly `len` bytes from the start of `out`.
    Ok(unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), len) })
}

/// Copies `src` into uninitialized `out` of the same length, returning it initialized.
pub fn copy_uninit<'a>(src: &[u8], out: &'a mut [MaybeUninit<u8>]) -> &'a mut [u8] {
    assert_eq!(src.len(), out.len(), "copy_uninit needs equal lengths");
    let dst = out.as_mut_ptr().cast::<u8>();
    // SAFETY: both regions are `src.len()` bytes, distinct (`out` is borrowed
    // mutably), and after the copy every byte of `out` is initialized.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len());
        std::slice::from_raw_parts_mut(dst, src.len())
    }
}

/// A destination of possibly uninitialized bytes for zstd.
struct UninitOut {
    ptr: *mut u8,
    cap: usize,
    filled: usize,
}

// SAFETY: `as_slice` exposes only the `filled` bytes zstd reported writing;
// `capacity` is the true size of the region at `ptr`.
unsafe impl zstd::zstd_safe::WriteBuf for UninitOut {
    fn as_slice(&self) -> &[u8] {
        // SAFETY: the first `filled` bytes were written by zstd.
        unsafe { std::slice::from_raw_parts(self.ptr, self.filled) }
    }
    fn capacity(&self) -> usize {
        self.cap
    }
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }
    unsafe fn filled_until(&mut self, n: usize) {
        self.filled = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::random;

    fn text(n: usize) -> Vec<u8> {
        let mut s = String::new();
        let mut i = 0u64;
        while s.len() < n {
            s.push_str(&format!(
                "{i},user{},{}.{:02},ok\n",
                i % 977,
                i * 31 % 1000,
                i % 100
            ));
            i += 1;
        }
        s.into_bytes()[..n].to_vec()
    }

    #[test]
    fn threshold_is_five_percent() {
        assert_eq!(max_worthwhile_bytes(100), 95);
        assert_eq!(max_worthwhile_bytes(101), 95);
        assert_eq!(max_worthwhile_bytes(20), 19);
        assert_eq!(max_worthwhile_bytes(0), 0);
    }

    #[test]
    fn random_is_raw_text_is_compressed() {
        assert!(compress_chunk(&random(65536, 1), 3).is_none());
        assert!(compress_chunk(&random(1000, 1), 3).is_none());
        let t = text(65536);
        let frame = compress_chunk(&t, 3).expect("text compresses");
        assert!(frame.len() <= max_worthwhile_bytes(t.len()));
        let mut out = vec![0u8; t.len()];
        decompress_exact(&frame, &mut out).unwrap();
        assert_eq!(out, t);
        assert!(compress_chunk(&t, 0).is_none());
    }

    #[test]
    fn decompress_rejects_wrong_sizes_and_garbage() {
        let t = text(10000);
        let frame = compress_chunk(&t, 3).unwrap();
        let mut short = vec![0u8; t.len() - 1];
        assert!(decompress_exact(&frame, &mut short).is_err());
        let mut long = vec![0u8; t.len() + 1];
        assert!(decompress_exact(&frame, &mut long).is_err());
        let mut ok = vec![0u8; t.len()];
        assert!(decompress_exact(&frame[..frame.len() - 1], &mut ok).is_err());
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        assert!(decompress_exact(&two, &mut ok).is_err());
        assert!(decompress_exact(b"hello world", &mut ok).is_err());
        assert!(decompress_exact(&[], &mut ok).is_err());
        let mut huge = vec![0u8; DECOMPRESSED_MAX_BYTES + 1];
        assert_eq!(
            decompress_exact(&frame, &mut huge),
            Err(DecompressError::TooLarge(DECOMPRESSED_MAX_BYTES + 1))
        );
    }
}
