"""Small-file trees: time ``dstore get`` against ``cp -r`` (medians).

    python bench/smallfiles.py [--root /dev/shm/dstore-small] [--runs 3] [--only images|tiny] [--checkout DIR]

Builds (once, deterministically) two trees like an image-classification set:

- ``images``: 20,000 files, log-normal sizes around 48 KiB clipped to 20-200 KB,
  100 class folders and a labels.csv;
- ``tiny``: 100,000 files of 0.2-2 KB in 100 folders.

then ``dstore add``s each into a store under the root (DSTORE_HOME) and times
``dstore get`` and ``cp -r`` of the same tree, printing one JSON line per tree.
``--checkout`` runs ``python -m dstore`` from another checkout (e.g. an older
commit, ``git archive REV | tar -x -C DIR``) to compare before and after.
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
import time
from pathlib import Path

TREES = {
    # name: (files, folders, size sampler)
    "images": (20_000, 100, lambda rng: min(max(int(rng.lognormvariate(math.log(48 << 10), 0.5)), 20_000), 200_000)),
    "tiny": (100_000, 100, lambda rng: rng.randrange(200, 2_000)),
}


def make_tree(path: Path, name: str, seed: int = 7) -> None:
    """Write tree ``name`` at ``path`` unless it is already complete."""
    if (path / ".complete").exists():
        return
    shutil.rmtree(path, ignore_errors=True)
    files, folders, sampler = TREES[name]
    rng = random.Random(seed)
    sizes = [sampler(rng) for _ in range(files)]
    # JPEG-like: incompressible bytes, so zstd stores most chunks raw.
    pool = rng.randbytes(max(sizes) + 4096)
    labels = ["path,label"]
    for i, size in enumerate(sizes):
        folder = f"class_{i % folders:03d}"
        (path / folder).mkdir(parents=True, exist_ok=True)
        start = (i * 4093) % 4096
        head = i.to_bytes(8, "little")  # every file distinct
        (path / folder / f"{i:06d}.jpg").write_bytes(head + pool[start : start + size - 8])
        labels.append(f"{folder}/{i:06d}.jpg,{i % folders}")
    (path / "labels.csv").write_text("\n".join(labels) + "\n")
    (path / ".complete").write_bytes(b"")


def _run(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed: {proc.stderr.strip()}")
    return proc.stdout


def timed(cmd: list[str], env: dict[str, str], out: Path, cwd: Path | None = None) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    _run(cmd, env, cwd)
    took = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    return took


def bench_tree(root: Path, name: str, runs: int, checkout: Path | None = None) -> dict[str, object]:
    src = root / f"src-{name}"
    make_tree(src, name)
    (src / ".complete").unlink()  # not part of the dataset
    try:
        env = {**os.environ, "DSTORE_HOME": str(root / f"home-{name}")}
        cid = _run([sys.executable, "-m", "dstore", "add", str(src), "-q"], env).strip().splitlines()[-1]
    finally:
        (src / ".complete").write_bytes(b"")
    out = root / f"out-{name}"
    get_cmd = [sys.executable, "-m", "dstore", "get", cid, "-o", str(out), "-q"]
    get = [timed(get_cmd, env, out, checkout) for _ in range(runs)]
    cp = [timed(["cp", "-r", str(src), str(out)], env, out) for _ in range(runs)]
    get_s, cp_s = statistics.median(get), statistics.median(cp)
    return {
        "tree": name,
        "checkout": str(checkout or Path.cwd()),
        "files": TREES[name][0],
        "get_s": round(get_s, 3),
        "cp_s": round(cp_s, 3),
        "speed_vs_cp": round(cp_s / get_s, 3),
        "get_runs_s": [round(t, 3) for t in get],
        "cp_runs_s": [round(t, 3) for t in cp],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path("/dev/shm/dstore-small"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", choices=sorted(TREES))
    ap.add_argument("--checkout", type=Path, help="run `python -m dstore get` from this checkout")
    args = ap.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    for name in [args.only] if args.only else list(TREES):
        print(json.dumps(bench_tree(args.root, name, args.runs, args.checkout)), flush=True)


if __name__ == "__main__":
    main()
