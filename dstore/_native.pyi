"""Type stub for the Rust extension module built from native/ (kept honest by mypy.stubtest).

Every function takes whole buffers (any C-contiguous object supporting the
buffer protocol, read as its raw bytes; anything else raises TypeError),
releases the GIL while it works and uses both cores where the work splits.
Bad values (sizes, k/m, offsets, levels) raise ValueError, never crash.
"""

import os
from collections.abc import Sequence
from typing import final

from typing_extensions import Buffer  # collections.abc.Buffer needs Python 3.12

__all__ = [
    "GEAR_DIGEST",
    "FileBatch",
    "IntegrityError",
    "Segment",
    "blake3",
    "chunk_lengths",
    "dagpb_decode",
    "dagpb_encode",
    "decode_chunks",
    "decode_chunks_into",
    "empty_bytearray",
    "encode_pack",
    "locator_chunk_page",
    "locator_pages",
    "mount_read_callback",
    "mount_window_drop",
    "mount_window_set",
    "process_files",
    "process_segment",
    "read_run_files",
    "reconstruct",
    "reconstruct_missing",
    "unixfs_file_nodes",
    "write_files",
    "write_new_files",
]

class IntegrityError(ValueError):
    """A chunk's bytes do not hash to its ID. ``args[0]`` is the chunk's index in the batch."""

GEAR_DIGEST: str
"""Hex BLAKE3 of the 256 little-endian u64 gear-table entries (format check)."""

def blake3(data: Buffer) -> bytes:
    """32-byte BLAKE3 digest of ``data`` (multithreaded above a size threshold)."""

def chunk_lengths(data: Buffer, final: bool, min_size: int, avg_size: int, max_size: int) -> list[int]:
    """Lengths of the chunks cut from the start of ``data`` by fastcdc-gear-v1.

    When ``final`` is false, cutting stops while fewer than ``max_size`` bytes
    remain; the caller keeps the rest and prepends it to the next buffer.
    """
@final
class Segment:
    """The chunks cut from one buffer, hashed and (maybe) compressed."""

    lengths: list[int]
    """Uncompressed length of each chunk, in order."""
    digests: bytes
    """32-byte digests (BLAKE3, or SHA2-256 with ``hash_code=0x12``), concatenated (``32 * len(lengths)`` bytes)."""
    codecs: list[int]
    """0 = stored raw, 1 = stored zstd-compressed."""
    stored_lengths: list[int]
    """Stored length of each chunk (== length when raw)."""
    consumed: int
    """Bytes of the input covered by these chunks; the rest is the caller's tail."""
    def copy_into(self, indices: Sequence[int], dest: Buffer, offset: int) -> int:
        """Copy the stored bytes of the chunks at ``indices``, back to back, into
        the writable buffer ``dest`` from ``offset``; returns the offset after the
        last. IndexError for a bad index, ValueError if ``dest`` is too small.
        """
    def stored(self, index: int) -> memoryview:
        """Stored bytes of chunk ``index`` (compressed bytes, or a view of the input when raw).

        Zero-copy: a raw chunk is a slice of a memoryview of the input buffer,
        which the Segment keeps exported (a bytearray cannot be resized while
        the Segment lives). IndexError unless ``0 <= index < len(lengths)``.
        """
    def __len__(self) -> int:
        """Number of chunks."""

def process_segment(
    data: Buffer,
    final: bool,
    min_size: int,
    avg_size: int,
    max_size: int,
    zstd_level: int,
    hash_code: int = 0x1E,
) -> Segment:
    """Chunk, hash and compress one buffer in a single call (zstd_level 0 = never compress).

    ``min_size == avg_size == max_size`` cuts fixed-size chunks of that size
    (64 bytes to 16 MiB; with ``final`` false only whole ones), else
    fastcdc-gear-v1. Chunks are hashed with multihash ``hash_code``: 0x1e
    BLAKE3, 0x12 SHA2-256 (SHA-NI where the CPU has it). The compression
    decision is cheap for incompressible chunks: they are detected without
    compressing them at full cost.
    """

