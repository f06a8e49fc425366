"""Dedup reuses a stored pack only if it is still there and at least as strong as what the add asks for.

docs/format.md, "When dedup reuses a pack". Real CLI, real peer processes, real store.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from peerutil import running_peers

from dstore.format.cid import make_cid, parse_cid
from dstore.format.pack import PackRecord
from dstore.ingest.sinks import holder_losses_survived
from dstore.net import SyncPeerSet
from dstore.store import Store

from treeutil import random_bytes, snapshot

TOKEN = "dedup-token"


def peer_env(peers) -> dict[str, str]:
    return {"DSTORE_PEERS": ",".join(p.url for p in peers), "DSTORE_TOKEN": TOKEN}


def add_json(dstore, path: Path, shards: str, env: dict[str, str] | None = None) -> dict:
    return json.loads(dstore("add", path, "--shards", shards, "--json", env=env).out)


def verify_reports(dstore, cid: str, env: dict[str, str] | None = None) -> list[dict]:
    result = dstore("verify", cid, "--json", check=False, env=env)
    assert result.code == 0, result.out + result.err
    return [json.loads(line) for line in result.out.splitlines()]


def flip_byte(path: Path, at: int = 7) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def peer_shard_files(peers) -> set[Path]:
    return {f for p in peers for f in (p.home / "shards").glob("*/b*")}


# -- packs on peers that are gone ------------------------------------------------------------------


@pytest.mark.slow
def test_packs_on_peers_that_are_gone_are_stored_again(dstore, tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(random_bytes(5 << 20, 51))
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    with running_peers(tmp_path / "old", 4, token=TOKEN) as old:
        first = add_json(dstore, src, "2+1", peer_env(old))
        for p in old:
            p.stop()
    assert first["new_bytes_stored"] > 0 and first["new_chunks"] == first["chunks"]

    # Same DSTORE_HOME (its index remembers the old placement), four new peers.
    with running_peers(tmp_path / "new", 4, token=TOKEN) as new:
        env = peer_env(new)
        again = add_json(dstore, src, "2+1", env)
        assert again["cid"] == first["cid"]
        assert again["new_chunks"] == again["chunks"] == first["chunks"]
        assert again["new_bytes_stored"] == first["new_bytes_stored"]
        assert again["dedup_ratio"] == first["dedup_ratio"]
        assert peer_shard_files(new), "the data went to the new peers"

        reader = {**env, "DSTORE_HOME": str(tmp_path / "reader")}
        dstore("get", first["cid"], "-o", tmp_path / "out", env=reader)
        assert (tmp_path / "out").read_bytes() == src.read_bytes()


def test_a_second_add_onto_the_same_live_peers_still_dedups(dstore, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(random_bytes(3 << 20, 52))
    (src / "b.bin").write_bytes(random_bytes(1 << 20, 53))
    with running_peers(tmp_path, 4, token=TOKEN) as peers:
        env = peer_env(peers)
        first = add_json(dstore, src, "2+1", env)
        again = add_json(dstore, src, "2+1", env)
        assert first["new_bytes_stored"] > 0
        assert again["cid"] == first["cid"]
        assert again["new_bytes_stored"] == 0 and again["new_chunks"] == 0
        assert again["dedup_ratio"] is None  # no new chunk bytes at all
        dstore("get", first["cid"], "-o", tmp_path / "out", env={**env, "DSTORE_HOME": str(tmp_path / "reader")})
        assert snapshot(tmp_path / "out") == snapshot(src)


@pytest.mark.slow
def test_shards_a_live_peer_lost_are_stored_again_and_readable_without_another_peer(dstore, tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(random_bytes(5 << 20, 54))
    with running_peers(tmp_path, 4, token=TOKEN) as peers:
        env = peer_env(peers)
        first = add_json(dstore, src, "2+1", env)
        emptied = max(peers, key=lambda p: len(list((p.home / "shards").glob("*/b*"))))
        for f in (emptied.home / "shards").glob("*/b*"):
            f.unlink()
        again = add_json(dstore, src, "2+1", env)
        # Packs with a shard on the emptied peer are stored again (same pack IDs, same
        # ranking: the emptied peer gets its shards back); the others are reused.
        assert 0 < again["new_bytes_stored"] <= first["new_bytes_stored"]
        assert 0 < again["new_chunks"] <= again["chunks"]
        assert verify_reports(dstore, first["cid"], env)
        other = next(p for p in peers if p is not emptied)
        other.kill()
        dstore("get", first["cid"], "-o", tmp_path / "out", env={**env, "DSTORE_HOME": str(tmp_path / "reader")})
        assert (tmp_path / "out").read_bytes() == src.read_bytes()


def test_confirm_shards_is_true_only_for_a_live_peer_that_holds_the_shard(tmp_path):
    held, missing = b"held shard bytes", b"never stored"
    held_cid, missing_cid = make_cid(0x55, held), make_cid(0x55, missing)
    with running_peers(tmp_path, 1, token=TOKEN) as [peer], SyncPeerSet.connect([peer.url], TOKEN) as ps:
        ps.put_to(ps.peers[0], held_cid, held)
        items = [(peer.peer_id, held_cid), (peer.peer_id, missing_cid), ("12D3KooWnotapeerofthisset", held_cid)]
        assert ps.confirm_shards(items) == [True, False, False]
        assert ps.confirm_shards([]) == []


# -- weaker packs ---------------------------------------------------------------------------------


def pack_records(home: Path, reports: list[dict]) -> list[PackRecord]:
    with Store(home) as store:
        return [PackRecord.decode(store.get_block(parse_cid(r["pack"]).to_bytes())) for r in reports]


def test_a_weaker_local_pack_is_encoded_again_at_the_requested_strength(dstore, tmp_path, home):
    a = random_bytes(3 << 20, 55)
    (tmp_path / "a.bin").write_bytes(a)
    first = add_json(dstore, tmp_path / "a.bin", "1+0")
    weak_files = set((home / "shards").glob("*/b*"))
    assert weak_files

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.bin").write_bytes(a)
    (tree / "b.bin").write_bytes(random_bytes(1 << 20, 56))
    second = add_json(dstore, tree, "4+2")
    assert second["shards"] == "4+2"
    assert second["new_chunks"] == second["chunks"] > first["chunks"]  # a.bin's chunks too
    assert second["dedup_ratio"] == 1.0

    reports = verify_reports(dstore, second["cid"])
    assert reports and all(r["total"] - r["needed"] >= 2 for r in reports)
    # One flipped byte in the old 1+0 shards and in one shard of every pack of the new dataset.
    for f in weak_files:
        flip_byte(f)
    for record in pack_records(home, reports):
        cid_text = record.shards[0].encode("base32")
        flip_byte(home / "shards" / cid_text[-2:] / cid_text)
    dstore("get", second["cid"], "-o", tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(tree)


def test_an_equally_strong_local_pack_is_reused_whatever_its_k(dstore, tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(random_bytes(3 << 20, 57))
    add_json(dstore, src, "4+2")
    again = add_json(dstore, src, "2+2")  # same parity: the 4+2 packs withstand as many lost shards
    assert again["new_bytes_stored"] == 0 and again["new_chunks"] == 0
    stronger = add_json(dstore, src, "2+3")
    assert stronger["new_chunks"] == stronger["chunks"] and stronger["new_bytes_stored"] > 0


def test_a_missing_local_shard_file_means_the_pack_is_stored_again(dstore, tmp_path, home):
    src = tmp_path / "a.bin"
    src.write_bytes(random_bytes(3 << 20, 58))
    first = add_json(dstore, src, "2+1")
    reports = verify_reports(dstore, first["cid"])
    for record in pack_records(home, reports):
        cid_text = record.shards[0].encode("base32")
        (home / "shards" / cid_text[-2:] / cid_text).unlink()
    again = add_json(dstore, src, "2+1")
    assert again["new_chunks"] == again["chunks"]
    assert again["new_bytes_stored"] == first["new_bytes_stored"]
    assert verify_reports(dstore, first["cid"])  # the missing files are back: exit 0


@pytest.mark.slow
def test_a_weaker_pack_on_peers_is_encoded_again_at_the_requested_strength(dstore, tmp_path):
    a = random_bytes(3 << 20, 59)
    (tmp_path / "a.bin").write_bytes(a)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.bin").write_bytes(a)
    (tree / "b.bin").write_bytes(random_bytes(1 << 20, 60))
    with running_peers(tmp_path, 6, token=TOKEN) as peers:
        env = peer_env(peers)
        add_json(dstore, tmp_path / "a.bin", "1+0", env)
        weak_files = peer_shard_files(peers)
        second = add_json(dstore, tree, "4+2", env)
        assert second["new_chunks"] == second["chunks"] and second["dedup_ratio"] == 1.0

        reports = verify_reports(dstore, second["cid"], env)
        assert reports and all(r["total"] - r["needed"] >= 2 for r in reports)
        # Rot every old 1+0 shard and every shard of one peer: 4+2 on six peers shrugs it off.
        for f in weak_files | set((peers[0].home / "shards").glob("*/b*")):
            flip_byte(f)
        dstore("get", second["cid"], "-o", tmp_path / "out", env={**env, "DSTORE_HOME": str(tmp_path / "reader")})
        assert snapshot(tmp_path / "out") == snapshot(tree)


# -- the strength measure -------------------------------------------------------------------------


def brute_force_holder_losses(counts: list[int], k: int) -> int:
    """The largest t such that losing ANY t holders leaves at least k shards (-1 if fewer than k now)."""
    if sum(counts) < k:
        return -1
    best = 0
    for t in range(1, len(counts) + 1):
        if all(sum(counts) - sum(lost) >= k for lost in itertools.combinations(counts, t)):
            best = t
        else:
            break
    return best


@given(st.lists(st.integers(0, 4), max_size=7), st.integers(1, 10))
def test_holder_losses_survived_is_the_worst_case_over_every_choice_of_lost_holders(counts, k):
    assert holder_losses_survived(counts, k) == brute_force_holder_losses(counts, k)
