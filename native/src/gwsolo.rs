//! A gateway stream's run of chunks read straight from the data shard files of a pack this peer
//! holds whole: one call reads every chunk of the run (`pread` into its place in the caller's
//! buffer, no mapping of the shards), checks it against its ID, and lays the run out either as the
//! file's bytes or as CAR sections (`varint(len) || CID || block` per chunk). It runs on the
//! calling thread with the GIL released: the stream already overlaps reading with sending, and a
//! pool's threads would only add wake-ups per run.

use std::fs::File;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

use crate::{ByteBuf, ChunkFailure, DecodeJob, writable_buffer};
use crate::{compress, hash::ChunkHash, hash_arg, integrity_result, plan_decode, value_error};

/// Bytes of `n` as an unsigned LEB128 varint.
fn varint_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// Writes `n` as an unsigned LEB128 varint at the start of `out`; returns its length.
fn put_varint(out: &mut [u8], mut n: u64) -> usize {
    let mut i = 0;
    while n >= 0x80 {
        out[i] = (n as u8 & 0x7f) | 0x80;
        n >>= 7;
        i += 1;
    }
    out[i] = n as u8;
    i + 1
}

/// The bytes before chunk `len`'s block in a CAR section whose CID is `prefix_len + 32` bytes.
fn head_len(prefix_len: usize, len: usize) -> usize {
    let cid_len = prefix_len + 32;
    varint_len((cid_len + len) as u64) + cid_len
}

/// Fills `buf` with pack bytes from `offset` on (the pack is the shards end to end, each `shard_size`).
fn read_stored(
    shards: &[ManuallyDrop<File>],
    shard_size: usize,
    offset: usize,
    buf: &mut [u8],
) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let pos = offset + done;
        let (shard, within) = (pos / shard_size, pos % shard_size);
        let n = (shard_size - within).min(buf.len() - done);
        shards[shard].read_exact_at(&mut buf[done..done + n], within as u64)?;
        done += n;
    }
    Ok(())
}

/// Why a run could not be read from the shard files.
enum RunFailure {
    /// Chunk `i` does not decode or does not hash to its ID.
    Chunk(ChunkFailure),
    /// A shard file could not be read (shorter than its size, an I/O error).
    Io(std::io::Error),
}

/// Reads, checks and lays out every chunk of `jobs` into `out` (see `read_run_files`).
fn fill_run(
    shards: &[ManuallyDrop<File>],
    shard_size: usize,
    jobs: &[DecodeJob],
    digests: &[u8],
    prefix: &[u8],
    out: &mut [u8],
    hash: ChunkHash,
) -> Result<(), RunFailure> {
    let mut scratch = Vec::new();
    let mut pos = 0;
    for (i, &(off, end, len, codec)) in jobs.iter().enumerate() {
        let digest = &digests[32 * i..32 * i + 32];
        if !prefix.is_empty() {
            pos += put_varint(&mut out[pos..], (prefix.len() + 32 + len) as u64);
            out[pos..pos + prefix.len()].copy_from_slice(prefix);
            pos += prefix.len();
            out[pos..pos + 32].copy_from_slice(digest);
            pos += 32;
        }
        let slot = &mut out[pos..pos + len];
        if codec == compress::CODEC_ZSTD {
            scratch.resize(end - off, 0);
            read_stored(shards, shard_size, off, &mut scratch).map_err(RunFailure::Io)?;
            // SAFETY: `u8` and `MaybeUninit<u8>` share their layout, and decompression only writes
            // initialized bytes into the (already initialized) slot.
            let uninit = unsafe { &mut *(slot as *mut [u8] as *mut [MaybeUninit<u8>]) };
            if compress::decompress_exact_uninit(&scratch, uninit).is_err() {
                return Err(RunFailure::Chunk(ChunkFailure::Integrity(i)));
            }
        } else {
            read_stored(shards, shard_size, off, slot).map_err(RunFailure::Io)?;
        }
        if !hash.matches(slot, digest) {
            return Err(RunFailure::Chunk(ChunkFailure::Integrity(i)));
        }
        pos += len;
    }
    Ok(())
}

