//! dstore's native core, exposed to Python as `dstore._native`.
//!
//! The algorithms live in plain modules that build and test without Python
//! (`chunk`, `compress`, `erasure`, `pipeline`); this file is the only one that
//! touches PyO3. Every wrapper validates its arguments (bad ones raise
//! `ValueError`, never a panic), borrows the caller's buffer without copying,
//! and releases the GIL while it works.

#![deny(missing_docs)]

pub mod chunk;
pub mod compress;
pub mod degraded;
pub mod erasure;
pub mod getpath;
pub mod gwsolo;
pub mod hash;
pub mod ingest;
pub mod mountread;
pub mod pack;
pub mod pipeline;
pub mod smallget;
#[cfg(test)]
mod testutil;
pub mod write;

use std::mem::MaybeUninit;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyIndexError, PyOSError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList, PyMemoryView, PySlice, PyType};
use rayon::prelude::*;

use hash::ChunkHash;
use pack::{PackParts, PackSource};

/// The thread pool of this process, made again in a forked child.
///
/// A child forked after the pool ran (a DataLoader worker, a `multiprocessing`
/// fork) inherits the pool's bookkeeping but none of its threads: rayon's global
/// pool would wait for them forever. Every call runs in a pool keyed by process ID.
fn pool() -> Arc<rayon::ThreadPool> {
    static POOL: Mutex<Option<(u32, Arc<rayon::ThreadPool>)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut slot = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((owner, pool)) = slot.as_ref() {
        if *owner == pid {
            return pool.clone();
        }
    }
    if let Some((_, inherited)) = slot.take() {
        // Its threads live in the parent only: dropping it here would wait for them.
        std::mem::forget(inherited);
    }
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("dstore-native-{i}"))
            .build()
            .expect("cannot start the native thread pool"),
    );
    *slot = Some((pid, pool.clone()));
    pool
}

/// `py.detach(f)` with `f` run in this process's pool (so its parallel loops never use rayon's global one).
fn detach_pooled<T, F>(py: Python<'_>, f: F) -> T
where
    T: Send + pyo3::marker::Ungil,
    F: FnOnce() -> T + Send + pyo3::marker::Ungil,
{
    let pool = pool();
    py.detach(move || pool.install(f))
}

/// Below this many bytes `blake3` keeps the GIL (releasing costs more than hashing).
const GIL_RELEASE_MIN_BYTES: usize = 2048;
/// From this many bytes `blake3` hashes on all cores.
const MULTITHREAD_HASH_MIN_BYTES: usize = 256 * 1024;

/// `dstore._native.IntegrityError`, a `ValueError` subclass (created once).
fn integrity_error(py: Python<'_>) -> &Bound<'_, PyType> {
    static TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    TYPE.get_or_init(py, || {
        PyErr::new_type(
            py,
            c"dstore._native.IntegrityError",
            Some(c"A chunk's bytes do not hash to its ID. args[0] is the chunk's index in the batch."),
            Some(&py.get_type::<PyValueError>()),
            None,
        )
        .expect("creating IntegrityError")
    })
    .bind(py)
}

fn value_error(msg: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(msg.to_string())
}

/// A borrowed, C-contiguous byte view of any buffer-protocol object.
struct ByteBuf {
    buf: PyBuffer<u8>,
}

impl ByteBuf {
    fn get(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        if let Ok(buf) = PyBuffer::<u8>::get(obj) {
            if buf.is_c_contiguous() {
                return Ok(Self { buf });
            }
        }
        // Other item formats (e.g. a float array) are read as their raw bytes.
        let view = PyMemoryView::from(obj)?.call_method1("cast", ("B",))?;
        let buf = PyBuffer::<u8>::get(&view)?;
        if !buf.is_c_contiguous() {
            return Err(value_error("buffer is not C-contiguous"));
        }
        Ok(Self { buf })
    }

    fn as_slice(&self) -> &[u8] {
        let len = self.buf.len_bytes();
        if len == 0 {
            return &[];
        }
        // SAFETY: the buffer export held by `self.buf` keeps `len` bytes at
        // `buf_ptr` alive and C-contiguous until it is dropped; like every
        // buffer consumer (hashlib, zlib) we rely on the caller not mutating
        // the bytes while the call runs.
        unsafe { std::slice::from_raw_parts(self.buf.buf_ptr() as *const u8, len) }
    }
}

/// The buffer of `obj` if it is writable, C-contiguous and holds at least `need` bytes.
fn writable_buffer(obj: &Bound<'_, PyAny>, name: &str, need: usize) -> PyResult<PyBuffer<u8>> {
    let buf = PyBuffer::<u8>::get(obj)?;
    if buf.readonly() || !buf.is_c_contiguous() {
        return Err(value_error(format!(
            "{name} must be a writable, C-contiguous buffer"
        )));
    }
    if buf.len_bytes() < need {
        return Err(value_error(format!(
            "{name} holds {} bytes, the chunks need {need}",
            buf.len_bytes()
        )));
    }
    Ok(buf)
}

/// A 1-D unsigned-byte memoryview of `obj`, for zero-copy slices.
fn byte_view<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    PyMemoryView::from(obj)?.call_method1("cast", ("B",))
}

fn params(min_size: i64, avg_size: i64, max_size: i64) -> PyResult<chunk::Params> {
    let conv = |v: i64, name: &str| {
        usize::try_from(v).map_err(|_| value_error(format!("{name} must be >= 0, got {v}")))
    };
    chunk::Params::new(
        conv(min_size, "min_size")?,
        conv(avg_size, "avg_size")?,
        conv(max_size, "max_size")?,
    )
    .map_err(value_error)
}

/// The chunker of a manifest's sizes: fixed-size when `min == avg == max`, else FastCDC.
fn chunker(min_size: i64, avg_size: i64, max_size: i64) -> PyResult<chunk::Chunker> {
    let conv = |v: i64, name: &str| {
        usize::try_from(v).map_err(|_| value_error(format!("{name} must be >= 0, got {v}")))
    };
    chunk::Chunker::new(
        conv(min_size, "min_size")?,
        conv(avg_size, "avg_size")?,
        conv(max_size, "max_size")?,
    )
    .map_err(value_error)
}

/// The hash of multihash `code` (0x1e BLAKE3, 0x12 SHA2-256).
fn hash_arg(code: u64) -> PyResult<ChunkHash> {
    ChunkHash::from_code(code).map_err(value_error)
}

fn nonneg(v: i64, what: &str) -> PyResult<usize> {
    usize::try_from(v).map_err(|_| value_error(format!("{what} must be >= 0, got {v}")))
}

/// 32-byte BLAKE3 digest of `data` (multithreaded above a size threshold).
#[pyfunction]
#[pyo3(name = "blake3")]
fn blake3_digest<'py>(py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let buf = ByteBuf::get(data)?;
    let bytes = buf.as_slice();
    let digest = if bytes.len() < GIL_RELEASE_MIN_BYTES {
        blake3::hash(bytes)
    } else if bytes.len() < MULTITHREAD_HASH_MIN_BYTES {
        py.detach(|| blake3::hash(bytes)) // one thread: not queued behind the pool's work
    } else {
        detach_pooled(py, || blake3::Hasher::new().update_rayon(bytes).finalize())
    };
    Ok(PyBytes::new(py, digest.as_bytes()))
}

