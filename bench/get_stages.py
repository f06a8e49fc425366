"""CPU cost of each stage of a big-file ``dstore get``, one stage at a time (run by run.py, section
``get_stages``), against its floor.

    python bench/get_stages.py HOME CID OUT      # prints one JSON object

Replays the get of dataset CID (one file, in the store at HOME, on tmpfs) with the product's own classes
(dstore.fetch.batch.BatchWriter, the same 64 MiB batches), but with the stages one after another instead
of overlapped: open the dataset (manifest, metadata), plan every batch (UnixFS leaves, locator lookups:
Python, per chunk), map the data shards, then the native decode + verify + write of each batch. Each
stage is timed with ``time.process_time()`` (CPU of every thread of this process, so the native call's
worker threads count) and ``time.perf_counter()``. Then the floors: the same bytes read (memcpy out of the
page cache), hashed with BLAKE3, and written once to a tmpfs file, and ``cp`` of the output as a command.
run.py times the whole ``dstore get`` command beside it; the difference is start-up and hand-offs.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the dstore of this checkout

from stages import Clock  # noqa: E402 - the add replay's per-stage clock

from dstore import _native  # noqa: E402
from dstore.fetch import batch as batch_mod  # noqa: E402
from dstore.fetch.reader import DatasetReader  # noqa: E402
from dstore.store import Store  # noqa: E402

BLOCK_BYTES = 16 << 20

OPEN = "open dataset: manifest + metadata pack (Python)"
PLAN = "plan batches: UnixFS leaves + locator lookups (Python, per chunk)"
MAP = "map data shards (mmap, MAP_POPULATE)"
WRITE = "decode + verify + write (_native.write_files, all cores)"
FLOOR_READ = "floor: read the output bytes (memcpy from page cache, 16 MiB blocks)"
FLOOR_HASH = "floor: BLAKE3 of the output bytes (_native.blake3, 16 MiB blocks)"
FLOOR_WRITE = "floor: one plain write of the output bytes (tmpfs)"
FLOOR_CP = "floor: cp of the output file (command)"

#: Stage -> the floor it is compared with.
FLOORS = {OPEN: None, PLAN: None, MAP: FLOOR_READ, WRITE: FLOOR_HASH}


def replay_get(home: Path, cid: str, out: Path, clock: Clock) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    store = Store(home)
    try:
        with clock.stage(OPEN):
            reader = DatasetReader(store, cid)
            root, node = reader.resolve("")
        writer = batch_mod.BatchWriter(reader, out)
        batches: list[Any] = []

        def keep() -> None:  # queue each batch instead of starting its native call
            if writer._batch.paths:
                batches.append(writer._batch)
            writer._batch = batch_mod._Batch()

        writer._flush = keep  # type: ignore[method-assign]
        with clock.stage(PLAN):
            writer.add("file.bin", root, node)
            keep()
        with clock.stage(MAP):
            parts = [[writer._parts(pid, rec) for pid, (_, rec) in b.packs.items()] for b in batches]
        with clock.stage(WRITE):
            for b, p in zip(batches, parts, strict=True):
                if writer._call(b, p, b.refs, None):
                    raise RuntimeError("a chunk failed to verify: the replay measures a healthy get")
        chunks = sum(len(b.refs) for b in batches)
        writer._maps.clear()
        for p in parts:
            batch_mod._release([m for pack in p for m in pack])
        reader.close()
    finally:
        store.close()
    return {"bytes": (out / "file.bin").stat().st_size, "chunks": chunks, "batches": len(batches)}


def floors(path: Path, work: Path, clock: Clock) -> None:
    buf = memoryview(bytearray(BLOCK_BYTES))
    with open(path, "rb", buffering=0) as f:
        while True:
            with clock.stage(FLOOR_READ):
                n = f.readinto(buf)
            if not n:
                break
            with clock.stage(FLOOR_HASH):
                _native.blake3(buf[:n])
    size = path.stat().st_size
    copy = work / "floor-write.bin"
    with open(copy, "wb", buffering=0) as f, clock.stage(FLOOR_WRITE):
        left = size
        while left > 0:
            left -= f.write(buf[: min(left, BLOCK_BYTES)])
    copy.unlink()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(["cp", str(path), str(copy)], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    clock.cpu[FLOOR_CP] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    clock.wall[FLOOR_CP] = time.perf_counter() - t0
    copy.unlink()


def main() -> None:
    home, cid, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    clock = Clock()
    counts = replay_get(home, cid, out, clock)
    floors(out / "file.bin", out, clock)
    (out / "file.bin").unlink()
    cpus = len(os.sched_getaffinity(0))
    print(json.dumps({"counts": counts, "cpu_s": clock.cpu, "wall_s": clock.wall, "cpus": cpus}))


def section(bench: Any) -> dict:
    """run.py's ``get_stages``: the replay, the whole ``dstore get`` and ``cp`` commands, BENCH_RUNS times."""
    import measure as M

    f, home, work = bench.random_path, bench.tmp / "home-get-stages", bench.tmp / "get-stages"
    M.rm(home)
    setup = bench.dstore_add(f, home, "10+4")
    cid = setup["json"]["cid"]
    runs = []
    try:
        for i in range(bench.runs):
            M.rm(work)
            r = bench.attempt(M.run_timed, [sys.executable, str(HERE / "get_stages.py"), str(home), cid, str(work)])
            run = {"stages": M.last_json(r["stdout"]) if "stdout" in r else r}
            M.rm(work)
            work.mkdir(parents=True)
            run["dstore_get"] = bench.attempt(bench.dstore_get, cid, work / "out.bin", home)
            M.rm(work)
            work.mkdir(parents=True)
            run["cp"] = bench.attempt(M.run_timed, ["cp", str(f), str(work / "cp.bin")])
            run["cp"].pop("stdout", None)
            run["cp"].pop("stderr", None)
            M.rm(work)
            bench.log(
                f"  run {i + 1}/{bench.runs}: dstore get {run['dstore_get'].get('cpu_s', 0):.2f} CPU-s,"
                f" cp {run['cp'].get('cpu_s', 0):.2f} CPU-s"
            )
            runs.append(run)
    finally:
        M.rm(home)
    gib = bench.size / (1 << 30)
    ok = [r["stages"] for r in runs if "cpu_s" in r["stages"]]
    names = list(ok[0]["cpu_s"]) if ok else []

    def per_gib(key: str, name: str) -> float | None:
        v = M.median([s[key].get(name) for s in ok])
        return None if v is None else v / gib

    def whole(key: str) -> dict[str, float | None]:
        out = {}
        for k in ("dstore_get", "cp"):
            v = M.median([r[k].get(key) for r in runs if "error" not in r[k]])
            out[k] = None if v is None else v / gib
        return out

    return {
        "description": f"CPU cost of each stage of dstore get of {bench.size >> 20} MiB incompressible (tmpfs), "
        "stages replayed one after another with the product's BatchWriter (bench/get_stages.py), against floors",
        "bytes": bench.size,
        "cpus": len(os.sched_getaffinity(0)),
        "runs": runs,
        "core_s_per_gib": {n: per_gib("cpu_s", n) for n in names},
        "wall_s_per_gib": {n: per_gib("wall_s", n) for n in names},
        "whole_core_s_per_gib": whole("cpu_s"),
        "whole_wall_s_per_gib": whole("seconds"),
        "errors": {k: r[k]["error"] for r in runs for k in r if isinstance(r[k], dict) and "error" in r[k]},
    }


