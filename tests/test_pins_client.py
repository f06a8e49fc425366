"""Clients pin and unpin (docs/lifetime.md, "On storage peers"), peers keep the newest pointer, peer token files.

Real peer processes, the real CLI; what a peer holds is read from its home
(docs/http-api.md, "Files in DIR").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from peerutil import PeerProcess, running_peers
from test_peer import block, request, shard_files

from dstore.errors import PeerError
from dstore.format.cid import DAG_CBOR, RAW, cid_to_text, make_cid
from dstore.net import SyncPeerSet
from dstore.net.pointers import StalePointer

from treeutil import random_bytes, snapshot

TOKEN = "pins-client-token"
AGE_S = 60.0


def _json_error(answer: tuple[int, dict[str, str], bytes]) -> tuple[int, str]:
    status, headers, body = answer
    assert headers["content-type"].startswith("application/json"), headers
    return status, json.loads(body)["code"]


def _knowing_each_other(peers: list[PeerProcess], **options: object) -> None:
    """Restart every peer with the others as ``--peers`` (same homes and ports), plus ``options``."""
    for p in peers:
        p.stop()
        p.options["peers"] = ",".join(q.url for q in peers if q is not p)
        p.options.update(options)
        p.start()


def _env(peers: list[PeerProcess], home: Path | None = None) -> dict[str, str]:
    env = {"DSTORE_PEERS": ",".join(p.url for p in peers), "DSTORE_TOKEN": TOKEN}
    if home is not None:
        env["DSTORE_HOME"] = str(home)
    return env


def _pins(p: PeerProcess) -> dict[str, bool]:
    """Dataset ID -> resolved, as ``GET /pins`` lists them."""
    status, _, body = request(f"{p.url}/pins")
    assert status == 200, body
    return {x["dataset"]: x["resolved"] for x in json.loads(body)["pins"]}


def _pinned_shards(p: PeerProcess, dataset: str) -> set[str]:
    """The shards the peer's pin of ``dataset`` keeps (its pin file)."""
    return set(json.loads((p.home / "pins" / f"{dataset}.json").read_text())["shards"])


def _held(p: PeerProcess) -> set[str]:
    return {f.name for f in shard_files(p.home)}


def _gc(p: PeerProcess) -> dict:
    status, _, body = request(f"{p.url}/gc", "POST", b"", p.auth)
    assert status == 200, body
    return json.loads(body)


def _age_everything(p: PeerProcess) -> None:
    old = time.time() - AGE_S
    for f in shard_files(p.home):
        os.utime(f, (old, old))


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def _add(dstore, src: Path, env: dict[str, str]) -> str:
    return json.loads(dstore("add", src, "--shards", "2+1", "--json", "-q", env=env).out)["cid"]


@pytest.fixture
def three(tmp_path: Path) -> Iterator[list[PeerProcess]]:
    with running_peers(tmp_path, 3, token=TOKEN) as peers:
        _knowing_each_other(peers)
        yield peers


def test_add_pins_rm_unpins_and_gc_collects_only_the_removed_dataset(dstore, three, tmp_path) -> None:
    peers = three
    shared = random_bytes(2_500_000, 1)
    src_a = _tree(tmp_path / "a", {"a.bin": random_bytes(2_500_000, 2), "shared.bin": shared})
    src_b = _tree(tmp_path / "b", {"b.bin": random_bytes(300_000, 3), "shared.bin": shared})
    env = _env(peers)
    a, b = _add(dstore, src_a, env), _add(dstore, src_b, env)  # b reuses a's packs of shared.bin (dedup)

    for p in peers:  # 2+1 shards on three peers: each holds a shard of every pack
        assert _pins(p) == {a: True, b: True}
    needs_a = set().union(*(_pinned_shards(p, a) for p in peers))
    needs_b = set().union(*(_pinned_shards(p, b) for p in peers))
    only_a = needs_a - needs_b
    assert only_a and needs_a & needs_b  # a's own packs and metadata, and packs shared with b
    stray = os.urandom(5000)  # a block no pin keeps
    assert request(f"{peers[0].url}/shards/{block(stray)}", "PUT", stray, peers[0].auth)[0] == 201

    out = dstore("rm", a, env=env).out.splitlines()
    assert out == [a, "unpinned on 3 of 3 peers (0 had no pin)"]
    for p in peers:
        assert _pins(p) == {b: True}
    # Within the grace period (24 h by default) nothing unpinned is collected: not a's shards, not the stray.
    held_before = [_held(p) for p in peers]
    for p in peers:
        assert _gc(p)["deleted"] == 0
    assert [_held(p) for p in peers] == held_before
    assert block(stray) in held_before[0] and only_a <= set().union(*held_before)

    # Past a tiny grace, gc takes exactly what no remaining pin needs.
    for p in peers:
        p.stop()
        p.options["gc_grace"] = "1s"
        p.start()
        _age_everything(p)
        report = _gc(p)
        assert report["skipped"] is None and report["deleted"] > 0, report
        assert _held(p) <= needs_b
        assert not _held(p) & only_a
    assert needs_b <= set().union(*(_held(p) for p in peers))
    dstore("get", b, "-o", tmp_path / "out", env=_env(peers, tmp_path / "fresh"))
    assert snapshot(tmp_path / "out") == snapshot(src_b)

    # Again: no store and no peer knows it any more.
    again = dstore("rm", a, env=env, check=False)
    assert again.code == 3 and "no peer has it pinned" in again.err, again


