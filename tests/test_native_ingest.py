"""The batched native add path: same chunks, same IDs as the per-segment path it replaced."""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path

from treeutil import csv_like, random_bytes

SMALL_FILES = 300
FOLDERS = 7


def _small_sizes(rng: random.Random, n: int) -> list[int]:
    """Log-normal around 48 KiB (like the 20,000-file benchmark tree), a few tiny ones."""
    sizes = [max(0, int(rng.lognormvariate(math.log(48 * 1024), 0.8))) for _ in range(n)]
    sizes[:5] = [0, 1, 63, 64, 16 * 1024 - 1]
    return sizes


def make_mixed_tree(root: Path) -> None:
    """Many small files (random and compressible, some repeated) in folders, plus a few big ones.

    Big files straddle the 16 MiB segment of the streaming path (one exactly a segment long).
    """
    rng = random.Random(7)
    root.mkdir(parents=True)
    folders = [root / "a", root / "b", root / "b" / "c", root / "d" / "e" / "f"] + [
        root / f"g{i}" for i in range(FOLDERS - 4)
    ]
    for f in folders:
        f.mkdir(parents=True)
    made: list[bytes] = []
    for i, size in enumerate(_small_sizes(rng, SMALL_FILES)):
        kind = rng.random()
        if kind < 0.1 and made:
            data = rng.choice(made)  # the same bytes again: dedup within the add
        elif kind < 0.4:
            data = csv_like(size, seed=i)
        else:
            data = random_bytes(size, seed=1000 + i)
        made.append(data)
        (rng.choice(folders) / f"f{i:04d}.bin").write_bytes(data)
    (root / "a" / "big_random.bin").write_bytes(random_bytes((20 << 20) + 12345, seed=1))
    (root / "b" / "big_csv.csv").write_bytes(b"".join(csv_like(1 << 20, seed=s) for s in range(17)))
    (root / "b" / "c" / "segment.bin").write_bytes(random_bytes(16 << 20, seed=2))
    (root / "d" / "segment_less_one.bin").write_bytes(random_bytes((16 << 20) - 1, seed=2))


def store_fingerprint(home: Path) -> str:
    """BLAKE3-free digest of the names and sizes of every shard file the store holds (data and metadata)."""
    h = hashlib.sha256()
    for folder in ("shards", "metadata"):
        for p in sorted((home / folder).rglob("*")):
            if p.is_file():
                h.update(f"{folder}/{p.name} {p.stat().st_size}\n".encode())
    return h.hexdigest()
