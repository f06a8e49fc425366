"""dstore.net against real storage peer processes: placement, verified hedged fetches, failures."""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from peerutil import PeerProcess, running_peers

from dstore import _native
from dstore.errors import NotEnoughShards, NotFound, PeerError
from dstore.format.cid import CID, RAW, cid_from_digest, cid_to_text, make_cid
from dstore.format.pack import PackRecord, shard_size
from dstore.net import PeerSet, SyncPeerSet, reads

pytestmark = pytest.mark.slow

TOKEN = "net-test-token"
K, M = 10, 4


class Pack:
    """A real erasure-coded pack: data, shards, record, rendezvous key."""

    def __init__(self, seed: int, k: int = K, m: int = M, size: int = 10 * 64 * 1024 - 100) -> None:
        self.data = random.Random(seed).randbytes(size)
        ss = shard_size(size, k)
        padded = self.data + bytes(k * ss - size)
        parity, digests = _native.encode_pack(padded, k, m)
        self.shards = [padded[i * ss : (i + 1) * ss] for i in range(k)] + [
            parity[j * ss : (j + 1) * ss] for j in range(m)
        ]
        cids = [cid_from_digest(RAW, digests[32 * i : 32 * i + 32]) for i in range(k + m)]
        self.record = PackRecord(k, m, size, ss, tuple(cids))
        self.key = self.record.cid().to_bytes()

    @property
    def pairs(self) -> list[tuple[CID, bytes]]:
        return list(zip(self.record.shards, self.shards, strict=True))

    def check(self, got: list[bytes | None]) -> None:
        """At least k entries, each exactly its shard, and the data rebuilds from them."""
        present = [i for i, s in enumerate(got) if s is not None]
        assert len(got) == self.record.k + self.record.m and len(present) >= self.record.k
        for i in present:
            assert got[i] == self.shards[i]
        data = b"".join(_native.reconstruct(got, self.record.k, self.record.m))
        assert data[: self.record.size] == self.data


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[PeerProcess]]:
    """14 peers, plus a 15th with too little room for any shard (``cluster[14]``)."""
    tmp = tmp_path_factory.mktemp("peers")
    with running_peers(tmp, 14, token=TOKEN) as peers:
        full = PeerProcess(tmp / "full", token=TOKEN, capacity="1K").start()
        try:
            yield [*peers, full]
        finally:
            full.kill()


@pytest.fixture
def peers(cluster: list[PeerProcess]) -> Iterator[list[PeerProcess]]:
    """The 14 normal peers, all running again after the test whatever it killed."""
    yield cluster[:14]
    for p in cluster:
        if not p.running:
            p.start()


@pytest.fixture
def net(peers: list[PeerProcess]) -> Iterator[SyncPeerSet]:
    with SyncPeerSet.connect([p.url for p in peers], TOKEN) as net:
        yield net


def by_id(peers: list[PeerProcess], peer_id: str) -> PeerProcess:
    return next(p for p in peers if p.peer_id == peer_id)


def test_put_and_fetch_a_pack_over_fourteen_peers(net: SyncPeerSet, peers: list[PeerProcess]) -> None:
    pack = Pack(1)
    assert {p.peer_id for p in net.peers} == {p.peer_id for p in peers}
    placed = net.put_pack(pack.key, pack.pairs)
    assert placed == [p.peer_id for p in net.rank(pack.key)]  # shard i on the i-th ranked peer, all distinct
    for i, pid in enumerate(placed):
        assert list((by_id(peers, pid).home / "shards").rglob(cid_to_text(pack.record.shards[i])))
    got = net.fetch_pack(pack.record, pack.key, placed)
    assert all(s is not None for s in got[: pack.record.k])  # healthy peers: the data shards win
    pack.check(got)
    pack.check(net.fetch_pack(pack.record, pack.key))  # without hints: by the ranking
    assert net.put_pack(pack.key, pack.pairs) == placed  # idempotent (200 from each peer)