/// Lengths of the chunks cut from the start of `data` by fastcdc-gear-v1.
#[pyfunction]
#[pyo3(signature = (data, r#final, min_size, avg_size, max_size))]
fn chunk_lengths(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    r#final: bool,
    min_size: i64,
    avg_size: i64,
    max_size: i64,
) -> PyResult<Vec<usize>> {
    let p = params(min_size, avg_size, max_size)?;
    let buf = ByteBuf::get(data)?;
    let bytes = buf.as_slice();
    Ok(detach_pooled(py, || {
        chunk::chunk_lengths(bytes, r#final, &p)
    }))
}

/// The chunks cut from one buffer, hashed and (maybe) compressed.
#[pyclass(frozen, module = "dstore._native")]
struct Segment {
    /// Uncompressed length of each chunk, in order.
    #[pyo3(get)]
    lengths: Py<PyList>,
    /// 32-byte digests (of the hash asked for), concatenated.
    #[pyo3(get)]
    digests: Py<PyBytes>,
    /// 0 = stored raw, 1 = stored zstd-compressed.
    #[pyo3(get)]
    codecs: Py<PyList>,
    /// Stored length of each chunk (== length when raw).
    #[pyo3(get)]
    stored_lengths: Py<PyList>,
    /// Bytes of the input covered by these chunks.
    #[pyo3(get)]
    consumed: usize,
    /// A byte memoryview of the input: raw chunks are slices of it.
    input: Py<PyAny>,
    /// A memoryview of the compressed frames, end to end.
    compressed: Py<PyAny>,
    offsets: Vec<usize>,
    stored_lens: Vec<usize>,
    codec_list: Vec<u8>,
}

#[pymethods]
impl Segment {
    /// Stored bytes of chunk `index` (compressed bytes, or a view of the input when raw).
    fn stored<'py>(&self, py: Python<'py>, index: i64) -> PyResult<Bound<'py, PyAny>> {
        let n = self.offsets.len();
        let i = usize::try_from(index)
            .ok()
            .filter(|&i| i < n)
            .ok_or_else(|| {
                PyIndexError::new_err(format!("chunk index {index} out of range 0..{n}"))
            })?;
        let (start, len) = (self.offsets[i], self.stored_lens[i]);
        let base = if self.codec_list[i] == compress::CODEC_ZSTD {
            self.compressed.bind(py)
        } else {
            self.input.bind(py)
        };
        let end = (start + len) as isize;
        base.get_item(PySlice::new(py, start as isize, end, 1))
    }

    /// Copy the stored bytes of the chunks at `indices`, back to back, into
    /// the writable buffer `dest` from `offset`; returns the offset after the last.
    /// One call per batch instead of one Python slice assignment per chunk.
    fn copy_into(
        &self,
        py: Python<'_>,
        indices: Vec<i64>,
        dest: &Bound<'_, PyAny>,
        offset: i64,
    ) -> PyResult<usize> {
        let n = self.offsets.len();
        let start = nonneg(offset, "offset")?;
        let mut spans = Vec::with_capacity(indices.len());
        let mut end = start;
        for &index in &indices {
            let i = usize::try_from(index)
                .ok()
                .filter(|&i| i < n)
                .ok_or_else(|| {
                    PyIndexError::new_err(format!("chunk index {index} out of range 0..{n}"))
                })?;
            spans.push((
                self.codec_list[i] == compress::CODEC_ZSTD,
                self.offsets[i],
                self.stored_lens[i],
            ));
            end += self.stored_lens[i];
        }
        let out = writable_buffer(dest, "dest", end)?;
        let input = ByteBuf::get(self.input.bind(py))?;
        let compressed = ByteBuf::get(self.compressed.bind(py))?;
        let (input, compressed) = (input.as_slice(), compressed.as_slice());
        if end == start {
            return Ok(end);
        }
        // SAFETY: the export held by `out` keeps `len_bytes() >= end` writable,
        // contiguous bytes alive for this call; the caller does not touch them
        // concurrently (as for any buffer consumer).
        let dest = unsafe { std::slice::from_raw_parts_mut(out.buf_ptr().cast::<u8>(), end) };
        // Not on the pool: a copy needs no parallelism, and queueing behind the pool's work
        // (the next batch's chunking, a pack's erasure coding) would stall the caller for all of it.
        py.detach(|| {
            let mut pos = start;
            for (zstd, off, len) in spans {
                let src = if zstd { compressed } else { input };
                dest[pos..pos + len].copy_from_slice(&src[off..off + len]);
                pos += len;
            }
        });
        Ok(end)
    }

    fn __len__(&self) -> usize {
        self.offsets.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "<Segment chunks={} consumed={}>",
            self.offsets.len(),
            self.consumed
        )
    }
}

