//! Whole batches of files in one call: read, chunk, hash and compress each
//! file on the rayon pool; each file's buffer ends up holding its chunks' stored bytes.
//!
//! Each file is read whole (the caller keeps big files on the streaming
//! segment path), so its chunks are cut with `final = true` over all its
//! bytes: the same boundaries as the segment path, which only cuts while at
//! least `max` bytes are buffered or at end of file (docs/format.md, "Chunker").

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;

use rayon::prelude::*;

use crate::chunk::Chunker;
use crate::compress::CODEC_ZSTD;
use crate::hash::ChunkHash;
use crate::pipeline::{self, Segment};

/// One file to read: its path and the size the walk saw (it must still have it).
#[derive(Clone, Debug)]
pub struct FileJob {
    /// Where the file is.
    pub path: PathBuf,
    /// Its size in bytes when the tree was walked.
    pub size: u64,
}

/// Why one file of a batch could not be read.
#[derive(Debug)]
pub enum FileError {
    /// Opening or reading failed.
    Io(io::Error),
    /// The file no longer has the size the walk saw.
    ChangedSize {
        /// Size when walked.
        expected: u64,
        /// Bytes found now (at most `expected + 1`: reading stops there).
        found: u64,
    },
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::ChangedSize { expected, found } if found > expected => {
                write!(f, "file grew while being added (was {expected} bytes)")
            }
            Self::ChangedSize { expected, found } => write!(
                f,
                "file shrank while being added (was {expected} bytes, now {found})"
            ),
        }
    }
}

/// The chunks of every file of a batch, in file order. Each file's stored
/// bytes (zstd frames or raw bytes, chunk after chunk) reuse its read buffer.
#[derive(Debug, Default)]
pub struct Batch {
    /// Per file: how many chunks it has (0 for a failed or empty file).
    pub chunk_counts: Vec<usize>,
    /// Per failed file: its index in the batch and why.
    pub errors: Vec<(usize, FileError)>,
    /// Uncompressed length of each chunk.
    pub lengths: Vec<usize>,
    /// 32-byte digests (of the dataset's hash), concatenated.
    pub digests: Vec<u8>,
    /// `CODEC_RAW` or `CODEC_ZSTD` per chunk.
    pub codecs: Vec<u8>,
    /// Stored length of each chunk.
    pub stored_lengths: Vec<usize>,
    /// Per chunk: the index of its file's buffer in `stored`, and where its bytes start there.
    pub stored_at: Vec<(usize, usize)>,
    /// Per file that has chunks: its chunks' stored bytes, back to back.
    pub stored: Vec<Vec<u8>>,
    /// File bytes read (of the files that did not fail).
    pub bytes_in: u64,
}

/// Reads all of `job`'s file, failing unless it has exactly `job.size` bytes.
/// Never reads more than one byte past the expected size.
pub fn read_exact_size(job: &FileJob) -> Result<Vec<u8>, FileError> {
    let file = File::open(&job.path).map_err(FileError::Io)?;
    let expected = job.size;
    let cap = usize::try_from(expected)
        .ok()
        .and_then(|n| n.checked_add(1))
        .ok_or(FileError::ChangedSize {
            expected,
            found: expected,
        })?;
    let mut data = Vec::with_capacity(cap);
    // `take` bounds the read: a file that grew yields one byte past `expected`.
    file.take(expected + 1)
        .read_to_end(&mut data)
        .map_err(FileError::Io)?;
    let found = data.len() as u64;
    if found != expected {
        return Err(FileError::ChangedSize { expected, found });
    }
    Ok(data)
}