def encode_pack(padded: Buffer, k: int, m: int, hash_code: int = 0x1E) -> tuple[bytes, bytes]:
    """Erasure-code a pack already zero-padded to ``k * shard_size`` bytes.

    Returns ``(parity, digests)``: the m parity shards concatenated
    (``m * shard_size`` bytes), and the 32-byte digest (multihash
    ``hash_code``: 0x1e BLAKE3, 0x12 SHA2-256) of every one of the k + m
    shards concatenated.
    """

def read_run_files(
    out: Buffer,
    shard_fds: Sequence[int],
    shard_size: int,
    offsets: Sequence[int],
    stored_lengths: Sequence[int],
    lengths: Sequence[int],
    codecs: Sequence[int],
    digests: Buffer,
    hash_code: int,
    cid_prefix: Buffer,
) -> int:
    """A run of chunks of one pack read straight from its data shard files (``shard_fds``: open
    descriptors of the k data shards, each ``shard_size`` bytes, the pack being them end to end),
    each chunk checked against its digest (multihash ``hash_code``), written to the start of the
    writable buffer ``out``: back to back, or, when ``cid_prefix`` is not empty, each as a CAR
    section ``varint(len(cid) + len(block)) || cid || block`` with ``cid = cid_prefix || digest``.
    Returns the bytes written. Runs on the calling thread, GIL released.

    ValueError for arguments that do not describe the pack (or an ``out`` too small);
    IntegrityError(i) when chunk i does not decode or verify; OSError when a shard cannot be read
    (e.g. shorter than ``shard_size``). On an error ``out`` holds nothing to send.
    """

def reconstruct(shards: Sequence[Buffer | None], k: int, m: int) -> list[bytes]:
    """Rebuild the k data shards from any k present shards (None = missing).

    ``len(shards)`` must be k + m and all present shards the same, even size;
    shards are not verified here (check their CIDs first).
    """

def reconstruct_missing(shards: Sequence[Buffer | None], k: int, m: int) -> list[bytes]:
    """Only the missing data shards (None among the first k), rebuilt from any k present shards, in index order."""

def decode_chunks(
    pack: Buffer,
    offsets: Sequence[int],
    stored_lengths: Sequence[int],
    lengths: Sequence[int],
    codecs: Sequence[int],
    digests: Buffer,
    hash_code: int = 0x1E,
) -> bytes:
    """Decompress the chunks at the given places in ``pack``, verify each
    against its 32-byte digest (multihash ``hash_code``: 0x1e BLAKE3, 0x12
    SHA2-256), and return their bytes concatenated.

    Raises IntegrityError(index) for the first chunk that fails (bad zstd
    frame, wrong decompressed size, or digest mismatch); ValueError for
    arguments that cannot describe a pack (places outside ``pack``, unknown
    codec, ``lengths[i]`` > 16 MiB, raw chunk with stored length != length).
    """

def decode_chunks_into(
    out: Buffer,
    pack_parts: Sequence[Buffer],
    offsets: Sequence[int],
    stored_lengths: Sequence[int],
    lengths: Sequence[int],
    codecs: Sequence[int],
    digests: Buffer,
    hash_code: int = 0x1E,
) -> int:
    """Like :func:`decode_chunks`, for a pack given as equal-length parts end
    to end (its data shards, mapped from their files: no copy into one
    buffer), writing into the start of the writable buffer ``out`` (reused
    across calls) and returning the number of bytes written. Chunks may
    straddle parts. ValueError if ``out`` is too small or parts differ in length.
    """

def dagpb_decode(
    block: bytes | bytearray | memoryview,
) -> tuple[list[tuple[bytes, str | None, int | None]], bytes | None, str | None]:
    """Strictly decode dag-pb ``block``: ``(links, data, error)``.

    Links are ``(hash, name, tsize)`` in stored order, absent fields None; link
    hashes are not checked as CIDs. ``error`` is None for a canonical block,
    else the reason (the messages of ``dstore.format.dagpb``), ``links`` then
    holding the links read before the fault.
    """

