"""Generate the many-small-files tree of the add benchmark, and time adds of it.

    python bench/smalladd.py make DIR [--files 20000] [--folders 100]   # log-normal sizes around 48 KiB
    python bench/smalladd.py time DIR [--runs 3]                        # dstore add vs restic backup (tmpfs)

Sizes are log-normal around 48 KiB (sigma 0.5, clipped to 20-200 KB), bytes are
seeded random (incompressible, no duplicates), a pure function of the seed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIN_FILE_BYTES = 20_000
MAX_FILE_BYTES = 200_000


def make(root: Path, files: int, folders: int, seed: int) -> int:
    """Write the tree; returns its total bytes."""
    rng = random.Random(seed)
    total = 0
    for i in range(files):
        size = int(rng.lognormvariate(math.log(48 * 1024), 0.5))
        size = min(MAX_FILE_BYTES, max(MIN_FILE_BYTES, size))
        folder = root / f"d{i % folders:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:06d}.bin").write_bytes(rng.randbytes(size))
        total += size
    return total


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, proc.stdout


def _peak_rss_mib(cmd: list[str], env: dict[str, str]) -> float:
    """Peak RSS of ``cmd`` in MiB (GNU time), or NaN if it is not installed."""
    if shutil.which("time") is None and not Path("/usr/bin/time").exists():
        return math.nan
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], env=env, capture_output=True, text=True, check=True)
    return int(proc.stderr.strip().splitlines()[-1]) / 1024


def time_adds(src: Path, runs: int, work: Path) -> dict[str, object]:
    """Medians of ``runs`` timed adds (fresh store each), and restic's backup if installed."""
    dstore_s, restic_s = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(dir=work) as d:
            env = {**os.environ, "DSTORE_HOME": d}
            dstore_s.append(_timed([sys.executable, "-m", "dstore", "add", str(src), "-q", "--json"], env)[0])
        if shutil.which("restic"):
            with tempfile.TemporaryDirectory(dir=work) as d:
                env = {**os.environ, "RESTIC_REPOSITORY": d, "RESTIC_PASSWORD": "bench"}
                subprocess.run(["restic", "init", "-q"], env=env, check=True, capture_output=True)
                restic_s.append(_timed(["restic", "backup", "-q", str(src)], env)[0])
    with tempfile.TemporaryDirectory(dir=work) as d:
        rss = _peak_rss_mib([sys.executable, "-m", "dstore", "add", str(src), "-q"], {**os.environ, "DSTORE_HOME": d})
    out: dict[str, object] = {"dstore_s": statistics.median(dstore_s), "dstore_runs_s": dstore_s, "peak_rss_mib": rss}
    if restic_s:
        out["restic_s"] = statistics.median(restic_s)
        out["restic_runs_s"] = restic_s
        out["speedup_vs_restic"] = round(statistics.median(restic_s) / statistics.median(dstore_s), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["make", "time"])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--folders", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/dev/shm"))
    args = ap.parse_args()
    if args.what == "make":
        print(make(args.dir, args.files, args.folders, args.seed))
    else:
        print(json.dumps(time_adds(args.dir, args.runs, args.work)))


if __name__ == "__main__":
    main()