/// Rewrites `data` (the bytes `seg` was cut from) in place into the stored
/// bytes of its chunks, back to back; returns where each chunk's bytes start.
///
/// In place is safe: the write position (stored bytes of the chunks before
/// chunk `c`) never passes chunk `c`'s start, and a frame is shorter than its
/// chunk, so only bytes already hashed and compressed are overwritten.
pub fn compact_stored(data: &mut Vec<u8>, seg: &Segment) -> Vec<usize> {
    let mut starts = Vec::with_capacity(seg.lengths.len());
    let mut w = 0;
    for c in 0..seg.lengths.len() {
        let (off, len) = (seg.stored_offsets[c], seg.stored_lengths[c]);
        if seg.codecs[c] == CODEC_ZSTD {
            data[w..w + len].copy_from_slice(&seg.compressed[off..off + len]);
        } else {
            debug_assert!(w <= off);
            data.copy_within(off..off + len, w);
        }
        starts.push(w);
        w += len;
    }
    data.truncate(w);
    starts
}

struct FileDone {
    bytes_in: u64,
    seg: Segment,
    stored: Vec<u8>,
    starts: Vec<usize>,
}

fn process_file(
    job: &FileJob,
    chunker: &Chunker,
    zstd_level: i32,
    hash: ChunkHash,
) -> Result<FileDone, FileError> {
    let mut data = read_exact_size(job)?;
    let bytes_in = data.len() as u64;
    let mut seg = pipeline::process_segment(&data, true, chunker, zstd_level, hash);
    let starts = compact_stored(&mut data, &seg);
    seg.compressed = Vec::new();
    Ok(FileDone {
        bytes_in,
        seg,
        stored: data,
        starts,
    })
}

/// Reads and processes every file of `jobs` in parallel (one file per task),
/// then gathers the results in file order.
pub fn process_files(
    jobs: &[FileJob],
    chunker: &Chunker,
    zstd_level: i32,
    hash: ChunkHash,
) -> Batch {
    let done: Vec<Result<FileDone, FileError>> = jobs
        .par_iter()
        .with_max_len(1)
        .map(|job| process_file(job, chunker, zstd_level, hash))
        .collect();
    let chunks: usize = done.iter().flatten().map(|d| d.seg.lengths.len()).sum();
    let mut batch = Batch::default();
    batch.chunk_counts.reserve(jobs.len());
    batch.lengths.reserve(chunks);
    batch.digests.reserve(32 * chunks);
    batch.codecs.reserve(chunks);
    batch.stored_lengths.reserve(chunks);
    batch.stored_at.reserve(chunks);
    for (i, result) in done.into_iter().enumerate() {
        let d = match result {
            Ok(d) => d,
            Err(e) => {
                batch.chunk_counts.push(0);
                batch.errors.push((i, e));
                continue;
            }
        };
        batch.bytes_in += d.bytes_in;
        batch.chunk_counts.push(d.seg.lengths.len());
        if d.starts.is_empty() {
            continue;
        }
        let file = batch.stored.len();
        batch.stored_at.extend(d.starts.iter().map(|&s| (file, s)));
        batch.stored.push(d.stored);
        batch.lengths.extend_from_slice(&d.seg.lengths);
        batch.digests.extend_from_slice(&d.seg.digests);
        batch.codecs.extend_from_slice(&d.seg.codecs);
        batch
            .stored_lengths
            .extend_from_slice(&d.seg.stored_lengths);
    }
    batch
}

impl Batch {
    /// Stored bytes of chunk `i`.
    pub fn stored(&self, i: usize) -> &[u8] {
        let (file, off) = self.stored_at[i];
        &self.stored[file][off..off + self.stored_lengths[i]]
    }