def dagpb_encode(
    links: Sequence[tuple[bytes, str | None, int | None]],
    data: bytes | None,
) -> bytes:
    """Canonical dag-pb bytes of a node: each link ``(hash, name, tsize)`` (absent fields None) as
    field 2, in order, then ``data`` (if not None) as field 1."""

def unixfs_file_nodes(
    blocks: list[bytes], hash_code: int
) -> list[tuple[int, list[bytes], list[int], list[int]] | None]:
    """Per block, ``(filesize, [link CID bytes], [tsize], [blocksize])`` of a UnixFS File node of the
    shape dstore writes (canonical dag-pb, every link a raw CIDv1 leaf hashed with ``hash_code``,
    Data: Type File, optional filesize, blocksizes, nothing else, one non-zero blocksize per link
    adding up to filesize); None for any other block (``unixfs.parse_node`` reads it or says why
    not). Every node it reads, ``parse_node`` reads the same. The GIL is released while parsing."""

def locator_chunk_page(block: bytes | bytearray | memoryview) -> tuple[int, bytes, bytes, bytes] | None:
    """``(count, digests, prefixes, numbers)`` of a locator chunk page in exactly its canonical
    form (1..4096 entries, minimal heads, codec 0 or 1, a raw chunk's stored length equal to
    its size, digests strictly ascending); None for any other block.

    ``digests`` are the 32-byte digests end to end; ``prefixes`` each digest's first 8 bytes
    read big-endian, and ``numbers`` the five numbers of each entry (pack index, offset,
    stored length, size, codec), as native-endian u64s.
    """

def locator_pages(
    records: bytes | bytearray | memoryview,
    pack_index: Sequence[int],
    pack_sizes: Sequence[int],
    after: bytes | None,
    last: bool,
) -> tuple[list[bytes], int]:
    """Locator chunk pages (canonical DAG-CBOR, cut where the content says) from digest-sorted
    chunk-table records of 61 bytes (digest, pack number u32, offset, stored length, size u64,
    codec u8; big-endian); ``pack_index[n]`` is the locator index of pack number n,
    ``pack_sizes[i]`` the size of locator pack i. Returns the pages closed and how many records
    they hold; unless ``last`` the records after the last closed page are the caller's to pass
    again. ``after`` is the digest of the record before the first. ValueError for records out of
    order, repeated, or not within their pack.
    """

def write_files(
    folder: str | os.PathLike[str],
    paths: Sequence[str | os.PathLike[str]],
    sizes: Sequence[int],
    create: Sequence[bool],
    packs: Sequence[Sequence[Buffer]],
    chunk_packs: Sequence[int],
    offsets: Sequence[int],
    stored_lengths: Sequence[int],
    lengths: Sequence[int],
    codecs: Sequence[int],
    chunk_files: Sequence[int],
    file_offsets: Sequence[int],
    digests: Buffer,
    hash_code: int = 0x1E,
) -> list[int]:
    """Decode, verify and write the chunks of many files under ``folder`` in
    one call, on all cores; returns the indices (ascending) of the chunks
    that failed to decode or verify, which were not written.

    ``packs[p]`` is pack p as equal-length parts end to end (like
    ``decode_chunks_into``'s ``pack_parts``). File i is ``folder/paths[i]``
    (plain relative names), ``sizes[i]`` bytes long, created with
    O_CREAT|O_EXCL mode 0644 when ``create[i]``, else opened as it is.
    Chunk j lies at ``offsets[j]`` (``stored_lengths[j]`` bytes, codec
    ``codecs[j]``) in pack ``chunk_packs[j]``, decodes to ``lengths[j]``
    bytes hashing to digest j of ``digests`` (32 bytes each, multihash
    ``hash_code``: 0x1e BLAKE3, 0x12 SHA2-256), and goes at ``file_offsets[j]`` of file
    ``chunk_files[j]``. Every file is created even when all its chunks fail.

    ValueError for a batch that does not describe its packs and files
    (checked before any file is opened); OSError (errno and filename set,
    e.g. FileExistsError) when the OS refuses to create, open or write a file.
    """

