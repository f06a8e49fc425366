"""Where sealed packs' shards go: the local store's files, or storage peers.

A sink takes all k + m shards of one pack and returns a future that finishes
when every shard is durable where it went, with the peer ID that took each
shard (None for the local store). The packer commits index entries only after
that future and :meth:`ShardSink.sync` (shards, then index).

A sink also judges packs that the index says are already stored, for dedup:
:meth:`ShardSink.held` finds out how much of each is really still where this
sink stores, and :meth:`ShardSink.target` says what a pack it writes now would
withstand (docs/format.md, "When dedup reuses a pack").
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple, Protocol, cast

from dstore.format.cid import CID
from dstore.format.pack import PackRecord
from dstore.net.protocol import PeerClient
from dstore.store import Store

Shards = Sequence[tuple[CID, memoryview]]
Placement = list[str | None]


class Strength(NamedTuple):
    """What a pack withstands and still reads: lost shards, and lost holders (peers) each taking all it holds."""

    shard_losses: int  # -1 (or less): fewer than k shards are left already
    holder_losses: int

    def covers(self, other: Strength) -> bool:
        """At least as strong as ``other`` on both counts."""
        return self.shard_losses >= other.shard_losses and self.holder_losses >= other.holder_losses


class Held(NamedTuple):
    """A stored pack as found now: its strength and where its confirmed shards are (None = not confirmed)."""

    strength: Strength
    placement: Placement | None  # None for a pack of local shard files


def holder_losses_survived(shards_per_holder: Iterable[int], k: int) -> int:
    """How many holders may vanish, those holding most first, with k shards left; -1 if fewer than k now."""
    counts = sorted(shards_per_holder, reverse=True)
    left = sum(counts)
    if left < k:
        return -1
    lost = 0
    for c in counts:
        if left - c < k:
            break
        left -= c
        lost += 1
    return lost


class ShardSink(Protocol):
    def submit(self, pack_id: bytes, shards: Shards) -> Future[list[str | None]]:
        """Start storing one pack's shards."""

    def sync(self) -> None:
        """Make the shards of finished submissions durable (names included)."""

    def close(self) -> None: ...

    def held(self, packs: Sequence[tuple[PackRecord, Placement | None]]) -> list[Held | None]:
        """For each stored pack (record, placement from the index): what is left of it where this sink
        stores, or None if it lives elsewhere (on peers for a local sink, in local files for peers)."""

    def target(self, k: int, m: int) -> Strength:
        """The strength of a k+m pack this sink would write now."""


class LocalSink:
    """Shards as files of the local store, written by two threads."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="dstore-write")

    def submit(self, pack_id: bytes, shards: Shards) -> Future[list[str | None]]:
        return self._pool.submit(self._write, shards)

    def _write(self, shards: Shards) -> list[str | None]:
        for cid, part in shards:
            self.store.shards.write(cid.encode("base32"), (part,))
        return [None] * len(shards)

    def sync(self) -> None:
        self.store.shards.sync_dirs()

    def held(self, packs: Sequence[tuple[PackRecord, Placement | None]]) -> list[Held | None]:
        """Count the shard files present with the right size (a stat each, no hashing: scrub is verify's job)."""
        out: list[Held | None] = []
        for record, placement in packs:
            if placement is not None:
                out.append(None)
                continue
            present = sum(self._file_size(cid) == record.shard_size for cid in record.shards)
            # One machine: losing it loses every shard, so no holder can be lost.
            out.append(Held(Strength(present - record.k, 0), None))
        return out

    def _file_size(self, cid: CID) -> int | None:
        try:
            return os.stat(self.store.shards.path(cid.encode("base32"))).st_size
        except OSError:
            return None

    def target(self, k: int, m: int) -> Strength:
        return Strength(m, 0)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class PeerSink:
    """Shards uploaded to storage peers: shard i on the i-th peer of the pack's rendezvous ranking."""

    def __init__(self, peers: PeerClient) -> None:
        self.peers = peers  # a dstore.net SyncPeerSet

    def submit(self, pack_id: bytes, shards: Shards) -> Future[list[str | None]]:
        return cast("Future[list[str | None]]", self.peers.submit_put_pack(pack_id, list(shards)))

    def sync(self) -> None:
        """Peers fsync before they answer, so a finished upload is already durable."""

    def held(self, packs: Sequence[tuple[PackRecord, Placement | None]]) -> list[Held | None]:
        """Ask the recorded peers (one concurrent round for all packs) which shards they still hold.

        Only a live peer of the current set that answers ``HEAD`` with 200
        counts; the index's memory of where a shard went is not proof.
        """
        items: list[tuple[str, CID]] = []
        owners: list[tuple[int, int]] = []  # (pack, shard index) of each item
        for n, (record, placement) in enumerate(packs):
            for i, (cid, peer_id) in enumerate(zip(record.shards, placement or (), strict=False)):
                if isinstance(peer_id, str):
                    items.append((peer_id, cid))
                    owners.append((n, i))
        answers = self.peers.confirm_shards(items) if items else []
        found: list[Placement] = [[None] * len(record.shards) for record, _ in packs]
        for (n, i), (peer_id, _), ok in zip(owners, items, answers, strict=True):
            if ok:
                found[n][i] = peer_id
        out: list[Held | None] = []
        for (record, placement), holders in zip(packs, found, strict=True):
            if placement is None:
                out.append(None)
                continue
            per_peer = Counter(h for h in holders if h is not None)
            confirmed = sum(per_peer.values())
            strength = Strength(confirmed - record.k, holder_losses_survived(per_peer.values(), record.k))
            out.append(Held(strength, holders))
        return out

    def target(self, k: int, m: int) -> Strength:
        """Shard i goes to the i-th live peer of the ranking, round the ranking again if it is short."""
        live = len({p.peer_id for p in self.peers.peers if p.alive and p.peer_id})
        if live == 0:
            return Strength(m, 0)  # the upload will fail and say why
        per_peer = Counter(i % live for i in range(k + m))
        return Strength(m, holder_losses_survived(per_peer.values(), k))

    def close(self) -> None:
        """The peer set belongs to the caller."""
