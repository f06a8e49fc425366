"""A gateway peer reading through a peer that lies still sends only verified bytes."""

from __future__ import annotations

import json

from hostile_peer import hostile_peer
from peerutil import running_peers
from test_gateway import car_blocks, fetch, read_tree

from dstore.format import cbor

from treeutil import csv_like, random_bytes

TOKEN = "gateway-hostile-token"


def test_gateway_survives_a_peer_serving_wrong_shard_bytes(dstore, tmp_path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    files = {"big.bin": random_bytes(2 << 20, 11), "table.csv": csv_like(600_000)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    with running_peers(tmp_path, 3, token=TOKEN) as peers, hostile_peer(tmp_path, mode="wrong-bytes") as hp:
        holders, gateway = peers[:2], peers[2]
        env = {"DSTORE_PEERS": ",".join([p.url for p in holders] + [hp.url]), "DSTORE_TOKEN": TOKEN}
        # The hostile peer takes its shards like any peer, then serves them altered.
        dataset = json.loads(dstore("add", src, "--shards", "2+1", "--json", env=env).out)["cid"]
        assert hp.stats()["requests"].get("PUT /shards", 0) >= 1
        gateway.stop()
        gateway.options["peers"] = ",".join([p.url for p in holders] + [hp.url])
        gateway.start()
        status, _, pointer = fetch(f"{holders[0].url}/datasets/{dataset}")
        assert status == 200
        auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        assert fetch(f"{gateway.url}/datasets/{dataset}", "PUT", auth, pointer)[0] == 200

        for name, data in files.items():
            status, _, body = fetch(f"{gateway.url}/ipfs/{dataset}/{name}")
            assert status == 200 and body == data
        status, _, body = fetch(f"{gateway.url}/ipfs/{dataset}?format=car")
        assert status == 200
        roots, blocks, order = car_blocks(body)  # every block verified
        root = cbor.decode(blocks[order[0].to_bytes()])["root"]
        assert read_tree(lambda c: blocks[c.to_bytes()], root) == files
        assert hp.stats()["lies"] >= 1, "the gateway never asked the hostile peer for a shard"
