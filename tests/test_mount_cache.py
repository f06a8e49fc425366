"""The disk chunk cache: shared by processes, capped, LRU, and never a reason for a read to fail."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from dstore import _native
from dstore.mount.cache import ChunkCache, cache_from_env, default_cache_dir

CHUNK = 64 << 10

WRITER = textwrap.dedent(
    """
    import random, sys
    from dstore import _native
    from dstore.mount.cache import ChunkCache
    root, cap, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    cache = ChunkCache(root, cap)
    rng = random.Random(seed)
    for i in range(count):
        data = rng.randbytes(rng.randrange(1, CHUNK))
        cache.put("blake3", _native.blake3(data), data)
        if i % 7 == 0:  # reads too, as a training job does
            cache.get_into("blake3", _native.blake3(data), memoryview(bytearray(len(data))))
    """
).replace("CHUNK", str(CHUNK))

WATCHER = textwrap.dedent(
    """
    import sys, time
    from dstore.mount.cache import ChunkCache
    cache = ChunkCache(sys.argv[1], int(sys.argv[2]))
    worst, looks = 0, 0
    while True:
        try:
            with cache._locked():
                entries = cache.entries()
        except FileNotFoundError:
            continue  # not created yet
        worst = max(worst, sum(e[1] for e in entries))
        looks += 1
        if open(sys.argv[3]).read() == "done":
            break
    print(worst, looks)
    """
)


def blob(i: int, size: int = CHUNK) -> tuple[bytes, bytes]:
    data = os.urandom(8) + bytes([i % 256]) * (size - 8)
    return _native.blake3(data), data


def test_two_processes_fill_it_concurrently_and_the_cap_holds(tmp_path):
    cap = 2 << 20  # ~64 entries of up to 64 KiB, each writer puts 300
    flag = tmp_path / "flag"
    flag.write_text("")
    root = tmp_path / "cache"
    watcher = subprocess.Popen(
        [sys.executable, "-c", WATCHER, str(root), str(cap), str(flag)], stdout=subprocess.PIPE, text=True
    )
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(cap), str(seed), "300"]) for seed in (1, 2)
    ]
    assert [w.wait(timeout=300) for w in writers] == [0, 0]
    flag.write_text("done")
    worst, looks = map(int, watcher.communicate(timeout=60)[0].split())
    assert looks > 0
    # Seen under the lock, the entries never pass the cap (a writer's temporary file is not an entry).
    assert 0 < worst <= cap
    cache = ChunkCache(root, cap)
    entries = cache.entries()
    total = sum(e[1] for e in entries)
    assert total <= cap and total > cap // 2  # evicted down to the low-water mark, not emptied
    with cache._locked() as fd:
        assert cache._read_total(fd) == total  # the shared count agrees with the files
    assert not list(root.rglob(".tmp-*"))
    for _, _, path in entries:  # every entry is whole and named by its content
        assert _native.blake3(path.read_bytes()).hex() == path.name


def test_least_recently_used_goes_first(tmp_path):
    cache = ChunkCache(tmp_path, 10 * CHUNK)
    items = [blob(i) for i in range(10)]
    for n, (digest, data) in enumerate(items):
        cache.put("blake3", digest, data)
        os.utime(cache.path("blake3", digest), (1000 + n, 1000 + n))  # put in this order, long ago
    assert cache.get("blake3", items[0][0], CHUNK) == items[0][1]  # used again: now the newest
    extra = blob(99)
    cache.put("blake3", *extra)
    held = {e[2].name for e in cache.entries()}
    assert items[0][0].hex() in held and extra[0].hex() in held
    assert items[1][0].hex() not in held  # the oldest unused one was evicted
    assert cache.total_bytes() <= 10 * CHUNK


def test_a_damaged_entry_is_a_miss_and_dropped(tmp_path):
    cache = ChunkCache(tmp_path, 1 << 20)
    digest, data = blob(1)
    cache.put("blake3", digest, data)
    path = cache.path("blake3", digest)
    damaged = bytearray(data)
    damaged[100] ^= 1
    path.write_bytes(damaged)
    assert cache.get("blake3", digest, CHUNK) is None
    assert not path.exists() and cache.dropped == 1
    cache.put("blake3", digest, data)  # fetched again, cached again
    assert cache.get("blake3", digest, CHUNK) == data
    path.write_bytes(data[:100])  # truncated
    assert cache.get("blake3", digest, CHUNK) is None and not path.exists()


def test_an_unusable_folder_is_no_cache_not_an_error(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"x")
    cache = ChunkCache(not_a_dir, 1 << 20)
    digest, data = blob(2)
    cache.put("blake3", digest, data)  # no exception
    assert cache.get("blake3", digest, CHUNK) is None


def test_configuration_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DSTORE_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("DSTORE_CACHE_SIZE", "3M")
    cache = cache_from_env(None)
    assert cache is not None and cache.cap_bytes == 3 << 20 and cache.root.parent == tmp_path / "c"
    assert cache_from_env(False) is None
    assert cache_from_env(tmp_path / "d").root.parent == tmp_path / "d"
    monkeypatch.setenv("DSTORE_CACHE_SIZE", "0")
    assert cache_from_env(None) is None
    monkeypatch.delenv("DSTORE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "dstore"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "dstore"
