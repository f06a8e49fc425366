"""Learning which peers are up: ``GET /health`` at connect, and re-probing peers marked down.

A probe learns the peer's ID (which the ranking hashes) and marks it alive;
a peer reached under a second address is kept but not alive, so it is
ranked once. Peers marked down are probed again in the background, at most
every ``REVIVE_INTERVAL_S``, so restarted peers come back without a new
connect.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from typing import Any

import aiohttp

from dstore.limits import MAX_HEALTH_BYTES
from dstore.net.peers import Peer, PeerTable
from dstore.net.transport import Miss, Transport

__all__ = ["REVIVE_INTERVAL_S", "HealthChecker"]

#: Peers marked down are asked for ``/health`` again (in the background) at most this often.
REVIVE_INTERVAL_S = 30.0
#: Longest a peer ID may be (``/health``'s ``peer_id``).
MAX_PEER_ID_CHARS = 128


class HealthChecker:
    """Probes the peers of a :class:`PeerTable` over a :class:`Transport`."""

    def __init__(self, transport: Transport, table: PeerTable, *, timeout_s: float) -> None:
        self.transport = transport
        self.table = table
        self.timeout_s = timeout_s
        #: ``time.monotonic()`` of the last background re-probe (set to the past to force one).
        self.revived_at = time.monotonic()
        self._background: set[asyncio.Future[None]] = set()

    async def refresh(self, peers: Iterable[Peer] | None = None) -> None:
        """Ask ``peers`` (default: all) for ``/health`` concurrently; mark each alive or not, learn its peer ID."""
        await asyncio.gather(*(self.probe(p) for p in (self.table.peers if peers is None else peers)))

    async def probe(self, peer: Peer) -> None:
        """One ``/health``: alive with its peer ID, or not alive."""
        try:
            ans = await self.transport.call(
                peer,
                "GET",
                "/health",
                limit=MAX_HEALTH_BYTES,
                retries=0,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            )
            info: Any = json.loads(ans.body) if ans.status == 200 else None
            peer_id = info.get("peer_id") if isinstance(info, dict) else None
            if not isinstance(peer_id, str) or not 1 <= len(peer_id) <= MAX_PEER_ID_CHARS or not peer_id.isprintable():
                raise Miss(peer, f"bad /health answer (HTTP {ans.status})")
        except (Miss, ValueError, RecursionError):  # RecursionError: a /health of 64 KiB of "["
            peer.alive = False
            return
        twin = self.table.peer_by_id(peer_id)
        if twin is not None and twin is not peer and twin.alive:
            peer.alive = False  # the same peer under a second address: rank it once
            return
        peer.peer_id = peer_id
        peer.health = info
        peer.alive = True

    def maybe_revive(self) -> None:
        """Every ``REVIVE_INTERVAL_S`` at most, re-probe peers marked down, in the background."""
        now = time.monotonic()
        down = [p for p in self.table.peers if not p.alive]
        if not down or now - self.revived_at < REVIVE_INTERVAL_S or self._background:
            return
        self.revived_at = now
        task = asyncio.ensure_future(self.refresh(down))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Cancel a re-probe still running, and wait for it."""
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