def test_rm_reports_the_peers_that_did_not_unpin(dstore, tmp_path) -> None:
    src = _tree(tmp_path / "src", {"x.bin": random_bytes(400_000, 4)})
    with running_peers(tmp_path, 3, token=TOKEN) as peers:
        env = _env(peers)
        cid = _add(dstore, src, env)
        peers[2].stop()
        failed = dstore("rm", cid, env=env, check=False)
        assert failed.code == 9, failed
        assert failed.out.splitlines() == [cid, "unpinned on 2 of 3 peers (0 had no pin)"]
        lines = failed.err.strip().splitlines()
        assert len(lines) == 1 and peers[2].url in lines[0] and "Traceback" not in failed.err, failed.err
        # The local forget happened anyway: without peers the store no longer knows it.
        assert dstore("rm", cid, check=False).code == 3
        peers[2].start()
        assert _pins(peers[2]) == {cid: False}  # still pinned there (unresolved: it knows no --peers)
        done = dstore("rm", cid, env=env)
        assert done.out.splitlines() == [cid, "unpinned on 1 of 3 peers (2 had no pin)"]
        assert _pins(peers[2]) == {}


def test_repair_pins_on_the_peers_that_received_new_shards(dstore, tmp_path) -> None:
    src = _tree(tmp_path / "src", {"x.bin": random_bytes(1_500_000, 5), "y.bin": random_bytes(200_000, 6)})
    with running_peers(tmp_path, 4, token=TOKEN) as peers:
        _knowing_each_other(peers)
        first, spare = peers[:3], peers[3]
        cid = _add(dstore, src, _env(first))
        assert _pins(spare) == {} and _held(spare) == set()
        first[0].stop()
        rest = [*first[1:], spare]
        dstore("repair", cid, env=_env(rest))
        assert _held(spare), "repair placed nothing on the spare peer"
        assert _pins(spare) == {cid: True}
        assert _held(spare) <= _pinned_shards(spare, cid)
        for p in first[1:]:
            assert _pins(p) == {cid: True}
        dstore("get", cid, "-o", tmp_path / "out", env=_env(rest, tmp_path / "fresh"))
        assert snapshot(tmp_path / "out") == snapshot(src)


# -- the newest pointer stays ---------------------------------------------------------------------


def test_a_peer_keeps_the_newest_pointer(tmp_path) -> None:
    with running_peers(tmp_path, 1, token=TOKEN) as (p,):
        dataset = block(b"a dataset", codec=DAG_CBOR)
        url = f"{p.url}/datasets/{dataset}"

        def put(pointer: object) -> tuple[int, dict[str, str], bytes]:
            return request(url, "PUT", json.dumps(pointer).encode(), p.auth)

        def held() -> dict:
            return json.loads(request(url)[2])

        v5 = {"seq": 5, "locator": block(b"v5", codec=DAG_CBOR)}
        assert put(v5)[0] == 200
        assert _json_error(put({"seq": 4, "locator": block(b"v4", codec=DAG_CBOR)})) == (409, "stale_pointer")
        assert held() == v5
        assert _json_error(put({"seq": 5, "locator": block(b"other", codec=DAG_CBOR)})) == (409, "stale_pointer")
        assert put(v5)[0] == 200  # the same again: idempotent
        for seq in (None, "6", True, 6.0, -1, 1 << 63):
            bad = {"locator": block(b"v6", codec=DAG_CBOR)} | ({} if seq is None else {"seq": seq})
            assert _json_error(put(bad)) == (400, "bad_pointer"), seq
        assert held() == v5
        v6 = {"seq": 6, "locator": block(b"v6", codec=DAG_CBOR)}
        assert put(v6)[0] == 200 and held() == v6

        # A pointer written before pointers had a seq gives way to any new one.
        legacy = block(b"legacy", codec=DAG_CBOR)
        (p.home / "datasets" / f"{legacy}.json").write_text(json.dumps({"locator": v6["locator"]}))
        assert request(f"{p.url}/datasets/{legacy}", "PUT", json.dumps({**v5, "seq": 0}).encode(), p.auth)[0] == 200