    /// Whether chunk `i` is stored as a zstd frame.
    pub fn is_compressed(&self, i: usize) -> bool {
        self.codecs[i] == CODEC_ZSTD
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::Params;
    use crate::compress;
    use crate::testutil::random;
    use std::path::Path;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dstore-ingest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write(dir: &Path, name: &str, data: &[u8]) -> FileJob {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        FileJob {
            path,
            size: data.len() as u64,
        }
    }

    #[test]
    fn same_chunks_as_one_segment_per_file() {
        let dir = temp_dir("same");
        let p = Params::default_params();
        let mut text = Vec::new();
        for i in 0..40_000u32 {
            text.extend_from_slice(format!("{i},row,{}\n", i % 97).as_bytes());
        }
        let files: Vec<Vec<u8>> = vec![
            random(100_000, 1),
            Vec::new(),
            random(1, 2),
            text,
            random(3 << 20, 3),
            random(p.min, 4),
        ];
        let jobs: Vec<FileJob> = files
            .iter()
            .enumerate()
            .map(|(i, d)| write(&dir, &format!("f{i}"), d))
            .collect();
        let batch = process_files(&jobs, &p.into(), 1, ChunkHash::Blake3);
        assert!(batch.errors.is_empty());
        assert!(batch.codecs.contains(&CODEC_ZSTD));
        let mut chunk = 0;
        for (i, data) in files.iter().enumerate() {
            let seg = pipeline::process_segment(data, true, &p.into(), 1, ChunkHash::Blake3);
            assert_eq!(batch.chunk_counts[i], seg.lengths.len());
            for c in 0..seg.lengths.len() {
                assert_eq!(batch.lengths[chunk], seg.lengths[c]);
                assert_eq!(batch.codecs[chunk], seg.codecs[c]);
                assert_eq!(batch.stored(chunk), seg.stored(data, c));
                assert_eq!(
                    &batch.digests[32 * chunk..32 * chunk + 32],
                    &seg.digests[32 * c..32 * c + 32]
                );
                if batch.is_compressed(chunk) {
                    let mut out = vec![0u8; seg.lengths[c]];
                    compress::decompress_exact(batch.stored(chunk), &mut out).unwrap();
                }
                chunk += 1;
            }
        }
        assert_eq!(chunk, batch.lengths.len());
        assert_eq!(
            batch.bytes_in,
            files.iter().map(|f| f.len() as u64).sum::<u64>()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_and_resized_files_fail_alone() {
        let dir = temp_dir("errors");
        let p = Params::default_params();
        let good = write(&dir, "good", &random(50_000, 5));
        let mut grew = write(&dir, "grew", &random(50_000, 6));
        grew.size -= 1;
        let mut shrank = write(&dir, "shrank", &random(50_000, 7));
        shrank.size += 10;
        let missing = FileJob {
            path: dir.join("missing"),
            size: 3,
        };
        let batch = process_files(
            &[grew, good, missing, shrank],
            &p.into(),
            1,
            ChunkHash::Blake3,
        );
        let failed: Vec<usize> = batch.errors.iter().map(|(i, _)| *i).collect();
        assert_eq!(failed, vec![0, 2, 3]);
        assert!(matches!(
            batch.errors[0].1,
            FileError::ChangedSize {
                expected: 49_999,
                found: 50_000
            }
        ));
        assert!(batch.errors[0].1.to_string().contains("grew"));
        match &batch.errors[1].1 {
            FileError::Io(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            other => panic!("expected an I/O error, got {other:?}"),
        }
        assert!(batch.errors[2].1.to_string().contains("shrank"));
        assert_eq!(batch.chunk_counts, vec![0, 1, 0, 0]);
        assert_eq!(batch.bytes_in, 50_000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fixed_size_sha256_files_match_their_segments() {
        let dir = temp_dir("fixed");
        let fixed = Chunker::Fixed(1 << 20);
        let files = [
            random((1 << 20) - 1, 8),
            random(1 << 20, 9),
            random((3 << 20) + 1, 10),
            Vec::new(),
        ];
        let jobs: Vec<FileJob> = files
            .iter()
            .enumerate()
            .map(|(i, d)| write(&dir, &format!("f{i}"), d))
            .collect();
        let batch = process_files(&jobs, &fixed, 1, ChunkHash::Sha256);
        assert!(batch.errors.is_empty());
        assert_eq!(batch.chunk_counts, vec![1, 1, 4, 0]);
        let mut chunk = 0;
        for data in &files {
            let seg = pipeline::process_segment(data, true, &fixed, 1, ChunkHash::Sha256);
            assert_eq!(
                batch.digests[32 * chunk..32 * (chunk + seg.lengths.len())],
                seg.digests[..]
            );
            chunk += seg.lengths.len();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
