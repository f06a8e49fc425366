"""Chunks of datasets whose hash the native kernels do not verify (sha2-256): decoded and checked in Python.

The native decoders (``_native.decode_chunks*``, ``_native.write_files``)
check every chunk against a BLAKE3 digest. A dataset imported from a
sha2-256 CAR (docs/format.md, "Imported datasets") keeps its sha2-256 chunk
IDs, so its chunks take this path instead: the same places in the same
packs, zstd frames decoded with a bound of the chunk's declared size, and
each chunk hashed with the dataset's hash before a byte of it is used.
Slower than the native path (one thread, hashlib), never less strict.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import zstandard

from dstore.format.cid import hash_digest
from dstore.limits import MAX_CHUNK_BYTES

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer needs Python 3.12

#: Chunk hashes the native kernels verify; any other goes through this module.
NATIVE_HASHES = frozenset({"blake3"})

_RAW, _ZSTD = 0, 1


def _stored_bytes(parts: Sequence[Buffer], offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` of a pack given as equal-length parts end to end (chunks may straddle parts)."""
    views = [memoryview(p).cast("B") for p in parts]
    part_len = len(views[0]) if views else 0
    if length < 0 or offset < 0 or offset + length > part_len * len(views):
        raise ValueError("chunk place outside the pack")
    out = bytearray()
    pos = offset
    while len(out) < length:
        i, within = divmod(pos, part_len)
        take = min(part_len - within, length - len(out))
        out += views[i][within : within + take]
        pos += take
    return bytes(out)


def decode_chunk(
    parts: Sequence[Buffer], offset: int, stored_len: int, size: int, codec: int, digest: bytes, hash_name: str
) -> bytes | None:
    """One chunk's bytes if they decode to ``size`` bytes hashing to ``digest``; None otherwise."""
    if codec not in (_RAW, _ZSTD) or not 0 <= size <= MAX_CHUNK_BYTES or (codec == _RAW and stored_len != size):
        raise ValueError(f"chunk of {stored_len} stored bytes, codec {codec}, cannot be {size} bytes")
    stored = _stored_bytes(parts, offset, stored_len)
    if codec == _ZSTD:
        try:
            data = zstandard.ZstdDecompressor().decompress(stored, max_output_size=size)
        except zstandard.ZstdError:
            return None
    else:
        data = stored
    if len(data) != size or hash_digest(data, hash_name) != digest:
        return None
    return data


def decode_chunks_into(
    out: bytearray,
    parts: Sequence[Buffer],
    offsets: Sequence[int],
    stored_lengths: Sequence[int],
    lengths: Sequence[int],
    codecs: Sequence[int],
    digests: bytes,
    hash_name: str,
) -> int | tuple[int]:
    """Like ``_native.decode_chunks_into``; returns the bytes written, or ``(index,)`` of the first bad chunk."""
    at = 0
    for i, (offset, stored_len, size, codec) in enumerate(zip(offsets, stored_lengths, lengths, codecs, strict=True)):
        data = decode_chunk(parts, offset, stored_len, size, codec, digests[32 * i : 32 * i + 32], hash_name)
        if data is None:
            return (i,)
        out[at : at + size] = data
        at += size
    return at


def write_files(
    folder: str,
    paths: Sequence[str],
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
    digests: bytes,
    hash_name: str,
) -> list[int]:
    """``_native.write_files`` for chunks verified with ``hash_name``: returns the chunks that failed (not written)."""
    fds: list[int] = []
    try:
        for path, size, new in zip(paths, sizes, create, strict=True):
            full = os.path.join(folder, path)
            flags = os.O_WRONLY | (os.O_CREAT | os.O_EXCL if new else 0)
            fd = os.open(full, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
            fds.append(fd)
            if new:
                os.ftruncate(fd, size)
        failed = []
        for j, pack in enumerate(chunk_packs):
            size = lengths[j]
            if file_offsets[j] + size > sizes[chunk_files[j]]:
                raise ValueError(f"chunk {j} goes past the end of its file")
            data = decode_chunk(
                packs[pack], offsets[j], stored_lengths[j], size, codecs[j], digests[32 * j : 32 * j + 32], hash_name
            )
            if data is None:
                failed.append(j)
                continue
            os.pwrite(fds[chunk_files[j]], data, file_offsets[j])
        return failed
    finally:
        for fd in fds:
            os.close(fd)
