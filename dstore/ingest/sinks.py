"""Where sealed packs' shards go: the local store's files, or storage peers.

A sink takes all k + m shards of one pack and returns a future that finishes
when every shard is durable where it went, with the peer ID that took each
shard (None for the local store). The packer commits index entries only after
that future and :meth:`ShardSink.sync` (shards, then index).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, cast

from dstore.format.cid import CID
from dstore.net.protocol import PeerClient
from dstore.store import Store

Shards = Sequence[tuple[CID, memoryview]]


class ShardSink(Protocol):
    def submit(self, pack_id: bytes, shards: Shards) -> Future[list[str | None]]:
        """Start storing one pack's shards."""

    def sync(self) -> None:
        """Make the shards of finished submissions durable (names included)."""

    def close(self) -> None: ...


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

    def close(self) -> None:
        """The peer set belongs to the caller."""
