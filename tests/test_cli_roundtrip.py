"""`dstore add` then `dstore get` gives back exactly the same tree (real CLI, real LMDB)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from treeutil import csv_like, random_bytes, snapshot


def roundtrip(dstore, src: Path, tmp_path: Path, *extra: str) -> str:
    added = dstore("add", src, "-q", *extra)
    cid = added.out.strip().splitlines()[-1]
    out = tmp_path / "out"
    dstore("get", cid, "-o", out, "-q")
    assert snapshot(out) == snapshot(src)
    return cid


def test_folder_roundtrip_odd_names_and_empties(dstore, tmp_path):
    src = tmp_path / "src"
    (src / "empty-dir").mkdir(parents=True)
    (src / "empty-file").write_bytes(b"")
    (src / "one-chunk.bin").write_bytes(random_bytes(1000, 1))
    (src / "many-chunks.bin").write_bytes(random_bytes(3 << 20, 2))
    (src / "table.csv").write_bytes(csv_like(2 << 20))
    (src / "ünïcødé — 日本語 🚀.txt").write_text("héllo")
    (src / "spaces and 'quotes' \"double\" $dollar #hash").write_bytes(b"x")
    (src / "-leading-dash").write_bytes(b"y")
    (src / "newline\nin name").write_bytes(b"z")
    deep = src
    for i in range(40):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_bytes(b"deep")
    roundtrip(dstore, src, tmp_path)


def test_single_file_dataset(dstore, tmp_path):
    src = tmp_path / "file.bin"
    src.write_bytes(random_bytes(700_000, 3))
    roundtrip(dstore, src, tmp_path)


@pytest.mark.parametrize("shards", ["1+0", "4+2", "10+4", "3+0", "20+44"])
def test_shard_options(dstore, tmp_path, shards):
    src = tmp_path / "f.bin"
    src.write_bytes(random_bytes(2_500_000, 4))
    roundtrip(dstore, src, tmp_path, "--shards", shards)


def test_empty_file_and_empty_folder_datasets(dstore, tmp_path):
    empty_file = tmp_path / "e"
    empty_file.write_bytes(b"")
    cid = dstore("add", empty_file, "-q").out.strip()
    dstore("get", cid, "-o", tmp_path / "e-out")
    assert (tmp_path / "e-out").read_bytes() == b""
    empty_dir = tmp_path / "ed"
    empty_dir.mkdir()
    cid = dstore("add", empty_dir, "-q").out.strip()
    dstore("get", cid, "-o", tmp_path / "ed-out")
    assert list((tmp_path / "ed-out").iterdir()) == []


@pytest.mark.slow
def test_thousands_of_files(dstore, tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    for i in range(3000):
        (src / f"file-{i:05d}.txt").write_bytes(f"row {i}\n".encode() * (i % 7))
    roundtrip(dstore, src, tmp_path)


def test_same_tree_same_id_and_nothing_new(dstore, tmp_path, home):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(random_bytes(3 << 20, 5))
    first = json.loads(dstore("add", src, "--json").out)
    second = json.loads(dstore("add", src, "--json").out)
    assert first["cid"] == second["cid"]
    assert first["cid"].startswith("bafyr4")
    assert first["root"].startswith("bafyb4")
    assert first["new_bytes_stored"] > 3 << 20
    assert second["new_bytes_stored"] == 0
    assert first["new_metadata_bytes"] > 0 and second["new_metadata_bytes"] == 0
    # Another store computes the same ID from the same tree and options.
    other = json.loads(dstore("add", src, "--json", env={"DSTORE_HOME": str(tmp_path / "other")}).out)
    assert other["cid"] == first["cid"]
    # k+m is storage, not identity.
    third = json.loads(dstore("add", src, "--json", "--shards", "4+1", env={"DSTORE_HOME": str(tmp_path / "o2")}).out)
    assert third["cid"] == first["cid"]


def test_second_version_stores_only_new_chunks(dstore, tmp_path):
    src = tmp_path / "v1"
    src.mkdir()
    base = random_bytes(8 << 20, 6)
    (src / "big.bin").write_bytes(base)
    dstore("add", src, "-q")
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "big.bin").write_bytes(b"inserted at the start" + base + b"appended")
    result = json.loads(dstore("add", v2, "--json").out)
    # Only the chunks around the two edits are new: a few hundred KiB, not 8 MiB.
    assert result["new_chunks"] <= 6
    out = tmp_path / "out"
    dstore("get", result["cid"], "-o", out)
    assert snapshot(out) == snapshot(v2)


def test_csv_is_compressed(dstore, tmp_path):
    src = tmp_path / "t.csv"
    src.write_bytes(csv_like(4 << 20))
    result = json.loads(dstore("add", src, "--json", "--shards", "4+0").out)
    assert result["compression_ratio"] > 2


def test_ls_cat_stat(dstore, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "x.txt").write_bytes(b"hello x")
    (src / "y.bin").write_bytes(random_bytes(300_000, 7))
    cid = dstore("add", src, "-q").out.strip()
    assert dstore("ls", cid).out.splitlines() == ["sub/", "y.bin"]
    assert dstore("ls", f"{cid}/sub").out.splitlines() == ["x.txt"]
    entries = [json.loads(line) for line in dstore("ls", cid, "--json").out.splitlines()]
    assert entries[1] == {"name": "y.bin", "type": "file", "size": 300_000, "cid": entries[1]["cid"]}
    assert dstore("cat", f"{cid}/sub/x.txt").out == "hello x"
    info = json.loads(dstore("stat", "--json").out)
    assert info["datasets"] == 1 and info["shards"] > 0


def test_symlinks_are_followed(dstore, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "target.txt").write_bytes(b"pointed to")
    os.symlink(tmp_path / "target.txt", src / "link.txt")
    cid = dstore("add", src, "-q").out.strip()
    dstore("get", cid, "-o", tmp_path / "out")
    out = tmp_path / "out" / "link.txt"
    assert not out.is_symlink() and out.read_bytes() == b"pointed to"