/// Chunk, hash and compress one buffer in a single call (zstd_level 0 = never
/// compress; min == avg == max = fixed-size chunks; hash_code 0x1e BLAKE3, 0x12 SHA2-256).
#[pyfunction]
#[pyo3(signature = (data, r#final, min_size, avg_size, max_size, zstd_level, hash_code = 0x1e))]
#[allow(clippy::too_many_arguments)]
fn process_segment(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    r#final: bool,
    min_size: i64,
    avg_size: i64,
    max_size: i64,
    zstd_level: i64,
    hash_code: u64,
) -> PyResult<Segment> {
    let cut = chunker(min_size, avg_size, max_size)?;
    let level = zstd_level_arg(zstd_level)?;
    let hash = hash_arg(hash_code)?;
    let input = byte_view(data)?;
    let buf = ByteBuf::get(&input)?;
    let bytes = buf.as_slice();
    let seg = detach_pooled(py, || {
        pipeline::process_segment(bytes, r#final, &cut, level, hash)
    });
    drop(buf);
    let compressed = byte_view(PyBytes::new(py, &seg.compressed).as_any())?;
    Ok(Segment {
        lengths: PyList::new(py, &seg.lengths)?.unbind(),
        digests: PyBytes::new(py, &seg.digests).unbind(),
        codecs: PyList::new(py, &seg.codecs)?.unbind(),
        stored_lengths: PyList::new(py, &seg.stored_lengths)?.unbind(),
        consumed: seg.consumed,
        input: input.unbind(),
        compressed: compressed.unbind(),
        offsets: seg.stored_offsets,
        stored_lens: seg.stored_lengths,
        codec_list: seg.codecs,
    })
}

fn geometry(k: i64, m: i64) -> PyResult<(usize, usize)> {
    let k = nonneg(k, "k")?;
    let m = nonneg(m, "m")?;
    if k == 0 || k + m > erasure::SHARDS_MAX {
        return Err(value_error(format!(
            "need 1 <= k and k + m <= 256, got k={k} m={m}"
        )));
    }
    Ok((k, m))
}

/// Erasure-code a pack already zero-padded to `k * shard_size` bytes; returns
/// `(parity, digests)`, the shards hashed with `hash_code` (the dataset's hash).
#[pyfunction]
#[pyo3(signature = (padded, k, m, hash_code = 0x1e))]
fn encode_pack<'py>(
    py: Python<'py>,
    padded: &Bound<'py, PyAny>,
    k: i64,
    m: i64,
    hash_code: u64,
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
    let (k, m) = geometry(k, m)?;
    let hash = hash_arg(hash_code)?;
    let buf = ByteBuf::get(padded)?;
    let bytes = buf.as_slice();
    if bytes.len() % k != 0 {
        return Err(value_error(format!(
            "pack of {} bytes does not split into k={k} equal shards",
            bytes.len()
        )));
    }
    let shard_size = bytes.len() / k;
    erasure::check_geometry(k, m, shard_size).map_err(value_error)?;
    let mut digests = Vec::new();
    let parity = PyBytes::new_with(py, m * shard_size, |parity| {
        detach_pooled(py, || {
            erasure::encode_into(bytes, k, m, parity)?;
            digests = erasure::shard_digests(bytes, parity, shard_size, hash);
            Ok::<(), erasure::ErasureError>(())
        })
        .map_err(value_error)
    })?;
    Ok((parity, PyBytes::new(py, &digests)))
}