def test_put_pointer_treats_409_as_a_newer_pointer(tmp_path) -> None:
    dataset = make_cid(RAW, b"dataset with a newer pointer somewhere")
    text = cid_to_text(dataset)
    newer = {"seq": 100, "locator": cid_to_text(make_cid(RAW, b"newer"))}
    older = {"seq": 50, "locator": cid_to_text(make_cid(RAW, b"older"))}
    with running_peers(tmp_path, 3, token=TOKEN) as peers, SyncPeerSet.connect([p.url for p in peers], TOKEN) as net:
        ranked = net.rank(dataset.to_bytes())
        assert request(f"{ranked[0].url}/datasets/{text}", "PUT", json.dumps(newer).encode(), peers[0].auth)[0] == 200
        # The first peer keeps its newer pointer; the copy is not moved down the ranking.
        assert net.put_pointer(dataset, older, 2) == [ranked[1].peer_id]
        assert net.get_pointer(dataset) == newer
        for peer in ranked[1:]:
            assert request(f"{peer.url}/datasets/{text}", "PUT", json.dumps(newer).encode(), peers[0].auth)[0] == 200
        with pytest.raises(StalePointer, match="newer") as info:
            net.put_pointer(dataset, older, 3)
        assert isinstance(info.value, PeerError) and info.value.status == 409
        assert net.get_pointer(dataset) == newer


def test_adding_a_dataset_the_peers_publish_under_a_newer_pointer(dstore, tmp_path) -> None:
    src = _tree(tmp_path / "src", {"x.bin": random_bytes(300_000, 7)})
    with running_peers(tmp_path, 3, token=TOKEN) as peers:
        _knowing_each_other(peers)
        cid = _add(dstore, src, _env(peers))
        url = f"{peers[0].url}/datasets/{cid}"
        current = json.loads(request(url)[2])
        newest = {**current, "seq": current["seq"] + 10**6}
        older = {**current, "seq": current["seq"] - 1, "locator": cid_to_text(make_cid(RAW, b"bogus"))}
        for p in peers:
            path = f"{p.url}/datasets/{cid}"
            assert request(path, "PUT", json.dumps(newest).encode(), p.auth)[0] == 200
            assert _json_error(request(path, "PUT", json.dumps(older).encode(), p.auth)) == (409, "stale_pointer")
        # The same dataset added again elsewhere: every peer answers 409 for its pointer, and that is fine.
        again = _add(dstore, src, _env(peers, tmp_path / "elsewhere"))
        assert again == cid
        for p in peers:
            assert json.loads(request(f"{p.url}/datasets/{cid}")[2]) == newest
            assert _pins(p) == {cid: True}
        dstore("get", cid, "-o", tmp_path / "out", env=_env(peers, tmp_path / "reader"))
        assert snapshot(tmp_path / "out") == snapshot(src)


# -- peer token files -------------------------------------------------------------------------------


def test_peer_token_file_and_env(tmp_path, monkeypatch) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    data = os.urandom(1000)
    p = PeerProcess(tmp_path / "peer", token=None, extra_args=["--token-file", secret])
    p.start()
    try:
        assert p.token_source == str(secret)
        assert "from-a-file" not in " ".join(p.command())  # what ps would show
        put = f"{p.url}/shards/{block(data)}"
        assert request(put, "PUT", data, {"Authorization": "Bearer from-a-file"})[0] == 201
    finally:
        p.kill()
    monkeypatch.setenv("DSTORE_TOKEN_FILE", str(secret))
    q = PeerProcess(tmp_path / "peer2", token=None)
    q.start()
    try:
        assert q.token_source == str(secret)
        assert request(f"{q.url}/shards/{block(data)}", "PUT", data, {"Authorization": "Bearer from-a-file"})[0] == 201
    finally:
        q.kill()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--token-file", "MISSING"], "does not exist"),
        (["--token-file", "SECRET", "--token", "t"], "not both"),
    ],
)
def test_peer_token_file_errors_are_one_line(tmp_path, args, message) -> None:
    (tmp_path / "SECRET").write_text("t\n")
    args = [str(tmp_path / a) if a in ("MISSING", "SECRET") else a for a in args]
    env = {k: v for k, v in os.environ.items() if k not in ("DSTORE_TOKEN", "DSTORE_TOKEN_FILE")}
    proc = subprocess.run(
        [sys.executable, "-m", "dstore.peer", "serve", "--home", str(tmp_path / "h"), "--listen", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
