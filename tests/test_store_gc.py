"""`dstore rm` and `dstore gc` (real LMDB, real CLI): free what no dataset needs, never what one does."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dstore.limits import PACK_UNIT_BYTES

from treeutil import random_bytes, snapshot


def shard_names(home: Path, folder: str = "shards") -> set[str]:
    return {p.name for p in (home / folder).glob("*/b*")}


def add(dstore, src: Path, shards: str = "4+2") -> str:
    return dstore("add", src, "-q", "--shards", shards).out.strip().splitlines()[-1]


def assert_whole(dstore, cid: str, src: Path, out: Path) -> None:
    dstore("get", cid, "-o", out, "-q")
    assert snapshot(out) == snapshot(src)
    shutil.rmtree(out) if out.is_dir() else out.unlink()
    dstore("verify", cid, "--json")


def gc(dstore, *extra: str) -> dict:
    return json.loads(dstore("gc", "--json", *extra).out)


def test_rm_then_gc_frees_a_removed_dataset_but_keeps_what_a_remaining_one_shares(dstore, tmp_path, home):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    # In pack units: each file spans a few 4+2 packs, some of them holding only-a's chunks alone.
    unit = PACK_UNIT_BYTES
    shared = random_bytes(9 * unit, 1)
    (a / "shared.bin").write_bytes(shared)
    (a / "only-a.bin").write_bytes(random_bytes(9 * unit, 2))
    (b / "shared.bin").write_bytes(shared)
    (b / "only-b.bin").write_bytes(random_bytes(5 * unit, 3))
    cid_a = add(dstore, a)
    files_a = shard_names(home)
    meta_a = shard_names(home, "metadata")
    cid_b = add(dstore, b)
    assert dstore("rm", cid_a).out.strip() == cid_a
    one_line = dstore("get", cid_a, "-o", tmp_path / "gone", check=False)
    assert one_line.code == 3 and "not in this store" in one_line.err

    planned = gc(dstore, "--dry-run")
    assert shard_names(home) >= files_a, "--dry-run deletes nothing"
    done = gc(dstore)
    assert {**planned, "dry_run": False} == done
    assert done["datasets_kept"] == 1 and done["packs_removed"] > 0 and done["bytes_freed"] > 0
    assert done["metadata_files_removed"] == len(meta_a)
    left = shard_names(home)
    assert files_a - left, "the packs only a needed are gone"
    assert files_a & left, "the packs b shares with a (dedup) stay"
    assert not meta_a & shard_names(home, "metadata")
    assert_whole(dstore, cid_b, b, tmp_path / "out")
    assert json.loads(dstore("fsck", "--json").out)["ok"]
    again = gc(dstore)
    assert again["bytes_freed"] == 0 and again["packs_removed"] == 0 and again["blocks_removed"] == 0
    # Dedup does not point at anything gc freed: adding a again stores its own chunks anew, and it reads back.
    cid_a2 = add(dstore, a)
    assert cid_a2 == cid_a
    assert_whole(dstore, cid_a, a, tmp_path / "out")


def test_rm_of_an_unknown_dataset_is_not_found(dstore, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"hello")
    cid = add(dstore, src)
    dstore("rm", cid)
    result = dstore("rm", cid, check=False)
    assert result.code == 3 and result.err.count("\n") == 1


def test_gc_collects_orphan_shards_and_stale_temporaries(dstore, tmp_path, home):
    src = tmp_path / "f.bin"
    src.write_bytes(random_bytes(3 << 20, 4))
    cid = add(dstore, src)
    kept = shard_names(home)
    long_ago = time.time() - 3600
    orphan = home / "shards" / "zz" / ("bafkr4i" + "a" * 51 + "zz")
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"left by an add that ran out of disk")
    os.utime(orphan, (long_ago, long_ago))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = home / "tmp" / f"{orphan.name}.{dead.stdout.strip()}.1.tmp"
    stale.write_bytes(b"half a shard")
    os.utime(stale, (long_ago, long_ago))
    fresh = home / "shards" / "zz" / ("bafkr4i" + "b" * 51 + "zz")
    fresh.write_bytes(b"written after gc started: within the grace period")
    os.utime(fresh, (time.time() + 3600, time.time() + 3600))
    done = gc(dstore)
    assert done["orphan_files_removed"] == 1 and done["packs_removed"] == 0
    assert not orphan.exists() and fresh.exists()
    assert shard_names(home) == kept | {fresh.name}
    assert_whole(dstore, cid, src, tmp_path / "out")


def test_gc_refuses_to_run_while_an_add_holds_the_store(dstore, tmp_path, home):
    src = tmp_path / "f.bin"
    src.write_bytes(random_bytes(1 << 20, 5))
    add(dstore, src)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from dstore.store import Store; s = Store(sys.argv[1]); "
         "s.lock_for_add(); print('held', flush=True); sys.stdin.read()", str(home)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = dstore("gc", check=False)
        assert refused.code == 8 and "while a dstore add" in refused.err
        rebuild = dstore("fsck", "--rebuild", check=False)
        assert rebuild.code == 8 and "while a dstore add" in rebuild.err
    finally:
        holder.communicate("")
    assert gc(dstore)["datasets_kept"] == 1


def test_gc_keeps_a_dataset_whose_rm_was_cut_short(dstore, tmp_path, home):
    """rm drops the index entry first; a pointer file left behind still protects the dataset."""
    src = tmp_path / "f.bin"
    src.write_bytes(random_bytes(2 << 20, 6))
    cid = add(dstore, src)
    pointers = {p: p.read_bytes() for p in (home / "pointers").rglob("*.json")}
    dstore("rm", cid)
    for p, body in pointers.items():
        p.write_bytes(body)  # as if rm died between its two steps
    before = shard_names(home)
    assert gc(dstore)["packs_removed"] == 0 and shard_names(home) == before
    dstore("fsck", "--rebuild")
    assert_whole(dstore, cid, src, tmp_path / "out")


@pytest.mark.slow
def test_gc_killed_at_any_point_leaves_every_remaining_dataset_whole(dstore, tmp_path, home):
    keep, drop = tmp_path / "keep", tmp_path / "drop"
    keep.mkdir()
    drop.mkdir()
    for i in range(6):
        (keep / f"k{i}.bin").write_bytes(random_bytes(2 << 20, 10 + i))
    for i in range(20):
        (drop / f"d{i}.bin").write_bytes(random_bytes(3 << 20, 50 + i))
    (drop / "k0.bin").write_bytes((keep / "k0.bin").read_bytes())  # shares packs with keep
    cid_keep = add(dstore, keep, "2+3")
    env = {**os.environ, "DSTORE_HOME": str(home)}
    for round_ in range(4):
        cid_drop = add(dstore, drop, "2+3")  # ~30 packs of 5 shard files each
        dstore("rm", cid_drop)
        files = len(list((home / "shards").glob("*/b*")))
        proc = subprocess.Popen([sys.executable, "-m", "dstore", "gc"], env=env, stdout=subprocess.DEVNULL)
        # Kill once gc has started deleting (or at once, every other round).
        while round_ % 2 and proc.poll() is None and len(list((home / "shards").glob("*/b*"))) >= files:
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert json.loads(dstore("fsck", "--json").out)["ok"]
        assert_whole(dstore, cid_keep, keep, tmp_path / "out")
    gc(dstore)
    alone = tmp_path / "alone"
    subprocess.run(
        [sys.executable, "-m", "dstore", "add", keep, "-q", "--shards", "2+3"],
        env={**env, "DSTORE_HOME": str(alone)}, check=True, capture_output=True,
    )  # fmt: skip
    assert shard_names(home) == shard_names(alone), "after a full gc only what keep needs is left"
    assert_whole(dstore, cid_keep, keep, tmp_path / "out")