/// Reads a run of chunks of one pack from its `k` data shard files (open descriptors, each
/// `shard_size` bytes, kept open by the caller for the call), verifies each chunk against its
/// digest (`hash_code`) and writes them to the start of `out`: back to back, or, when `cid_prefix`
/// is not empty, each as a CAR section whose CID is `cid_prefix || digest`. Returns the bytes written.
///
/// Raises `IntegrityError(i)` when chunk `i` does not decode or verify, `OSError` when a shard
/// cannot be read; either way `out` holds nothing to send.
#[pyfunction]
#[pyo3(signature = (out, shard_fds, shard_size, offsets, stored_lengths, lengths, codecs, digests, hash_code, cid_prefix))]
#[allow(clippy::too_many_arguments)]
fn read_run_files(
    py: Python<'_>,
    out: &Bound<'_, PyAny>,
    shard_fds: Vec<i32>,
    shard_size: usize,
    offsets: Vec<i64>,
    stored_lengths: Vec<i64>,
    lengths: Vec<i64>,
    codecs: Vec<i64>,
    digests: &Bound<'_, PyAny>,
    hash_code: u64,
    cid_prefix: &Bound<'_, PyAny>,
) -> PyResult<usize> {
    let hash = hash_arg(hash_code)?;
    if shard_size == 0 || shard_fds.iter().any(|&fd| fd < 0) {
        return Err(value_error(
            "shard_size must be > 0 and every shard_fds entry a descriptor",
        ));
    }
    let pack_len = shard_fds
        .len()
        .checked_mul(shard_size)
        .ok_or_else(|| value_error("the pack's length overflows"))?;
    let digest_buf = ByteBuf::get(digests)?;
    let digest_bytes = digest_buf.as_slice();
    let prefix_buf = ByteBuf::get(cid_prefix)?;
    let prefix = prefix_buf.as_slice();
    if prefix.len() > 16 {
        return Err(value_error("cid_prefix is longer than a CID's prefix"));
    }
    let (jobs, chunk_bytes) = plan_decode(
        pack_len,
        &offsets,
        &stored_lengths,
        &lengths,
        &codecs,
        digest_bytes.len(),
    )?;
    let heads: usize = if prefix.is_empty() {
        0
    } else {
        jobs.iter().map(|j| head_len(prefix.len(), j.2)).sum()
    };
    let total = chunk_bytes + heads;
    let out_buf = writable_buffer(out, "out", total)?;
    if total == 0 {
        return Ok(0);
    }
    // SAFETY: the export held by `out_buf` keeps at least `total` writable, initialized,
    // contiguous bytes alive for this call; as with any buffer consumer we rely on the caller
    // not touching them concurrently.
    let buf = unsafe { std::slice::from_raw_parts_mut(out_buf.buf_ptr().cast::<u8>(), total) };
    // SAFETY: the caller keeps the descriptors open for the call; ManuallyDrop never closes them.
    let shards: Vec<ManuallyDrop<File>> = shard_fds
        .iter()
        .map(|&fd| ManuallyDrop::new(unsafe { File::from_raw_fd(fd) }))
        .collect();
    let result =
        py.detach(|| fill_run(&shards, shard_size, &jobs, digest_bytes, prefix, buf, hash));
    match result {
        Ok(()) => Ok(total),
        Err(RunFailure::Chunk(failure)) => integrity_result(py, Some(failure)).map(|()| 0),
        Err(RunFailure::Io(e)) => Err(PyOSError::new_err((
            e.raw_os_error().unwrap_or(5),
            e.to_string(),
        ))),
    }
}

