"""`dstore export` → CAR v1 that a real IPFS implementation (ipfs-car, from npm) unpacks to the same tree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dstore.format.car import CarReader

from treeutil import csv_like, random_bytes, snapshot

IPFS_CAR = Path(__file__).parent / "interop" / "node_modules" / ".bin" / "ipfs-car"


@pytest.mark.interop
@pytest.mark.skipif(not IPFS_CAR.exists(), reason="ipfs-car not installed: run `cd tests/interop && npm ci`")
def test_export_unpacks_with_ipfs_car(dstore, tmp_path):
    src = tmp_path / "src"
    (src / "nested" / "deeper").mkdir(parents=True)
    (src / "empty-dir").mkdir()
    (src / "empty.txt").write_bytes(b"")
    (src / "big.bin").write_bytes(random_bytes(13 << 20, 31))  # > 174 chunks: a two-level file DAG
    (src / "nested" / "table.csv").write_bytes(csv_like(1 << 20))
    (src / "nested" / "deeper" / "ünï ✓.txt").write_bytes(b"unicode")
    many = src / "many"
    many.mkdir()
    for i in range(200):
        (many / f"f{i}").write_bytes(str(i).encode())
    cid = dstore("add", src, "-q").out.strip()
    car = tmp_path / "x.car"
    dstore("export", cid, "-o", car)
    with open(car, "rb") as f:
        reader = CarReader(f)
        blocks = list(reader)
    assert len({c.to_bytes() for c, _ in blocks}) == len(blocks)
    out = tmp_path / "unpacked"
    subprocess.run(
        [str(IPFS_CAR), "unpack", str(car), "--output", str(out), "--no-verify"], check=True, capture_output=True
    )
    assert snapshot(out) == snapshot(src)


def test_export_refuses_existing_output(dstore, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"data")
    cid = dstore("add", src, "-q").out.strip()
    (tmp_path / "x.car").write_bytes(b"keep")
    result = dstore("export", cid, "-o", tmp_path / "x.car", check=False)
    assert result.code == 2 and (tmp_path / "x.car").read_bytes() == b"keep"
