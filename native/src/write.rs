//! Write many files in one call: decode, verify and `pwrite` chunks straight
//! from packs into files under one folder, on all cores.
//!
//! A batch names its packs, its output files and a flat list of chunks (where
//! each lies in which pack, where it goes in which file). Every place is
//! checked against its pack and file before anything is allocated or opened.
//! A file's chunks that follow each other go out in one write of up to
//! `GROUP_MAX_BYTES`, decoded into a per-thread buffer, so memory stays at a
//! few MiB per thread whatever the size of the batch. A chunk that does not
//! decode or verify is not written; its index is returned so the caller can
//! rebuild its pack and retry just those chunks into the existing files.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;

use crate::compress;
use crate::pack::PackSource;

pub use crate::hash::{ChunkHash, HASH_BLAKE3};
/// A file's consecutive chunks are written together up to this many bytes.
pub const GROUP_MAX_BYTES: usize = 1 << 20;
/// A thread keeps its decode buffer between groups up to this size.
const KEPT_BUFFER_BYTES: usize = 4 << 20;
/// Mode of the files created.
const FILE_MODE: u32 = 0o644;

/// One output file of a batch.
#[derive(Clone, Debug)]
pub struct OutFile {
    /// Path relative to the batch's folder (plain names only: no `..`, no root).
    pub path: PathBuf,
    /// The file's full size: chunks must lie within it.
    pub size: u64,
    /// Create it (`O_CREAT | O_EXCL`), else open the existing file (a retry,
    /// or the rest of a file begun by an earlier batch).
    pub create: bool,
}

/// One chunk of a batch: where its stored bytes lie, where its bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPlace {
    /// Index of its pack in the batch.
    pub pack: usize,
    /// Offset of its stored bytes in the pack.
    pub offset: usize,
    /// Length of its stored bytes.
    pub stored_len: usize,
    /// Length of its bytes once decoded.
    pub size: usize,
    /// `compress::CODEC_RAW` or `compress::CODEC_ZSTD`.
    pub codec: u8,
    /// Index of its file in the batch.
    pub file: usize,
    /// Where its bytes go in the file.
    pub file_offset: u64,
}

/// Why a batch could not be written (chunks that fail to verify are not errors).
#[derive(Debug)]
pub enum WriteError {
    /// The batch does not describe chunks of its packs and files.
    Invalid(String),
    /// The OS refused to create, open or write a file.
    Os {
        /// The file's full path.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(msg) => f.write_str(msg),
            Self::Os { path, error } => write!(f, "{}: {error}", path.display()),
        }
    }
}

impl std::error::Error for WriteError {}

fn invalid(msg: String) -> WriteError {
    WriteError::Invalid(msg)
}

/// Checks every place and size of a batch against its packs and files.
pub fn validate<P: PackSource + ?Sized>(
    packs: &[&P],
    files: &[OutFile],
    chunks: &[ChunkPlace],
    digests_len: usize,
    hash: ChunkHash,
) -> Result<(), WriteError> {
    let need = chunks.len().checked_mul(hash.digest_len());
    if need != Some(digests_len) {
        return Err(invalid(format!(
            "digests is {digests_len} bytes, need {} x {}",
            hash.digest_len(),
            chunks.len()
        )));
    }
    for (i, f) in files.iter().enumerate() {
        let plain = f.path.components().count() > 0
            && f.path
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(invalid(format!(
                "file {i}: {:?} is not a relative path of plain names",
                f.path
            )));
        }
    }
    for (i, c) in chunks.iter().enumerate() {
        let pack = packs.get(c.pack).ok_or_else(|| {
            invalid(format!(
                "chunk {i}: pack {} of {} packs",
                c.pack,
                packs.len()
            ))
        })?;
        let pack_len = pack.len();
        if c.offset
            .checked_add(c.stored_len)
            .is_none_or(|e| e > pack_len)
        {
            return Err(invalid(format!(
                "chunk {i}: bytes {}+{} lie outside the {pack_len}-byte pack",
                c.offset, c.stored_len
            )));
        }
        if c.codec != compress::CODEC_RAW && c.codec != compress::CODEC_ZSTD {
            return Err(invalid(format!("chunk {i}: unknown codec {}", c.codec)));
        }
        if c.size > compress::DECOMPRESSED_MAX_BYTES {
            return Err(invalid(format!(
                "chunk {i}: length {} exceeds {} bytes",
                c.size,
                compress::DECOMPRESSED_MAX_BYTES
            )));
        }
        if c.codec == compress::CODEC_RAW && c.stored_len != c.size {
            return Err(invalid(format!(
                "chunk {i}: raw chunk with stored length {} != length {}",
                c.stored_len, c.size
            )));
        }
        let file = files.get(c.file).ok_or_else(|| {
            invalid(format!(
                "chunk {i}: file {} of {} files",
                c.file,
                files.len()
            ))
        })?;
        let end = c.file_offset.checked_add(c.size as u64);
        if end.is_none_or(|e| e > file.size) {
            return Err(invalid(format!(
                "chunk {i}: bytes {}+{} lie outside the {}-byte file {}",
                c.file_offset,
                c.size,
                file.size,
                file.path.display()
            )));
        }
    }
    Ok(())
}