def table(res: dict, fmt: Any) -> list[str]:
    """The core-seconds per GiB of each get stage against its floor, for results.md."""
    s = res.get("sections", {}).get("get_stages")
    if not s or "core_s_per_gib" not in s:
        return []
    per, wall = s["core_s_per_gib"], s["wall_s_per_gib"]
    lines = [
        "## Core-seconds per GiB by stage (get, 10+4, tmpfs)",
        "",
        f"{s['bytes'] >> 20:,} MiB incompressible file, {s['cpus']} CPUs; stages replayed one after another by"
        " `bench/get_stages.py` with the product's BatchWriter (`time.process_time()`: CPU of all threads),"
        " median of runs, per GiB of output. The whole-process rows are commands (RUSAGE_CHILDREN).",
        "",
        "| stage | core-s / GiB | wall s / GiB | floor | floor core-s / GiB | x floor |",
        "|---|---|---|---|---|---|",
    ]
    total = 0.0
    for stage, floor in FLOORS.items():
        v = per.get(stage)
        if v is None:
            continue
        total += v
        fv = per.get(floor) if floor else None
        lines.append(
            f"| {stage} | {fmt(v)} | {fmt(wall.get(stage))} | {floor.removeprefix('floor: ') if floor else '—'} |"
            f" {fmt(fv)} | {fmt(None if not fv else v / fv, '{:.2f}')} |"
        )
    lines.append(f"| **sum of stages** | **{total:.3f}** | | | | |")
    for name in (FLOOR_WRITE, FLOOR_CP):
        lines.append(f"| {name} | {fmt(per.get(name))} | {fmt(wall.get(name))} | | | |")
    w, ww = s["whole_core_s_per_gib"], s["whole_wall_s_per_gib"]
    vs_cp = None if not w.get("cp") or w.get("dstore_get") is None else w["dstore_get"] / w["cp"]
    lines.append(
        f"| whole `dstore get` process | {fmt(w.get('dstore_get'))} | {fmt(ww.get('dstore_get'))} |"
        f" cp process | {fmt(w.get('cp'))} | {fmt(vs_cp, '{:.2f}')} |"
    )
    if w.get("dstore_get") is not None:
        lines.append(
            f"| not in any stage (start-up, threads handing off, partial-get record, rename) |"
            f" {w['dstore_get'] - total:.3f} | | | | |"
        )
    cpus = s.get("cpus") or 1
    floor = (per.get(FLOOR_READ) or 0) + (per.get(FLOOR_HASH) or 0) + (per.get(FLOOR_WRITE) or 0)
    lines += [
        "",
        f"A get must at least read, hash and write every byte: {floor:.3f} core-s per GiB here, so on {cpus} CPUs"
        f" no get can pass {cpus / floor * (1 << 30) / 1e9:.2f} GB/s even with perfect overlap; cp reads and writes"
        f" only ({fmt(w.get('cp'))} core-s per GiB, one thread)."
        if floor
        else "",
        "",
    ]
    return lines


if __name__ == "__main__":
    main()
