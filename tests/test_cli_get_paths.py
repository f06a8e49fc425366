"""`dstore get CID/PATH`, `ls -l` of folders, and output errors: exit 2 for a bad -o, one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from treeutil import random_bytes, snapshot


def one_line_error(result, code: int) -> str:
    assert result.code == code, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dstore: error: "), result.err
    return lines[0]


@pytest.fixture
def nested(dstore, tmp_path) -> tuple[Path, str]:
    src = tmp_path / "src"
    (src / "a" / "b" / "c").mkdir(parents=True)
    (src / "a" / "empty").mkdir()
    (src / "top.txt").write_bytes(b"top")
    (src / "a" / "mid.bin").write_bytes(random_bytes(300_000, 1))
    (src / "a" / "b" / "deep.bin").write_bytes(random_bytes(2_000_000, 2))
    (src / "a" / "b" / "c" / "leaf.txt").write_bytes(b"leaf")
    return src, dstore("add", src, "-q").out.strip()


def test_get_a_folder_of_the_dataset(dstore, tmp_path, nested):
    src, cid = nested
    summary = json.loads(dstore("get", f"{cid}/a/b", "-o", tmp_path / "b", "--json").out)
    assert snapshot(tmp_path / "b") == snapshot(src / "a" / "b")
    assert summary["files"] == 2 and summary["bytes"] == 2_000_004 and summary["path"] == "a/b"
    dstore("get", f"{cid}/a/", "-o", tmp_path / "a")
    assert snapshot(tmp_path / "a") == snapshot(src / "a")


def test_get_one_file_of_the_dataset(dstore, tmp_path, nested):
    src, cid = nested
    dstore("get", f"{cid}/a/b/deep.bin", "-o", tmp_path / "deep.bin")
    assert (tmp_path / "deep.bin").read_bytes() == (src / "a" / "b" / "deep.bin").read_bytes()


def test_get_a_missing_path_is_not_found(dstore, tmp_path, nested):
    _, cid = nested
    line = one_line_error(dstore("get", f"{cid}/a/nope", "-o", tmp_path / "x", check=False), 3)
    assert "a/nope" in line
    assert not (tmp_path / "x").exists()
    one_line_error(dstore("get", f"{cid}/top.txt/below", "-o", tmp_path / "x", check=False), 3)


def test_ls_long_with_subfolders(dstore, nested):
    _, cid = nested
    lines = dstore("ls", "-l", cid).out.splitlines()
    assert len(lines) == 2
    folder, file = lines
    assert folder.split()[0:2] == ["d", "-"] and folder.endswith(" a")
    assert file.split()[0:2] == ["-", "3"] and file.endswith(" top.txt")
    lines = dstore("ls", "-l", f"{cid}/a").out.splitlines()
    assert [ln.split()[0] for ln in lines] == ["d", "d", "-"]


def test_export_to_a_missing_folder_is_a_usage_error(dstore, tmp_path, nested):
    _, cid = nested
    line = one_line_error(dstore("export", cid, "-o", tmp_path / "missing" / "x.car", check=False), 2)
    assert "does not exist" in line


@pytest.mark.parametrize("command", ["get", "export"])
def test_output_name_too_long_is_a_usage_error(dstore, tmp_path, nested, command):
    _, cid = nested
    out = tmp_path / ("n" * 300)
    line = one_line_error(dstore(command, cid, "-o", out, check=False), 2)
    assert "name too long" in line
    assert list(tmp_path.glob(".n*")) == []


@pytest.mark.parametrize("command", ["get", "export"])
def test_longest_allowed_output_name_works(dstore, tmp_path, nested, command):
    """The temporary name beside it is shortened to fit; the output keeps its full name."""
    src, cid = nested
    out = tmp_path / ("n" * 255)
    dstore(command, cid, "-o", out)
    assert out.exists()
    if command == "get":
        assert snapshot(out) == snapshot(src)


def test_cat_to_a_full_disk_is_an_output_error(dstore, tmp_path, nested):
    _, cid = nested
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "dstore", "cat", f"{cid}/a/b/deep.bin"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "DSTORE_HOME": str(tmp_path / "store")},
        )
    assert proc.returncode == 4, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "stdout" in proc.stderr
