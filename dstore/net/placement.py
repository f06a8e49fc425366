"""Where shards and blocks go: rendezvous placement of a pack's shards, and replicated blocks.

Shard i of a pack goes to the i-th peer of the rendezvous ranking of the
live peers for the pack's key, falling back down the ranking when a peer is
full or down (docs/architecture.md, "dstore/net"). Small things (metadata
blocks, dataset pointers) are copied to the first few ranked peers that
take them. Uploads in flight are bounded across the whole peer set.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

from dstore.errors import PeerError
from dstore.format.cid import CID, cid_to_text
from dstore.net.health import HealthChecker
from dstore.net.peers import Peer, PeerTable
from dstore.net.tasks import run_all
from dstore.net.transport import Miss, Transport

__all__ = ["Placement"]


class Placement:
    """PUTs to the peers of a :class:`PeerTable`, at most ``max_concurrency`` at once."""

    def __init__(self, transport: Transport, table: PeerTable, health: HealthChecker, *, max_concurrency: int) -> None:
        self.transport = transport
        self.table = table
        self.health = health
        self._max_concurrency = max_concurrency
        self._put_slots: asyncio.Semaphore | None = None

    def _slots(self) -> asyncio.Semaphore:
        # Made on first use: a semaphore belongs to the running event loop.
        if self._put_slots is None:
            self._put_slots = asyncio.Semaphore(self._max_concurrency)
        return self._put_slots

    async def put_pack(
        self, key: bytes, shards: Sequence[tuple[CID, bytes | memoryview]], *, concurrency: int = 8
    ) -> list[str]:
        """Place shard i on the i-th peer of ``rank(key)``; return the peer ID now holding each shard.

        Distinct peers whenever there are at least ``len(shards)`` live peers.
        A shard refused (507 full, 5xx, unreachable) moves to the next peer of
        the ranking not yet used for this pack; peers are reused (fewest
        shards of this pack first) only once every peer has been used. Raises
        :class:`PeerError` naming the shard when it cannot be placed, or at
        once on an answer every peer would give (401: the token).
        """
        self.health.maybe_revive()
        ranking = self.table.rank(key)
        if not ranking:
            raise PeerError("no live peer to place the pack on (check --peers / DSTORE_PEERS)")
        used: set[Peer] = set()
        held: Counter[Peer] = Counter()
        position = {p: n for n, p in enumerate(ranking)}
        local = asyncio.Semaphore(max(1, concurrency))
        slots = self._slots()

        def claim(tried: set[Peer]) -> Peer | None:
            usable = [p for p in ranking if p.alive and not p.full and p not in tried]
            fresh = [p for p in usable if p not in used]
            if fresh:
                peer = fresh[0]
            elif usable:
                peer = min(usable, key=lambda p: (held[p], position[p]))
            else:
                return None
            used.add(peer)
            return peer

        primaries = [ranking[i % len(ranking)] for i in range(len(shards))]
        used.update(primaries)

        async def place(i: int, cid: CID, data: bytes | memoryview) -> str:
            tried: set[Peer] = set()
            misses: list[str] = []
            peer: Peer | None = primaries[i]
            path = f"/shards/{cid_to_text(cid)}"
            while peer is not None:
                tried.add(peer)
                if peer.alive and not peer.full:
                    try:
                        async with local, slots:
                            await self.transport.put(peer, path, data, "application/octet-stream")
                    except Miss as e:
                        if e.fatal:
                            msg = f"shard {i} ({cid_to_text(cid)}): {e}"
                            raise PeerError(msg, status=e.status, url=peer.url) from e
                        misses.append(str(e))
                    else:
                        held[peer] += 1
                        assert peer.peer_id is not None
                        return peer.peer_id
                else:
                    misses.append(f"{peer.name}: {'full' if peer.full else 'down'}")
                peer = claim(tried)
            raise PeerError(f"shard {i} ({cid_to_text(cid)}) could not be placed on any peer: " + "; ".join(misses))

        return await run_all(place(i, cid, data) for i, (cid, data) in enumerate(shards))

    async def replicate(
        self, key: bytes, copies: int, what: str, path: str, body: bytes | memoryview, content_type: str
    ) -> list[str]:
        """PUT to the first ``copies`` peers of ``rank(key)`` that take it; their IDs in ranking order."""
        ranking = self.table.rank(key)
        if not ranking:
            raise PeerError(f"{what}: no live peer (check --peers / DSTORE_PEERS)")
        queue = iter(sorted(ranking, key=lambda p: p.full))  # stable: ranking order, known-full peers last
        took: list[Peer] = []
        misses: list[str] = []

        async def worker() -> None:
            for peer in queue:
                try:
                    async with self._slots():
                        await self.transport.put(peer, path, body, content_type)
                except Miss as e:
                    if e.fatal:
                        raise PeerError(f"{what}: {e}", status=e.status, url=peer.url) from e
                    misses.append(str(e))
                else:
                    took.append(peer)
                    return

        await run_all(worker() for _ in range(max(1, copies)))
        if not took:
            raise PeerError(f"{what}: no peer took it: " + "; ".join(misses))
        return [p.peer_id for p in ranking if p in took and p.peer_id]

    async def put_block(self, key: bytes, cid: CID, data: bytes | memoryview, copies: int) -> list[str]:
        """Store one block on the first ``copies`` ranked peers that take it (falling down the ranking).

        Returns the IDs of the peers that took it (fewer than ``copies`` only
        when fewer peers would); PeerError if none did.
        """
        text = cid_to_text(cid)
        return await self.replicate(key, copies, f"block {text}", f"/shards/{text}", data, "application/octet-stream")
