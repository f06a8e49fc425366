"""Build and compare file trees in tests."""

from __future__ import annotations

import os
import random
from pathlib import Path


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Relative path -> file bytes (None for folders) of everything under ``root``."""
    out: dict[str, bytes | None] = {}
    if root.is_file():
        return {"": root.read_bytes()}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d))] = None
        for f in filenames:
            out[os.path.normpath(os.path.join(rel, f))] = Path(dirpath, f).read_bytes()
    return out


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def csv_like(n: int, seed: int = 0) -> bytes:
    """Compressible, CSV-shaped text of exactly ``n`` bytes."""
    rng = random.Random(seed)
    rows = []
    total = 0
    i = 0
    while total < n:
        row = f"{i},{rng.randint(0, 10**6)},{rng.choice(['cat', 'dog', 'bird', 'fish'])},{rng.random():.6f}\n"
        rows.append(row)
        total += len(row)
        i += 1
    return "".join(rows).encode()[:n]