/// Rebuild the k data shards from any k present shards (None = missing).
#[pyfunction]
fn reconstruct<'py>(
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
    let mut rebuilt = rebuild_missing(py, &slices, k, m)?.into_iter();
    Ok(slices[..k]
        .iter()
        .map(|s| match s {
            Some(s) => PyBytes::new(py, s),
            None => rebuilt.next().expect("one per missing shard"),
        })
        .collect())
}

/// The buffers of a pack's shards as given (None = missing).
pub(crate) fn shard_bufs(shards: &[Option<Bound<'_, PyAny>>]) -> PyResult<Vec<Option<ByteBuf>>> {
    shards
        .iter()
        .map(|s| s.as_ref().map(ByteBuf::get).transpose())
        .collect()
}

/// The missing data shards of `slices` (a pack's k + m shards, None = missing), rebuilt straight into new
/// bytes objects, in index order.
pub(crate) fn rebuild_missing<'py>(
    py: Python<'py>,
    slices: &[Option<&[u8]>],
    k: usize,
    m: usize,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let shard_size = erasure::check_shards(slices, k, m).map_err(value_error)?;
    let mut rebuilt = Vec::new();
    let mut outs: Vec<&mut [u8]> = Vec::new();
    for _ in slices[..k].iter().filter(|s| s.is_none()) {
        let (obj, buf) = new_bytes_zeroed(py, shard_size)?;
        rebuilt.push(obj);
        outs.push(buf);
    }
    detach_pooled(py, || erasure::reconstruct_into(slices, k, m, outs)).map_err(value_error)?;
    Ok(rebuilt)
}

/// A new zero-filled bytes object of `len` bytes and its buffer, to fill
/// before the object is handed to Python.
#[allow(clippy::mut_from_ref)]
fn new_bytes_zeroed(py: Python<'_>, len: usize) -> PyResult<(Bound<'_, PyBytes>, &mut [u8])> {
    let ssize = ffi::Py_ssize_t::try_from(len).map_err(|_| value_error("length too large"))?;
    // SAFETY: a NULL source asks CPython for an uninitialized object of that size.
    let raw = unsafe { ffi::PyBytes_FromStringAndSize(std::ptr::null(), ssize) };
    // SAFETY: `raw` is a new reference or NULL with an exception set.
    let obj = unsafe { Bound::from_owned_ptr_or_err(py, raw)?.cast_into_unchecked::<PyBytes>() };
    // SAFETY: the object owns `len` writable bytes that nothing else can see
    // yet; they are zeroed before a slice is made of them, and the caller
    // keeps the object alive for as long as it uses the slice.
    let buf = unsafe {
        let ptr = ffi::PyBytes_AsString(raw).cast::<u8>();
        std::ptr::write_bytes(ptr, 0, len);
        std::slice::from_raw_parts_mut(ptr, len)
    };
    Ok((obj, buf))
}

/// Why one chunk of a `decode_chunks` batch failed.
enum ChunkFailure {
    /// Index of the chunk whose bytes do not decode or verify.
    Integrity(usize),
}

/// One chunk to decode: (start, end) of its stored bytes in the pack, its length, its codec.
type DecodeJob = (usize, usize, usize, u8);

/// Checks every place and size of a `decode_chunks` batch before anything is allocated.
fn plan_decode(
    pack_len: usize,
    offsets: &[i64],
    stored_lengths: &[i64],
    lengths: &[i64],
    codecs: &[i64],
    digests_len: usize,
) -> PyResult<(Vec<DecodeJob>, usize)> {
    let n = offsets.len();
    if stored_lengths.len() != n || lengths.len() != n || codecs.len() != n {
        return Err(value_error(format!(
            "offsets, stored_lengths, lengths and codecs differ in length ({n}, {}, {}, {})",
            stored_lengths.len(),
            lengths.len(),
            codecs.len()
        )));
    }
    if digests_len != 32 * n {
        return Err(value_error(format!(
            "digests is {digests_len} bytes, need 32 x {n}"
        )));
    }
    let mut jobs = Vec::with_capacity(n);
    let mut total = 0usize;
    for i in 0..n {
        let off = nonneg(offsets[i], "offset")?;
        let slen = nonneg(stored_lengths[i], "stored length")?;
        let len = nonneg(lengths[i], "length")?;
        let end = off
            .checked_add(slen)
            .filter(|&e| e <= pack_len)
            .ok_or_else(|| {
                value_error(format!(
                    "chunk {i}: bytes {off}+{slen} lie outside the {pack_len}-byte pack"
                ))
            })?;
        let codec = match codecs[i] {
            0 => compress::CODEC_RAW,
            1 => compress::CODEC_ZSTD,
            c => return Err(value_error(format!("chunk {i}: unknown codec {c}"))),
        };
        if len > compress::DECOMPRESSED_MAX_BYTES {
            return Err(value_error(format!(
                "chunk {i}: length {len} exceeds {} bytes",
                compress::DECOMPRESSED_MAX_BYTES
            )));
        }
        if codec == compress::CODEC_RAW && slen != len {
            return Err(value_error(format!(
                "chunk {i}: raw chunk with stored length {slen} != length {len}"
            )));
        }
        total = total
            .checked_add(len)
            .ok_or_else(|| value_error("total length overflows"))?;
        jobs.push((off, end, len, codec));
    }
    Ok((jobs, total))
}

