"""A damaged, truncated or missing index (real LMDB, real CLI): recovered from the shard files, never a crash."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from dstore.format.cid import parse_cid
from dstore.store import Store

from treeutil import csv_like, random_bytes, snapshot


def make_tree(root: Path, seed: int) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "big.bin").write_bytes(random_bytes(3 << 20, seed))
    (root / "sub" / "table.csv").write_bytes(csv_like(1 << 20, seed))
    (root / "sub" / "empty").write_bytes(b"")
    return root


def add(dstore, src: Path, *extra: str) -> str:
    return dstore("add", src, "-q", "--shards", "4+2", *extra).out.strip().splitlines()[-1]


def assert_gets(dstore, cid: str, src: Path, out: Path) -> None:
    dstore("get", cid, "-o", out, "-q")
    assert snapshot(out) == snapshot(src)
    shutil.rmtree(out)


def flip_block_in_index(home: Path, cid: str) -> int:
    """Flip one byte in every copy of block ``cid`` inside data.mdb; returns how many copies."""
    with Store(home) as store:
        block = store.index.get_block(parse_cid(cid).to_bytes())
    assert block is not None
    data_mdb = home / "index-0" / "data.mdb"
    data = bytearray(data_mdb.read_bytes())
    found, at = 0, data.find(block)
    while at >= 0:
        data[at + len(block) // 2] ^= 0x01
        found += 1
        at = data.find(block, at + 1)
    data_mdb.write_bytes(data)
    return found


def one_line_error(result, code: int, *words: str) -> None:
    assert result.code == code, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dstore: error:"), result.err
    for w in words:
        assert w in lines[0], lines[0]


def test_flipped_manifest_byte_is_taken_back_from_the_metadata_pack(dstore, tmp_path, home):
    src = make_tree(tmp_path / "src", 1)
    cid = add(dstore, src)
    assert flip_block_in_index(home, cid) >= 1
    assert_gets(dstore, cid, src, tmp_path / "out")  # recovered on the fly
    dstore("verify", cid, "--json")
    assert json.loads(dstore("fsck", "--json").out)["ok"]  # and healed in the index


def test_flipped_byte_then_fsck_rebuild_restores_everything(dstore, tmp_path, home):
    src = make_tree(tmp_path / "src", 2)
    cid = add(dstore, src)
    flip_block_in_index(home, cid)
    checked = dstore("fsck", "--json", check=False)
    one_line_error(checked, 8, "fsck --rebuild")
    report = json.loads(checked.out)
    assert not report["ok"] and any(cid in p for p in report["problems"])
    rebuilt = json.loads(dstore("fsck", "--rebuild", "--json").out)
    assert rebuilt == {"datasets": 1, "lost": [], "metadata_packs_written": 0}
    assert json.loads(dstore("fsck", "--json").out)["ok"]
    assert_gets(dstore, cid, src, tmp_path / "out")
    dstore("verify", cid, "--json")


def test_flipped_byte_without_a_metadata_pack_is_one_line_naming_fsck(dstore, tmp_path, home):
    src = make_tree(tmp_path / "src", 3)
    cid = add(dstore, src)
    shutil.rmtree(home / "metadata")  # as for a dataset with no metadata pack to recover from
    flip_block_in_index(home, cid)
    for command in (["get", cid, "-o", tmp_path / "out"], ["verify", cid], ["repair", cid]):
        one_line_error(dstore(*command, check=False), 8, "fsck --rebuild")
    assert not (tmp_path / "out").exists()


def test_truncated_index_is_a_clean_error_then_rebuilt(dstore, tmp_path, home):
    src = make_tree(tmp_path / "src", 4)
    cid = add(dstore, src)
    data_mdb = home / "index-0" / "data.mdb"
    os.truncate(data_mdb, data_mdb.stat().st_size // 2)
    for command in (["get", cid, "-o", tmp_path / "out"], ["stat"], ["ls", cid], ["verify", cid]):
        result = dstore(*command, check=False)
        assert result.code != -signal.SIGBUS
        one_line_error(result, 8, "truncated", "fsck --rebuild")
    one_line_error(dstore("fsck", check=False), 8, "fsck --rebuild")
    dstore("fsck", "--rebuild")
    assert_gets(dstore, cid, src, tmp_path / "out")


def test_missing_index_names_fsck_and_rebuild_brings_back_every_dataset(dstore, tmp_path, home):
    a = make_tree(tmp_path / "a", 5)
    b = make_tree(tmp_path / "b", 6)
    shutil.copy(a / "big.bin", b / "same-as-a.bin")  # b dedups against a's packs
    cid_a, cid_b = add(dstore, a), add(dstore, b)
    shutil.rmtree(home / "index-0")
    for command in (["get", cid_a, "-o", tmp_path / "out"], ["stat"], ["add", a, "-q"]):
        one_line_error(dstore(*command, check=False), 8, "missing", "fsck --rebuild")
    assert not (home / "index-0").exists(), "a failed command must not create an empty index"
    rebuilt = json.loads(dstore("fsck", "--rebuild", "--json").out)
    assert rebuilt["datasets"] == 2 and rebuilt["lost"] == []
    listed = json.loads(dstore("stat", "--json").out)["datasets_list"]
    assert sorted(listed) == sorted([cid_a, cid_b])
    assert_gets(dstore, cid_a, a, tmp_path / "out")
    assert_gets(dstore, cid_b, b, tmp_path / "out")
    dstore("verify", cid_b, "--json")
    # The chunk table came back too: adding a again stores nothing new.
    again = json.loads(dstore("add", a, "-q", "--shards", "4+2", "--json").out)
    assert again["cid"] == cid_a and again["new_bytes_stored"] == 0


def test_rebuild_writes_a_metadata_pack_for_a_dataset_that_had_none(dstore, tmp_path, home):
    src = make_tree(tmp_path / "src", 7)
    cid = add(dstore, src)
    shutil.rmtree(home / "metadata")
    shutil.rmtree(home / "pointers")
    checked = json.loads(dstore("fsck", "--json", check=False).out)
    assert any("no readable pointer" in p for p in checked["problems"])
    rebuilt = json.loads(dstore("fsck", "--rebuild", "--json").out)
    assert rebuilt == {"datasets": 1, "lost": [], "metadata_packs_written": 1}
    # From now on the index can go and come back.
    shutil.rmtree(home / "index-0")
    dstore("fsck", "--rebuild")
    assert_gets(dstore, cid, src, tmp_path / "out")


def test_rebuild_cut_short_keeps_the_old_index_and_a_finished_one_is_installed(dstore, tmp_path, home):
    src = make_tree(tmp_path / "src", 8)
    cid = add(dstore, src)
    # Killed while writing the new environment: no "complete" mark; the old index stays in use.
    (home / "index-0.rebuilt").mkdir()
    (home / "index-0.rebuilt" / "data.mdb").write_bytes(b"half written")
    assert_gets(dstore, cid, src, tmp_path / "out")
    assert json.loads(dstore("gc", "--json").out)["tmp_files_removed"] == 1
    assert not (home / "index-0.rebuilt").exists()
    # Killed between the two renames: a complete rebuild and no index-0; the next command installs it.
    dstore("fsck", "--rebuild")
    shutil.copytree(home / "index-0", home / "index-0.rebuilt")
    (home / "index-0.rebuilt" / "complete").write_bytes(b"")
    os.rename(home / "index-0", home / "index-0.old")
    assert_gets(dstore, cid, src, tmp_path / "out")
    assert sorted(p.name for p in home.iterdir() if p.name.startswith("index")) == ["index-0"]


@pytest.mark.slow
def test_peers_dataset_metadata_is_kept_locally_and_rebuilt(dstore, tmp_path, home):
    from peerutil import running_peers

    src = make_tree(tmp_path / "src", 9)
    (tmp_path / "peers").mkdir()
    with running_peers(tmp_path / "peers", 6, token="t") as peers:
        env = {"DSTORE_PEERS": ",".join(p.url for p in peers), "DSTORE_TOKEN": "t"}
        cid = dstore("add", src, "-q", "--shards", "4+2", env=env).out.strip()
        assert not list((home / "shards").rglob("b*")), "data shards go to the peers"
        assert list((home / "metadata").rglob("b*")), "the metadata pack stays here too"
        shutil.rmtree(home / "index-0")
        assert json.loads(dstore("fsck", "--rebuild", "--json").out)["lost"] == []
        dstore("ls", cid)  # metadata from the rebuilt index, no peers needed
        dstore("get", cid, "-o", tmp_path / "out", "-q", env=env)
        assert snapshot(tmp_path / "out") == snapshot(src)
