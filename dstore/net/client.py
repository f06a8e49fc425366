"""The client side of placement and fetching: a set of storage peers spoken to over HTTP (docs/http-api.md).

:class:`PeerSet` composes the parts of ``dstore/net`` (docs/architecture.md):
a :class:`~dstore.net.transport.Transport` (one request, health bookkeeping),
a :class:`~dstore.net.peers.PeerTable` (who is up, the ranking), a
:class:`~dstore.net.health.HealthChecker` (probes, revival),
:class:`~dstore.net.placement.Placement` (where shards go),
a :class:`~dstore.net.fetching.Fetcher` (hedged, verified reads),
:class:`~dstore.net.ranges.Ranges` (ranged shard reads),
:class:`~dstore.net.pointers.Pointers` and a
:class:`~dstore.net.reads.ShardConfirmer`.

All methods are coroutines on one event loop; :class:`dstore.net.sync.SyncPeerSet`
wraps them for synchronous callers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import aiohttp

from dstore.errors import PeerError
from dstore.format.cid import CID, cid_to_text
from dstore.format.pack import PackRecord
from dstore.limits import MAX_SHARD_BYTES
from dstore.net.config import normalize_url
from dstore.net.fetching import Fetcher
from dstore.net.h1 import H1Client
from dstore.net.health import HealthChecker
from dstore.net.peers import Peer, PeerTable
from dstore.net.pins import PinReport, pin_on, unpin_on
from dstore.net.placement import Placement
from dstore.net.pointers import POINTER_PEERS, Pointers
from dstore.net.ranges import RangeCall, RangeRead, Ranges
from dstore.net.reads import ShardConfirmer, get_verified, head
from dstore.net.transport import Miss, Transport

__all__ = ["PeerSet"]


class PeerSet:
    """A set of storage peers and one HTTP session to speak to them (async; see :meth:`connect`)."""

    def __init__(
        self,
        peers: Sequence[Peer],
        token: str | None,
        session: aiohttp.ClientSession | None = None,
        *,
        timeout_s: float = 5.0,
        max_concurrency: int = 16,
        data: H1Client | None = None,
    ) -> None:
        """Prefer :meth:`connect`; a PeerSet built here without a session can only :meth:`rank`."""
        self.table = PeerTable(peers)
        self.transport = Transport(session, token, data)
        self.timeout_s = timeout_s
        self.health = HealthChecker(self.transport, self.table, timeout_s=timeout_s)
        self.placement = Placement(self.transport, self.table, self.health, max_concurrency=max_concurrency)
        self.fetcher = Fetcher(self.transport, self.table, self.health)
        self.pointers = Pointers(self.transport, self.table)
        self.confirmer = ShardConfirmer(self.transport, self.table)
        self.ranges = Ranges(self.transport, self.table, self.fetcher)

    @classmethod
    async def connect(
        cls,
        urls: Sequence[str],
        token: str | None,
        *,
        timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        max_concurrency: int = 16,
    ) -> PeerSet:
        """Open a session and ask every peer for ``/health`` at once, learning peer IDs.

        Unreachable peers are kept, marked not alive (:meth:`refresh` asks
        again). ``timeout_s`` bounds connecting and the health check;
        ``read_timeout_s`` bounds any wait for bytes during a transfer.
        ``max_concurrency`` bounds uploads in flight across the whole set.
        """
        peers: list[Peer] = []
        for url in urls:
            url = normalize_url(url)
            if all(p.url != url for p in peers):
                peers.append(Peer(url))
        transport = Transport.open(token, timeout_s=timeout_s, read_timeout_s=read_timeout_s)
        self = cls(
            peers, token, transport.session, timeout_s=timeout_s, max_concurrency=max_concurrency, data=transport.data
        )
        try:
            await self.refresh()
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Stop background probes and close the HTTP session (idempotent)."""
        await self.health.close()
        await self.transport.close()

    async def __aenter__(self) -> PeerSet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- peers and ranking ------------------------------------------------------------

    @property
    def peers(self) -> list[Peer]:
        return self.table.peers

    @property
    def token(self) -> str | None:
        return self.transport.token

    @property
    def alive(self) -> list[Peer]:
        return self.table.alive

    def peer_by_id(self, peer_id: str | None) -> Peer | None:
        return self.table.peer_by_id(peer_id)

    def rank(self, key: bytes) -> list[Peer]:
        """Live peers by rendezvous weight for ``key``, highest first (see :func:`dstore.net.peers.hrw_weight`)."""
        return self.table.rank(key)

    async def refresh(self, peers: Iterable[Peer] | None = None) -> None:
        """Ask ``peers`` (default: all) for ``/health`` concurrently; mark each alive or not, learn its peer ID."""
        await self.health.refresh(peers)

    # -- packs and blocks ---------------------------------------------------------------

    async def put_pack(
        self, key: bytes, shards: Sequence[tuple[CID, bytes | memoryview]], *, concurrency: int = 8
    ) -> list[str]:
        """See :meth:`dstore.net.placement.Placement.put_pack`."""
        return await self.placement.put_pack(key, shards, concurrency=concurrency)

    async def put_block(self, key: bytes, cid: CID, data: bytes | memoryview, copies: int) -> list[str]:
        """See :meth:`dstore.net.placement.Placement.put_block`."""
        return await self.placement.put_block(key, cid, data, copies)

    async def fetch_pack(
        self,
        record: PackRecord,
        key: bytes,
        hints: Sequence[str | None] | None = None,
        *,
        hedge_after_s: float | None = None,
        verify: bool = True,
    ) -> list[bytes | bytearray | None]:
        """See :meth:`dstore.net.fetching.Fetcher.fetch_pack`."""
        return await self.fetcher.fetch_pack(record, key, hints, hedge_after_s=hedge_after_s, verify=verify)

    async def get_block(
        self, cid: CID, key: bytes, hints: Sequence[str | None] | None = None, *, hedge_after_s: float | None = None
    ) -> bytes:
        """See :meth:`dstore.net.fetching.Fetcher.get_block`."""
        return await self.fetcher.get_block(cid, key, hints, hedge_after_s=hedge_after_s)

    async def fetch_range(
        self,
        record: PackRecord,
        key: bytes,
        shard: int,
        offset: int,
        length: int,
        hints: Sequence[str | None] | None = None,
    ) -> RangeRead:
        """See :meth:`dstore.net.ranges.Ranges.fetch_range`."""
        return await self.ranges.fetch_range(record, key, shard, offset, length, hints)

    async def fetch_ranges(self, calls: Sequence[RangeCall]) -> list[RangeRead | None]:
        """See :meth:`dstore.net.ranges.Ranges.fetch_ranges`."""
        return await self.ranges.fetch_ranges(calls)

    def report_bad_range(self, peer_id: str | None) -> None:
        """See :meth:`dstore.net.ranges.Ranges.report_bad`."""
        self.ranges.report_bad(peer_id)

    async def confirm_shards(self, items: Sequence[tuple[str, CID]]) -> list[bool]:
        """See :meth:`dstore.net.reads.ShardConfirmer.confirm`."""
        return await self.confirmer.confirm(items)

    # -- one peer (verify and repair) -----------------------------------------------------

    async def head(self, peer: Peer, cid: CID) -> bool:
        """Whether ``peer`` holds ``cid`` (``HEAD /shards/{cid}``); PeerError if it cannot say."""
        try:
            return await head(self.transport, peer, cid)
        except Miss as e:
            raise PeerError(str(e), status=e.status, url=peer.url) from e

    async def get_from(self, peer: Peer, cid: CID, limit: int = MAX_SHARD_BYTES) -> bytes:
        """``cid``'s bytes from this one peer, verified; PeerError saying why not (for verify)."""
        try:
            return bytes(await get_verified(self.transport, peer, cid, limit))  # one shard, for verify
        except Miss as e:
            raise PeerError(str(e), status=e.status, url=peer.url) from e

    async def put_to(self, peer: Peer, cid: CID, data: bytes | memoryview) -> None:
        """Store ``cid`` on this one peer (for repair); PeerError saying why not."""
        try:
            await self.transport.put(peer, f"/shards/{cid_to_text(cid)}", data, "application/octet-stream")
        except Miss as e:
            raise PeerError(str(e), status=e.status, url=peer.url) from e

    # -- dataset pointers ----------------------------------------------------------------

    async def put_pointer(self, dataset: CID, pointer: dict, copies: int) -> list[str]:
        """See :meth:`dstore.net.pointers.Pointers.put_pointer`."""
        return await self.pointers.put_pointer(dataset, pointer, copies)

    async def get_pointer(self, dataset: CID, *, validate: Callable[[dict], object] | None = None) -> dict | None:
        """See :meth:`dstore.net.pointers.Pointers.get_pointer`."""
        return await self.pointers.get_pointer(dataset, validate=validate)

    async def get_pointers(
        self, dataset: CID, *, validate: Callable[[dict], object] | None = None, max_peers: int = POINTER_PEERS
    ) -> list[dict]:
        """See :meth:`dstore.net.pointers.Pointers.get_pointers`."""
        return await self.pointers.get_pointers(dataset, validate=validate, max_peers=max_peers)

    # -- pins ----------------------------------------------------------------------------

    async def pin(self, dataset: CID, peers: Iterable[str] | None = None) -> PinReport:
        """``PUT /pins/{dataset}`` on the peers with these IDs (default: every live peer).

        An ID this set does not know is skipped (nothing of the dataset can be
        there that this client could name); a known peer that is down is a failure.
        """
        if peers is None:
            targets = self.table.alive
        else:
            targets = [p for pid in dict.fromkeys(peers) if (p := self.table.peer_by_id(pid)) is not None]
        return await pin_on(self.transport, targets, dataset)

    async def unpin(self, dataset: CID) -> PinReport:
        """``DELETE /pins/{dataset}`` on every peer of the set, each once; one down is a failure."""
        seen: set[str] = set()
        targets: list[Peer] = []
        for p in self.table.peers:
            key = p.peer_id or p.url
            if key in seen:
                continue
            best = self.table.peer_by_id(p.peer_id) if p.peer_id else p
            seen.add(key)
            targets.append(best or p)
        return await unpin_on(self.transport, targets, dataset)
