"""The `kubo` section: `dstore add` against Kubo's `ipfs add` of the same file, both offline into a fresh
store on tmpfs, in the same run.

Kubo is not installed by `make install` (it builds from the Go module proxy in about ten minutes, with one
edit to its go.mod: docs/ipfs.md). The section runs when `$KUBO_BIN` or an `ipfs` on PATH is Kubo, and
otherwise records that it was skipped and why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import measure as M

#: (item name, dstore add options, Kubo init profile, Kubo add options): the same CIDs' worth of work.
PAIRS = [
    (
        "blake3",
        ["--shards", "10+4"],
        "",
        ["--cid-version", "1", "--raw-leaves", "--hash", "blake3"],
    ),
    (
        "unixfs-v1-2025",
        ["--shards", "10+4", "--profile", "unixfs-v1-2025"],
        "unixfs-v1-2025",
        [],
    ),
]


def find_kubo() -> str | None:
    exe = os.environ.get("KUBO_BIN") or shutil.which("ipfs")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return exe if out.startswith("ipfs version") else None


def kubo_add(exe: str, path: Path, repo: Path, profile: str, opts: list[str]) -> dict:
    """`ipfs init` (not timed) then `ipfs add` (timed) into a fresh repo, no daemon."""
    M.rm(repo)
    env = {**os.environ, "IPFS_PATH": str(repo)}
    init = [exe, "init", "--empty-repo"] + ([f"--profile={profile}"] if profile else [])
    subprocess.run(init, env=env, capture_output=True, check=True, timeout=120)
    r = M.run_timed([exe, "add", "--offline", "-Q", *opts, str(path)], env={"IPFS_PATH": str(repo)})
    M.rm(repo)
    return {"seconds": r["seconds"], "cpu_s": r["cpu_s"], "root": r["stdout"].strip()}


def section(bench: Any) -> dict:
    exe = find_kubo()
    if exe is None:
        return {"skipped": "no Kubo binary: set KUBO_BIN or put `ipfs` on PATH (docs/ipfs.md, building Kubo)"}
    version = subprocess.run([exe, "version"], capture_output=True, text=True, check=True).stdout.strip()
    f, home, repo = bench.random_path, bench.tmp / "home-kubo", bench.tmp / "kubo-repo"
    items = {}
    for name, dstore_opts, profile, kubo_opts in PAIRS:

        def dstore(i, opts=dstore_opts):
            M.rm(home)
            r = M.run_timed(bench.dstore_cmd() + ["add", str(f), *opts, "--json", "-q"], env={"DSTORE_HOME": str(home)})
            M.rm(home)
            return {"seconds": r["seconds"], "cpu_s": r["cpu_s"]}

        items[f"dstore_{name}"] = dstore
        items[f"kubo_{name}"] = lambda i, p=profile, o=kubo_opts: kubo_add(exe, f, repo, p, o)
    runs = bench.interleaved(items, bench.size)
    ratio_runs = {f"dstore/kubo {n}": bench.ratios(runs, f"dstore_{n}", f"kubo_{n}") for n, *_ in PAIRS}
    sec = {
        "description": f"add {bench.size // M.MiB} MiB incompressible, offline into a fresh store on tmpfs: "
        "dstore add --shards 10+4 (default profile, and --profile unixfs-v1-2025) against Kubo's ipfs add "
        "(--cid-version 1 --raw-leaves --hash blake3; and a repo initialised with --profile=unixfs-v1-2025); "
        "Kubo's ipfs init is not timed",
        "kubo": version,
        "bytes": bench.size,
        "runs": runs,
        "median_gbps": {n: bench.med(runs, n) for n in items},
        "ratio_runs": ratio_runs,
        "ratio": {k: M.median(v) for k, v in ratio_runs.items()},
        "target": {k: ">= 1.5" for k in ratio_runs},
        "errors": bench.errors(runs),
    }
    sec["pass"] = {k: (None if v is None else v >= 1.5) for k, v in sec["ratio"].items()}
    return sec


def rows(S: dict, row: Any, fmt: Any) -> None:
    """Report rows of the section (report.py's row and number formatter)."""
    s = S.get("kubo")
    if not s:
        return
    if "skipped" in s:
        row("add vs Kubo ipfs add", "skipped", s["skipped"][:80], "n/a", ">= 1.5", "n/a")
        return
    if "error" in s and "runs" not in s:
        row("add vs Kubo ipfs add", "ERROR", str(s["error"])[:80], "n/a", "", "n/a")
        return
    g = s["median_gbps"]
    mib = s["bytes"] // M.MiB
    for name, *_ in PAIRS:
        key = f"dstore/kubo {name}"
        ratio = s["ratio"].get(key)
        row(
            f"add {mib:,} MiB --shards 10+4, tmpfs, {name} (GB/s)",
            fmt(g.get(f"dstore_{name}")),
            f"{s['kubo']} ipfs add {fmt(g.get(f'kubo_{name}'))}",
            fmt(ratio, "{:.2f}"),
            ">= 1.5",
            "n/a" if ratio is None else ("PASS" if ratio >= 1.5 else "FAIL"),
        )
