//! One call per buffer: cut chunks, then hash and maybe compress each chunk.
//!
//! The cutting is sequential; hashing and compression of finished chunks run
//! on the other rayon workers while the cutter goes on, in batches of about
//! `BATCH_BYTES`, so the cores overlap instead of taking turns.

use std::sync::Mutex;

use crate::chunk::{self, Params};
use crate::compress::{self, CODEC_RAW, CODEC_ZSTD};

/// Bytes of chunks handed to one hashing/compression task.
const BATCH_BYTES: usize = 1024 * 1024;
/// Buffers below this size are processed on the calling thread alone.
const PARALLEL_MIN_BYTES: usize = 2 * BATCH_BYTES;

/// The chunks cut from one buffer, hashed and maybe compressed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Uncompressed length of each chunk.
    pub lengths: Vec<usize>,
    /// 32-byte BLAKE3 digests, concatenated.
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

fn process_chunk(data: &[u8], zstd_level: i32) -> ChunkDone {
    ChunkDone {
        digest: *blake3::hash(data).as_bytes(),
        frame: compress::compress_chunk(data, zstd_level),
    }
}

fn process_batch(data: &[u8], bounds: &[(usize, usize)], zstd_level: i32) -> Vec<ChunkDone> {
    bounds
        .iter()
        .map(|&(start, len)| process_chunk(&data[start..start + len], zstd_level))
        .collect()
}

/// Chunks, hashes and compresses `data` (see `chunk::chunk_lengths` for `final_`).
/// `zstd_level == 0` never compresses.
pub fn process_segment(data: &[u8], final_: bool, params: &Params, zstd_level: i32) -> Segment {
    let mut bounds: Vec<(usize, usize)> = Vec::with_capacity(data.len() / params.avg + 1);
    let mut done: Vec<ChunkDone>;
    if data.len() < PARALLEL_MIN_BYTES {
        let mut pos = 0;
        for len in chunk::chunk_lengths(data, final_, params) {
            bounds.push((pos, len));
            pos += len;
        }
        done = process_batch(data, &bounds, zstd_level);
    } else {
        let batches: Mutex<Vec<(usize, Vec<ChunkDone>)>> = Mutex::new(Vec::new());
        rayon::scope(|scope| {
            let mut pos = 0usize;
            let mut batch_start = 0usize;
            let mut batch_bytes = 0usize;
            let batches = &batches;
            let spawn = |from: usize, to: usize, bounds: &[(usize, usize)]| {
                let batch = bounds[from..to].to_vec();
                scope.spawn(move |_| {
                    let out = process_batch(data, &batch, zstd_level);
                    batches
                        .lock()
                        .expect("no panics while held")
                        .push((from, out));
                });
            };
            while pos < data.len() {
                let rest = &data[pos..];
                if !final_ && rest.len() < params.max {
                    break;
                }
                let len = chunk::cut(rest, params);
                bounds.push((pos, len));
                pos += len;
                batch_bytes += len;
                if batch_bytes >= BATCH_BYTES {
                    spawn(batch_start, bounds.len(), &bounds);
                    batch_start = bounds.len();
                    batch_bytes = 0;
                }
            }
            if batch_start < bounds.len() {
                spawn(batch_start, bounds.len(), &bounds);
            }
        });
        let mut batches = batches.into_inner().expect("no panics while held");
        batches.sort_unstable_by_key(|(from, _)| *from);
        done = Vec::with_capacity(bounds.len());
        for (_, out) in batches {
            done.extend(out);
        }
    }
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

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut out = vec![0u8; n];
        blake3::Hasher::new()
            .update(&seed.to_le_bytes())
            .finalize_xof()
            .fill(&mut out);
        out
    }

    fn check(data: &[u8], final_: bool, params: &Params, level: i32) -> Segment {
        let seg = process_segment(data, final_, params, level);
        assert_eq!(seg.lengths, chunk::chunk_lengths(data, final_, params));
        assert_eq!(seg.consumed, seg.lengths.iter().sum::<usize>());
        let mut pos = 0;
        for i in 0..seg.lengths.len() {
            let chunk = &data[pos..pos + seg.lengths[i]];
            assert_eq!(
                &seg.digests[32 * i..32 * i + 32],
                blake3::hash(chunk).as_bytes()
            );
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
}
