//! One call per buffer: cut chunks, then hash and maybe compress each chunk.
//!
//! Both steps use every core: the chunker scans for candidate cuts in
//! parallel blocks (see `chunk::chunk_lengths_parallel`), then chunks are
//! hashed and compressed in parallel.

use rayon::prelude::*;

use crate::chunk::Chunker;
use crate::compress::{self, CODEC_RAW, CODEC_ZSTD};
use crate::hash::ChunkHash;

/// Buffers below this size are processed on the calling thread alone.
const PARALLEL_MIN_BYTES: usize = 1024 * 1024;

/// The chunks cut from one buffer, hashed and maybe compressed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Uncompressed length of each chunk.
    pub lengths: Vec<usize>,
    /// 32-byte digests (of the dataset's hash), concatenated.
    pub digests: Vec<u8>,
    /// `CODEC_RAW` or `CODEC_ZSTD` per chunk.
    pub codecs: Vec<u8>,
    /// Stored length of each chunk (== length when raw).
    pub stored_lengths: Vec<usize>,
    /// Where each chunk's stored bytes start: in the input when raw, in
    /// `compressed` when compressed.
    pub stored_offsets: Vec<usize>,
    /// The zstd frames of the compressed chunks, end to end.
    pub compressed: Vec<u8>,
    /// Input bytes covered by the chunks.
    pub consumed: usize,
}

impl Segment {
    /// The stored bytes of chunk `i`, given the input buffer the segment was cut from.
    pub fn stored<'a>(&'a self, input: &'a [u8], i: usize) -> &'a [u8] {
        let (off, len) = (self.stored_offsets[i], self.stored_lengths[i]);
        if self.codecs[i] == CODEC_ZSTD {
            &self.compressed[off..off + len]
        } else {
            &input[off..off + len]
        }
    }
}

struct ChunkDone {
    digest: [u8; 32],
    frame: Option<Vec<u8>>,
}

fn process_chunk(data: &[u8], zstd_level: i32, hash: ChunkHash) -> ChunkDone {
    ChunkDone {
        digest: hash.digest(data),
        frame: compress::compress_chunk(data, zstd_level),
    }
}

/// Chunks, hashes (with `hash`) and compresses `data` (see `chunk::chunk_lengths`
/// for `final_`). `zstd_level == 0` never compresses.
pub fn process_segment(
    data: &[u8],
    final_: bool,
    chunker: &Chunker,
    zstd_level: i32,
    hash: ChunkHash,
) -> Segment {
    let mut bounds: Vec<(usize, usize)> = Vec::with_capacity(data.len() / chunker.avg() + 1);
    let mut pos = 0;
    for len in chunker.lengths(data, final_) {
        bounds.push((pos, len));
        pos += len;
    }
    let mut done: Vec<ChunkDone> = if data.len() < PARALLEL_MIN_BYTES {
        bounds
            .iter()
            .map(|&(start, len)| process_chunk(&data[start..start + len], zstd_level, hash))
            .collect()
    } else {
        bounds
            .par_iter()
            .with_max_len(1)
            .map(|&(start, len)| process_chunk(&data[start..start + len], zstd_level, hash))
            .collect()
    };
    let n = bounds.len();
    let mut seg = Segment {
        lengths: Vec::with_capacity(n),
        digests: Vec::with_capacity(32 * n),
        codecs: Vec::with_capacity(n),
        stored_lengths: Vec::with_capacity(n),
        stored_offsets: Vec::with_capacity(n),
        compressed: Vec::with_capacity(
            done.iter()
                .map(|d| d.frame.as_ref().map_or(0, Vec::len))
                .sum(),
        ),
        consumed: 0,
    };
    for (&(start, len), d) in bounds.iter().zip(done.iter_mut()) {
        seg.lengths.push(len);
        seg.digests.extend_from_slice(&d.digest);
        match d.frame.take() {
            Some(frame) => {
                seg.codecs.push(CODEC_ZSTD);
                seg.stored_offsets.push(seg.compressed.len());
                seg.stored_lengths.push(frame.len());
                seg.compressed.extend_from_slice(&frame);
            }
            None => {
                seg.codecs.push(CODEC_RAW);
                seg.stored_offsets.push(start);
                seg.stored_lengths.push(len);
            }
        }
        seg.consumed = start + len;
    }
    seg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{self, Params};
    use crate::testutil::random;

    fn check(data: &[u8], final_: bool, params: &Params, level: i32) -> Segment {
        check_with(
            data,
            final_,
            &Chunker::Cdc(*params),
            level,
            ChunkHash::Blake3,
        )
    }

    fn check_with(
        data: &[u8],
        final_: bool,
        chunker: &Chunker,
        level: i32,
        hash: ChunkHash,
    ) -> Segment {
        let seg = process_segment(data, final_, chunker, level, hash);
        assert_eq!(seg.lengths, chunker.lengths(data, final_));
        assert_eq!(seg.consumed, seg.lengths.iter().sum::<usize>());
        let mut pos = 0;
        for i in 0..seg.lengths.len() {
            let chunk = &data[pos..pos + seg.lengths[i]];
            assert_eq!(&seg.digests[32 * i..32 * i + 32], &hash.digest(chunk));
            let stored = seg.stored(data, i);
            if seg.codecs[i] == CODEC_ZSTD {
                let mut out = vec![0u8; chunk.len()];
                compress::decompress_exact(stored, &mut out).unwrap();
                assert_eq!(out, chunk);
                assert!(stored.len() <= compress::max_worthwhile_bytes(chunk.len()));
            } else {
                assert_eq!(stored, chunk);
            }
            pos += seg.lengths[i];
        }
        seg
    }

    #[test]
    fn mixed_buffer_small_and_large() {
        let p = Params::default_params();
        let mut data = random(3 << 20, 5);
        // A compressible stretch in the middle.
        for (i, b) in data[1 << 20..2 << 20].iter_mut().enumerate() {
            *b = b"abcabcabd,1234\n"[i % 15];
        }
        let seg = check(&data, true, &p, 3);
        assert!(seg.codecs.contains(&CODEC_ZSTD) && seg.codecs.contains(&CODEC_RAW));
        let seg = check(&data, false, &p, 3);
        assert!(data.len() - seg.consumed < p.max);
        check(&data[..100_000], true, &p, 3);
        check(&data[..100_000], false, &p, 0);
        assert_eq!(check(&[], true, &p, 3).lengths.len(), 0);
        let none = check(&data, true, &p, 0);
        assert!(none.codecs.iter().all(|&c| c == CODEC_RAW));
    }

    #[test]
    fn fixed_size_sha256() {
        let mib = 1 << 20;
        let fixed = Chunker::Fixed(mib);
        let mut data = random(5 * mib + 17, 6);
        data[..mib].fill(b'x'); // one compressible chunk
        let seg = check_with(&data, true, &fixed, 1, ChunkHash::Sha256);
        assert_eq!(seg.lengths, vec![mib, mib, mib, mib, mib, 17]);
        assert_eq!(seg.codecs[0], CODEC_ZSTD);
        let seg = check_with(&data, false, &fixed, 1, ChunkHash::Sha256);
        assert_eq!(seg.consumed, 5 * mib);
        check_with(&data[..1000], true, &fixed, 1, ChunkHash::Sha256);
        let cdc = Chunker::Cdc(Params::default_params());
        let seg = check_with(&data, true, &cdc, 1, ChunkHash::Sha256);
        assert_eq!(
            seg.lengths,
            chunk::chunk_lengths(&data, true, &Params::default_params())
        );
    }
}
