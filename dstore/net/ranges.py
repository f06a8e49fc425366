"""Ranged shard reads: ``GET /shards/{cid}`` with ``Range: bytes=a-b`` for random access to a few chunks.

A range cannot be checked alone (a shard's CID covers the whole shard), so
what comes back is only what the peer *says* those bytes are: the caller
decodes the chunks it covers and checks each against its chunk ID, and
reports a peer whose bytes fail (:meth:`Ranges.report_bad`) so it is scored
down like any peer that served bad bytes. A peer that ignores ``Range`` and
answers 200 with the whole shard is checked against the shard CID, as a
whole-shard read would be. Peers are asked in the order a pack fetch would
ask them for that shard (the hinted holder first); at most ``RANGE_PEERS``
live ones are tried before giving up, since the caller's fallback — the
whole pack, rebuilt from parity if need be — is the better path then.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass

from dstore.errors import DstoreError, NotFound, PeerError
from dstore.format.cid import cid_to_text
from dstore.format.pack import PackRecord
from dstore.net.fetching import Fetcher
from dstore.net.peers import Peer, PeerTable
from dstore.net.reads import verify_block
from dstore.net.transport import Miss, Transport

__all__ = ["RANGE_PEERS", "RangeCall", "RangeRead", "Ranges"]

#: Live peers asked for one range before the caller falls back to the whole pack.
RANGE_PEERS = 2
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


@dataclass(frozen=True)
class RangeRead:
    """Bytes a peer said are ``length`` bytes of a shard at ``offset`` (unverified), and who said so."""

    data: bytes | bytearray
    peer_id: str | None


#: One ranged read: (pack record, pack key, data shard, offset in it, length, the pack's placement hints).
RangeCall = tuple[PackRecord, bytes, int, int, int, Sequence[str | None] | None]


class Ranges:
    """Ranged reads of data shards over a :class:`Transport`, peers chosen as :class:`Fetcher` would."""

    def __init__(self, transport: Transport, table: PeerTable, fetcher: Fetcher) -> None:
        self.transport = transport
        self.table = table
        self.fetcher = fetcher

    async def fetch_range(
        self,
        record: PackRecord,
        key: bytes,
        shard: int,
        offset: int,
        length: int,
        hints: Sequence[str | None] | None = None,
    ) -> RangeRead:
        """``length`` bytes of shard ``shard`` of pack ``record`` at ``offset``; NotFound or PeerError if none.

        ``key`` is the pack's rendezvous key, ``hints`` the peer ID that took
        each shard. The bytes are unverified (see the module docstring).
        """
        if not 0 <= shard < len(record.shards):
            raise ValueError(f"shard {shard} of a pack of {len(record.shards)}")
        if length <= 0 or offset < 0 or offset + length > record.shard_size:
            raise ValueError(f"range {offset}+{length} outside a {record.shard_size}-byte shard")
        self.fetcher.health.maybe_revive()
        hint = list(hints or [])[shard] if hints and shard < len(hints) else None
        known, live = self.table.rank_known(key), self.table.rank(key)
        candidates = [p for p in self.fetcher.shard_candidates(shard, hint, known, live) if p.alive]
        misses: list[Miss] = []
        for peer in candidates[:RANGE_PEERS]:
            try:
                return RangeRead(await self._one(peer, record, shard, offset, length), peer.peer_id)
            except Miss as e:
                misses.append(e)
        text = cid_to_text(record.shards[shard])
        if not candidates:
            raise PeerError(f"shard {text}: no live peer to ask for a range")
        if all(m.status == 404 for m in misses):
            raise NotFound(f"shard {text}: the peers asked do not hold it")
        raise PeerError(f"shard {text}: no range from the peers asked: " + "; ".join(map(str, misses)))

    async def fetch_ranges(self, calls: Sequence[RangeCall]) -> list[RangeRead | None]:
        """Many :meth:`fetch_range` calls at once, concurrently: for each, its answer, or None if no peer
        asked could serve it (the caller reads that pack another way). Arguments that describe no range
        raise ValueError, as one call does."""

        async def one(call: RangeCall) -> RangeRead | None:
            try:
                return await self.fetch_range(*call)
            except DstoreError:
                return None

        return list(await asyncio.gather(*(one(c) for c in calls)))

    async def _one(self, peer: Peer, record: PackRecord, shard: int, offset: int, length: int) -> bytes | bytearray:
        cid = record.shards[shard]
        end = offset + length - 1
        ans = await self.transport.call(
            peer,
            "GET",
            f"/shards/{cid_to_text(cid)}",
            limit=record.shard_size,
            headers={"Range": f"bytes={offset}-{end}"},
            data_plane=True,
        )
        if ans.status == 206:
            got = _CONTENT_RANGE.match(ans.header("Content-Range") or "")
            expected = (offset, end, record.shard_size)
            if got is None or tuple(map(int, got.groups())) != expected or len(ans.body) != length:
                peer.record_bad_bytes()
                raise Miss(peer, f"a range answer that is not bytes {offset}-{end}/{record.shard_size}", status=206)
            return ans.body
        if ans.status == 200:  # the whole shard: checkable, so check it
            if len(ans.body) != record.shard_size or not verify_block(cid, ans.body):
                peer.record_bad_bytes()
                raise Miss(peer, "bad bytes (do not hash to the CID)", status=200)
            return ans.body[offset : offset + length]
        reason = "not found" if ans.status == 404 else f"HTTP {ans.status}{ans.error}"
        raise Miss(peer, reason, status=ans.status)

    def report_bad(self, peer_id: str | None) -> None:
        """The bytes ``peer_id`` sent for a range failed their chunk check: score it down."""
        peer = self.table.peer_by_id(peer_id)
        if peer is not None:
            peer.record_bad_bytes()
