"""Bad input: one line on stderr, a documented exit code, no traceback, nothing half-written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from treeutil import random_bytes


def one_line_error(result, code: int) -> str:
    assert result.code == code, (result.code, result.err)
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("dstore: error: ")
    return lines[0]


def add_file(dstore, tmp_path: Path, size: int = 2_000_000, shards: str = "4+2") -> str:
    src = tmp_path / "f.bin"
    src.write_bytes(random_bytes(size, 11))
    return dstore("add", src, "-q", "--shards", shards).out.strip()


@pytest.mark.parametrize(
    "cid",
    ["not-a-cid", "bafy", "Qm123", "", "bafkr4ihkr4ld3m4gqkjf4reryxsy2s5tkbxprqkow6fin2iiyvreuzzab4"],
)
def test_malformed_or_wrong_kind_cid(dstore, tmp_path, cid):
    result = dstore("get", cid, "-o", tmp_path / "out", check=False)
    one_line_error(result, 2)
    assert not (tmp_path / "out").exists()


def test_unknown_dataset(dstore, tmp_path):
    src = tmp_path / "x"
    src.write_bytes(b"x")
    other_home = {"DSTORE_HOME": str(tmp_path / "other")}
    cid = dstore("add", src, "-q", env=other_home).out.strip()
    line = one_line_error(dstore("get", cid, "-o", tmp_path / "out", check=False), 3)
    assert "not in this store" in line
    assert not (tmp_path / "out").exists()


def test_missing_path(dstore, tmp_path):
    line = one_line_error(dstore("add", tmp_path / "nope", check=False), 4)
    assert "no such file" in line


def test_unreadable_path(dstore, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    src = tmp_path / "secret"
    src.write_bytes(b"x")
    src.chmod(0)
    one_line_error(dstore("add", src, check=False), 4)


def test_special_file_is_refused(dstore, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "fifo")
    line = one_line_error(dstore("add", src, check=False), 4)
    assert "special file" in line


def test_symlink_loop_is_refused(dstore, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    os.symlink(src, src / "loop")
    assert "symlink loop" in one_line_error(dstore("add", src, check=False), 4)


@pytest.mark.parametrize("shards", ["0+2", "10", "a+b", "10+-1", "200+100", "10+4+1"])
def test_shards_out_of_range(dstore, tmp_path, shards):
    src = tmp_path / "x"
    src.write_bytes(b"x")
    one_line_error(dstore("add", src, "--shards", shards, check=False), 2)
    assert '"datasets": 0' in dstore("stat", "--json").out


def test_output_exists(dstore, tmp_path):
    cid = add_file(dstore, tmp_path)
    (tmp_path / "out").write_bytes(b"keep me")
    one_line_error(dstore("get", cid, "-o", tmp_path / "out", check=False), 2)
    assert (tmp_path / "out").read_bytes() == b"keep me"


def test_missing_path_in_dataset(dstore, tmp_path):
    cid = add_file(dstore, tmp_path)
    one_line_error(dstore("cat", f"{cid}/nope", check=False), 3)


def shard_files(home: Path) -> list[Path]:
    return sorted(p for p in (home / "shards").rglob("*") if p.is_file())


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_shards_are_rebuilt_from_parity(dstore, tmp_path, home):
    src = tmp_path / "f.bin"
    src.write_bytes(random_bytes(2_000_000, 11))
    cid = dstore("add", src, "-q", "--shards", "4+2").out.strip()
    files = shard_files(home)
    assert len(files) == 6
    corrupt(files[0])
    files[3].unlink()
    dstore("get", cid, "-o", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == src.read_bytes()


def test_too_many_corrupt_shards_is_a_clean_failure(dstore, tmp_path, home):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(random_bytes(2_000_000, 11))
    cid = dstore("add", src, "-q", "--shards", "4+1").out.strip()
    files = shard_files(home)
    for f in files[:2]:
        corrupt(f)
    line = one_line_error(dstore("get", cid, "-o", tmp_path / "out", check=False), 7)
    assert "good shards" in line and line.startswith("dstore: error: f.bin: pack ")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_verify_names_bad_shards_and_repair_fixes_them(dstore, tmp_path, home):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(random_bytes(5_000_000, 12))
    cid = dstore("add", src, "-q", "--shards", "4+2").out.strip()
    assert dstore("verify", cid).code == 0
    files = shard_files(home)
    corrupt(files[0])
    files[5].unlink()
    result = dstore("verify", cid, "--json", check=False)
    assert result.code == 6
    bad = [s for line in result.out.splitlines() for s in json.loads(line)["bad"]]
    assert sorted(b["problem"] for b in bad) == ["corrupt", "missing"]
    assert "dstore repair" in one_line_error(result, 6)
    before = {p.name: p.read_bytes() for p in files if p.exists()}
    repaired = json.loads(dstore("repair", cid, "--json").out)
    assert repaired["shards_written"] == 2
    assert dstore("verify", cid).code == 0
    # Same names, right bytes: the repaired shards hash to their CIDs again, nothing else changed.
    after = {p.name: p.read_bytes() for p in shard_files(home)}
    assert set(after) == {p.name for p in files}
    assert all(after[name] == data for name, data in before.items() if name != files[0].name)
    dstore("get", cid, "-o", tmp_path / "out")
    assert (tmp_path / "out" / "f.bin").read_bytes() == (src / "f.bin").read_bytes()


def test_repair_reports_packs_beyond_repair(dstore, tmp_path, home):
    cid = add_file(dstore, tmp_path, shards="4+1")
    for f in shard_files(home)[:2]:
        f.unlink()
    one_line_error(dstore("repair", cid, check=False), 7)
