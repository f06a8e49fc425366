"""Random-read latency of ``dstore.open`` from loopback peers (cold) and from the chunk cache (warm),
and the two cache designs weighed for docs/training.md (one file per chunk vs one LMDB).

    python bench/train_read.py [--size-mib 64] [--reads 300]

Prints one JSON object. Starts 6 real peers on 127.0.0.1 (4+2) in a temporary folder and stops them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import lmdb  # noqa: E402
from peerutil import running_peers  # noqa: E402

import dstore  # noqa: E402
from dstore import _native  # noqa: E402
from dstore.mount.cache import ChunkCache  # noqa: E402


def pct(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {
        "p50_ms": round(statistics.median(xs) * 1e3, 3),
        "p99_ms": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1e3, 3),
    }


def random_reads(ds: dstore.mount.dataset.Dataset, size: int, n: int, length: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    out = []
    with ds.open("data.bin") as f:
        buf = bytearray(length)
        for _ in range(n):
            f.seek(rng.randrange(0, size - length))
            t0 = time.perf_counter()
            f.readinto(buf)
            out.append(time.perf_counter() - t0)
    return out


def read_latency(tmp: Path, size_mib: int, reads: int) -> dict[str, object]:
    src = tmp / "src"
    src.mkdir()
    size = size_mib << 20
    (src / "data.bin").write_bytes(random.Random(1).randbytes(size))
    (tmp / "peers").mkdir()
    out: dict[str, object] = {}
    with running_peers(tmp / "peers", 6, token="bench", scrub_rate=0) as peers:
        urls = [p.url for p in peers]
        env = {**os.environ, "DSTORE_HOME": str(tmp / "adder"), "DSTORE_PEERS": ",".join(urls), "DSTORE_TOKEN": "bench"}
        cid = subprocess.run(
            [sys.executable, "-m", "dstore", "add", str(src), "--shards", "4+2", "-q"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout.strip()
        for length in (4096, 65536):
            # Cold: a store and cache that never saw the dataset; each read lands in a new chunk (mostly).
            with dstore.open(cid, peers=urls, home=tmp / f"cold{length}", cache=False) as ds:
                random_reads(ds, size, 5, length, 0)  # connections up
                cold = random_reads(ds, size, reads, length, length)
                stats = dict(ds.chunks.stats)
            out[f"cold_{length // 1024}k"] = {**pct(cold), "sources": stats}
        cache = tmp / "cache"
        with dstore.open(cid, peers=urls, home=tmp / "fill", cache=cache) as ds:
            ds.open("data.bin").read()  # fills the cache
        for length in (4096, 65536):
            with dstore.open(cid, peers=urls, home=tmp / f"warm{length}", cache=cache) as ds:
                warm = random_reads(ds, size, reads, length, length + 1)
                out[f"warm_{length // 1024}k"] = {**pct(warm), "sources": dict(ds.chunks.stats)}
        with dstore.open(cid, peers=urls, home=tmp / "seq", cache=False) as ds:
            t0 = time.perf_counter()
            ds.open("data.bin").read()
            out["sequential_cold_MiB_s"] = round(size_mib / (time.perf_counter() - t0), 1)
    return out


# -- the two cache designs, alone ------------------------------------------------------------------

WRITER = """
import random, sys, time
sys.path.insert(0, sys.argv[4])
from dstore import _native
kind, root, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
blobs = [rng.randbytes(65536) for _ in range(400)]
t0 = time.perf_counter()
if kind == "files":
    from dstore.mount.cache import ChunkCache
    c = ChunkCache(root, 1 << 34)
    for b in blobs:
        c.put("blake3", _native.blake3(b), b)
else:
    import lmdb
    env = lmdb.open(root, map_size=1 << 34)
    for b in blobs:
        with env.begin(write=True) as txn:  # one chunk per transaction, as a reader caches them
            txn.put(_native.blake3(b), b)
print(time.perf_counter() - t0)
"""


def cache_designs(tmp: Path, reads: int) -> dict[str, object]:
    rng = random.Random(2)
    blobs = [rng.randbytes(65536) for _ in range(1000)]
    keys = [_native.blake3(b) for b in blobs]
    files = ChunkCache(tmp / "files", 1 << 34)
    for k, b in zip(keys, blobs, strict=True):
        files.put("blake3", k, b)
    env = lmdb.open(str(tmp / "lmdb"), map_size=1 << 34)
    with env.begin(write=True) as txn:
        for k, b in zip(keys, blobs, strict=True):
            txn.put(k, b)
    out: dict[str, object] = {}
    buf = memoryview(bytearray(65536))
    t_files, t_lmdb = [], []
    for _ in range(reads):
        k = rng.choice(keys)
        t0 = time.perf_counter()
        assert files.get_into("blake3", k, buf)
        t_files.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with env.begin(buffers=True) as txn:
            v = txn.get(k)
            assert _native.blake3(v) == k
            buf[:] = v
        t_lmdb.append(time.perf_counter() - t0)
    out["warm_get_64k_files"] = pct(t_files)
    out["warm_get_64k_lmdb"] = pct(t_lmdb)
    for kind in ("files", "lmdb"):
        root = tmp / f"conc-{kind}"
        root.mkdir()
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, kind, str(root), str(s), str(ROOT)], stdout=subprocess.PIPE, text=True
            )
            for s in (1, 2)
        ]
        for p in procs:
            p.communicate()
        wall = time.perf_counter() - t0
        out[f"two_writers_{kind}_MiB_s"] = round(2 * 400 * 65536 / (1 << 20) / wall, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--reads", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "designs").mkdir()
        result = {
            "reads": read_latency(tmp, args.size_mib, args.reads),
            "cache_designs": cache_designs(tmp / "designs", args.reads),
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