/// Adds this module's functions to `_native`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(read_run_files, m)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn varints_are_leb128() {
        let mut buf = [0u8; 10];
        for n in [0u64, 1, 127, 128, 300, 1 << 20, u64::MAX] {
            let len = put_varint(&mut buf, n);
            assert_eq!(len, varint_len(n));
            let (mut v, mut shift) = (0u64, 0);
            for b in &buf[..len] {
                v |= u64::from(b & 0x7f) << shift;
                shift += 7;
            }
            assert_eq!(v, n);
        }
    }

    fn shard_files(data: &[u8], shard_size: usize) -> Vec<File> {
        data.chunks(shard_size)
            .map(|part| {
                let mut f = tempfile_in_tmp();
                f.write_all(part).unwrap();
                f
            })
            .collect()
    }

    fn tempfile_in_tmp() -> File {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("gwsolo-{}-{}", std::process::id(), rand_suffix()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    #[test]
    fn a_run_across_shards_is_read_framed_and_checked() {
        let pack: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 251) as u8).collect();
        let files = shard_files(&pack, 1000);
        let shards: Vec<ManuallyDrop<File>> = files
            .iter()
            .map(|f| ManuallyDrop::new(unsafe { File::from_raw_fd(f.as_raw_fd()) }))
            .collect();
        // Two raw chunks, the second crossing from shard 1 into shard 2.
        let jobs: Vec<DecodeJob> = vec![
            (10, 110, 100, compress::CODEC_RAW),
            (900, 2100, 1200, compress::CODEC_RAW),
        ];
        let mut digests = Vec::new();
        for &(off, end, _, _) in &jobs {
            digests.extend_from_slice(blake3::hash(&pack[off..end]).as_bytes());
        }
        let prefix = [1u8, 0x55, 0x1e, 0x20];
        let total: usize = jobs.iter().map(|j| head_len(4, j.2) + j.2).sum();
        let mut out = vec![0u8; total];
        assert!(
            fill_run(
                &shards,
                1000,
                &jobs,
                &digests,
                &prefix,
                &mut out,
                ChunkHash::Blake3
            )
            .is_ok()
        );
        let mut pos = 0;
        for (i, &(off, end, len, _)) in jobs.iter().enumerate() {
            let mut head = [0u8; 10];
            let n = put_varint(&mut head, (36 + len) as u64);
            assert_eq!(&out[pos..pos + n], &head[..n]);
            pos += n;
            assert_eq!(&out[pos..pos + 4], &prefix);
            assert_eq!(&out[pos + 4..pos + 36], &digests[32 * i..32 * i + 32]);
            pos += 36;
            assert_eq!(&out[pos..pos + len], &pack[off..end]);
            pos += len;
        }
        assert_eq!(pos, total);

        let mut plain = vec![0u8; 1300];
        assert!(
            fill_run(
                &shards,
                1000,
                &jobs,
                &digests,
                &[],
                &mut plain,
                ChunkHash::Blake3
            )
            .is_ok()
        );
        assert_eq!(&plain[..100], &pack[10..110]);
        assert_eq!(&plain[100..], &pack[900..2100]);

        digests[40] ^= 1; // the second chunk's ID no longer matches its bytes
        match fill_run(
            &shards,
            1000,
            &jobs,
            &digests,
            &[],
            &mut plain,
            ChunkHash::Blake3,
        ) {
            Err(RunFailure::Chunk(ChunkFailure::Integrity(1))) => {}
            _ => panic!("a chunk that does not match its ID must fail"),
        }
        let short = shard_files(&pack[..2500], 1000); // the last shard file is shorter than its size
        let short: Vec<ManuallyDrop<File>> = short
            .iter()
            .map(|f| ManuallyDrop::new(unsafe { File::from_raw_fd(f.as_raw_fd()) }))
            .collect();
        let late: Vec<DecodeJob> = vec![(2400, 2700, 300, compress::CODEC_RAW)];
        assert!(matches!(
            fill_run(
                &short,
                1000,
                &late,
                &digests[..32],
                &[],
                &mut plain,
                ChunkHash::Blake3
            ),
            Err(RunFailure::Io(_))
        ));
    }
}
