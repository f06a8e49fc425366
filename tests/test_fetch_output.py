"""The output helpers of get/export (never replace OUT) and the get records' decoder (hostile bytes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dstore.fetch import output, partial


@pytest.fixture(params=["renameat2", "fallback"])
def rename(request, monkeypatch):
    if request.param == "fallback":
        monkeypatch.setattr(output, "_renameat2", lambda: None)
    elif output._renameat2() is None:
        pytest.skip("no renameat2 in this libc")
    return output.rename_noreplace


@pytest.mark.parametrize("existing", ["file", "empty-folder"])
@pytest.mark.parametrize("src_kind", ["file", "folder"])
def test_rename_never_replaces(tmp_path, rename, existing, src_kind):
    src, dst = tmp_path / "src", tmp_path / "dst"
    if src_kind == "file":
        src.write_bytes(b"new")
    else:
        src.mkdir()
        (src / "x").write_bytes(b"new")
    if existing == "file":
        dst.write_bytes(b"old")
    else:
        dst.mkdir()
    with pytest.raises(FileExistsError):
        rename(src, dst)
    assert (dst.read_bytes() == b"old") if existing == "file" else (list(dst.iterdir()) == [])
    assert src.exists()


@pytest.mark.parametrize("src_kind", ["file", "folder"])
def test_rename_moves_when_free(tmp_path, rename, src_kind):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"new") if src_kind == "file" else src.mkdir()
    rename(src, dst)
    assert dst.exists() and not src.exists()


@given(st.text(min_size=1, max_size=300).filter(lambda s: "/" not in s and "\x00" not in s))
def test_temporary_name_fits_the_filesystem(name):
    tmp = output.temporary_name(Path("/tmp") / name, pid=4194304)
    assert len(os.fsencode(tmp.name)) <= output.name_max(Path("/tmp"))
    assert partial.TMP_NAME.match(tmp.name)


@given(st.binary(max_size=2000))
def test_a_garbage_record_is_removed_and_nothing_else(tmp_path_factory, data):
    home = tmp_path_factory.mktemp("home")
    victim = home / "victim"
    victim.write_bytes(b"must stay")
    gets = partial.gets_dir(home)
    gets.mkdir()
    (gets / ("0" * 32 + partial.RECORD_SUFFIX)).write_bytes(data)
    partial.clean_stale_gets(home)
    assert list(gets.iterdir()) == []
    assert victim.read_bytes() == b"must stay"


def test_a_record_naming_a_path_that_is_not_a_temporary_tree_removes_nothing(tmp_path):
    home = tmp_path / "home"
    victim = tmp_path / "precious"
    victim.mkdir()
    header = partial.Header("d", "", str(tmp_path / "out"), str(victim), 1, "")
    gets = partial.gets_dir(home)
    gets.mkdir(parents=True)
    (gets / ("1" * 32 + partial.RECORD_SUFFIX)).write_text(json.dumps(header.__dict__) + "\n")
    partial.clean_stale_gets(home)
    assert victim.is_dir() and list(gets.iterdir()) == []


@given(st.text(), st.text(), st.integers(0, 2**63))
def test_a_done_line_is_the_json_of_its_file(rel: str, cid: str, size: int) -> None:
    """The record's fast line builder writes exactly what json.dumps wrote before (records stay readable)."""
    expected = json.dumps({"done": rel, "cid": cid, "size": size}, ensure_ascii=False) + "\n"
    assert partial.done_line((rel, cid, size)) == expected