/// Consecutive chunks of one file, written together: a range of `order`.
struct Group {
    start: usize,
    end: usize,
    bytes: usize,
}

/// Chunk indices sorted by (file, offset) and cut into groups.
fn plan_groups(chunks: &[ChunkPlace]) -> (Vec<usize>, Vec<Group>) {
    let mut order: Vec<usize> = (0..chunks.len()).collect();
    order.sort_by_key(|&i| (chunks[i].file, chunks[i].file_offset));
    let mut groups: Vec<Group> = Vec::new();
    for (pos, &i) in order.iter().enumerate() {
        let c = &chunks[i];
        if let Some(g) = groups.last_mut() {
            let prev = &chunks[order[pos - 1]];
            let follows =
                prev.file == c.file && prev.file_offset + prev.size as u64 == c.file_offset;
            if follows && g.bytes + c.size <= GROUP_MAX_BYTES {
                g.end = pos + 1;
                g.bytes += c.size;
                continue;
            }
        }
        groups.push(Group {
            start: pos,
            end: pos + 1,
            bytes: c.size,
        });
    }
    (order, groups)
}

fn open(folder: &Path, file: &OutFile) -> Result<File, WriteError> {
    let path = folder.join(&file.path);
    let mut options = OpenOptions::new();
    options.write(true).mode(FILE_MODE);
    if file.create {
        options.create_new(true);
    }
    options
        .open(&path)
        .map_err(|error| WriteError::Os { path, error })
}

