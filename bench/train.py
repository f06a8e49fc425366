#!/usr/bin/env python3
"""Section `train` of run.py: a training script reading a dataset in place (issue 8's targets).

Every row sets dstore next to a reference measured in the same run (order rotated per run);
ratios are computed within a run and their median reported.

1. Random reads (4 KiB, 64 KiB, uniform offsets) of the BENCH_SIZE_MIB incompressible file
   through ``dstore.open``: warm (the chunk cache holds those chunks; a new ``Dataset``) vs
   ``os.pread`` of the same file (tmpfs); cold (14 loopback peers at 10+4, an empty home and
   an empty cache) vs fsspec's ``HTTPFileSystem`` (``cache_type="none"``: one range request
   per read, nothing verified) reading the same file from an aiohttp ``web.static`` server.
2. Sequential read of the whole file through the file object (1 MiB ``readinto``) vs
   ``dstore get`` of it, from a local store and from the peers (fresh home and cache), both
   timed as whole processes.
3. Sequential read through ``dstore mount`` (local store) vs ``bench/fusepass.py``, a Python
   passthrough FUSE mount of the file with the same mfusepy options (a new mount per run:
   no page cache carried over).
4. A DataLoader epoch (batch 64, ``num_workers=2``, shuffled) over 10,000 files of the
   ``images`` tree (datagen.small_tree: log-normal around 48 KiB, 20-200 KB): dstore cold
   (peers, empty home and cache) and warm (same home and cache, next epoch) vs WebDataset
   reading tar shards over HTTP (aiohttp ``web.static``), Mosaic Streaming (MDS shards, local
   remote folder, shuffled) and a plain map-style file-list Dataset over the same files on
   tmpfs. The PSS of each DataLoader worker (``/proc/PID/smaps_rollup``, polled every 100 ms).

Plus, informational, the two cache designs weighed in docs/training.md (one file per chunk vs
one LMDB): ``python bench/train.py designs``.

The measurements run in subprocesses of this file (``python bench/train.py CMD JSON``, one JSON
line out), with ``PYTHONPATH`` = the checkout measured, as every dstore command of run.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

N_PEERS = 14
SHARDS = "10+4"
TOKEN = "dstore-bench-token"
READ_SIZES = (4096, 65536)
READS = int(os.environ.get("BENCH_TRAIN_READS", "300"))
WARMUP_READS = 5
SEQ_BUFFER = 1 << 20
FILES = int(os.environ.get("BENCH_TRAIN_FILES", "10000"))
# A subset of the parts, for working on one row: BENCH_TRAIN_PARTS=mount,epoch (default: all).
PARTS = [p for p in os.environ.get("BENCH_TRAIN_PARTS", "random,sequential,mount,epoch").split(",") if p]
BATCH = 64
WORKERS = 2
WDS_SAMPLES_PER_SHARD = 500
WDS_SHUFFLE_BUFFER = 1000
MDS_SHARD_BYTES = 1 << 26
PSS_POLL_S = 0.1
MOUNT_TIMEOUT_S = 60.0

TARGETS = {
    "warm_64k_p50_ms": ("<=", 0.2),
    "cold_64k_p50_ms": ("<=", 3.0),
    "fileobj/get local": (">=", 0.8),
    "fileobj/get peers": (">=", 0.8),
    "mount/fusepass": (">=", 0.8),
    "cold/webdataset": (">=", 1.0),
    "cold/mosaic": (">=", 1.5),
    "warm/local": (">=", 0.7),
    "worker_pss_mib": ("<=", 300),
}


# ==== the section (runs in the harness) ======================================================


def section(b) -> dict:
    """b: the run.py Bench (runs, size, random_path, data, tmp, seed, dstore_cmd, log, attempt)."""
    import datagen
    import measure as M
    import peers as P

    if not b.dstore_ok:
        raise RuntimeError(f"dstore unavailable: {b.dstore_error}")
    work = b.tmp / "train"
    M.rm(work)
    work.mkdir(parents=True)
    fleet = _Fleet(work / "fleet", N_PEERS)
    servers: list = []
    size = b.size
    try:
        t = time.perf_counter()
        big = work / "big"
        big.mkdir()
        os.link(b.random_path, big / "data.bin")
        images = b.data / "tree-images"
        datagen.small_tree(images, "images", b.seed)
        tree, tree_bytes = _subtree(images, work / "tree", FILES)
        fleet.fresh()
        urls = fleet.urls

        def add(path: Path, home: Path, with_peers: bool) -> str:
            env = {"DSTORE_HOME": str(home), "DSTORE_PEERS": urls if with_peers else "", "DSTORE_TOKEN": TOKEN}
            r = M.run_timed(b.dstore_cmd() + ["add", str(path), "--shards", SHARDS, "--json", "-q"], env=env)
            return M.last_json(r["stdout"])["cid"]

        cid_big = add(big, work / "adder", True)
        M.rm(work / "adder")
        cid_tree = add(tree, work / "adder", True)
        M.rm(work / "adder")
        local_home = work / "local-home"
        if add(big, local_home, False) != cid_big:
            raise RuntimeError("the local add and the peers' add gave different CIDs")
        servers.append(P.Server(["serve", str(big)]))
        shards = _worker(b, "wds-write", {"tree": str(tree), "out": str(work / "wds"), "seed": b.seed})
        servers.append(P.Server(["serve", str(work / "wds")]))
        wds_urls = [f"{servers[1].url}/{name}" for name in shards["shards"]]
        mds = _worker(b, "mds-write", {"tree": str(tree), "out": str(work / "mds")})
        b.log(
            f"  train setup: {N_PEERS} peers, {size >> 20} MiB file and {FILES} files ({tree_bytes / 1e6:.0f} MB) "
            f"added, {len(wds_urls)} tar shards, {mds['shards']} MDS shards ({time.perf_counter() - t:.1f} s)"
        )
        ctx = {
            "work": work,
            "urls": urls,
            "cid_big": cid_big,
            "cid_tree": cid_tree,
            "local_home": local_home,
            "file": big / "data.bin",
            "file_url": f"{servers[0].url}/data.bin",
            "tree": tree,
            "tree_bytes": tree_bytes,
            "wds_urls": wds_urls,
            "mds": work / "mds",
        }
        sec: dict = {
            "description": f"reading in place for training: {size >> 20} MiB incompressible file and "
            f"{FILES:,} files of the images tree ({tree_bytes / 1e6:,.0f} MB), {N_PEERS} loopback peers "
            f"(scrubbing off) at {SHARDS}, everything on tmpfs",
            "bytes": size,
            "files": FILES,
            "tree_bytes": tree_bytes,
            "peers": N_PEERS,
            "shards": SHARDS,
        }
        for name, fn in (("random", _random), ("sequential", _sequential), ("mount", _mount), ("epoch", _epoch)):
            if name not in PARTS:
                continue
            b.log(f"  train: {name}")
            sec[name] = b.attempt(fn, b, ctx)
            if name == "mount":
                M.rm(local_home)  # ~1.4x the file on tmpfs, not needed by the epochs: less memory pressure
        sec["cache_designs"] = b.attempt(_worker, b, "designs", {"reads": READS})
    finally:
        for s in servers:
            s.kill()
        fleet.close()
        M.rm(work)
    sec["ratio"], sec["value"] = _summary(sec)
    sec["target"] = {k: f"{op} {v}" for k, (op, v) in TARGETS.items()}
    sec["pass"] = {k: _passes(k, sec["ratio"].get(k, sec["value"].get(k))) for k in TARGETS}
    sec["errors"] = {k: v["error"] for k, v in sec.items() if isinstance(v, dict) and "error" in v}
    for part in ("random", "sequential", "mount", "epoch"):
        for k, e in (sec.get(part, {}).get("errors") or {}).items():
            sec["errors"][f"{part}/{k}"] = e
    return sec


class _Fleet:
    """N peers (bench/peers.py's Fleet, with scrubbing off: the reads measured are the client's)."""

    def __init__(self, root: Path, n: int):
        import peers as P

        self.inner = P.Fleet(root, n)

    def fresh(self) -> None:
        import measure as M
        import peers as P

        f = self.inner
        f.close()
        M.rm(f.root)
        f.root.mkdir(parents=True)
        f.peers = [P.PeerProcess(f.root / f"peer{i}", token=TOKEN, scrub_rate=0) for i in range(f.n)]
        f.start(range(f.n))

    @property
    def urls(self) -> str:
        return self.inner.urls

    def close(self) -> None:
        self.inner.close()


def _subtree(images: Path, out: Path, n: int) -> tuple[Path, int]:
    """The first n files of the images tree (files round-robin over class folders), hard-linked."""
    total = 0
    for i in range(n):
        rel = Path(f"class_{i % 100:03d}") / f"{i:06d}.jpg"
        (out / rel.parent).mkdir(parents=True, exist_ok=True)
        os.link(images / rel, out / rel)
        total += (out / rel).stat().st_size
    return out, total


def _worker(b, cmd: str, args: dict, env: dict | None = None) -> dict:
    import measure as M

    r = M.run_timed([sys.executable, str(HERE / "train.py"), cmd, json.dumps(args)], env=env)
    out = M.last_json(r["stdout"])
    out["process_seconds"] = r["seconds"]
    return out


def _rotated(names: list[str], i: int) -> list[str]:
    return names[i % len(names) :] + names[: i % len(names)]


def _med(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---- 1. random reads --------------------------------------------------------------------------


def _random(b, ctx) -> dict:
    import measure as M

    runs = []
    for i in range(b.runs):
        d = ctx["work"] / "random"
        M.rm(d)
        d.mkdir()
        args = {
            "file": str(ctx["file"]),
            "url": ctx["file_url"],
            "cid": ctx["cid_big"],
            "peers": ctx["urls"],
            "work": str(d),
            "reads": READS,
            "seed": b.seed * 1000 + i,
            "rotate": i,
        }
        r = b.attempt(_worker, b, "random", args)
        M.rm(d)
        if "error" not in r:
            b.log(
                f"  run {i + 1}/{b.runs} p50 ms: "
                + ", ".join(f"{k} {v['p50_ms']:.3f}" for k, v in r["latency"].items())
            )
        runs.append(r)
    ok = [r["latency"] for r in runs if "latency" in r]
    keys = list(ok[0]) if ok else []
    median = {k: {q: _med([r[k][q] for r in ok]) for q in ("p50_ms", "p99_ms")} for k in keys}
    ratio_runs = {}
    for kb in (4, 64):
        for a, ref in (("warm", "pread"), ("cold", "fsspec")):
            for q in ("p50_ms", "p99_ms"):
                ratio_runs[f"{a}_{kb}k/{ref} {q[:3]}"] = [r[f"{a}_{kb}k"][q] / r[f"{ref}_{kb}k"][q] for r in ok]
    return {
        "reads_per_run": READS,
        "sizes": list(READ_SIZES),
        "runs": runs,
        "median": median,
        "ratio_runs": ratio_runs,
        "ratio": {k: _med(v) for k, v in ratio_runs.items()},
        "note": "latency ratios are dstore / reference (lower is better)",
        "errors": {f"run{i}": r["error"] for i, r in enumerate(runs) if "error" in r},
    }


# ---- 2. sequential reads through the file object vs dstore get --------------------------------


def _sequential(b, ctx) -> dict:
    import measure as M

    d = ctx["work"] / "seq"
    size, urls, cid = b.size, ctx["urls"], ctx["cid_big"]
    verified: dict = {}

    def fileobj(peers: bool):
        def go(i):
            M.rm(d)
            d.mkdir()
            args = {"cid": cid, "path": "data.bin", "peers": urls if peers else None, "cache": str(d / "cache")}
            env = {"DSTORE_HOME": str(d / "home") if peers else str(ctx["local_home"]), "DSTORE_PEERS": ""}
            r = _worker(b, "read", args, env)
            M.rm(d)
            if r["bytes"] != size:
                raise RuntimeError(f"file object read {r['bytes']} bytes, expected {size}")
            return {"seconds": r["process_seconds"], "inner_seconds": r["seconds"], "sources": r.get("sources")}

        return go

    def get(peers: bool):
        def go(i):
            M.rm(d)
            d.mkdir()
            home = d / "home" if peers else ctx["local_home"]
            env = {"DSTORE_HOME": str(home), "DSTORE_PEERS": urls if peers else "", "DSTORE_TOKEN": TOKEN}
            r = M.run_timed(b.dstore_cmd() + ["get", cid, "-o", str(d / "out"), "-q"], env=env)
            key = "peers" if peers else "local"
            if key not in verified:
                verified[key] = b.same_bytes(ctx["file"], d / "out" / "data.bin")
                if not verified[key]:
                    raise RuntimeError(f"dstore get ({key}) returned different bytes")
            M.rm(d)
            return {"seconds": r["seconds"], "cpu_s": r["cpu_s"]}

        return go

    items = {
        "fileobj_local": fileobj(False),
        "get_local": get(False),
        "fileobj_peers": fileobj(True),
        "get_peers": get(True),
    }
    runs = b.interleaved(items, size)
    ratio_runs = {
        "fileobj/get local": b.ratios(runs, "fileobj_local", "get_local"),
        "fileobj/get peers": b.ratios(runs, "fileobj_peers", "get_peers"),
    }
    return {
        "runs": runs,
        "median_gbps": {n: b.med(runs, n) for n in items},
        "ratio_runs": ratio_runs,
        "ratio": {k: M.median(v) for k, v in ratio_runs.items()},
        "get_output_identical": verified,
        "method": "whole processes: `python bench/train.py read` (dstore.open, 1 MiB readinto to the end; from "
        "peers with an empty home and an empty cache of its own) vs `dstore get CID -o DIR` (output on tmpfs)",
        "errors": b.errors(runs),
    }


# ---- 3. through FUSE -----------------------------------------------------------------------------


class _Mount:
    """A FUSE server process that prints a line starting with `mounted` once its mount is up."""

    def __init__(self, cmd: list[str], mountpoint: Path, env: dict | None, log: Path):
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.mountpoint = mountpoint
        self.log = open(log, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log, env={**os.environ, **(env or {})}
        )
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                self.close()
                raise RuntimeError(f"{cmd[:4]} exited {self.proc.returncode}: {log.read_text()[-300:]}")
            if line.startswith(b"mounted"):
                return
        self.close()
        raise RuntimeError(f"{cmd[:4]} did not mount within {MOUNT_TIMEOUT_S} s")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)
        self.log.close()


def _mount(b, ctx) -> dict:
    import measure as M

    d = ctx["work"] / "mount"
    size, cid = b.size, ctx["cid_big"]
    verified: dict = {}

    def through(kind: str):
        def go(i):
            M.rm(d)
            d.mkdir()
            mnt = d / "mnt"
            if kind == "dstore":
                env = {"DSTORE_HOME": str(ctx["local_home"]), "DSTORE_PEERS": "", "DSTORE_CACHE": str(d / "cache")}
                cmd = b.dstore_cmd() + ["mount", cid, str(mnt)]
            else:
                env, cmd = None, [sys.executable, str(HERE / "fusepass.py"), str(ctx["file"].parent), str(mnt)]
            m = _Mount(cmd, mnt, env, d / f"{kind}.log")
            try:
                if kind not in verified:
                    verified[kind] = b.same_bytes(ctx["file"], mnt / "data.bin")
                    m.close()  # a new mount for the timed read: nothing left in its page cache
                    m = _Mount(cmd, mnt, env, d / f"{kind}.log")
                r = _worker(b, "readfile", {"path": str(mnt / "data.bin")})
            finally:
                m.close()
                M.rm(d)
            if r["bytes"] != size:
                raise RuntimeError(f"read {r['bytes']} bytes through the {kind} mount, expected {size}")
            return {"seconds": r["seconds"], "process_seconds": r["process_seconds"]}

        return go

    def plain(i):
        r = _worker(b, "readfile", {"path": str(ctx["file"])})
        return {"seconds": r["seconds"]}

    items = {"dstore_mount": through("dstore"), "fusepass": through("fusepass"), "tmpfs_file": plain}
    runs = b.interleaved(items, size)
    ratio_runs = {"mount/fusepass": b.ratios(runs, "dstore_mount", "fusepass")}
    return {
        "runs": runs,
        "median_gbps": {n: b.med(runs, n) for n in items},
        "ratio_runs": ratio_runs,
        "ratio": {k: M.median(v) for k, v in ratio_runs.items()},
        "output_identical": verified,
        "method": "a new mount per run (untimed mount, plus a first mount per kind to compare the bytes); timed: "
        "1 MiB readinto of the whole file through the mount inside `python bench/train.py readfile` "
        "(tmpfs_file: the same on the file itself, the page-cache floor)",
        "errors": b.errors(runs),
    }


# ---- 4. DataLoader epochs ----------------------------------------------------------------------------


def _epoch(b, ctx) -> dict:
    import measure as M

    d = ctx["work"] / "epoch"
    runs = []
    for i in range(b.runs):
        run: dict = {}
        for name in _rotated(["dstore", "webdataset", "mosaic", "local"], i):
            M.rm(d)
            d.mkdir()
            base = {"seed": b.seed * 1000 + i, "files": FILES, "bytes": ctx["tree_bytes"]}
            if name == "dstore":
                args = base | {"kind": "dstore", "cid": ctx["cid_tree"], "peers": ctx["urls"], "cache": str(d / "c")}
                env = {"DSTORE_HOME": str(d / "home"), "DSTORE_PEERS": ""}
                run["dstore_cold"] = b.attempt(_worker, b, "epoch", args, env)
                run["dstore_warm"] = b.attempt(_worker, b, "epoch", args, env)
            elif name == "webdataset":
                run[name] = b.attempt(_worker, b, "epoch", base | {"kind": name, "urls": ctx["wds_urls"]})
            elif name == "mosaic":
                args = base | {"kind": name, "remote": str(ctx["mds"]), "local": str(d / "mds-local")}
                run[name] = b.attempt(_worker, b, "epoch", args)
            else:
                run[name] = b.attempt(_worker, b, "epoch", base | {"kind": name, "root": str(ctx["tree"])})
            M.rm(d)
        b.log(
            f"  run {i + 1}/{b.runs} samples/s: "
            + ", ".join(f"{k} {v.get('samples_per_s', float('nan')):.0f}" for k, v in run.items())
        )
        runs.append(run)

    def ratios(a, ref):
        out = []
        for r in runs:
            x, y = r.get(a, {}).get("samples_per_s"), r.get(ref, {}).get("samples_per_s")
            out.append(None if x is None or y is None else x / y)
        return out

    ratio_runs = {
        "cold/webdataset": ratios("dstore_cold", "webdataset"),
        "cold/mosaic": ratios("dstore_cold", "mosaic"),
        "warm/local": ratios("dstore_warm", "local"),
    }
    names = ["dstore_cold", "dstore_warm", "webdataset", "mosaic", "local"]
    pss = {
        n: max((r[n]["worker_pss_mib"] for r in runs if r.get(n, {}).get("worker_pss_mib")), default=None)
        for n in names
    }
    impl = next((r["dstore_cold"].get("impl") for r in runs if "impl" in r.get("dstore_cold", {})), None)
    return {
        "batch": BATCH,
        "workers": WORKERS,
        "dstore_impl": impl,
        "runs": runs,
        "median_samples_per_s": {n: _med([r.get(n, {}).get("samples_per_s") for r in runs]) for n in names},
        "ratio_runs": ratio_runs,
        "ratio": {k: _med(v) for k, v in ratio_runs.items()},
        "max_worker_pss_mib": pss,
        "method": "one process per epoch (`python bench/train.py epoch`); timed from iter(DataLoader) to its last "
        "batch (worker start included); every sample is (key, bytes) through collate_fn=list; each epoch checks "
        f"that it saw {FILES} distinct keys and the tree's bytes. WebDataset: {WDS_SAMPLES_PER_SHARD} samples "
        f"per tar shard, shardshuffle + .shuffle({WDS_SHUFFLE_BUFFER}), over HTTP (webdataset's curl). Mosaic: "
        "MDSWriter(columns key:str, data:bytes, no compression), StreamingDataset(remote=<local folder>, "
        "local=<new folder>, shuffle=True, batch_size=64). local: map-style Dataset over the file list, "
        "DataLoader(shuffle=True). dstore: SampleStream(shuffle=True), i.e. block shuffle (docs/training.md, "
        '"Block shuffle and bulk reads"); warm: the next epoch with the cold epoch\'s home and cache. '
        "main_cpu_s / workers_cpu_s: CPU seconds of the loop's process and of the DataLoader workers during the epoch.",
        "errors": {f"run{i}/{k}": v["error"] for i, r in enumerate(runs) for k, v in r.items() if "error" in v},
    }


# ---- summary and report rows ---------------------------------------------------------------------


def _summary(sec: dict) -> tuple[dict, dict]:
    ratio, value = {}, {}
    rnd = sec.get("random", {})
    med = rnd.get("median") or {}
    for k in ("warm_64k", "cold_64k"):
        if k in med:
            value[f"{k}_p50_ms"] = med[k]["p50_ms"]
    for part in ("sequential", "mount", "epoch"):
        ratio.update(sec.get(part, {}).get("ratio") or {})
    pss = (sec.get("epoch", {}).get("max_worker_pss_mib") or {}).get("dstore_cold")
    warm_pss = (sec.get("epoch", {}).get("max_worker_pss_mib") or {}).get("dstore_warm")
    xs = [x for x in (pss, warm_pss) if x is not None]
    if xs:
        value["worker_pss_mib"] = max(xs)
    return ratio, value


def _passes(key: str, x) -> bool | None:
    if x is None:
        return None
    op, limit = TARGETS[key]
    return x <= limit if op == "<=" else x >= limit


def rows(sec: dict) -> list[dict]:
    """The train section's rows of results.md (called by report.py)."""
    out: list[dict] = []

    def f(x, fmt="{:.2f}"):
        return "n/a" if x is None else fmt.format(x)

    def row(measurement, dstore, reference, ratio, key=None, target="—"):
        p = sec.get("pass", {}).get(key) if key else None
        passed = "info" if key is None else {True: "PASS", False: "FAIL", None: "n/a"}[p]
        target = sec.get("target", {}).get(key, target) if key else target
        out.append(
            {
                "measurement": measurement,
                "dstore": dstore,
                "reference": reference,
                "ratio": ratio,
                "target": target,
                "pass": passed,
            }
        )

    if "error" in sec and "random" not in sec:
        row("train", "ERROR", str(sec["error"])[:80], "n/a")
        return out
    mib = sec.get("bytes", 0) >> 20
    rnd = sec.get("random", {})
    med, rr = rnd.get("median") or {}, rnd.get("ratio") or {}
    for kb in (4, 64):
        w, p = med.get(f"warm_{kb}k"), med.get(f"pread_{kb}k")
        if w and p:
            row(
                f"random {kb} KiB read, {mib} MiB file, warm cache: p50 / p99 (ms)",
                f"{f(w['p50_ms'], '{:.3f}')} / {f(w['p99_ms'], '{:.3f}')}",
                f"os.pread {f(p['p50_ms'], '{:.3f}')} / {f(p['p99_ms'], '{:.3f}')}",
                f"{f(rr.get(f'warm_{kb}k/pread p50'))}x / {f(rr.get(f'warm_{kb}k/pread p99'))}x",
                "warm_64k_p50_ms" if kb == 64 else None,
            )
        c, h = med.get(f"cold_{kb}k"), med.get(f"fsspec_{kb}k")
        if c and h:
            row(
                f"random {kb} KiB read, cold from {sec.get('peers')} peers: p50 / p99 (ms)",
                f"{f(c['p50_ms'], '{:.3f}')} / {f(c['p99_ms'], '{:.3f}')}",
                f"fsspec HTTP {f(h['p50_ms'], '{:.3f}')} / {f(h['p99_ms'], '{:.3f}')}",
                f"{f(rr.get(f'cold_{kb}k/fsspec p50'))}x / {f(rr.get(f'cold_{kb}k/fsspec p99'))}x",
                "cold_64k_p50_ms" if kb == 64 else None,
            )
    seq = sec.get("sequential", {})
    g, r = seq.get("median_gbps") or {}, seq.get("ratio") or {}
    for where in ("local", "peers"):
        if f"fileobj_{where}" in g:
            row(
                f"sequential read {mib} MiB, file object vs dstore get, {where} (GB/s)",
                f(g.get(f"fileobj_{where}"), "{:.3f}"),
                f"dstore get {f(g.get(f'get_{where}'), '{:.3f}')}",
                f(r.get(f"fileobj/get {where}")),
                f"fileobj/get {where}",
            )
    mnt = sec.get("mount", {})
    g, r = mnt.get("median_gbps") or {}, mnt.get("ratio") or {}
    if "dstore_mount" in g:
        row(
            f"sequential read {mib} MiB through dstore mount (GB/s)",
            f(g.get("dstore_mount"), "{:.3f}"),
            f"Python passthrough FUSE {f(g.get('fusepass'), '{:.3f}')} (tmpfs file {f(g.get('tmpfs_file'), '{:.2f}')})",
            f(r.get("mount/fusepass")),
            "mount/fusepass",
        )
    ep = sec.get("epoch", {})
    s, r = ep.get("median_samples_per_s") or {}, ep.get("ratio") or {}
    if s:
        what = f"DataLoader epoch, {sec.get('files', 0):,} files, batch {BATCH}, {WORKERS} workers (samples/s)"
        row(
            f"{what}: cold vs WebDataset/HTTP",
            f(s.get("dstore_cold"), "{:.0f}"),
            f"WebDataset {f(s.get('webdataset'), '{:.0f}')}",
            f(r.get("cold/webdataset")),
            "cold/webdataset",
        )
        row(
            f"{what}: cold vs Mosaic Streaming",
            f(s.get("dstore_cold"), "{:.0f}"),
            f"Mosaic {f(s.get('mosaic'), '{:.0f}')}",
            f(r.get("cold/mosaic")),
            "cold/mosaic",
        )
        row(
            f"{what}: warm vs local files",
            f(s.get("dstore_warm"), "{:.0f}"),
            f"file-list Dataset {f(s.get('local'), '{:.0f}')}",
            f(r.get("warm/local")),
            "warm/local",
        )
        pss = ep.get("max_worker_pss_mib") or {}
        refs = ", ".join(f"{k} {f(pss.get(k), '{:.0f}')}" for k in ("webdataset", "mosaic", "local"))
        row(
            "DataLoader worker PSS, max over workers and runs (MiB)",
            f(sec.get("value", {}).get("worker_pss_mib"), "{:.0f}"),
            refs,
            "—",
            "worker_pss_mib",
        )
    return out