def test_fetch_survives_four_killed_peers(net: SyncPeerSet, peers: list[PeerProcess]) -> None:
    pack = Pack(2)
    placed = net.put_pack(pack.key, pack.pairs)
    for pid in placed[:4]:  # the holders of data shards 0..3
        by_id(peers, pid).kill()
    got = net.fetch_pack(pack.record, pack.key, placed)  # the same set: peers die under it
    assert got[:4] == [None] * 4
    pack.check(got)
    assert sum(not p.alive for p in net.peers) == 4
    with SyncPeerSet.connect([p.url for p in peers], TOKEN, timeout_s=2.0) as fresh:  # dead at connect
        assert len(fresh.peerset.alive) == 10
        pack.check(fresh.fetch_pack(pack.record, pack.key, placed))
        pack.check(fresh.fetch_pack(pack.record, pack.key))  # no hints, ranking shifted: found by asking
        # New packs go to the live peers only.
        other = Pack(3)
        assert set(fresh.put_pack(other.key, other.pairs)) <= {p.peer_id for p in peers if p.running}
    # Back up: peers marked down are asked again now and then (here: at once), in the background.
    for p in peers:
        if not p.running:
            p.start()
    net.peerset.health.revived_at = -1e9
    pack.check(net.fetch_pack(pack.record, pack.key, placed))
    deadline = time.monotonic() + 5
    while not all(p.alive for p in net.peers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(p.alive for p in net.peers)


def test_too_many_dead_peers_raise_not_enough_shards(net: SyncPeerSet, peers: list[PeerProcess]) -> None:
    pack = Pack(4)
    placed = net.put_pack(pack.key, pack.pairs)
    for pid in placed[3:8]:  # five shards gone, m = 4
        by_id(peers, pid).kill()
    with pytest.raises(NotEnoughShards) as info:
        net.fetch_pack(pack.record, pack.key, placed)
    message = str(info.value)
    assert cid_to_text(pack.record.cid()) in message and "9 of the 10" in message
    assert sorted(info.value.failures) == [3, 4, 5, 6, 7]  # type: ignore[attr-defined]
    assert "unreachable" in message and "not found" in message
    # Refused connections, not waits: the five holders are marked down and nothing timed out.
    assert "timed out" not in message
    assert {p.peer_id for p in net.peers if not p.alive} == set(placed[3:8])
    assert info.value.exit_code == 7


def test_corrupted_shard_is_discarded_and_its_peer_scored_down(net: SyncPeerSet, peers: list[PeerProcess]) -> None:
    pack = Pack(5)
    placed = net.put_pack(pack.key, pack.pairs)
    liar = by_id(peers, placed[0])
    (path,) = (liar.home / "shards").rglob(cid_to_text(pack.record.shards[0]))
    path.write_bytes(bytes(len(pack.shards[0])))  # same size, wrong bytes
    got = net.fetch_pack(pack.record, pack.key, placed)
    assert got[0] is None  # never used
    pack.check(got)
    peer = net.peerset.peer_by_id(liar.peer_id)
    assert peer is not None and peer.bad_bytes == 1
    assert peer.cost_s > max(p.cost_s for p in net.peers if p is not peer and p.alive)
    # The next read of another pack whose data shard sits on the liar starts with parity instead.
    other = Pack(6)
    where = net.put_pack(other.key, other.pairs)
    cands = [[net.peerset.peer_by_id(pid)] for pid in where]
    order = net.peerset.fetcher.shard_order(cands, K)  # type: ignore[arg-type]
    assert order[-1] == where.index(liar.peer_id)


PROXY = r"""
import asyncio, sys
import aiohttp
from aiohttp import web

UPSTREAM, DELAY_S, FAILURES = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
SKIP = {"host", "content-length", "transfer-encoding", "connection"}
failed = 0


async def main():
    async with aiohttp.ClientSession() as session:
        async def handle(request):
            global failed
            if request.method == "GET" and request.path.startswith("/shards/"):
                if failed < FAILURES:
                    failed += 1
                    return web.json_response({"error": "flaky", "code": "test"}, status=503)
                # Wait DELAY_S, unless the client hangs up first: then say so on stdout.
                waited = 0.0
                while waited < DELAY_S:
                    if request.transport is None or request.transport.is_closing():
                        print("abandoned", request.path, flush=True)
                        return web.Response(status=499)
                    await asyncio.sleep(0.02)
                    waited += 0.02
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in SKIP}
            async with session.request(
                request.method, UPSTREAM + request.path_qs, data=body or None, headers=headers
            ) as r:
                data = await r.read()
                keep = {k: v for k, v in r.headers.items() if k.lower() in ("content-type", "etag")}
                return web.Response(status=r.status, body=data, headers=keep)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()


asyncio.run(main())
"""


class Proxy:
    """The proxy process: its stdout reports requests the client abandoned."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    def next_line(self, hang_guard_s: float = 60.0) -> str:
        """The proxy's next line of output (the guard only stops a broken test from hanging)."""
        assert self.process.stdout is not None
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(self.process.stdout.readline).result(timeout=hang_guard_s).strip()


@contextmanager
def proxied(
    peers: list[PeerProcess], target: PeerProcess, delay_s: float, failures: int = 0
) -> Iterator[tuple[SyncPeerSet, Proxy]]:
    """A SyncPeerSet over ``peers`` that reaches ``target`` through a proxy answering GET /shards/…
    with 503 ``failures`` times, then after ``delay_s`` (or as soon as the client hangs up)."""
    args = [sys.executable, "-c", PROXY, target.url, str(delay_s), str(failures)]
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True) as process:
        try:
            proxy = Proxy(process)
            proxy_url = f"http://127.0.0.1:{int(proxy.next_line())}"
            with SyncPeerSet.connect([proxy_url if p is target else p.url for p in peers], TOKEN) as net:
                assert net.peerset.peer_by_id(target.peer_id).url == proxy_url  # type: ignore[union-attr]
                yield net, proxy
        finally:
            process.kill()


