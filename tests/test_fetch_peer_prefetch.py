"""PeerShards.prefetch: a write batch's packs fetched from real peers at once, each then mapped as if fetched alone."""

from __future__ import annotations

import random

import pytest
from peerutil import running_peers

from dstore import _native
from dstore.errors import NotEnoughShards
from dstore.fetch.packs import PeerShards
from dstore.format.cid import RAW, cid_from_digest
from dstore.format.pack import PackRecord, shard_size
from dstore.net import SyncPeerSet

pytestmark = pytest.mark.slow

TOKEN = "prefetch-token"
K, M = 3, 2
AHEAD = 8  # packs' worth of data shards the source may fetch ahead of use


def make_pack(seed: int, size: int = 3 * 40_000 - 7) -> tuple[PackRecord, bytes, list[bytes], bytes]:
    data = random.Random(seed).randbytes(size)
    ss = shard_size(size, K)
    padded = data + bytes(K * ss - size)
    parity, digests = _native.encode_pack(padded, K, M)
    shards = [padded[i * ss : (i + 1) * ss] for i in range(K)] + [parity[j * ss : (j + 1) * ss] for j in range(M)]
    record = PackRecord(
        K, M, size, ss, tuple(cid_from_digest(RAW, digests[32 * i : 32 * i + 32]) for i in range(K + M))
    )
    return record, record.cid().to_bytes(), shards, data


def test_prefetched_packs_map_to_their_data_shards_and_failures_surface_on_map(tmp_path) -> None:
    packs = [make_pack(s) for s in range(AHEAD + 2)]
    never_placed = make_pack(999)
    with running_peers(tmp_path, 5, token=TOKEN) as peers, SyncPeerSet.connect([p.url for p in peers], TOKEN) as net:
        hints = {key: net.put_pack(key, list(zip(rec.shards, shards, strict=True))) for rec, key, shards, _ in packs}
        rec0 = packs[0][0]
        source = PeerShards(net, hints, prefetch_bytes=AHEAD * rec0.k * rec0.shard_size)
        source.prefetch([(key, rec) for rec, key, _, _ in [never_placed, *packs]])
        # Bounded by bytes: no more than AHEAD packs' data shards are fetched ahead of use.
        assert len(source._pending) == AHEAD  # noqa: SLF001
        for rec, key, shards, data in packs:  # the last three were not prefetched: fetched on map
            parts = source.map(key, rec)
            assert [bytes(p) for p in parts] == shards[:K]
            assert b"".join(bytes(p) for p in parts)[: rec.size] == data
        with pytest.raises(NotEnoughShards):  # its prefetch failed: the error comes out of map, as without prefetch
            source.map(never_placed[1], never_placed[0])
        # Data shards lost: the pack's parts are the rebuilt data shards, end to end.
        rec, key, shards, data = packs[0]
        peers_by_id = {p.peer_id: p for p in peers}
        for holder in set(hints[key][:2]):
            peers_by_id[holder].kill()
        net.refresh()
        parts = source.map(key, rec)
        assert b"".join(bytes(p) for p in parts)[: rec.size] == data
