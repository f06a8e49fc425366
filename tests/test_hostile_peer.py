"""The hostile peer of tests/hostile_peer.py lies as told, and a client reading through it survives."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest
from hostile_peer import hostile_peer
from peerutil import running_peers
from test_peer import block, request

from dstore.fetch.reader import DatasetReader
from dstore.fetch.verify import packs_of
from dstore.format.cid import DAG_CBOR
from dstore.store import Store

from treeutil import csv_like, random_bytes, snapshot

TOKEN = "hostile-test-token"


def test_hostile_peer_modes(tmp_path) -> None:
    data = b"the true bytes of a shard"
    cid = block(data)
    dataset = block(b"a dataset", codec=DAG_CBOR)
    lie = {"locator": block(b"nowhere", codec=DAG_CBOR), "metadata": {"size": 2**62}}
    with hostile_peer(tmp_path, mode="pointer", pointers={dataset: lie}, shards={cid: data}) as hp:
        status, _, body = request(hp.url + "/health")
        assert status == 200 and json.loads(body)["peer_id"] == hp.peer_id
        assert hp.peer_id.startswith("12D3KooW")
        assert request(f"{hp.url}/shards/{cid}")[2] == data
        assert json.loads(request(f"{hp.url}/datasets/{dataset}")[2]) == lie
        hp.configure(mode="wrong-bytes")
        wrong = request(f"{hp.url}/shards/{cid}")
        assert wrong[0] == 200 and len(wrong[2]) == len(data) and block(wrong[2]) != cid
        hp.configure(mode="huge", huge_bytes=64 * 1024)
        conn = http.client.HTTPConnection(*urlsplit(hp.url).netloc.split(":"), timeout=30)
        try:
            conn.request("GET", f"/shards/{cid}")
            resp = conn.getresponse()
            assert int(resp.getheader("Content-Length")) == 2**40  # the claim
            got = 0
            while chunk := resp.read(1 << 16):  # never trust the claim: read in bounded steps
                got += len(chunk)
            assert 0 < got < 2**20  # then it hung up
        finally:
            conn.close()
        hp.configure(mode="hang")
        conn = http.client.HTTPConnection(*urlsplit(hp.url).netloc.split(":"), timeout=0.5)
        try:
            conn.request("GET", f"/shards/{cid}")
            with pytest.raises(TimeoutError):
                conn.getresponse()
        finally:
            conn.close()
        assert request(hp.url + "/health")[0] == 200  # still ranked like a live peer
        assert hp.stats()["lies"] == 4
        assert hp.stats()["requests"]["GET /shards"] == 4


def _holds_a_data_shard(home, cid: str, peer_id: str) -> bool:
    """Whether the add placed a data shard (one a healthy get asks for) of some pack on ``peer_id``."""
    with Store(home) as store, DatasetReader(store, cid) as reader:
        for pack_id, record in packs_of(reader):
            holders = store.index.placement(pack_id.to_bytes()) or []
            if peer_id in holders[: record.k]:
                return True
    return False


def test_get_survives_a_peer_serving_wrong_shard_bytes(dstore, home, tmp_path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "table.csv").write_bytes(csv_like(1 << 20))
    with running_peers(tmp_path, 3, token=TOKEN) as peers, hostile_peer(tmp_path, mode="wrong-bytes") as hp:
        env = {"DSTORE_PEERS": ",".join([p.url for p in peers] + [hp.url]), "DSTORE_TOKEN": TOKEN}
        # The hostile peer takes its shards (and pointer) like any peer, then serves them altered. Placement
        # depends on the peers' random IDs: add new data until it holds a data shard, which the get must ask for.
        for seed in range(7, 47):
            (src / "big.bin").write_bytes(random_bytes(3 << 20, seed))
            cid = json.loads(dstore("add", src, "--shards", "2+1", "--json", env=env).out)["cid"]
            if _holds_a_data_shard(home, cid, hp.peer_id):
                break
        else:
            pytest.fail("the hostile peer never got a data shard")
        assert hp.stats()["requests"].get("PUT /shards", 0) >= 1
        fresh = {**env, "DSTORE_HOME": str(tmp_path / "fresh")}
        dstore("get", cid, "-o", tmp_path / "out", env=fresh)
        assert snapshot(tmp_path / "out") == snapshot(src)
        assert hp.stats()["lies"] >= 1, "the client never asked the hostile peer for a shard"


def test_an_unverified_pack_fetch_takes_a_liar_s_bytes_a_verified_one_refuses_them(tmp_path) -> None:
    """``fetch_pack(verify=False)`` (what ``dstore get`` asks first, checking every chunk itself) checks only
    lengths: a liar's bytes come back as they are; the verified fetch it falls back to refuses them and scores
    the liar down."""
    from dstore.errors import NotEnoughShards
    from dstore.format.cid import parse_cid
    from dstore.format.pack import PackRecord
    from dstore.net import SyncPeerSet

    data, parity = b"the true bytes of a data shard", b"the true bytes of a parity one"
    cids = (parse_cid(block(data)), parse_cid(block(parity)))
    record = PackRecord(k=1, m=1, size=len(data), shard_size=len(data), shards=cids)
    shards = {block(data): data, block(parity): parity}
    with hostile_peer(tmp_path, mode="wrong-bytes", shards=shards) as hp:
        with SyncPeerSet.connect([hp.url], None) as client:
            got = client.fetch_pack(record, cids[0].to_bytes(), [hp.peer_id, hp.peer_id], verify=False)
            assert got[0] == bytes(b ^ 0xFF for b in data) and client.peers[0].bad_bytes == 0
            with pytest.raises(NotEnoughShards):
                client.fetch_pack(record, cids[0].to_bytes(), [hp.peer_id, hp.peer_id])
            assert client.peers[0].bad_bytes >= 1
