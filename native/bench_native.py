"""Throughput of dstore._native on this machine (medians of several runs).

Run after `pip install -e .` (release build): `python native/bench_native.py`.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

from dstore import _native as native

MIB = 1 << 20
RUNS = int(os.environ.get("BENCH_RUNS", "9"))
DEFAULT = (16384, 65536, 262144)


def csv_bytes(n: int) -> bytes:
    """Synthetic CSV: ids, names, prices, flags (compresses roughly 3-4x at level 3)."""
    rows = []
    size = 0
    i = 0
    while size < n:
        row = f"{i},user{i * 7919 % 100003},{i * 31 % 99991}.{i % 100:02d},{'ok' if i % 3 else 'fail'},{i * 2654435761 % 2**32}\n"
        rows.append(row)
        size += len(row)
        i += 1
    return "".join(rows).encode()[:n]


def typical_csv_bytes(n: int) -> bytes:
    """CSV closer to logs/tabular exports: dates, categories, small numbers (~5x at level 3)."""
    cities = ["Berlin", "Paris", "Lagos", "Lima", "Osaka", "Austin", "Pune", "Oslo"]
    rows = []
    size = 0
    i = 0
    while size < n:
        row = (
            f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z,"
            f"{cities[i % 8]},{cities[(i * 7) % 8]},{i % 5},{(i * 37) % 1000 / 10:.1f},"
            f"{'card' if i % 4 else 'cash'},{i}\n"
        )
        rows.append(row)
        size += len(row)
        i += 1
    return "".join(rows).encode()[:n]


def bench(name: str, nbytes: int, fn: Callable[[], object]) -> float:
    """Print throughput at the median and the best of RUNS timed calls."""
    fn()  # warm up (thread pool, contexts)
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    gbps = nbytes / med / 1e9
    best = nbytes / min(times) / 1e9
    print(
        f"{name:<52} median {gbps:6.2f} GB/s  best {best:6.2f} GB/s"
        f"  ({med * 1e3:7.2f} ms, {RUNS} runs, {nbytes / MIB:.0f} MiB)"
    )
    return gbps


def main() -> None:
    rand16 = os.urandom(16 * MIB)
    csv16 = csv_bytes(16 * MIB)
    bench("blake3 16 MiB (multithreaded)", len(rand16), lambda: native.blake3(rand16))
    bench(
        "chunk_lengths random 16 MiB",
        len(rand16),
        lambda: native.chunk_lengths(rand16, True, *DEFAULT),
    )
    bench(
        "process_segment random 16 MiB, zstd 3",
        len(rand16),
        lambda: native.process_segment(rand16, True, *DEFAULT, 3),
    )
    bench(
        "process_segment random 16 MiB, zstd 0",
        len(rand16),
        lambda: native.process_segment(rand16, True, *DEFAULT, 0),
    )
    typical16 = typical_csv_bytes(16 * MIB)
    for label, text in (("numeric CSV", csv16), ("typical CSV", typical16)):
        seg = native.process_segment(text, True, *DEFAULT, 3)
        ratio = sum(seg.stored_lengths) / len(text)
        bench(
            f"process_segment {label} 16 MiB, zstd 3 (ratio {ratio:.2f})",
            len(text),
            lambda t=text: native.process_segment(t, True, *DEFAULT, 3),
        )
    k, m = 10, 4
    padded = os.urandom(10 * MIB)
    bench(
        "encode_pack 10+4, 10 MiB (parity + k+m digests)",
        len(padded),
        lambda: native.encode_pack(padded, k, m),
    )
    shard = len(padded) // k
    parity, _ = native.encode_pack(padded, k, m)
    shards: list[bytes | None] = [padded[i * shard : (i + 1) * shard] for i in range(k)]
    shards += [parity[j * shard : (j + 1) * shard] for j in range(m)]
    for i in range(m):
        shards[i] = None
    bench(
        "reconstruct 10+4, 4 data shards lost, 10 MiB",
        len(padded),
        lambda: native.reconstruct(shards, k, m),
    )

    for label, data in (("raw", rand16), ("zstd", csv16)):
        seg = native.process_segment(data, True, *DEFAULT, 3)
        pack = bytearray()
        offsets = []
        for i in range(len(seg)):
            offsets.append(len(pack))
            pack += seg.stored(i)
        pack_b = bytes(pack)
        args = (offsets, seg.stored_lengths, seg.lengths, seg.codecs, seg.digests)
        bench(
            f"decode_chunks {label} 16 MiB (output bytes/s)",
            sum(seg.lengths),
            lambda p=pack_b, a=args: native.decode_chunks(p, *a),
        )


if __name__ == "__main__":
    main()
