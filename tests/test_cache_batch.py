"""The chunk cache's batch calls (what a data loader's next samples use): checked, capped, never failing."""

from __future__ import annotations

import hashlib
import os
import random

from dstore import _native
from dstore.mount.cache import ChunkCache


def chunks(n: int, seed: int = 0, size: int = 40_000) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        data = rng.randbytes(rng.randrange(1, size))
        out.append((_native.blake3(data), data))
    return out


def test_put_many_then_get_many_gives_back_every_chunk(tmp_path):
    cache = ChunkCache(tmp_path, 64 << 20)
    items = chunks(60)
    cache.put_many("blake3", [(d, memoryview(b)) for d, b in items])
    got = cache.get_many("blake3", [(d, len(b)) for d, b in items])
    assert got == dict(items)
    assert cache.total_bytes() == sum(len(b) for _, b in items)
    assert cache.get_many("blake3", [(b"\x01" * 32, 10)]) == {}  # a miss is left out
    cache.put_many("blake3", [(d, memoryview(b)) for d, b in items])  # again: already there, counted once
    assert cache.total_bytes() == sum(len(b) for _, b in items)


def test_damaged_truncated_and_resized_entries_are_dropped(tmp_path):
    cache = ChunkCache(tmp_path, 64 << 20)
    items = chunks(10, seed=1)
    cache.put_many("blake3", items)
    flipped, short, swapped = (cache.path("blake3", d) for d, _ in items[:3])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 1
    flipped.write_bytes(bytes(data))
    short.write_bytes(short.read_bytes()[:-1])
    swapped.write_bytes(items[5][1][: len(items[2][1])].ljust(len(items[2][1]), b"x"))  # right size, wrong bytes
    got = cache.get_many("blake3", [(d, len(b)) for d, b in items])
    assert got == dict(items[3:])
    assert not flipped.exists() and not short.exists() and not swapped.exists()
    assert cache.dropped == 3


def test_put_many_keeps_the_cap(tmp_path):
    cap = 400_000
    cache = ChunkCache(tmp_path, cap)
    for seed in range(5):
        cache.put_many("blake3", chunks(30, seed=seed, size=30_000))
        assert cache.total_bytes() <= cap
        leftovers = [p for p in (tmp_path / "chunks-v1").rglob(".tmp-*")]
        assert leftovers == []


def test_sha2_datasets_are_checked_with_sha2(tmp_path):
    cache = ChunkCache(tmp_path, 1 << 20)
    data = os.urandom(5000)
    digest = hashlib.sha256(data).digest()
    cache.put_many("sha2-256", [(digest, data)])
    assert cache.get_many("sha2-256", [(digest, len(data))]) == {digest: data}
    assert cache.get_many("blake3", [(digest, len(data))]) == {}  # another hash's folder


def test_an_unusable_folder_is_no_cache_not_an_error(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"x")
    cache = ChunkCache(not_a_dir, 1 << 20)
    items = chunks(3)
    cache.put_many("blake3", items)
    assert cache.get_many("blake3", [(d, len(b)) for d, b in items]) == {}