fn integrity_result(py: Python<'_>, failure: Option<ChunkFailure>) -> PyResult<()> {
    match failure {
        None => Ok(()),
        Some(ChunkFailure::Integrity(i)) => {
            Err(PyErr::from_type(integrity_error(py).clone(), (i,)))
        }
    }
}

/// Decompress and verify chunks of a pack (digests of `hash_code`); returns their bytes concatenated.
#[pyfunction]
#[pyo3(signature = (pack, offsets, stored_lengths, lengths, codecs, digests, hash_code = 0x1e))]
#[allow(clippy::too_many_arguments)]
fn decode_chunks<'py>(
    py: Python<'py>,
    pack: &Bound<'py, PyAny>,
    offsets: Vec<i64>,
    stored_lengths: Vec<i64>,
    lengths: Vec<i64>,
    codecs: Vec<i64>,
    digests: &Bound<'py, PyAny>,
    hash_code: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    let hash = hash_arg(hash_code)?;
    let pack_buf = ByteBuf::get(pack)?;
    let pack_bytes = pack_buf.as_slice();
    let digest_buf = ByteBuf::get(digests)?;
    let digest_bytes = digest_buf.as_slice();
    let (jobs, total) = plan_decode(
        pack_bytes.len(),
        &offsets,
        &stored_lengths,
        &lengths,
        &codecs,
        digest_bytes.len(),
    )?;
    let total_ssize =
        ffi::Py_ssize_t::try_from(total).map_err(|_| value_error("total length too large"))?;
    // An uninitialized bytes object: every byte is written below before
    // Python can see it, so skipping the zero-fill saves a pass over memory.
    // SAFETY: a NULL source asks CPython for an uninitialized object of that size.
    let raw = unsafe { ffi::PyBytes_FromStringAndSize(std::ptr::null(), total_ssize) };
    // SAFETY: `raw` is a new reference or NULL with an exception set.
    let out = unsafe { Bound::from_owned_ptr_or_err(py, raw)? };
    // SAFETY: `out` is a bytes object of `total` bytes that nothing else
    // references yet; its buffer lives as long as `out`.
    let buf = unsafe {
        std::slice::from_raw_parts_mut(ffi::PyBytes_AsString(raw).cast::<MaybeUninit<u8>>(), total)
    };
    let failure = detach_pooled(py, || {
        decode_into(pack_bytes, &jobs, digest_bytes, buf, hash)
    });
    integrity_result(py, failure)?;
    // SAFETY: `out` was created as a bytes object above.
    Ok(unsafe { out.cast_into_unchecked::<PyBytes>() })
}

/// Like `decode_chunks`, but into the start of the writable buffer `out`
/// (reused by the caller, so no fresh memory per batch); returns the bytes written.
#[pyfunction]
#[pyo3(signature = (out, pack_parts, offsets, stored_lengths, lengths, codecs, digests, hash_code = 0x1e))]
#[allow(clippy::too_many_arguments)]
fn decode_chunks_into(
    py: Python<'_>,
    out: &Bound<'_, PyAny>,
    pack_parts: Vec<Bound<'_, PyAny>>,
    offsets: Vec<i64>,
    stored_lengths: Vec<i64>,
    lengths: Vec<i64>,
    codecs: Vec<i64>,
    digests: &Bound<'_, PyAny>,
    hash_code: u64,
) -> PyResult<usize> {
    let hash = hash_arg(hash_code)?;
    let part_bufs = pack_parts
        .iter()
        .map(ByteBuf::get)
        .collect::<PyResult<Vec<_>>>()?;
    let pack = PackParts::new(part_bufs.iter().map(ByteBuf::as_slice).collect())
        .ok_or_else(|| value_error("pack parts differ in length"))?;
    let digest_buf = ByteBuf::get(digests)?;
    let digest_bytes = digest_buf.as_slice();
    let (jobs, total) = plan_decode(
        pack.len(),
        &offsets,
        &stored_lengths,
        &lengths,
        &codecs,
        digest_bytes.len(),
    )?;
    let out_buf = writable_buffer(out, "out", total)?;
    if total == 0 {
        return Ok(0);
    }
    // SAFETY: the export held by `out_buf` keeps at least `total` writable,
    // contiguous bytes alive for this call; as with any buffer consumer we
    // rely on the caller not touching them concurrently.
    let buf = unsafe {
        std::slice::from_raw_parts_mut(out_buf.buf_ptr().cast::<MaybeUninit<u8>>(), total)
    };
    let failure = detach_pooled(py, || decode_into(&pack, &jobs, digest_bytes, buf, hash));
    integrity_result(py, failure)?;
    Ok(total)
}

