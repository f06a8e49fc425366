"""Pins and gc (docs/http-api.md, "Pins and garbage collection") on real peers holding a real dataset."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from peerutil import running_peers
from test_peer import block, error_of, request, shard_files

from dstore.format.cid import DAG_CBOR

from treeutil import csv_like, random_bytes

TOKEN = "pin-token"
TWO_DAYS_S = 2 * 86400


def _age(path: Path) -> None:
    """Make a block look uploaded (and last confirmed) two days ago."""
    old = time.time() - TWO_DAYS_S
    os.utime(path, (old, old))


@pytest.fixture
def dataset_on_peers(dstore, tmp_path):
    """Three peers that know each other, holding one dataset added with 2+1 shards."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(random_bytes(2 << 20, 3))
    (src / "b.csv").write_bytes(csv_like(1 << 20))
    with running_peers(tmp_path, 3, token=TOKEN) as peers:
        for p in peers:  # restart each with the others as --peers (same ports)
            p.stop()
            p.options["peers"] = ",".join(q.url for q in peers if q is not p)
            p.start()
        env = {"DSTORE_PEERS": ",".join(p.url for p in peers), "DSTORE_TOKEN": TOKEN}
        cid = json.loads(dstore("add", src, "--shards", "2+1", "--json", env=env).out)["cid"]
        yield peers, cid


def _gc(p) -> dict:
    status, _, body = request(f"{p.url}/gc", "POST", b"", p.auth)
    assert status == 200, body
    return json.loads(body)


def test_gc_keeps_pinned_and_recently_confirmed_shards(dataset_on_peers) -> None:
    peers, cid = dataset_on_peers
    p = peers[0]
    pin_url = f"{p.url}/pins/{cid}"
    assert error_of(request(pin_url, "PUT", b"")) == (401, "unauthorized")
    assert request(pin_url, "DELETE", None, p.auth)[0] == 200  # `dstore add` pinned it: start over
    status, _, body = request(pin_url, "PUT", b"", p.auth)
    pin = json.loads(body)
    assert status == 201 and pin["resolved"] and pin["shards"] > 0, pin
    assert request(pin_url, "PUT", b"", p.auth)[0] == 200  # again: idempotent
    listed = json.loads(request(f"{p.url}/pins")[2])["pins"]
    assert [(x["dataset"], x["resolved"]) for x in listed] == [(cid, True)]

    held = {f.name for f in shard_files(p.home)}
    assert held, "placement gave peer 0 no shard of the dataset"
    for f in shard_files(p.home):
        _age(f)
    fresh, stale, headed, reput = (os.urandom(3000) for _ in range(4))
    for data in (fresh, stale, headed, reput):
        assert request(f"{p.url}/shards/{block(data)}", "PUT", data, p.auth)[0] == 201
    for data in (stale, headed, reput):
        _age(next(f for f in shard_files(p.home) if f.name == block(data)))
    # Dedup confirmations restart the grace: a HEAD, or a PUT of a block already held.
    assert request(f"{p.url}/shards/{block(headed)}", "HEAD")[0] == 200
    assert request(f"{p.url}/shards/{block(reput)}", "PUT", reput, p.auth)[0] == 200

    report = _gc(p)
    assert (report["deleted"], report["skipped"]) == (1, None), report
    left = {f.name for f in shard_files(p.home)}
    assert left == held | {block(fresh), block(headed), block(reput)}
    assert request(f"{p.url}/shards/{block(stale)}")[0] == 404

    # The pin survives a restart; once it is gone, its (old) shards go too.
    p.stop()
    p.start()
    assert json.loads(request(f"{p.url}/health")[2])["pins"] == 1
    assert error_of(request(pin_url, "DELETE")) == (401, "unauthorized")
    assert request(pin_url, "DELETE", None, p.auth)[0] == 200
    assert error_of(request(pin_url, "DELETE", None, p.auth)) == (404, "not_found")
    for f in shard_files(p.home):
        _age(f)
    assert _gc(p)["deleted"] == len(left)
    assert shard_files(p.home) == []
    assert json.loads(request(f"{p.url}/health")[2])["bytes_stored"] == 0


def test_an_unresolved_pin_stops_gc(dataset_on_peers) -> None:
    peers, _cid = dataset_on_peers
    p = peers[1]
    unknown = block(b"a dataset no peer has", codec=DAG_CBOR)
    status, _, body = request(f"{p.url}/pins/{unknown}", "PUT", b"", p.auth)
    answer = json.loads(body)
    assert status == 202 and not answer["resolved"] and answer["error"], answer
    before = {f.name for f in shard_files(p.home)}
    for f in shard_files(p.home):
        _age(f)
    report = _gc(p)
    assert report["deleted"] == 0 and unknown in report["skipped"]
    assert {f.name for f in shard_files(p.home)} == before
    assert error_of(request(f"{p.url}/gc", "POST", b"")) == (401, "unauthorized")


def test_background_gc_runs_unless_turned_off(tmp_path) -> None:
    old, new = os.urandom(2000), os.urandom(2000)
    with running_peers(tmp_path, 2, token=TOKEN, gc_interval=0.2) as (on, off):
        off.stop()
        off.options["no_gc"] = True  # gc is on by default
        off.start()
        for p in (on, off):
            for data in (old, new):
                assert request(f"{p.url}/shards/{block(data)}", "PUT", data, p.auth)[0] == 201
            _age(next(f for f in shard_files(p.home) if f.name == block(old)))
        deadline = time.monotonic() + 30
        # GET, not HEAD: a HEAD confirms the block and so restarts its grace
        while request(f"{on.url}/shards/{block(old)}")[0] != 404 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [f.name for f in shard_files(on.home)] == [block(new)]
        # with --no-gc, nothing was collected in the background meanwhile
        assert sorted(f.name for f in shard_files(off.home)) == sorted([block(old), block(new)])
