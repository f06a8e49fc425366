"""`dstore add/get --peers` over real peer processes on 127.0.0.1 (14 peers, 10+4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from peerutil import running_peers

from treeutil import csv_like, random_bytes, snapshot

TOKEN = "secret-token"


@pytest.fixture(scope="module")
def fourteen(tmp_path_factory):
    with running_peers(tmp_path_factory.mktemp("peers"), 14, token=TOKEN) as peers:
        yield peers


def tree(root):
    (root / "sub").mkdir(parents=True)
    (root / "big.bin").write_bytes(random_bytes(23 << 20, 41))
    (root / "sub" / "table.csv").write_bytes(csv_like(3 << 20))
    (root / "empty").write_bytes(b"")
    return root


@pytest.mark.slow
def test_roundtrip_survives_four_dead_peers_and_fails_cleanly_past_that(dstore, tmp_path, fourteen):
    src = tree(tmp_path / "src")
    env = {"DSTORE_PEERS": ",".join(p.url for p in fourteen), "DSTORE_TOKEN": TOKEN}
    added = json.loads(dstore("add", src, "--shards", "10+4", "--json", env=env).out)
    cid = added["cid"]
    assert not list((tmp_path / "store" / "shards").rglob("b*")), "with peers, no shard stays local"
    # Every peer got shards: placement spreads them.
    assert all(any((p.home / "shards").rglob("b*")) for p in fourteen)

    # A reader with an empty store of its own gets everything from peers.
    fresh = {**env, "DSTORE_HOME": str(tmp_path / "fresh")}
    dstore("get", cid, "-o", tmp_path / "out1", env=fresh)
    assert snapshot(tmp_path / "out1") == snapshot(src)
    assert dstore("ls", cid, env=fresh).out.splitlines() == ["big.bin", "empty", "sub/"]

    for p in fourteen[:4]:
        p.kill()
    fresh2 = {**env, "DSTORE_HOME": str(tmp_path / "fresh2")}
    dstore("get", cid, "-o", tmp_path / "out2", env=fresh2)
    assert snapshot(tmp_path / "out2") == snapshot(src)

    fourteen[4].kill()
    fresh3 = {**env, "DSTORE_HOME": str(tmp_path / "fresh3")}
    result = dstore("get", cid, "-o", tmp_path / "out3", check=False, env=fresh3)
    assert result.code == 7, result.err
    assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "out3").exists()
    for p in fourteen[:5]:
        p.start()


def test_unauthenticated_add_is_refused(dstore, tmp_path, fourteen):
    src = tmp_path / "f.bin"
    src.write_bytes(random_bytes(100_000, 42))
    env = {"DSTORE_PEERS": ",".join(p.url for p in fourteen), "DSTORE_TOKEN": "wrong"}
    result = dstore("add", src, "--shards", "10+4", check=False, env=env)
    assert result.code == 9, result.err
    assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1


def test_data_added_locally_first_is_still_uploaded_to_peers(dstore, tmp_path, fourteen):
    """Dedup reuses only packs that live where the new dataset goes."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(random_bytes(3 << 20, 43))
    local_cid = dstore("add", src, "-q").out.strip()
    env = {"DSTORE_PEERS": ",".join(p.url for p in fourteen), "DSTORE_TOKEN": TOKEN}
    added = json.loads(dstore("add", src, "--shards", "10+4", "--json", env=env).out)
    assert added["cid"] == local_cid
    assert added["new_bytes_stored"] > 3 << 20  # uploaded, not deduplicated against local shards
    again = json.loads(dstore("add", src, "--shards", "10+4", "--json", env=env).out)
    assert again["new_bytes_stored"] == 0  # now on peers: dedup
    fresh = {**env, "DSTORE_HOME": str(tmp_path / "fresh")}
    dstore("get", local_cid, "-o", tmp_path / "out", env=fresh)
    assert snapshot(tmp_path / "out") == snapshot(src)


@pytest.mark.slow
def test_verify_names_the_failed_peers_and_repair_restores_every_pack(dstore, tmp_path, fourteen):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(random_bytes(12 << 20, 44))
    env = {"DSTORE_PEERS": ",".join(p.url for p in fourteen), "DSTORE_TOKEN": TOKEN}
    cid = dstore("add", src, "--shards", "10+4", "-q", env=env).out.strip()
    first = dstore("verify", cid, "--json", check=False, env=env)
    assert first.code == 0, first.out + first.err

    rotten, emptied, dead = fourteen[1], fourteen[2], fourteen[3]
    for f in (rotten.home / "shards").glob("*/b*"):
        data = bytearray(f.read_bytes())
        data[7] ^= 0xFF
        f.write_bytes(bytes(data))
    for f in (emptied.home / "shards").glob("*/b*"):
        f.unlink()
    dead.kill()
    try:
        result = dstore("verify", cid, "--json", check=False, env=env)
        assert result.code == 6, result.err
        bad = [b for line in result.out.splitlines() for b in json.loads(line)["bad"]]
        assert {b["where"] for b in bad} == {rotten.peer_id, emptied.peer_id, dead.peer_id}
        assert any("bad bytes" in b["problem"] for b in bad if b["where"] == rotten.peer_id)
        # Reads are right before any repair: rotten shards are discarded, parity stands in.
        dstore("get", cid, "-o", tmp_path / "before", env={**env, "DSTORE_HOME": str(tmp_path / "reader")})
        assert snapshot(tmp_path / "before") == snapshot(src)

        repaired = json.loads(dstore("repair", cid, "--json", env=env).out)
        # Data shards are rebuilt one by one; the metadata pack (listed last) is published anew.
        data_bad = [b for line in result.out.splitlines()[:-1] for b in json.loads(line)["bad"]]
        assert repaired["shards_written"] == len(data_bad) > 0
        assert dstore("verify", cid, env=env).code == 0
        fresh = {**env, "DSTORE_HOME": str(tmp_path / "fresh")}
        dstore("get", cid, "-o", tmp_path / "out", env=fresh)
        assert snapshot(tmp_path / "out") == snapshot(src)
    finally:
        dead.start()


@pytest.mark.slow
def test_four_peers_killed_during_a_get(tmp_path, fourteen):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(random_bytes(96 << 20, 45))
    env = {
        **os.environ,
        "DSTORE_PEERS": ",".join(p.url for p in fourteen),
        "DSTORE_TOKEN": TOKEN,
        "DSTORE_HOME": str(tmp_path / "writer"),
    }
    add = subprocess.run(
        [sys.executable, "-m", "dstore", "add", str(src), "--shards", "10+4", "-q"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    cid = add.stdout.strip()
    out = tmp_path / "out"
    get = subprocess.Popen(
        [sys.executable, "-m", "dstore", "get", cid, "-o", str(out), "-q"],
        env={**env, "DSTORE_HOME": str(tmp_path / "reader")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Kill once the get is under way: its temporary output exists and is growing.
        deadline = time.monotonic() + 60
        while get.poll() is None and time.monotonic() < deadline:
            partial = list(tmp_path.glob(".out.dstore-*.tmp/big.bin"))
            if partial and partial[0].stat().st_size > 8 << 20:
                break
            time.sleep(0.005)
        assert get.poll() is None, "the get ended before peers could be killed"
        for p in fourteen[5:9]:
            p.kill()
        _, err = get.communicate(timeout=300)
        assert get.returncode == 0, err
        assert snapshot(out) == snapshot(src)
    finally:
        for p in fourteen[5:9]:
            if not p.running:
                p.start()