thread_local! {
    /// Each thread's decode buffer (zero-filled once as it grows).
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Decodes, verifies and writes the chunks of one group; returns those that failed.
#[allow(clippy::too_many_arguments)]
fn write_group<P: PackSource + ?Sized>(
    folder: &Path,
    packs: &[&P],
    files: &[OutFile],
    opened: &[Option<File>],
    chunks: &[ChunkPlace],
    members: &[usize],
    bytes: usize,
    digests: &[u8],
    hash: ChunkHash,
) -> Result<Vec<usize>, WriteError> {
    let file_index = chunks[members[0]].file;
    let own;
    let file = match &opened[file_index] {
        Some(f) => f,
        None => {
            own = open(folder, &files[file_index])?;
            &own
        }
    };
    let os_error = |error| WriteError::Os {
        path: folder.join(&files[file_index].path),
        error,
    };
    if let Some(stored) = raw_run(chunks, members) {
        // Raw chunks stored back to back: verify and write straight from the pack.
        let stored = packs[chunks[members[0]].pack].range(stored.0, stored.1);
        return write_verified(file, chunks, members, &stored, digests, hash, |_| true)
            .map_err(os_error);
    }
    BUFFER.with(|cell| {
        let mut buffer = cell.borrow_mut();
        if buffer.len() < bytes {
            buffer.resize(bytes, 0);
        }
        let mut undecodable = Vec::new(); // members whose frames are bad
        let mut at = 0;
        for (n, &i) in members.iter().enumerate() {
            let c = &chunks[i];
            let piece = &mut buffer[at..at + c.size];
            at += c.size;
            let stored = packs[c.pack].range(c.offset, c.offset + c.stored_len);
            let ok = if c.codec == compress::CODEC_ZSTD {
                compress::decompress_exact(&stored, piece).is_ok()
            } else {
                piece.copy_from_slice(&stored);
                true
            };
            if !ok {
                undecodable.push(n);
            }
        }
        let result = write_verified(
            file,
            chunks,
            members,
            &buffer[..bytes],
            digests,
            hash,
            |n| !undecodable.contains(&n),
        )
        .map_err(os_error);
        if buffer.len() > KEPT_BUFFER_BYTES {
            *buffer = Vec::new();
        }
        result
    })
}

/// `(start, end)` in their pack of a group's stored bytes when every chunk
/// is raw and stored right after the one before, in one pack.
fn raw_run(chunks: &[ChunkPlace], members: &[usize]) -> Option<(usize, usize)> {
    let first = &chunks[members[0]];
    let mut end = first.offset;
    for &i in members {
        let c = &chunks[i];
        if c.codec != compress::CODEC_RAW || c.pack != first.pack || c.offset != end {
            return None;
        }
        end += c.stored_len;
    }
    Some((first.offset, end))
}

/// Verifies each chunk of `data` (the group's bytes, back to back) and
/// writes it to `file`: all at once when every chunk is good, else only the
/// good ones, each at its place. Returns the chunks that failed.
/// `decoded(n)` says whether member `n` decoded at all.
fn write_verified(
    file: &File,
    chunks: &[ChunkPlace],
    members: &[usize],
    data: &[u8],
    digests: &[u8],
    hash: ChunkHash,
    decoded: impl Fn(usize) -> bool,
) -> io::Result<Vec<usize>> {
    let len = hash.digest_len();
    let mut failed = Vec::new();
    let mut at = 0;
    for (n, &i) in members.iter().enumerate() {
        let size = chunks[i].size;
        if !decoded(n) || !hash.matches(&data[at..at + size], &digests[len * i..len * (i + 1)]) {
            failed.push(i);
        }
        at += size;
    }
    if failed.is_empty() {
        file.write_all_at(data, chunks[members[0]].file_offset)?;
        return Ok(failed);
    }
    let mut at = 0;
    for &i in members {
        let c = &chunks[i];
        if !failed.contains(&i) {
            file.write_all_at(&data[at..at + c.size], c.file_offset)?;
        }
        at += c.size;
    }
    Ok(failed)
}

/// Writes a batch under `folder`; returns the indices (ascending) of the
/// chunks that did not decode or verify, which were not written.
///
/// Every file is created (or opened) even when all its chunks fail, so a
/// retry of the failed chunks can open it. Files without chunks are left as
/// they are (created empty when `create`).
pub fn write_files<P: PackSource + ?Sized>(
    folder: &Path,
    packs: &[&P],
    files: &[OutFile],
    chunks: &[ChunkPlace],
    digests: &[u8],
    hash: ChunkHash,
) -> Result<Vec<usize>, WriteError> {
    validate(packs, files, chunks, digests.len(), hash)?;
    let (order, groups) = plan_groups(chunks);
    let mut groups_per_file = vec![0u32; files.len()];
    for g in &groups {
        groups_per_file[chunks[order[g.start]].file] += 1;
    }
    // A file written by one group is opened by it (so open files stay few);
    // one of several groups is opened once, here; one of none is only created.
    let opened = files
        .par_iter()
        .zip(groups_per_file.par_iter())
        .map(|(f, &n)| match n {
            1 => Ok(None),
            0 => open(folder, f).map(|_| None),
            _ => open(folder, f).map(Some),
        })
        .collect::<Result<Vec<Option<File>>, WriteError>>()?;
    let mut failed = groups
        .par_iter()
        .map(|g| {
            write_group(
                folder,
                packs,
                files,
                &opened,
                chunks,
                &order[g.start..g.end],
                g.bytes,
                digests,
                hash,
            )
        })
        .try_reduce(Vec::new, |mut a, b| {
            a.extend(b);
            Ok(a)
        })?;
    failed.sort_unstable();
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::PackParts;
    use crate::testutil::random;

    struct Batch {
        pack: Vec<u8>,
        files: Vec<OutFile>,
        chunks: Vec<ChunkPlace>,
        digests: Vec<u8>,
        want: Vec<Vec<u8>>,
    }

    /// Files of the given chunk sizes; every other chunk zstd-compressed.
    fn batch(file_chunks: &[&[usize]], seed: u64) -> Batch {
        let mut b = Batch {
            pack: Vec::new(),
            files: Vec::new(),
            chunks: Vec::new(),
            digests: Vec::new(),
            want: Vec::new(),
        };
        for (f, sizes) in file_chunks.iter().enumerate() {
            let mut content = Vec::new();
            for (j, &size) in sizes.iter().enumerate() {
                let data = if j % 2 == 0 {
                    random(size, seed + (f * 100 + j) as u64)
                } else {
                    vec![b'a' + (j % 26) as u8; size]
                };
                let (codec, stored) = match compress::compress_chunk(&data, 3) {
                    Some(frame) => (compress::CODEC_ZSTD, frame),
                    None => (compress::CODEC_RAW, data.clone()),
                };
                b.chunks.push(ChunkPlace {
                    pack: 0,
                    offset: b.pack.len(),
                    stored_len: stored.len(),
                    size,
                    codec,
                    file: f,
                    file_offset: content.len() as u64,
                });
                b.pack.extend_from_slice(&stored);
                b.digests.extend_from_slice(blake3::hash(&data).as_bytes());
                content.extend_from_slice(&data);
            }
            b.files.push(OutFile {
                path: PathBuf::from(format!("d/f{f}")),
                size: content.len() as u64,
                create: true,
            });
            b.want.push(content);
        }
        b
    }

    fn folder(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dstore-write-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("d")).unwrap();
        dir
    }

    fn read(dir: &Path, b: &Batch) -> Vec<Vec<u8>> {
        b.files
            .iter()
            .map(|f| std::fs::read(dir.join(&f.path)).unwrap())
            .collect()
    }

    #[test]
    fn writes_small_and_large_files_from_a_pack_in_parts() {
        let big: Vec<usize> = vec![300_000; 9]; // several groups, written in parallel
        let b = batch(&[&[1000], &[], &[70_000, 5, 70_000], &big, &[0]], 1);
        // Pad to four equal parts so chunks straddle them.
        let mut padded = b.pack.clone();
        padded.resize(b.pack.len().div_ceil(4) * 4, 0);
        let pack = PackParts::new(padded.chunks(padded.len() / 4).collect()).unwrap();
        let dir = folder("parts");
        let failed = write_files(
            &dir,
            &[&pack],
            &b.files,
            &b.chunks,
            &b.digests,
            ChunkHash::Blake3,
        )
        .unwrap();
        assert!(failed.is_empty());
        assert_eq!(read(&dir, &b), b.want);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn sha256_digests_are_checked_with_sha256() {
        let mut b = batch(&[&[1000, 70_000], &[5]], 3);
        let blake3_digests = b.digests.clone();
        b.digests.clear();
        for c in &b.chunks {
            let data = &b.want[c.file][c.file_offset as usize..c.file_offset as usize + c.size];
            b.digests.extend_from_slice(&ChunkHash::Sha256.digest(data));
        }
        let dir = folder("sha256");
        let failed = write_files(
            &dir,
            &[&b.pack[..]],
            &b.files,
            &b.chunks,
            &b.digests,
            ChunkHash::Sha256,
        )
        .unwrap();
        assert!(failed.is_empty());
        assert_eq!(read(&dir, &b), b.want);
        std::fs::remove_dir_all(&dir).unwrap();
        // BLAKE3 digests do not pass as SHA-256 ones: every chunk fails.
        let dir = folder("sha256-wrong");
        let failed = write_files(
            &dir,
            &[&b.pack[..]],
            &b.files,
            &b.chunks,
            &blake3_digests,
            ChunkHash::Sha256,
        )
        .unwrap();
        assert_eq!(failed, vec![0, 1, 2]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_corrupt_chunk_is_reported_and_the_retry_fills_it_in() {
        let b = batch(&[&[4000, 4000, 4000], &[2000]], 2);
        let mut bad = b.pack.clone();
        bad[b.chunks[1].offset] ^= 1;
        let dir = folder("corrupt");
        let failed = write_files(
            &dir,
            &[&bad[..]],
            &b.files,
            &b.chunks,
            &b.digests,
            ChunkHash::Blake3,
        )
        .unwrap();
        assert_eq!(failed, vec![1]);
        let got = read(&dir, &b);
        assert_eq!(got[1], b.want[1]);
        // Everything but the failed chunk's range is already right.
        let (lo, hi) = (4000, 8000);
        assert_eq!(got[0][..lo], b.want[0][..lo]);
        assert_eq!(got[0][hi..], b.want[0][hi..]);
        let files: Vec<OutFile> = b
            .files
            .iter()
            .map(|f| OutFile {
                create: false,
                ..f.clone()
            })
            .collect();
        let retry = [b.chunks[1]];
        let digest = &b.digests[32..64];
        let failed = write_files(
            &dir,
            &[&b.pack[..]],
            &files,
            &retry,
            digest,
            ChunkHash::Blake3,
        )
        .unwrap();
        assert!(failed.is_empty());
        assert_eq!(read(&dir, &b), b.want);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_places_are_refused_before_anything_is_created() {
        let b = batch(&[&[100]], 3);
        let dir = folder("bad");
        let check = |chunks: &[ChunkPlace], files: &[OutFile]| {
            let r = write_files(
                &dir,
                &[&b.pack[..]],
                files,
                chunks,
                &b.digests,
                ChunkHash::Blake3,
            );
            assert!(matches!(r, Err(WriteError::Invalid(_))), "{r:?}");
            assert!(!dir.join("d/f0").exists());
        };
        let c = b.chunks[0];
        check(
            &[ChunkPlace {
                offset: usize::MAX,
                ..c
            }],
            &b.files,
        );
        check(
            &[ChunkPlace {
                stored_len: b.pack.len() + 1,
                ..c
            }],
            &b.files,
        );
        check(&[ChunkPlace { pack: 1, ..c }], &b.files);
        check(&[ChunkPlace { file: 1, ..c }], &b.files);
        check(
            &[ChunkPlace {
                file_offset: u64::MAX,
                ..c
            }],
            &b.files,
        );
        check(&[ChunkPlace { codec: 7, ..c }], &b.files);
        check(&[ChunkPlace { size: 99, ..c }], &b.files);
        for path in ["../x", "/etc/x", "", "./x"] {
            let files = [OutFile {
                path: PathBuf::from(path),
                ..b.files[0].clone()
            }];
            check(&b.chunks, &files);
        }
        assert!(ChunkHash::from_code(0x13).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_existing_file_is_an_os_error_naming_it() {
        let b = batch(&[&[100]], 4);
        let dir = folder("exists");
        std::fs::write(dir.join("d/f0"), b"old").unwrap();
        let r = write_files(
            &dir,
            &[&b.pack[..]],
            &b.files,
            &b.chunks,
            &b.digests,
            ChunkHash::Blake3,
        );
        match r {
            Err(WriteError::Os { path, error }) => {
                assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
                assert_eq!(path, dir.join("d/f0"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read(dir.join("d/f0")).unwrap(), b"old");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// A new file: `(path, temporary path beside it, bytes)`.
pub type NewFile<'a> = (PathBuf, PathBuf, &'a [u8]);

/// Each `(path, temporary path, bytes)` written to its temporary path (created new, mode 0666 less the
/// umask) and renamed to its path, in order, skipping entries whose path already exists: a reader of
/// the path sees a whole file or none. Returns whether each entry was written (false: it existed, or
/// was not reached), and the error that stopped the writes (its temporary file removed), if any.
pub fn write_new_files(entries: &[NewFile<'_>]) -> (Vec<bool>, Option<io::Error>) {
    let mut written = vec![false; entries.len()];
    for (i, (path, tmp, data)) in entries.iter().enumerate() {
        if path.symlink_metadata().is_ok() {
            continue;
        }
        let result = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(tmp)
            .and_then(|mut file| io::Write::write_all(&mut file, data))
            .and_then(|()| std::fs::rename(tmp, path));
        if let Err(e) = result {
            let _ = std::fs::remove_file(tmp);
            return (written, Some(e));
        }
        written[i] = true;
    }
    (written, None)
}

#[cfg(test)]
mod new_files_tests {
    use super::*;

    #[test]
    fn writes_new_skips_existing_stops_at_error() {
        let dir = std::env::temp_dir().join(format!("dstore-new-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("missing/c"));
        std::fs::write(&b, b"old").unwrap();
        let entries = vec![
            (a.clone(), dir.join(".tmp-a"), &b"new a"[..]),
            (b.clone(), dir.join(".tmp-b"), &b"new b"[..]),
            (c.clone(), dir.join("missing/.tmp-c"), &b"c"[..]),
            (dir.join("d"), dir.join(".tmp-d"), &b"d"[..]),
        ];
        let (written, err) = write_new_files(&entries);
        assert_eq!(written, vec![true, false, false, false]);
        assert_eq!(err.unwrap().kind(), io::ErrorKind::NotFound);
        assert_eq!(std::fs::read(&a).unwrap(), b"new a");
        assert_eq!(std::fs::read(&b).unwrap(), b"old");
        assert!(!dir.join("d").exists() && !dir.join(".tmp-a").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
