"""Cache writes off the read path: queued copies, written by a thread of their own, bounded, flushed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from dstore import _native
from dstore.mount.cache import ChunkCache
from dstore.mount.cachewriter import CacheWriter


def test_queued_chunks_are_copies_written_by_the_flush(tmp_path):
    cache = ChunkCache(tmp_path / "c", 1 << 30)
    writer = CacheWriter(cache)
    chunks = [os.urandom(70_000 + i) for i in range(20)]
    buf = bytearray(max(map(len, chunks)))
    for data in chunks:
        buf[: len(data)] = data
        writer.put("blake3", _native.blake3(data), memoryview(buf)[: len(data)])
        buf[:] = b"\0" * len(buf)  # the reader reuses its buffer at once
    assert writer.flush(30)
    for data in chunks:
        assert cache.get("blake3", _native.blake3(data), len(data)) == data
    assert len(cache.entries()) == len(chunks)


def test_a_full_queue_skips_chunks_and_never_blocks_a_read(tmp_path):
    cache = ChunkCache(tmp_path / "c", 1 << 30)
    writer = CacheWriter(cache, max_pending_bytes=100_000)
    chunks = [os.urandom(60_000) for _ in range(10)]
    for data in chunks:
        writer.put("blake3", _native.blake3(data), data)
    assert writer.flush(30)
    cached = sum(cache.get("blake3", _native.blake3(d), len(d)) == d for d in chunks)
    assert writer.skipped >= 1 and cached + writer.skipped == len(chunks)


def test_a_script_that_never_flushes_still_caches_at_exit(tmp_path):
    script = textwrap.dedent(
        f"""
        import os
        from dstore import _native
        from dstore.mount.cache import ChunkCache
        from dstore.mount.cachewriter import CacheWriter
        writer = CacheWriter(ChunkCache({str(tmp_path / "c")!r}, 1 << 30))
        for i in range(50):
            data = bytes([i]) * 100_000
            writer.put("blake3", _native.blake3(data), data)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    cache = ChunkCache(tmp_path / "c", 1 << 30)
    for i in range(50):
        data = bytes([i]) * 100_000
        assert cache.get("blake3", _native.blake3(data), len(data)) == data


def test_a_multiprocessing_worker_caches_what_it_read_before_it_ends(tmp_path):
    """DataLoader workers end with os._exit (no atexit): their queued chunks are written all the same."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    worker = ctx.Process(target=_queue_chunks, args=(str(tmp_path / "c"),))
    worker.start()
    worker.join(60)
    assert worker.exitcode == 0
    cache = ChunkCache(tmp_path / "c", 1 << 30)
    for i in range(50):
        data = bytes([i]) * 100_000
        assert cache.get("blake3", _native.blake3(data), len(data)) == data


def _queue_chunks(root: str) -> None:
    writer = CacheWriter(ChunkCache(root, 1 << 30))
    for i in range(50):
        data = bytes([i]) * 100_000
        writer.put("blake3", _native.blake3(data), data)