def empty_bytearray(size: int) -> bytearray:
    """A bytearray of ``size`` bytes whose contents are not set (no zero fill): for a buffer that a
    receive fills whole before anything reads it."""

def write_new_files(
    paths: Sequence[str | os.PathLike[str]],
    tmp_paths: Sequence[str | os.PathLike[str]],
    datas: Sequence[Buffer],
) -> tuple[list[bool], tuple[int, str] | None]:
    """Write each of ``datas`` to its temporary path (created new, mode 0666 less the umask) and rename
    it to its path, in order, skipping paths that already exist; on the calling thread, GIL released.

    Returns whether each entry was written, and ``(errno, message)`` of the error that stopped the
    writes (its temporary file removed), or None. ValueError if the three differ in length.
    """
@final
class FileBatch:
    """The chunks of a batch of whole files (:func:`process_files`), all files end to end.

    The stored bytes of every chunk live in one buffer owned by the batch.
    """

    chunk_counts: list[int]
    """Per file, in order: how many chunks it has (0 for an empty or failed file)."""
    errors: list[tuple[int, int, str]]
    """Per failed file, in order: ``(index in the batch, errno or 0, message)``."""
    lengths: list[int]
    """Uncompressed length of each chunk."""
    digests: bytes
    """32-byte digests (BLAKE3, or SHA2-256 with ``hash_code=0x12``), concatenated (``32 * len(lengths)`` bytes)."""
    codecs: list[int]
    """0 = stored raw, 1 = stored zstd-compressed."""
    stored_lengths: list[int]
    """Stored length of each chunk (== length when raw)."""
    bytes_in: int
    """File bytes read, of the files that did not fail."""
    def copy_into(self, indices: Sequence[int], dest: Buffer, offset: int) -> int:
        """Copy the stored bytes of the chunks at ``indices``, back to back, into
        the writable buffer ``dest`` from ``offset``; returns the offset after the
        last. IndexError for a bad index, ValueError if ``dest`` is too small.
        """
    def stored(self, index: int) -> bytes:
        """Stored bytes of chunk ``index`` (a copy). IndexError unless ``0 <= index < len(lengths)``."""
    def __len__(self) -> int:
        """Number of chunks."""

def process_files(
    paths: Sequence[str],
    sizes: Sequence[int],
    min_size: int,
    avg_size: int,
    max_size: int,
    zstd_level: int,
    hash_code: int = 0x1E,
) -> FileBatch:
    """Read, chunk, hash and compress whole files on all cores in one call (zstd_level 0 = never compress).

    Chunker sizes and ``hash_code`` as for :func:`process_segment`.

    ``paths[i]`` must still hold ``sizes[i]`` bytes: a file that grew or
    shrank fails like an unreadable one (in ``errors``; reading stops one byte
    past the expected size). Each file is cut as one final buffer, so its
    chunks are those of :func:`process_segment` over all its bytes.
    """

def mount_read_callback(fh_offset: int) -> int:
    """The address of the native ``read`` callback for libfuse's ``fuse_operations`` (``fh_offset``: where
    ``fh`` lies in ``struct fuse_file_info``). A read of a file handle that lies wholly inside its window is
    one copy out of it, without the GIL; any other read goes to the handle's fallback callback."""

def mount_window_set(fh: int, fallback: int, window: Buffer | None, start: int) -> None:
    """Serve the reads of file handle ``fh`` that lie inside ``window`` (the file's bytes from ``start`` on,
    already verified; None: no window) from it, the others through the callback at address ``fallback``.
    The window's buffer stays exported (it cannot be resized) until replaced or dropped."""

def mount_window_drop(fh: int) -> None:
    """Forget file handle ``fh`` (released); its window's export is released."""
