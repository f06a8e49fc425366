"""dstore.net without a network: rendezvous ranking, peer scores, configuration."""

from __future__ import annotations

import asyncio
import inspect
import random
import subprocess
import sys
from collections import Counter

import blake3
import pytest

from dstore.errors import UsageError
from dstore.net import Peer, PeerSet, hrw_rank, hrw_weight, normalize_url, peers_from_env, token_from_env


def peers(n: int) -> list[Peer]:
    return [Peer(f"http://127.0.0.1:{9000 + i}", peer_id=f"12D3KooWpeer{i:03d}", alive=True) for i in range(n)]


def keys(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(36) for _ in range(n)]


def test_weight_is_blake3_of_key_then_peer_id_as_big_endian_integer() -> None:
    key, pid = b"\x01\x71\x1e\x20" + bytes(range(32)), "12D3KooWExample"
    expected = int.from_bytes(blake3.blake3(key + pid.encode()).digest(), "big")
    assert hrw_weight(key, pid) == expected
    assert Peer("http://x:1", pid, alive=True).weight(key) == expected
    assert hrw_rank(key, ["b", "a", "c"]) == sorted(["a", "b", "c"], key=lambda p: hrw_weight(key, p), reverse=True)


def test_rank_is_deterministic_distinct_and_independent_of_order_and_address() -> None:
    ps = peers(12)
    shuffled = ps[:]
    random.Random(7).shuffle(shuffled)
    moved = [Peer(f"http://10.0.0.{i}:80", p.peer_id, alive=True) for i, p in enumerate(reversed(ps))]
    for key in keys(50):
        ranking = [p.peer_id for p in PeerSet(ps, None).rank(key)]
        assert len(ranking) == len(set(ranking)) == 12
        assert ranking == [p.peer_id for p in PeerSet(shuffled, None).rank(key)]
        assert ranking == [p.peer_id for p in PeerSet(moved, None).rank(key)]
        assert ranking == hrw_rank(key, [p.peer_id for p in ps])
        weights = [hrw_weight(key, pid) for pid in ranking]
        assert weights == sorted(weights, reverse=True)


def test_rank_keeps_only_live_peers_with_known_ids() -> None:
    ps = peers(5)
    ps[1].alive = False
    ps.append(Peer("http://127.0.0.1:1"))  # never answered: no peer ID
    ranking = PeerSet(ps, None).rank(b"key")
    assert {p.peer_id for p in ranking} == {p.peer_id for p in ps[:5]} - {ps[1].peer_id}


def test_removing_a_peer_moves_only_what_it_held() -> None:
    """The HRW property: without peer X, every key's ranking is the old one with X left out."""
    ps = peers(10)
    full = PeerSet(ps, None)
    for gone in ps:
        rest = PeerSet([p for p in ps if p is not gone], None)
        for key in keys(100):
            before = full.rank(key)
            assert rest.rank(key) == [p for p in before if p is not gone]
    # So a pack of k + m = 4 shards on 10 peers loses at most the one shard X held.
    key = keys(1)[0]
    placed = full.rank(key)[:4]
    after = PeerSet(ps[:3] + ps[4:], None).rank(key)[:4]
    assert len(set(placed) - set(after)) <= 1


def test_first_places_spread_evenly() -> None:
    ps = peers(10)
    counts = Counter(PeerSet(ps, None).rank(key)[0].peer_id for key in keys(3000))
    assert len(counts) == 10
    assert all(200 <= c <= 400 for c in counts.values()), counts


def test_scores_prefer_fast_healthy_peers_and_shun_bad_bytes() -> None:
    fast, slow, flaky, liar, dead = peers(5)
    fast.observe_latency(0.005)
    slow.observe_latency(0.5)
    flaky.observe_latency(0.005)
    for _ in range(5):
        flaky.record_error()
    liar.observe_latency(0.001)
    liar.record_bad_bytes()
    dead.record_unreachable()
    assert fast.score > flaky.score > 0
    assert fast.score > slow.score > liar.score > dead.score == 0.0
    assert sorted([liar, slow, fast, dead, flaky], key=lambda p: p.cost_s)[0] is fast
    assert sorted([liar, slow, fast, dead, flaky], key=lambda p: p.cost_s)[-2:] == [liar, dead]
    for _ in range(30):  # errors fade with good answers
        flaky.record_ok()
    assert flaky.score > 0.9 * fast.score


def test_abandoned_requests_raise_the_latency_estimate() -> None:
    p = peers(1)[0]
    p.observe_latency(0.01)
    p.observe_slow(0.005)  # faster than expected: tells nothing
    assert p.latency_ewma_s == pytest.approx(0.01)
    p.observe_slow(1.0)
    assert p.latency_ewma_s > 0.1


def test_shard_order_puts_data_shards_first_unless_their_peer_is_bad() -> None:
    ps = peers(6)
    net = PeerSet(ps, None)
    cands = [[p] for p in ps]  # shard i on peer i; k = 4, m = 2
    assert net.fetcher.shard_order(cands, 4) == [0, 1, 2, 3, 4, 5]
    ps[1].record_bad_bytes()
    ps[2].observe_latency(5.0)
    assert net.fetcher.shard_order(cands, 4) == [0, 3, 4, 5, 2, 1]
    ps[0].record_unreachable()
    assert net.fetcher.shard_order([[p for p in c if p.alive] for c in cands], 4)[-1] == 0


def test_connect_keeps_unreachable_peers_not_alive() -> None:
    async def go() -> None:
        net = await PeerSet.connect(["127.0.0.1:9", "http://127.0.0.1:9/"], None, timeout_s=1.0)
        try:
            assert [p.url for p in net.peers] == ["http://127.0.0.1:9"]
            assert not net.peers[0].alive and net.rank(b"k") == []
        finally:
            await net.close()

    asyncio.run(go())


def test_peers_and_token_from_cli_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSTORE_PEERS", "http://a:1, b:2/,http://a:1")
    monkeypatch.setenv("DSTORE_TOKEN", "env-token")
    assert peers_from_env(None) == ["http://a:1", "http://b:2"]
    assert peers_from_env("https://c:3/prefix/") == ["https://c:3/prefix"]
    assert peers_from_env("") == []
    assert token_from_env(None) == "env-token"
    assert token_from_env("cli") == "cli"
    monkeypatch.delenv("DSTORE_PEERS")
    monkeypatch.delenv("DSTORE_TOKEN")
    assert peers_from_env(None) == [] and token_from_env(None) is None
    for bad in ["ftp://a:1", "http://", "http://a:99999", "http://a:1/?x=1"]:
        with pytest.raises(UsageError):
            normalize_url(bad)


def test_the_peer_client_protocol_is_cheap_to_import_and_sync_peer_set_implements_it() -> None:
    # ingest and fetch import the protocol for their type hints: that must not load the HTTP client.
    code = "import sys, dstore.net.protocol; print('aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    from dstore.net.protocol import PeerClient
    from dstore.net.sync import SyncPeerSet

    wanted = [n for n in vars(PeerClient) if not n.startswith("_")]
    assert {"confirm_shards", "get_pointers", "fetch_pack", "put_pack"} <= set(wanted)
    for name in wanted:
        ours, theirs = getattr(SyncPeerSet, name), getattr(PeerClient, name)
        if isinstance(theirs, property):
            assert isinstance(ours, property), name
        else:
            shape = [(p.name, p.kind) for p in inspect.signature(ours).parameters.values()]
            assert shape == [(p.name, p.kind) for p in inspect.signature(theirs).parameters.values()], name