/// Fills `out` with the decoded chunks in parallel; returns the lowest failing index.
fn decode_into<P: PackSource + ?Sized>(
    pack: &P,
    jobs: &[DecodeJob],
    digests: &[u8],
    out: &mut [MaybeUninit<u8>],
    hash: ChunkHash,
) -> Option<ChunkFailure> {
    let mut pieces: Vec<(usize, &mut [MaybeUninit<u8>])> = Vec::with_capacity(jobs.len());
    let mut rest = out;
    for (i, job) in jobs.iter().enumerate() {
        let (piece, tail) = rest.split_at_mut(job.2);
        pieces.push((i, piece));
        rest = tail;
    }
    pieces
        .into_par_iter()
        .with_max_len(1)
        .filter_map(|(i, piece)| {
            let (off, end, _len, codec) = jobs[i];
            let stored_bytes = pack.range(off, end);
            let stored = &*stored_bytes;
            let chunk = if codec == compress::CODEC_ZSTD {
                match compress::decompress_exact_uninit(stored, piece) {
                    Ok(chunk) => chunk,
                    Err(_) => return Some(i),
                }
            } else {
                compress::copy_uninit(stored, piece)
            };
            let expected = &digests[32 * i..32 * i + 32];
            (!hash.matches(chunk, expected)).then_some(i)
        })
        .min()
        .map(ChunkFailure::Integrity)
}

/// The `OSError` (subclass by errno, e.g. `FileExistsError`) for a failed file operation.
fn os_error(path: &std::path::Path, error: &std::io::Error) -> PyErr {
    let errno = error.raw_os_error().unwrap_or(5); // EIO when the OS gave no code
    let message = std::io::Error::from_raw_os_error(errno).to_string();
    // Drop Rust's " (os error N)" suffix: Python prints the errno itself.
    let message = message
        .split(" (os error")
        .next()
        .unwrap_or_default()
        .to_owned();
    PyOSError::new_err((errno, message, path.as_os_str().to_os_string()))
}

/// A bytearray of `size` bytes whose contents are not set (no zero fill): a buffer that a receive
/// fills whole before anything reads it (`bytearray(n)` writes every byte once more before that).
#[pyfunction]
fn empty_bytearray(py: Python<'_>, size: usize) -> PyResult<Bound<'_, PyAny>> {
    let n = isize::try_from(size).map_err(|_| value_error(format!("a buffer of {size} bytes")))?;
    // SAFETY: with a null pointer CPython allocates `n` bytes (plus its trailing NUL) and copies
    // nothing; the result is a new reference or null with an exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            pyo3::ffi::PyByteArray_FromStringAndSize(std::ptr::null(), n),
        )
    }
}

/// Whether each new file was written, and `(errno, message)` of the error that stopped the writes.
type NewFilesWritten = (Vec<bool>, Option<(i32, String)>);

/// Write many new files, each through a temporary file renamed into place (a cache's entries), on the
/// calling thread with the GIL released; see `write::write_new_files`.
#[pyfunction]
fn write_new_files(
    py: Python<'_>,
    paths: Vec<PathBuf>,
    tmp_paths: Vec<PathBuf>,
    datas: Vec<Bound<'_, PyAny>>,
) -> PyResult<NewFilesWritten> {
    if tmp_paths.len() != paths.len() || datas.len() != paths.len() {
        return Err(value_error(format!(
            "paths, tmp_paths and datas differ in length ({}, {}, {})",
            paths.len(),
            tmp_paths.len(),
            datas.len()
        )));
    }
    let bufs = datas
        .iter()
        .map(ByteBuf::get)
        .collect::<PyResult<Vec<_>>>()?;
    let entries: Vec<write::NewFile<'_>> = paths
        .into_iter()
        .zip(tmp_paths)
        .zip(bufs.iter().map(ByteBuf::as_slice))
        .map(|((path, tmp), data)| (path, tmp, data))
        .collect();
    let (written, err) = py.detach(|| write::write_new_files(&entries));
    Ok((
        written,
        err.map(|e| (e.raw_os_error().unwrap_or(0), e.to_string())),
    ))
}