# ==== measurements (run as `python bench/train.py CMD JSON`) ====================================


def _pct(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {
        "p50_ms": statistics.median(xs) * 1e3,
        "p99_ms": xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1e3,
        "mean_ms": statistics.fmean(xs) * 1e3,
    }


def _timed_reads(f, offsets: list[int], length: int) -> list[float]:
    buf = bytearray(length)
    out = []
    for off in offsets:
        f.seek(off)
        t0 = time.perf_counter()
        n = f.readinto(buf)
        out.append(time.perf_counter() - t0)
        if n != length:
            raise RuntimeError(f"short read: {n} of {length} at {off}")
    return out


def cmd_random(a: dict) -> dict:
    import fsspec

    import dstore

    size = os.path.getsize(a["file"])
    work = Path(a["work"])
    out: dict = {}
    fs = fsspec.filesystem("http", skip_instance_cache=True)

    def pread(offsets, warmup, length):
        fd = os.open(a["file"], os.O_RDONLY)
        try:
            ts = []
            for off in offsets:
                t0 = time.perf_counter()
                n = len(os.pread(fd, length, off))
                ts.append(time.perf_counter() - t0)
                assert n == length
            return _pct(ts)
        finally:
            os.close(fd)

    def fsspec_http(offsets, warmup, length):
        with fs.open(a["url"], "rb", cache_type="none") as f:
            _timed_reads(f, warmup, length)  # connection up
            return _pct(_timed_reads(f, offsets, length))

    def cold(offsets, warmup, length):
        d = work / f"cold{length}"
        with dstore.open(a["cid"], peers=a["peers"], home=d / "home", cache=d / "cache") as ds:
            with ds.open("data.bin") as f:
                _timed_reads(f, warmup, length)  # metadata and connections up
                res = _pct(_timed_reads(f, offsets, length))
            return res | {"sources": dict(ds.chunks.stats)}

    def warm(offsets, warmup, length):
        d = work / f"warm{length}"
        with dstore.open(a["cid"], peers=a["peers"], home=d / "home", cache=d / "cache") as ds:
            with ds.open("data.bin") as f:  # fill the cache with exactly the chunks read below
                _timed_reads(f, warmup + offsets, length)
        with dstore.open(a["cid"], peers=a["peers"], home=d / "home", cache=d / "cache") as ds:
            with ds.open("data.bin") as f:
                _timed_reads(f, warmup, length)
                res = _pct(_timed_reads(f, offsets, length))
            return res | {"sources": dict(ds.chunks.stats)}

    ways = {"pread": pread, "warm": warm, "cold": cold, "fsspec": fsspec_http}
    names = _rotated(list(ways), a["rotate"])
    for length in READ_SIZES:
        rng = random.Random(a["seed"] * 7 + length)
        offsets = [rng.randrange(0, size - length) for _ in range(a["reads"])]
        warmup = [rng.randrange(0, size - length) for _ in range(WARMUP_READS)]
        for name in names:
            out[f"{name}_{length // 1024}k"] = ways[name](offsets, warmup, length)
    return {"latency": out, "order": names}


def cmd_read(a: dict) -> dict:
    """The whole file through dstore.open's file object, 1 MiB readinto at a time."""
    import dstore

    t0 = time.perf_counter()
    total = 0
    buf = bytearray(SEQ_BUFFER)
    cache = a.get("cache")
    with dstore.open(a["cid"], peers=a.get("peers"), cache=cache if cache else False) as ds:
        with ds.open(a["path"]) as f:
            while n := f.readinto(buf):
                total += n
        stats = dict(ds.chunks.stats)
    return {"bytes": total, "seconds": time.perf_counter() - t0, "sources": stats}


def cmd_readfile(a: dict) -> dict:
    t0 = time.perf_counter()
    total = 0
    buf = bytearray(SEQ_BUFFER)
    with open(a["path"], "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return {"bytes": total, "seconds": time.perf_counter() - t0}


def _tree_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def cmd_wds_write(a: dict) -> dict:
    """Tar shards as WebDataset lays them out (one member per sample, key = path without suffix),
    samples shuffled once at write time as webdataset's own tooling advises."""
    root, out = Path(a["tree"]), Path(a["out"])
    out.mkdir(parents=True)
    files = _tree_files(root)
    random.Random(a["seed"]).shuffle(files)
    names = []
    for k in range(0, len(files), WDS_SAMPLES_PER_SHARD):
        name = f"shard-{k // WDS_SAMPLES_PER_SHARD:06d}.tar"
        with tarfile.open(out / name, "w", format=tarfile.USTAR_FORMAT) as tar:
            for rel in files[k : k + WDS_SAMPLES_PER_SHARD]:
                tar.add(root / rel, arcname=rel, recursive=False)
        names.append(name)
    return {"shards": names}


def cmd_mds_write(a: dict) -> dict:
    from streaming import MDSWriter

    root = Path(a["tree"])
    files = _tree_files(root)
    with MDSWriter(
        out=a["out"], columns={"key": "str", "data": "bytes"}, compression=None, size_limit=MDS_SHARD_BYTES
    ) as w:
        for rel in files:
            w.write({"key": rel, "data": (root / rel).read_bytes()})
    return {"shards": len(list(Path(a["out"]).glob("*.mds")))}


class _PssPoller:
    """Peak PSS / RSS (KiB) of this process's children (the DataLoader workers), polled in a thread."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.peak: dict[int, dict[str, int]] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for child in self.me.children():
                try:
                    text = Path(f"/proc/{child.pid}/smaps_rollup").read_text()
                except OSError:
                    continue
                vals = {}
                for line in text.splitlines():
                    k, _, v = line.partition(":")
                    if k in ("Pss", "Rss", "Pss_Anon", "Pss_File", "Pss_Shmem"):
                        vals[k] = int(v.split()[0])
                pk = self.peak.setdefault(child.pid, {})
                for k, v in vals.items():
                    pk[k] = max(pk.get(k, 0), v)
            self._stop.wait(PSS_POLL_S)

    def __enter__(self) -> _PssPoller:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def _collate(batch: list) -> list:
    return batch


def _key_len(sample) -> tuple[str, int]:
    if isinstance(sample, dict):  # Mosaic
        return sample["key"], len(sample["data"])
    key, data = sample[0], sample[1]
    return str(key), len(data)


def _minimal_stream(cid: str, peers: str, cache: str, seed: int):
    """Stand-in while dstore.torch is not on this branch: dstore.open inside a plain IterableDataset
    (one sample per file, shuffled by seed, files split across workers; no prefetch)."""
    from torch.utils.data import IterableDataset, get_worker_info

    import dstore

    class MinimalStream(IterableDataset):
        def __iter__(self):
            info = get_worker_info()
            wid, n = (info.id, info.num_workers) if info else (0, 1)
            with dstore.open(cid, peers=peers, cache=cache) as ds:
                paths = [f"{top}/{name}" if top else name for top, _, names in ds.walk() for name in names]
                paths.sort()
                random.Random(seed).shuffle(paths)
                for path in paths[wid::n]:
                    yield path, ds.read_bytes(path)

    return MinimalStream()


def cmd_epoch(a: dict) -> dict:
    import torch
    from torch.utils.data import DataLoader, Dataset

    kind, seed = a["kind"], a["seed"]
    kw: dict = {}
    impl = None
    if kind == "dstore":
        try:
            from dstore.torch import SampleStream
        except ImportError:
            ds = _minimal_stream(a["cid"], a["peers"], a["cache"], seed)
            impl = "bench minimal IterableDataset over dstore.open (dstore.torch not on this branch)"
        else:
            ds = SampleStream(a["cid"], seed=seed, shuffle=True, peers=a["peers"], cache=a["cache"], batch_size=BATCH)
            impl = "dstore.torch.SampleStream"
    elif kind == "webdataset":
        import webdataset as wds

        ds = (
            wds.WebDataset(a["urls"], shardshuffle=len(a["urls"]), seed=seed, empty_check=False)
            .shuffle(WDS_SHUFFLE_BUFFER)
            .to_tuple("__key__", "jpg")
        )
    elif kind == "mosaic":
        from streaming import StreamingDataset
        from streaming.base.util import clean_stale_shared_memory

        clean_stale_shared_memory()
        ds = StreamingDataset(remote=a["remote"], local=a["local"], shuffle=True, shuffle_seed=seed, batch_size=BATCH)
    elif kind == "local":
        root = Path(a["root"])
        files = _tree_files(root)

        class FileList(Dataset):
            def __len__(self) -> int:
                return len(files)

            def __getitem__(self, i: int):
                with open(root / files[i], "rb") as f:
                    return files[i], f.read()

        ds = FileList()
        kw = {"shuffle": True, "generator": torch.Generator().manual_seed(seed)}
    else:
        raise SystemExit(f"unknown loader {kind}")
    loader = DataLoader(ds, batch_size=BATCH, num_workers=WORKERS, collate_fn=_collate, **kw)
    keys: set[str] = set()
    total = n = 0
    first = None
    import resource

    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with _PssPoller() as pss:
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        for batch in loader:
            if first is None:
                first = time.perf_counter() - t0
            for sample in batch:
                key, length = _key_len(sample)
                keys.add(key)
                total += length
                n += 1
        seconds = time.perf_counter() - t0
        main_cpu = time.process_time() - cpu0
    del loader  # its workers exit and are reaped: their CPU time is counted below
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers_cpu = children.ru_utime + children.ru_stime - children0.ru_utime - children0.ru_stime
    if n != a["files"] or len(keys) != a["files"] or total != a["bytes"]:
        raise SystemExit(
            f"{kind}: {n} samples, {len(keys)} distinct, {total} bytes; expected {a['files']}, {a['bytes']}"
        )
    workers = list(pss.peak.values())
    return {
        "samples": n,
        "seconds": seconds,
        "samples_per_s": n / seconds,
        "first_batch_s": first,
        "main_cpu_s": main_cpu,
        "workers_cpu_s": workers_cpu,
        "worker_pss_mib": max((w.get("Pss", 0) for w in workers), default=0) / 1024 or None,
        "worker_rss_mib": max((w.get("Rss", 0) for w in workers), default=0) / 1024 or None,
        "workers_seen": len(workers),
        "impl": impl,
    }


# ---- the two cache designs (docs/training.md, "Why files and not LMDB") -------------------------------------

_WRITER = """
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


def cmd_designs(a: dict) -> dict:
    """Warm 64 KiB gets (checked) and two concurrent writers: one file per chunk vs one LMDB."""
    import tempfile

    import lmdb

    from dstore import _native
    from dstore.mount.cache import ChunkCache

    reads = a.get("reads", READS)
    out: dict = {}
    with tempfile.TemporaryDirectory(dir=a.get("dir")) as d:
        tmp = Path(d)
        rng = random.Random(2)
        blobs = [rng.randbytes(65536) for _ in range(1000)]
        keys = [_native.blake3(b) for b in blobs]
        files = ChunkCache(tmp / "files", 1 << 34)
        for k, blob in zip(keys, blobs, strict=True):
            files.put("blake3", k, blob)
        env = lmdb.open(str(tmp / "lmdb"), map_size=1 << 34)
        with env.begin(write=True) as txn:
            for k, blob in zip(keys, blobs, strict=True):
                txn.put(k, blob)
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
        env.close()
        out["warm_get_64k_files"] = _pct(t_files)
        out["warm_get_64k_lmdb"] = _pct(t_lmdb)
        checkout = os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] or str(HERE.parent)
        for kind in ("files", "lmdb"):
            root = tmp / f"conc-{kind}"
            root.mkdir()
            t0 = time.perf_counter()
            procs = [
                subprocess.Popen(
                    [sys.executable, "-c", _WRITER, kind, str(root), str(s), checkout], stdout=subprocess.PIPE
                )
                for s in (1, 2)
            ]
            for p in procs:
                p.communicate()
            out[f"two_writers_{kind}_MiB_s"] = 2 * 400 * 65536 / (1 << 20) / (time.perf_counter() - t0)
    return out


COMMANDS = {
    "random": cmd_random,
    "read": cmd_read,
    "readfile": cmd_readfile,
    "wds-write": cmd_wds_write,
    "mds-write": cmd_mds_write,
    "epoch": cmd_epoch,
    "designs": cmd_designs,
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python bench/train.py {{{','.join(COMMANDS)}}} [JSON]\n\n{__doc__}")
    args = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    print(json.dumps(COMMANDS[sys.argv[1]](args), default=str), flush=True)


if __name__ == "__main__":
    main()