def test_a_slow_peer_is_hedged_around(net: SyncPeerSet, peers: list[PeerProcess]) -> None:
    pack = Pack(7)
    placed = net.put_pack(pack.key, pack.pairs)
    slow = by_id(peers, placed[0])  # holds data shard 0
    shard0 = f"/shards/{cid_to_text(pack.record.shards[0])}"
    # Far longer than any read timeout: the read can only succeed by hedging around it.
    with proxied(peers, slow, delay_s=600.0) as (via, proxy):
        got = via.fetch_pack(pack.record, pack.key, placed)
        assert got[0] is None  # shard 0 never came: parity stood in
        pack.check(got)
        # Once k shards were in, the request to the slow peer was cancelled: the proxy saw the client hang up.
        assert proxy.next_line() == f"abandoned {shard0}"
        slow_peer = via.peerset.peer_by_id(slow.peer_id)
        assert slow_peer is not None and slow_peer.latency_ewma_s is not None
        assert slow_peer.errors == 0 and slow_peer.alive  # abandoned, not timed out or failed
        # The abandoned request counted against it: now the slowest by far.
        others = [p.latency_ewma_s or 0 for p in via.peers if p is not slow_peer]
        assert slow_peer.latency_ewma_s > max(0.05, max(others))
        pack.check(via.fetch_pack(pack.record, pack.key, placed))  # and again, with the slow peer known


def test_transient_errors_are_retried_with_backoff(net: SyncPeerSet, peers: list[PeerProcess]) -> None:
    pack = Pack(9)
    placed = net.put_pack(pack.key, pack.pairs)
    flaky = by_id(peers, placed[0])
    with proxied(peers, flaky, delay_s=0.0, failures=2) as (via, _):
        got = via.fetch_pack(pack.record, pack.key, placed, hedge_after_s=10.0)
        assert got[0] == pack.shards[0]  # two 503s, then the third try
        pack.check(got)
        peer = via.peerset.peer_by_id(flaky.peer_id)
        assert peer is not None and peer.errors == 2 and peer.alive and peer.bad_bytes == 0


def test_a_full_peer_makes_put_place_shards_elsewhere(cluster: list[PeerProcess]) -> None:
    full = cluster[14]
    urls = [p.url for p in cluster[:4]] + [full.url]
    with SyncPeerSet.connect(urls, TOKEN) as net:
        seed = next(s for s in range(100, 200) if full.peer_id in [p.peer_id for p in net.rank(Pack(s, 2, 1).key)[:3]])
        pack = Pack(seed, 2, 1)
        ranking = [p.peer_id for p in net.rank(pack.key)]
        placed = net.put_pack(pack.key, pack.pairs)
        assert full.peer_id not in placed and len(set(placed)) == 3
        assert placed[ranking.index(full.peer_id)] == ranking[3]  # the next peer not yet used for the pack
        assert net.peerset.peer_by_id(full.peer_id).full  # type: ignore[union-attr]
        pack.check(net.fetch_pack(pack.record, pack.key, placed))
        # Blocks likewise; and with only full peers nothing can be placed: PeerError naming the shard.
        block = b"metadata block" * 1000
        cid = make_cid(RAW, block)
        took = net.put_block(pack.key, cid, block, 5)
        assert full.peer_id not in took and len(took) == 4
    with SyncPeerSet.connect([full.url], TOKEN) as only_full:
        with pytest.raises(PeerError, match=r"shard 0 \(b\w+\) could not be placed.*full"):
            only_full.put_pack(pack.key, pack.pairs[:1])


def test_writes_without_the_token_are_refused(peers: list[PeerProcess]) -> None:
    pack = Pack(8, 2, 1)
    for token in (None, "wrong"):
        with SyncPeerSet.connect([p.url for p in peers[:3]], token) as net:
            with pytest.raises(PeerError) as info:
                net.put_pack(pack.key, pack.pairs)
            assert info.value.status == 401 and info.value.exit_code == 9
            assert "DSTORE_TOKEN" in str(info.value)
            with pytest.raises(PeerError, match="401"):
                net.put_block(b"k", pack.record.shards[0], pack.shards[0], 2)