/// Decode, verify and write the chunks of many files under `folder` in one
/// call; returns the indices of the chunks that failed to decode or verify.
#[pyfunction]
#[pyo3(signature = (folder, paths, sizes, create, packs, chunk_packs, offsets, stored_lengths, lengths, codecs, chunk_files, file_offsets, digests, hash_code = 0x1e))]
#[allow(clippy::too_many_arguments)]
fn write_files(
    py: Python<'_>,
    folder: PathBuf,
    paths: Vec<PathBuf>,
    sizes: Vec<i64>,
    create: Vec<bool>,
    packs: Vec<Vec<Bound<'_, PyAny>>>,
    chunk_packs: Vec<i64>,
    offsets: Vec<i64>,
    stored_lengths: Vec<i64>,
    lengths: Vec<i64>,
    codecs: Vec<i64>,
    chunk_files: Vec<i64>,
    file_offsets: Vec<i64>,
    digests: &Bound<'_, PyAny>,
    hash_code: u64,
) -> PyResult<Vec<usize>> {
    let hash = hash_arg(hash_code)?;
    let n = chunk_packs.len();
    let columns = [
        offsets.len(),
        stored_lengths.len(),
        lengths.len(),
        codecs.len(),
        chunk_files.len(),
        file_offsets.len(),
    ];
    if columns.iter().any(|&len| len != n) {
        return Err(value_error(format!(
            "chunk_packs, offsets, stored_lengths, lengths, codecs, chunk_files and file_offsets differ in length ({n}, {columns:?})"
        )));
    }
    if sizes.len() != paths.len() || create.len() != paths.len() {
        return Err(value_error(format!(
            "paths, sizes and create differ in length ({}, {}, {})",
            paths.len(),
            sizes.len(),
            create.len()
        )));
    }
    let files = paths
        .into_iter()
        .zip(sizes)
        .zip(create)
        .map(|((path, size), create)| {
            let size = u64::try_from(size)
                .map_err(|_| value_error(format!("file size must be >= 0, got {size}")))?;
            Ok(write::OutFile { path, size, create })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let codec = |c: i64| u8::try_from(c).map_err(|_| value_error(format!("unknown codec {c}")));
    let chunks = (0..n)
        .map(|i| {
            Ok(write::ChunkPlace {
                pack: nonneg(chunk_packs[i], "pack index")?,
                offset: nonneg(offsets[i], "offset")?,
                stored_len: nonneg(stored_lengths[i], "stored length")?,
                size: nonneg(lengths[i], "length")?,
                codec: codec(codecs[i])?,
                file: nonneg(chunk_files[i], "file index")?,
                file_offset: nonneg(file_offsets[i], "file offset")? as u64,
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let part_bufs = packs
        .iter()
        .map(|parts| parts.iter().map(ByteBuf::get).collect::<PyResult<Vec<_>>>())
        .collect::<PyResult<Vec<_>>>()?;
    let pack_list = part_bufs
        .iter()
        .enumerate()
        .map(|(i, bufs)| {
            PackParts::new(bufs.iter().map(ByteBuf::as_slice).collect())
                .ok_or_else(|| value_error(format!("pack {i}: parts differ in length")))
        })
        .collect::<PyResult<Vec<_>>>()?;
    let pack_refs: Vec<&PackParts<'_>> = pack_list.iter().collect();
    let digest_buf = ByteBuf::get(digests)?;
    let digest_bytes = digest_buf.as_slice();
    detach_pooled(py, || {
        write::write_files(&folder, &pack_refs, &files, &chunks, digest_bytes, hash)
    })
    .map_err(|e| match e {
        write::WriteError::Invalid(msg) => value_error(msg),
        write::WriteError::Os { path, error } => os_error(&path, &error),
    })
}

/// Checks a zstd level: 0 (never compress) or one zstd accepts.
fn zstd_level_arg(zstd_level: i64) -> PyResult<i32> {
    let min_level = i64::from(zstd::zstd_safe::min_c_level());
    let max_level = i64::from(zstd::zstd_safe::max_c_level());
    if zstd_level != 0 && !(min_level..=max_level).contains(&zstd_level) {
        return Err(value_error(format!(
            "zstd_level must be 0 (never compress) or in {min_level}..={max_level}, got {zstd_level}"
        )));
    }
    Ok(zstd_level as i32)
}

/// The chunks of a batch of whole files, hashed and (maybe) compressed.
#[pyclass(frozen, module = "dstore._native")]
struct FileBatch {
    /// Per file, in order: how many chunks it has (0 if it failed).
    #[pyo3(get)]
    chunk_counts: Py<PyList>,
    /// Per failed file: (index in the batch, errno or 0, message).
    #[pyo3(get)]
    errors: Py<PyList>,
    /// Uncompressed length of each chunk, all files end to end.
    #[pyo3(get)]
    lengths: Py<PyList>,
    /// 32-byte digests (of the hash asked for), concatenated.
    #[pyo3(get)]
    digests: Py<PyBytes>,
    /// 0 = stored raw, 1 = stored zstd-compressed.
    #[pyo3(get)]
    codecs: Py<PyList>,
    /// Stored length of each chunk.
    #[pyo3(get)]
    stored_lengths: Py<PyList>,
    /// File bytes read (of the files that did not fail).
    #[pyo3(get)]
    bytes_in: u64,
    batch: ingest::Batch,
}

#[pymethods]
impl FileBatch {
    /// Copy the stored bytes of the chunks at `indices`, back to back, into
    /// the writable buffer `dest` from `offset`; returns the offset after the last.
    fn copy_into(
        &self,
        py: Python<'_>,
        indices: Vec<i64>,
        dest: &Bound<'_, PyAny>,
        offset: i64,
    ) -> PyResult<usize> {
        let b = &self.batch;
        let n = b.lengths.len();
        let start = nonneg(offset, "offset")?;
        let mut spans = Vec::with_capacity(indices.len());
        let mut end = start;
        for &index in &indices {
            let i = usize::try_from(index)
                .ok()
                .filter(|&i| i < n)
                .ok_or_else(|| {
                    PyIndexError::new_err(format!("chunk index {index} out of range 0..{n}"))
                })?;
            spans.push(i);
            end += b.stored_lengths[i];
        }
        let out = writable_buffer(dest, "dest", end)?;
        if end == start {
            return Ok(end);
        }
        // SAFETY: the export held by `out` keeps `len_bytes() >= end` writable,
        // contiguous bytes alive for this call; the caller does not touch them
        // concurrently (as for any buffer consumer).
        let dest = unsafe { std::slice::from_raw_parts_mut(out.buf_ptr().cast::<u8>(), end) };
        // Not on the pool: a copy needs no parallelism, and queueing behind the pool's work
        // (the next batch's chunking, a pack's erasure coding) would stall the caller for all of it.
        py.detach(|| {
            let mut pos = start;
            for i in spans {
                let src = b.stored(i);
                dest[pos..pos + src.len()].copy_from_slice(src);
                pos += src.len();
            }
        });
        Ok(end)
    }

    /// Stored bytes of chunk `index` (a copy).
    fn stored<'py>(&self, py: Python<'py>, index: i64) -> PyResult<Bound<'py, PyBytes>> {
        let n = self.batch.lengths.len();
        let i = usize::try_from(index)
            .ok()
            .filter(|&i| i < n)
            .ok_or_else(|| {
                PyIndexError::new_err(format!("chunk index {index} out of range 0..{n}"))
            })?;
        Ok(PyBytes::new(py, self.batch.stored(i)))
    }

    fn __len__(&self) -> usize {
        self.batch.lengths.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "<FileBatch files={} chunks={} errors={}>",
            self.batch.chunk_counts.len(),
            self.batch.lengths.len(),
            self.batch.errors.len()
        )
    }
}

/// Read, chunk, hash and compress whole files (`paths[i]` must have `sizes[i]`
/// bytes) on all cores in one call; zstd_level 0 = never compress; chunker and
/// hash as for `process_segment`.
#[pyfunction]
#[pyo3(signature = (paths, sizes, min_size, avg_size, max_size, zstd_level, hash_code = 0x1e))]
#[allow(clippy::too_many_arguments)]
fn process_files(
    py: Python<'_>,
    paths: Vec<std::path::PathBuf>,
    sizes: Vec<u64>,
    min_size: i64,
    avg_size: i64,
    max_size: i64,
    zstd_level: i64,
    hash_code: u64,
) -> PyResult<FileBatch> {
    let cut = chunker(min_size, avg_size, max_size)?;
    let level = zstd_level_arg(zstd_level)?;
    let hash = hash_arg(hash_code)?;
    if paths.len() != sizes.len() {
        return Err(value_error(format!(
            "paths and sizes differ in length ({}, {})",
            paths.len(),
            sizes.len()
        )));
    }
    let jobs: Vec<ingest::FileJob> = paths
        .into_iter()
        .zip(sizes)
        .map(|(path, size)| ingest::FileJob { path, size })
        .collect();
    let batch = detach_pooled(py, || ingest::process_files(&jobs, &cut, level, hash));
    let errors = PyList::empty(py);
    for (i, e) in &batch.errors {
        let errno = match e {
            ingest::FileError::Io(io) => io.raw_os_error().unwrap_or(0),
            ingest::FileError::ChangedSize { .. } => 0,
        };
        errors.append((*i, errno, e.to_string()))?;
    }
    Ok(FileBatch {
        chunk_counts: PyList::new(py, &batch.chunk_counts)?.unbind(),
        errors: errors.unbind(),
        lengths: PyList::new(py, &batch.lengths)?.unbind(),
        digests: PyBytes::new(py, &batch.digests).unbind(),
        codecs: PyList::new(py, &batch.codecs)?.unbind(),
        stored_lengths: PyList::new(py, &batch.stored_lengths)?.unbind(),
        bytes_in: batch.bytes_in,
        batch,
    })
}

/// dstore's native core: chunking, hashing, compression and erasure coding.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("IntegrityError", integrity_error(py))?;
    m.add("GEAR_DIGEST", chunk::gear_digest())?;
    m.add_function(wrap_pyfunction!(blake3_digest, m)?)?;
    m.add_function(wrap_pyfunction!(chunk_lengths, m)?)?;
    m.add_function(wrap_pyfunction!(process_segment, m)?)?;
    m.add_function(wrap_pyfunction!(encode_pack, m)?)?;
    m.add_function(wrap_pyfunction!(reconstruct, m)?)?;
    m.add_function(wrap_pyfunction!(decode_chunks, m)?)?;
    m.add_function(wrap_pyfunction!(decode_chunks_into, m)?)?;
    m.add_function(wrap_pyfunction!(write_files, m)?)?;
    m.add_function(wrap_pyfunction!(write_new_files, m)?)?;
    m.add_function(wrap_pyfunction!(empty_bytearray, m)?)?;
    m.add_class::<Segment>()?;
    m.add_function(wrap_pyfunction!(process_files, m)?)?;
    m.add_class::<FileBatch>()?;
    smallget::register(m)?;
    getpath::register(m)?;
    gwsolo::register(m)?;
    degraded::register(m)?;
    mountread::register(m)?;
    Ok(())
}
