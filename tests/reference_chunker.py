"""Slow, literal pure-Python reference of the ``fastcdc-gear-v1`` chunker.

Written from docs/format.md alone (it shares no code with native/), so tests
can compare the Rust chunker against the spec. Also defines how the shared
test vectors in ``tests/vectors/`` generate their inputs.
"""

from __future__ import annotations

import struct

import blake3

MASK64 = (1 << 64) - 1


def gear_table() -> list[int]:
    """``GEAR[i]`` = first 8 bytes, little-endian, of ``BLAKE3(b"dstore-gear-v1" || [i])``."""
    return [int.from_bytes(blake3.blake3(b"dstore-gear-v1" + bytes([i])).digest()[:8], "little") for i in range(256)]


GEAR = gear_table()


def gear_digest() -> str:
    """Hex BLAKE3 of the 256 gear entries as little-endian u64."""
    return blake3.blake3(struct.pack("<256Q", *GEAR)).hexdigest()


def masks(avg: int) -> tuple[int, int]:
    """``(MASK_S, MASK_L)`` for an average chunk size ``avg`` (a power of two)."""
    bits = avg.bit_length() - 1
    mask_s = ((1 << (bits + 2)) - 1) << (64 - bits - 2)
    mask_l = ((1 << (bits - 2)) - 1) << (64 - bits + 2)
    return mask_s, mask_l


def check_params(min_size: int, avg_size: int, max_size: int) -> None:
    """Raise ValueError unless ``64 <= min < avg < max <= 16 MiB`` and avg is a power of two."""
    if avg_size <= 0 or avg_size & (avg_size - 1):
        raise ValueError("avg must be a power of two")
    if not (64 <= min_size < avg_size < max_size <= 16 * 1024 * 1024):
        raise ValueError("need 64 <= min < avg < max <= 16 MiB")


def cut(d: bytes, min_size: int, avg_size: int, max_size: int) -> int:
    """Length of the next chunk of the remaining bytes ``d`` (the spec's pseudo-code)."""
    n = len(d)
    if n <= min_size:
        return n
    mask_s, mask_l = masks(avg_size)
    h = 0
    i = min_size
    while i < min(avg_size, n):
        h = ((h << 1) + GEAR[d[i]]) & MASK64
        if h & mask_s == 0:
            return i + 1
        i += 1
    while i < min(max_size, n):
        h = ((h << 1) + GEAR[d[i]]) & MASK64
        if h & mask_l == 0:
            return i + 1
        i += 1
    return min(max_size, n)


def chunk_lengths(data: bytes, final: bool, min_size: int, avg_size: int, max_size: int) -> list[int]:
    """Chunk lengths from the start of ``data``; without ``final``, stop while < max bytes remain."""
    check_params(min_size, avg_size, max_size)
    data = bytes(data)
    out: list[int] = []
    pos = 0
    while pos < len(data):
        rest = len(data) - pos
        if not final and rest < max_size:
            break
        n = cut(data[pos : pos + max_size], min_size, avg_size, max_size)
        out.append(n)
        pos += n
    return out


def vector_input(seed: str, length: int) -> bytes:
    """Test-vector input: ``length`` bytes of the BLAKE3 XOF of the UTF-8 ``seed`` (keyless)."""
    if seed == "zeros":
        return bytes(length)
    return blake3.blake3(seed.encode()).digest(length=length)


def boundaries_digest(lengths: list[int]) -> str:
    """Hex BLAKE3 of the chunk end offsets (cumulative lengths) as little-endian u64."""
    ends = []
    pos = 0
    for n in lengths:
        pos += n
        ends.append(pos)
    return blake3.blake3(struct.pack(f"<{len(ends)}Q", *ends)).hexdigest()
