"""Section `small` of run.py: trees of many small files (datagen.TREES), add and get.

- images: 20,000 incompressible files of log-normal size around 48 KiB (20-200 KB) in
  100 class folders plus labels.csv. add vs `restic backup` (target dstore >= 2.0x) and
  `hf_xet.hash_files` of every file; get vs `cp -r` (target >= 0.5x), `restic restore` (info).
- tiny: 100,000 files of 0.2-2 KB in 100 folders. add vs `restic backup`, get vs `cp -r`
  (target >= 0.3x) and `restic restore`; peak RSS of dstore add and get (target <= 400 MiB).
- memory_by_files: peak RSS of one dstore add and get of 10,000 and 100,000 files of 0.2-2 KB
  (1,000 a folder): flat in the number of files (target <= 400 MiB whatever the count).
  Section `files1m` (opt-in, BENCH_ONLY=files1m) does the same for 1,000,000 files on disk
  (BENCH_DISK, not tmpfs).

Every dstore and restic command runs under measure.run_peak_rss (GNU time + a 10 ms poll of
its process tree), so each timing comes with its peak RSS; cp and the xet reference under
measure.run_timed. Input, stores, repositories and outputs are on tmpfs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import datagen
import measure as M

SHARDS = "10+4"
TARGETS = {
    "images": {"add/restic": 2.0, "get/cp": 0.5},
    "tiny": {"get/cp": 0.3},
}
MAX_RSS_MIB = 400


def section(b) -> dict:
    """b: the run.py Bench (runs, seed, data, tmp, dstore_cmd, interleaved, attempt, log)."""
    trees = {}
    for name in datagen.TREES:
        b.log(f"  tree {name}")
        trees[name] = b.attempt(_tree, b, name)
    b.log("  memory by file count")
    memory = b.attempt(memory_by_files, b, (10_000, 100_000), b.tmp)
    return {
        "memory_by_files": memory,
        "description": "trees of many small files on tmpfs: dstore add --shards 10+4 vs restic backup "
        "(and hf_xet.hash_files of every file), dstore get vs cp -r (and restic restore)",
        "trees": trees,
        "method": "fresh DSTORE_HOME / restic repository (restic init untimed, --no-cache) per timed add; "
        "get and restore read the store / repository of one setup add; every output folder is new. "
        "dstore and restic run under GNU time with a 10 ms poll of the process tree (peak RSS); "
        "ratios are computed within each run and their median reported.",
        "targets": TARGETS,
    }


def _tree(b, name: str) -> dict:
    src = b.data / f"tree-{name}"
    meta = datagen.small_tree(src, name, b.seed)
    nbytes = meta["bytes"]
    work = b.tmp / f"small-{name}"
    M.rm(work)
    work.mkdir(parents=True)
    pw = work / "restic-password"
    pw.write_text("dstore-bench\n")
    maxrss = work / "maxrss.txt"

    def restic(repo: Path) -> list[str]:
        return ["restic", "--repo", str(repo), "--password-file", str(pw), "--no-cache"]

    def peak(cmd: list[str], env: dict | None = None) -> dict:
        r = M.run_peak_rss(cmd, env=env, maxrss_file=maxrss)
        keep = ("seconds", "cpu_s", "peak_rss_mib", "gnu_time_maxrss_mib", "peak_tree_rss_mib")
        return {k: r[k] for k in keep} | {"stdout": r["stdout"]}

    def dstore_add(home: Path) -> dict:
        r = peak(b.dstore_cmd() + ["add", str(src), "--shards", SHARDS, "--json", "-q"], {"DSTORE_HOME": str(home)})
        r["json"] = M.last_json(r.pop("stdout"))
        return r

    def restic_backup(repo: Path) -> dict:
        M.run_timed(restic(repo) + ["init"])
        r = peak(restic(repo) + ["backup", "-q", "--host", "bench", str(src)])
        r.pop("stdout")
        return r

    # ---- add ------------------------------------------------------------------
    def add(i):
        home = work / "home-add"
        M.rm(home)
        try:
            return dstore_add(home)
        finally:
            M.rm(home)

    def backup(i):
        repo = work / "repo-add"
        M.rm(repo)
        try:
            return restic_backup(repo)
        finally:
            M.rm(repo)

    def xet(i):
        r = M.run_timed([sys.executable, str(b.here / "refs.py"), "xet", str(src)])
        return {"seconds": r["seconds"], "cpu_s": r["cpu_s"], "inner": M.last_json(r["stdout"])}

    add_items = {"dstore_add": add, "restic_backup": backup, "xet": xet}
    add_runs = b.interleaved(add_items, nbytes)

    # ---- get ------------------------------------------------------------------
    home, repo = work / "home", work / "repo"
    setup = b.attempt(dstore_add, home)
    cid = setup.get("json", {}).get("cid")
    restic_setup = b.attempt(restic_backup, repo)
    out = work / "out"
    verified: dict = {}

    def get(i):
        if cid is None:
            raise RuntimeError(f"setup add failed: {setup.get('error')}")
        M.rm(out)
        r = peak(b.dstore_cmd() + ["get", cid, "-o", str(out), "-q"], {"DSTORE_HOME": str(home)})
        r.pop("stdout")
        if "identical" not in verified:
            diff = subprocess.run(["diff", "-r", "-q", str(src), str(out)], capture_output=True, text=True)
            verified["identical"] = diff.returncode == 0
            if diff.returncode != 0:
                raise RuntimeError(f"dstore get returned a different tree: {diff.stdout[:300]}")
        M.rm(out)
        return r

    def cp(i):
        M.rm(out)
        r = M.run_timed(["cp", "-r", str(src), str(out)])
        M.rm(out)
        return {"seconds": r["seconds"], "cpu_s": r["cpu_s"]}

    def restore(i):
        if "error" in restic_setup:
            raise RuntimeError(f"setup backup failed: {restic_setup['error']}")
        M.rm(out)
        r = peak(restic(repo) + ["restore", "latest", "--target", str(out)])
        r.pop("stdout")
        M.rm(out)
        return r

    get_items = {"dstore_get": get, "cp_r": cp, "restic_restore": restore}
    try:
        get_runs = b.interleaved(get_items, nbytes)
    finally:
        M.rm(work)

    runs = [a | g for a, g in zip(add_runs, get_runs, strict=True)]
    ratio_runs = {
        "add/restic": b.ratios(runs, "dstore_add", "restic_backup"),
        "add/xet": b.ratios(runs, "dstore_add", "xet"),
        "get/cp": b.ratios(runs, "dstore_get", "cp_r"),
        "get/restic_restore": b.ratios(runs, "dstore_get", "restic_restore"),
    }
    ratio = {k: M.median(v) for k, v in ratio_runs.items()}

    def peak_rss(item):
        xs = [r[item]["peak_rss_mib"] for r in runs if item in r and "error" not in r[item]]
        return max(xs) if xs else None

    rss = {k: peak_rss(k) for k in ("dstore_add", "dstore_get", "restic_backup", "restic_restore")}
    targets = TARGETS[name]
    passed = {k: (None if ratio[k] is None else ratio[k] >= t) for k, t in targets.items()}
    if name == "tiny":
        for k in ("dstore_add", "dstore_get"):
            passed[f"{k}_rss"] = None if rss[k] is None else rss[k] <= MAX_RSS_MIB
    files, folders = datagen.TREES[name][:2]
    return {
        "tree": meta,
        "files": files,
        "folders": folders,
        "bytes": nbytes,
        "runs": runs,
        "median_seconds": {n: b.med(runs, n, "seconds") for n in add_items | get_items},
        "median_gbps": {n: b.med(runs, n) for n in add_items | get_items},
        "median_cpu_s": {n: b.med(runs, n, "cpu_s") for n in add_items | get_items},
        "peak_rss_mib": rss,
        "ratio_runs": ratio_runs,
        "ratio": ratio,
        "target": {k: f">= {t}" for k, t in targets.items()}
        | ({"rss": f"<= {MAX_RSS_MIB} MiB"} if name == "tiny" else {}),
        "pass": passed,
        "output_verified_identical": verified.get("identical"),
        "errors": b.errors(runs),
    }


# ---- memory by file count ---------------------------------------------------------


def tiny_tree(path: Path, files: int, seed: int) -> int:
    """``files`` distinct files of 0.2-2 KB, 1,000 a folder, made once (a sidecar marks it complete)."""
    import json
    import random

    done = path.with_name(path.name + ".done.json")
    if path.is_dir() and done.exists():
        return json.loads(done.read_text())["bytes"]
    M.rm(path)
    rng = random.Random(seed * 1_000_003 + files)
    total = 0
    for i in range(files):
        folder = path / f"class_{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        data = rng.randbytes(rng.randint(200, 2000))
        (folder / f"{i:07d}.bin").write_bytes(data)
        total += len(data)
    done.write_text(json.dumps({"files": files, "bytes": total}))
    return total


def memory_by_files(b, counts: tuple[int, ...], root: Path) -> dict:
    """Peak RSS (GNU time, and the polled tree) of one dstore add and one get per file count, store and
    input under ``root``; the output is checked identical to the input."""
    out: dict = {"where": str(root), "fs": M.fs_type(root), "target_rss_mib": MAX_RSS_MIB, "rows": {}}
    for n in counts:
        src = root / f"tiny-{n}"
        b.log(f"    {n} files in {src}")
        nbytes = tiny_tree(src, n, b.seed)
        home, dest = root / f"home-tiny-{n}", root / f"out-tiny-{n}"
        M.rm(home)
        M.rm(dest)
        maxrss = root / "maxrss.txt"
        env = {"DSTORE_HOME": str(home)}
        try:
            add = M.run_peak_rss(
                b.dstore_cmd() + ["add", str(src), "--shards", SHARDS, "--json", "-q"], env=env, maxrss_file=maxrss
            )
            cid = M.last_json(add["stdout"])["cid"]
            get = M.run_peak_rss(b.dstore_cmd() + ["get", cid, "-o", str(dest), "-q"], env=env, maxrss_file=maxrss)
            same = subprocess.run(["diff", "-r", "-q", str(src), str(dest)], capture_output=True).returncode == 0
        finally:
            M.rm(home)
            M.rm(dest)
        keep = ("seconds", "cpu_s", "peak_rss_mib", "gnu_time_maxrss_mib", "peak_tree_rss_mib")
        out["rows"][str(n)] = {
            "files": n,
            "bytes": nbytes,
            "add": {k: add.get(k) for k in keep},
            "get": {k: get.get(k) for k in keep},
            "output_verified_identical": same,
            "pass": {
                "add_rss": add.get("peak_rss_mib") is not None and add["peak_rss_mib"] <= MAX_RSS_MIB,
                "get_rss": get.get("peak_rss_mib") is not None and get["peak_rss_mib"] <= MAX_RSS_MIB,
            },
        }
    return out


def files1m(b) -> dict:
    """Opt-in section (BENCH_ONLY=files1m): memory_by_files at 1,000,000 files, on disk."""
    return {
        "description": "peak RSS of dstore add --shards 10+4 and get of 1,000,000 files of 0.2-2 KB "
        "(1,000 a folder), input and store on disk (BENCH_DISK)",
        "memory_by_files": memory_by_files(b, (1_000_000,), b.disk),
    }
