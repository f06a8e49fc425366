"""CPU cost of each stage of a big-file ``dstore add``, one stage at a time (run by run.py, section ``stages``).

    python bench/stages.py FILE WORKDIR      # prints one JSON object

Replays the add of FILE (a store in WORKDIR, on tmpfs) with the same native
calls and parameters as dstore/ingest (16 MiB segments, fastcdc-gear-v1
16/64/256 KiB, zstd level 1, packs of k x 1 MiB, 10+4), but on one thread
and with every call timed on its own: ``time.process_time()`` (CPU of every
thread of this process, so the native calls' worker threads count) and
``time.perf_counter()`` around each call, summed per stage. Then the floors:
the same bytes through BLAKE3, memcpy, one plain write, hf_xet.hash_files.

Not measured here: the threads that overlap stages in a real add, Python
start-up, the UnixFS/locator/manifest metadata. run.py times a whole
``dstore add`` by its children's rusage; the difference is that overhead.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the dstore of this checkout

from dstore import _native  # noqa: E402
from dstore.format.cbor import block_cid  # noqa: E402
from dstore.format.cid import RAW, cid_from_digest, raw_cid_bytes  # noqa: E402
from dstore.format.pack import PACK_UNIT_BYTES, PackRecord, shard_size  # noqa: E402
from dstore.store import ChunkLoc, Store  # noqa: E402

SEGMENT_BYTES = 16 << 20  # dstore.ingest.add.SEGMENT_BYTES
K, M = 10, 4
MIN, AVG, MAX = 16384, 65536, 262144
ZSTD_LEVEL = 1
HASH = "blake3"


class Clock:
    """Per-stage sums of CPU seconds (whole process) and wall seconds."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        c0, w0 = time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c0
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w0


def replay_add(path: Path, work: Path, clock: Clock) -> dict:
    """The add pipeline of one big file, stage by stage; returns counts."""
    store = Store(work / "home")
    seg_buf = memoryview(bytearray(SEGMENT_BYTES))
    capacity = K * PACK_UNIT_BYTES
    pack = bytearray(capacity)
    fill = 0
    meta: list[tuple[bytes, int, int, int, int]] = []
    counts = {"bytes": 0, "chunks": 0, "packs": 0, "shard_bytes": 0}

    def seal() -> None:
        nonlocal fill, meta
        ss = shard_size(fill, K)
        total = K * ss
        pack[fill:total] = bytes(total - fill)
        view = memoryview(pack)[:total]
        with clock.stage("erasure code + shard hashes (_native.encode_pack)"):
            parity, digests = _native.encode_pack(view, K, M)
        with clock.stage("shard hashes alone (_native.blake3 per shard)"):
            for i in range(K + M):
                _native.blake3(view[i * ss : (i + 1) * ss] if i < K else memoryview(parity)[(i - K) * ss :][:ss])
        with clock.stage("pack record, shard CIDs (Python)"):
            cids = [cid_from_digest(RAW, digests[32 * i : 32 * i + 32], HASH) for i in range(K + M)]
            record = PackRecord(k=K, m=M, size=fill, shard_size=ss, shards=tuple(cids))
            record_block = record.encode()
            pack_id = block_cid(record_block, HASH).to_bytes()
            names = [c.encode("base32") for c in cids]
        pv = memoryview(parity)
        parts = [view[i * ss : (i + 1) * ss] for i in range(K)] + [pv[j * ss : (j + 1) * ss] for j in range(M)]
        with clock.stage("shard writes (write, fsync, rename; tmpfs)"):
            for name, part in zip(names, parts, strict=True):
                store.shards.write(name, (part,))
            store.shards.sync_dirs()
        with clock.stage("index commit (LMDB, one transaction per pack)"):
            chunks = [(cid, ChunkLoc(pack_id, off, sl, size, codec)) for cid, off, sl, size, codec in meta]
            store.index.commit_packs([(pack_id, record_block, [c.to_bytes() for c in cids], None)], chunks)
        counts["packs"] += 1
        counts["shard_bytes"] += (K + M) * ss
        fill, meta = 0, []

    try:
        with open(path, "rb", buffering=0) as f:
            while True:
                with clock.stage("read (16 MiB segments, tmpfs)"):
                    n = f.readinto(seg_buf)
                if not n:
                    break
                with clock.stage("chunk + hash + compress (_native.process_segment)"):
                    seg = _native.process_segment(seg_buf[:n], True, MIN, AVG, MAX, ZSTD_LEVEL)
                with clock.stage("chunk CIDs + dedup lookup (Python, LMDB)"):
                    digests = seg.digests
                    cids = [raw_cid_bytes(digests[32 * i : 32 * i + 32], HASH) for i in range(len(seg))]
                    store.index.lookup_chunks(cids)
                counts["bytes"] += n
                counts["chunks"] += len(cids)
                stored_lengths, lengths, codecs = seg.stored_lengths, seg.lengths, seg.codecs
                batch: list[int] = []
                pos = fill  # where the next chunk goes in the open pack
                for i in range(len(seg)):
                    sl = stored_lengths[i]
                    if pos + sl > capacity:
                        with clock.stage("copy chunks into packs (Segment.copy_into)"):
                            fill = seg.copy_into(batch, pack, fill)
                        batch = []
                        seal()
                        pos = 0
                    meta.append((cids[i], pos, sl, lengths[i], codecs[i]))
                    batch.append(i)
                    pos += sl
                with clock.stage("copy chunks into packs (Segment.copy_into)"):
                    fill = seg.copy_into(batch, pack, fill)
                del seg
        if meta:
            seal()
    finally:
        store.close()
    return counts


def floors(path: Path, work: Path, shard_bytes: int, clock: Clock) -> None:
    """What the same bytes cost through the cheapest tool for each job."""
    buf = memoryview(bytearray(SEGMENT_BYTES))
    dst = memoryview(bytearray(SEGMENT_BYTES))
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            with clock.stage("floor: BLAKE3 of the input (_native.blake3, 16 MiB blocks)"):
                _native.blake3(buf[:n])
            with clock.stage("floor: memcpy of the input (16 MiB blocks)"):
                dst[:n] = buf[:n]
    out = work / "floor-write.bin"
    with open(out, "wb", buffering=0) as f:
        left = shard_bytes
        with clock.stage("floor: one plain write of the shard bytes (tmpfs)"):
            while left > 0:
                left -= f.write(buf[: min(left, SEGMENT_BYTES)])
    out.unlink()
    left = shard_bytes
    with clock.stage("floor: BLAKE3 of the shard bytes (16 MiB blocks)"):
        while left > 0:
            _native.blake3(buf[: min(left, SEGMENT_BYTES)])
            left -= SEGMENT_BYTES
    try:
        import hf_xet
    except ImportError:
        return
    with clock.stage("floor: hf_xet.hash_files (read + chunk + hash)"):
        hf_xet.hash_files([str(path)])


def main() -> None:
    path, work = Path(sys.argv[1]), Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    clock = Clock()
    t0 = time.perf_counter()
    counts = replay_add(path, work, clock)
    floors(path, work, counts["shard_bytes"], clock)
    print(
        json.dumps(
            {
                "counts": counts,
                "cpu_s": clock.cpu,
                "wall_s": clock.wall,
                "total_s": time.perf_counter() - t0,
                "cpus": len(os.sched_getaffinity(0)),
            }
        )
    )


if __name__ == "__main__":
    main()
