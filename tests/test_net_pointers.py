"""Dataset pointers on real storage peers: every distinct valid pointer, newest first."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest
from peerutil import PeerProcess, running_peers

from dstore.errors import PeerError
from dstore.format.cid import RAW, cid_to_text, make_cid
from dstore.net import SyncPeerSet

pytestmark = pytest.mark.slow

TOKEN = "pointer-test-token"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[PeerProcess]]:
    with running_peers(tmp_path_factory.mktemp("peers"), 5, token=TOKEN) as peers:
        yield peers


@pytest.fixture
def peers(cluster: list[PeerProcess]) -> Iterator[list[PeerProcess]]:
    yield cluster
    for p in cluster:
        if not p.running:
            p.start()


@pytest.fixture
def net(peers: list[PeerProcess]) -> Iterator[SyncPeerSet]:
    with SyncPeerSet.connect([p.url for p in peers], TOKEN) as net:
        yield net


def put_on(net: SyncPeerSet, peer_id: str, dataset_text: str, pointer: dict) -> None:
    """Store ``pointer`` on that one peer only (as an older or a lying peer would hold it)."""
    peer = net.peer_by_id(peer_id)
    assert peer is not None
    request = urllib.request.Request(
        f"{peer.url}/datasets/{dataset_text}",
        data=json.dumps(pointer).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200


def pointer(seed: str, **extra: object) -> dict:
    return {"locator": cid_to_text(make_cid(RAW, seed.encode())), "metadata": {"k": 1}, **extra}


def has_metadata(obj: dict) -> bool:
    return "metadata" in obj


def test_every_distinct_valid_pointer_newest_first(net: SyncPeerSet) -> None:
    dataset = make_cid(RAW, b"dataset with versions")
    text = cid_to_text(dataset)
    ranked = [p.peer_id for p in net.rank(dataset.to_bytes())]
    assert len(ranked) == 5 and all(ranked)
    old, new = pointer("v1", seq=1), pointer("v2", seq=2)
    bare = {"seq": 3, "locator": cid_to_text(make_cid(RAW, b"x"))}
    assert net.put_pointer(dataset, old, 3) == ranked[:3]
    put_on(net, ranked[1], text, new)  # a newer version on one peer
    put_on(net, ranked[2], text, bare)  # one the caller's check refuses
    put_on(net, ranked[3], text, pointer("v0", seq=0))
    put_on(net, ranked[4], text, pointer("v0b", seq=0))

    got = net.get_pointers(dataset, validate=has_metadata)
    assert got == [new, old, pointer("v0", seq=0), pointer("v0b", seq=0)]  # ``old`` counts once; ties: ranking
    assert net.get_pointer(dataset, validate=has_metadata) == new  # the newest
    assert net.get_pointers(dataset) == [bare, new, old, pointer("v0", seq=0), pointer("v0b", seq=0)]
    assert net.get_pointers(dataset, validate=has_metadata, max_peers=1) == [old]  # only the first peer asked


def test_pointers_further_down_the_ranking_are_found(net: SyncPeerSet) -> None:
    dataset = make_cid(RAW, b"dataset placed when the peers were others")
    ranked = [p.peer_id for p in net.rank(dataset.to_bytes())]
    only = pointer("moved", seq=7)
    put_on(net, ranked[4], cid_to_text(dataset), only)
    # Asked two at a time: nothing in the first two batches, then the last peer has it.
    assert net.get_pointers(dataset, max_peers=2) == [only]
    assert net.get_pointer(dataset) == only


def test_no_pointer_is_an_empty_list_and_no_answer_an_error(net: SyncPeerSet, peers: list[PeerProcess]) -> None:
    dataset = make_cid(RAW, b"nobody has this dataset")
    assert net.get_pointers(dataset) == []
    assert net.get_pointer(dataset) is None
    for p in peers[:3]:
        p.kill()
    assert net.get_pointers(dataset) == []  # the two peers still up answered: none
    for p in peers[3:]:
        p.kill()
    with pytest.raises(PeerError, match="no peer answered.*unreachable") as info:
        net.get_pointers(dataset)
    assert info.value.exit_code == 9
    with pytest.raises(PeerError, match="no live peer"):
        net.get_pointers(dataset)  # now every peer is known to be down