def test_blocks_and_pointers(net: SyncPeerSet, peers: list[PeerProcess]) -> None:
    block = b"a small metadata block"
    cid = make_cid(RAW, block)
    took = net.put_block(b"dataset-key", cid, block, 3)
    assert took == [p.peer_id for p in net.rank(b"dataset-key")[:3]]
    assert net.get_block(cid, b"dataset-key") == block
    assert net.get_block(cid, b"another key entirely") == block  # found by asking around
    assert net.head(net.peerset.peer_by_id(took[0]), cid)  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        net.get_block(make_cid(RAW, b"nobody has this"), b"k")
    liar = by_id(peers, took[0])
    (path,) = (liar.home / "shards").rglob(cid_to_text(cid))
    path.write_bytes(b"A" * len(block))
    assert net.get_block(cid, b"dataset-key") == block  # verified: the bad copy is skipped
    assert net.peerset.peer_by_id(liar.peer_id).bad_bytes == 1  # type: ignore[union-attr]

    dataset = make_cid(RAW, b"dataset id")
    pointer = {"seq": 1, "locator": cid_to_text(make_cid(RAW, b"locator")), "metadata": {"k": 1}}
    assert net.get_pointer(dataset) is None
    took = net.put_pointer(dataset, pointer, 3)
    assert took == [p.peer_id for p in net.rank(dataset.to_bytes())[:3]]
    assert net.get_pointer(dataset) == pointer
    by_id(peers, took[0]).kill()
    assert net.get_pointer(dataset) == pointer  # from the next holder
    with pytest.raises(PeerError, match="400"):
        net.put_pointer(dataset, {"no": "locator"}, 3)


def test_async_api_and_overlapped_uploads(peers: list[PeerProcess]) -> None:
    packs = [Pack(20 + i) for i in range(4)]

    async def go() -> None:
        async with await PeerSet.connect([p.url for p in peers], TOKEN) as net:
            views = [[(cid, memoryview(data)) for cid, data in p.pairs] for p in packs]  # buffers, not bytes
            placed = await asyncio.gather(
                *(net.put_pack(p.key, v, concurrency=4) for p, v in zip(packs, views, strict=True))
            )
            got = await asyncio.gather(
                *(net.fetch_pack(p.record, p.key, h) for p, h in zip(packs, placed, strict=True))
            )
            for p, g in zip(packs, got, strict=True):
                p.check(g)

    asyncio.run(go())
    with SyncPeerSet.connect([p.url for p in peers], TOKEN) as net:
        futures = [net.submit_put_pack(p.key, p.pairs) for p in packs]
        placed = [f.result(timeout=30) for f in futures]
        for p, h in zip(packs, placed, strict=True):
            p.check(net.fetch_pack(p.record, p.key, h))


def test_one_peer_under_two_addresses_is_ranked_once(peers: list[PeerProcess]) -> None:
    one = peers[0]
    alias = one.url.replace("127.0.0.1", "localhost")
    with SyncPeerSet.connect([one.url, alias, one.url + "/", peers[1].url], TOKEN) as net:
        assert len(net.peers) == 3 and sum(p.alive for p in net.peers) == 2
        assert sorted(p.peer_id for p in net.rank(b"k")) == sorted([one.peer_id, peers[1].peer_id])


def test_confirm_shards_asks_each_holder_and_remembers_yes(
    net: SyncPeerSet, peers: list[PeerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    pack = Pack(30)
    placed = net.put_pack(pack.key, pack.pairs)
    items = list(zip(placed, pack.record.shards, strict=True))
    assert net.confirm_shards(items) == [True] * len(items)
    # Another peer's shard, an unknown peer ID, and repeated pairs (answered in order).
    wrong = [(placed[1], pack.record.shards[0]), ("12D3KooWnobody", pack.record.shards[0])]
    assert net.confirm_shards([*wrong, items[0], items[0]]) == [False, False, True, True]
    assert net.confirm_shards([]) == []
    # A holder loses its copy: the cached "yes" still stands, until it expires.
    lost = by_id(peers, placed[2])
    (path,) = (lost.home / "shards").rglob(cid_to_text(pack.record.shards[2]))
    path.unlink()
    assert net.confirm_shards(items[2:3]) == [True]
    monkeypatch.setattr(reads, "CONFIRM_CACHE_S", 0.0)
    assert net.confirm_shards(items) == [i != 2 for i in range(len(items))]
    monkeypatch.undo()
    # A holder that is down is not in the live set: False, cached or not.
    by_id(peers, placed[3]).kill()
    net.refresh()
    assert net.confirm_shards(items[3:5]) == [False, True]
