"""The hedged fetch scheduler: k verified shards of a pack, or one verified block, from many peers.

Reads ask for the k data shards at once, hedge slow or failed requests with
parity shards and other peers, verify every response against its CID, keep
the first k good shards and cancel the rest (long-tail cancellation). Which
shards go first, and which peers are asked for each, follows the peers'
health (:class:`dstore.net.peers.Peer`).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from dstore.errors import NotEnoughShards, NotFound, PeerError
from dstore.format.cid import CID, HASH_NAMES, cid_to_text
from dstore.format.pack import PackRecord
from dstore.limits import MAX_SHARD_BYTES, TYPICAL_BLOCK_BYTES
from dstore.net.health import HealthChecker
from dstore.net.peers import DEFAULT_LATENCY_S, Peer, PeerTable
from dstore.net.reads import get_verified, locate
from dstore.net.transport import Miss, Transport

__all__ = ["HEDGE_FACTOR", "MIN_HEDGE_S", "Fetcher"]

#: Shortest wait before a request is hedged; the default is ``HEDGE_FACTOR`` × the expected time.
MIN_HEDGE_S = 0.05
HEDGE_FACTOR = 3.0


class Unavailable(Exception):
    """No peer asked gave a verified copy of a block."""

    def __init__(self, misses: list[Miss]) -> None:
        super().__init__("; ".join(map(str, misses)) or "no live peer to ask")
        self.misses = misses


@dataclass(eq=False)
class _Attempt:
    """One effort to get shard ``shard`` (a task), as the fetch scheduler tracks it."""

    shard: int
    started: float
    peer: Peer | None = None
    hedged: bool = False


class Fetcher:
    """Fetches packs and blocks over a :class:`Transport` from the peers of a :class:`PeerTable`."""

    def __init__(self, transport: Transport, table: PeerTable, health: HealthChecker) -> None:
        self.transport = transport
        self.table = table
        self.health = health

    def hedge_delay(self, nbytes: int) -> float:
        """``HEDGE_FACTOR`` × the typical (median over live peers) time to fetch ``nbytes``, >= ``MIN_HEDGE_S``."""
        alive = self.table.alive
        lat = [p.latency_ewma_s for p in alive if p.latency_ewma_s is not None]
        thr = [p.throughput_ewma_bps for p in alive if p.throughput_ewma_bps]
        expect = statistics.median(lat) if lat else DEFAULT_LATENCY_S
        if thr:
            expect += nbytes / statistics.median(thr)
        return max(MIN_HEDGE_S, HEDGE_FACTOR * expect)

    async def fetch_one(
        self,
        cid: CID,
        candidates: Sequence[Peer],
        exclude: set[Peer],
        attempt: _Attempt,
        limit: int,
        verify: bool = True,
    ) -> bytes | bytearray:
        """A verified copy of ``cid`` (unless not ``verify``): GET from the first live candidate; else HEAD the
        others, GET from holders."""
        misses: list[Miss] = []
        cands = [p for p in candidates if p.alive and p not in exclude]
        for p in cands[:1]:
            attempt.peer = p
            try:
                return await get_verified(self.transport, p, cid, limit, verify=verify)
            except Miss as e:
                misses.append(e)
        rest = [p for p in cands[1:] if p.alive]
        if rest:
            holders = await locate(self.transport, cid, rest, misses)
            if not holders:
                misses.append(Miss(None, f"not found on the {len(rest)} other live peers asked", status=404))
            for p in holders:
                attempt.peer = p
                try:
                    return await get_verified(self.transport, p, cid, limit, verify=verify)
                except Miss as e:
                    misses.append(e)
        raise Unavailable(misses)

    async def gather(
        self,
        cids: Sequence[CID],
        need: int,
        candidates: Sequence[Sequence[Peer]],
        order: Sequence[int],
        limit: int,
        hedge_after_s: float,
        *,
        exact_len: int | None = None,
        verify: bool = True,
    ) -> tuple[dict[int, bytes | bytearray], dict[int, list[Miss]]]:
        """Get ``need`` of the blocks ``cids`` (verified), hedged; return them by index, and the misses.

        Starts the first ``need`` of ``order``; a failed block is replaced by
        the next of ``order``; a request running longer than ``hedge_after_s``
        is hedged once, with the next block of ``order`` or, when none is
        left, the same block from other peers. When ``need`` blocks are in,
        everything still running is cancelled. Indices that share a CID (a
        pack's zero padding shards do) are fetched once and filled together,
        so a record listing one CID many times costs one transfer. With
        ``exact_len``, a verified block of another length is a miss (its
        record is wrong about it) rather than a result.
        """
        results: dict[int, bytes | bytearray] = {}
        misses: dict[int, list[Miss]] = {}
        pending = list(order)
        running: dict[asyncio.Future[bytes | bytearray], _Attempt] = {}
        abandoned: list[asyncio.Future[bytes | bytearray]] = []
        keys = [c.to_bytes() for c in cids]
        same: dict[bytes, list[int]] = {}
        for i, key in enumerate(keys):
            same.setdefault(key, []).append(i)

        def launch(i: int, exclude: set[Peer]) -> None:
            a = _Attempt(i, time.monotonic())
            task = asyncio.ensure_future(self.fetch_one(cids[i], candidates[i], exclude, a, limit, verify))
            running[task] = a

        def top_up() -> None:
            covered = set(results) | {j for a in running.values() for j in same[keys[a.shard]]}
            while pending and len(covered) < need:
                i = pending.pop(0)
                if i in covered:
                    continue
                launch(i, set())
                covered.update(same[keys[i]])

        try:
            top_up()
            while len(results) < need and running:
                deadlines = [a.started + hedge_after_s for a in running.values() if not a.hedged]
                wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
                done, _ = await asyncio.wait(running, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    a = running.pop(task, None)
                    if a is None:
                        continue
                    try:
                        data = task.result()
                    except Unavailable as e:
                        misses.setdefault(a.shard, []).extend(e.misses)
                        continue
                    if exact_len is not None and len(data) != exact_len:
                        wrong = Miss(a.peer, f"{len(data)} bytes where its pack has {exact_len}-byte shards")
                        for j in same[keys[a.shard]]:
                            misses.setdefault(j, []).append(wrong)
                            if j in pending:
                                pending.remove(j)  # the same CID gives the same bytes anywhere
                        continue
                    for j in same[keys[a.shard]]:
                        results.setdefault(j, data)
                    for other, b in list(running.items()):
                        if keys[b.shard] == keys[a.shard]:  # a hedge for the same block: no longer needed
                            other.cancel()
                            abandoned.append(other)
                            del running[other]
                top_up()
                now = time.monotonic()
                for a in list(running.values()):
                    if len(results) >= need:
                        break
                    if not a.hedged and now - a.started >= hedge_after_s:
                        a.hedged = True
                        covered = set(results) | {j for b in running.values() for j in same[keys[b.shard]]}
                        while pending and pending[0] in covered:
                            pending.pop(0)  # its CID is in hand or on its way: hedging with it fetches nothing new
                        if pending:
                            launch(pending.pop(0), set())
                        elif a.peer is not None:
                            busy = {b.peer for b in running.values() if b.shard == a.shard and b.peer is not None}
                            launch(a.shard, busy)
        finally:
            for task in running:
                task.cancel()
            leftover = [*running, *abandoned]
            if leftover:
                await asyncio.gather(*leftover, return_exceptions=True)
        return results, misses

    def shard_candidates(self, i: int, hint: str | None, known: list[Peer], live: list[Peer]) -> list[Peer]:
        """Peers to ask for shard ``i``: the hinted holder, its place in the ranking, then every other live peer.

        When the holder (by hint, else by ranking) is known and down, it stays
        first in the list: the shard is then asked for only after the shards
        whose holders are up (see :meth:`shard_order`), instead of being
        searched for on every live peer while parity is at hand.
        """
        if hint:
            # A holder we cannot reach now (down, or never answered) stands in as a dead peer.
            holder: Peer | None = self.table.peer_by_id(hint) or Peer(url=f"peer {hint}", peer_id=hint)
        else:
            holder = known[i % len(known)] if known else None
        if holder is not None and not holder.alive:
            return [holder, *sorted(live, key=lambda p: p.cost_s)]
        out: list[Peer] = []
        for p in (holder, live[i % len(live)] if live else None):
            if p is not None and p.alive and p not in out:
                out.append(p)
        out.extend(p for p in sorted(live, key=lambda p: p.cost_s) if p not in out)
        return out

    def shard_order(self, candidates: Sequence[Sequence[Peer]], k: int) -> list[int]:
        """Which shards to ask for first: data shards whose first peer is healthy, then parity, then the rest.

        A shard whose first peer served bad bytes, keeps failing or is much
        slower than its fellows goes behind healthy parity shards.
        """
        costs = [p.cost_s for p in self.table.alive]
        typical = statistics.median(costs) if costs else DEFAULT_LATENCY_S

        def klass(i: int) -> int:
            if not candidates[i] or not candidates[i][0].alive:
                return 3  # its holder is down: ask for it only if parity is not enough
            first = candidates[i][0]
            if first.bad_bytes:
                return 2
            if first.error_ewma > 0.5 or first.cost_s > 4 * typical + MIN_HEDGE_S:
                return 1
            return 0

        return sorted(range(len(candidates)), key=lambda i: (klass(i), i >= k, i))

    async def fetch_pack(
        self,
        record: PackRecord,
        key: bytes,
        hints: Sequence[str | None] | None = None,
        *,
        hedge_after_s: float | None = None,
        verify: bool = True,
    ) -> list[bytes | bytearray | None]:
        """At least k verified shards of the pack ``record`` (None elsewhere), as a list of k + m.

        ``key`` is the pack's rendezvous key (its ID as binary CID); ``hints``
        the peer ID that took each shard (as ``put_pack`` returned).
        ``hedge_after_s`` defaults to 3× the typical time to fetch one shard,
        at least 50 ms. Raises :class:`NotEnoughShards` naming the pack and
        each shard's failures when fewer than k verified shards can be had.
        ``verify=False``: the shards are only checked for their length, not
        hashed — for a caller that checks every chunk it decodes from them and,
        when one fails, fetches the pack again verified (``dstore get``: the
        chunk check then is the only hash of each byte).
        """
        self.health.maybe_revive()
        n = record.k + record.m
        if len(record.shards) != n:
            raise ValueError(f"pack record has {len(record.shards)} shard CIDs, expected {n}")
        known, live = self.table.rank_known(key), self.table.rank(key)
        hint_list = list(hints or [])[:n] + [None] * max(0, n - len(hints or []))
        candidates = [self.shard_candidates(i, hint_list[i], known, live) for i in range(n)]
        order = self.shard_order(candidates, record.k)
        hedge = hedge_after_s if hedge_after_s is not None else self.hedge_delay(record.shard_size)
        results, misses = await self.gather(
            record.shards,
            record.k,
            candidates,
            order,
            record.shard_size,
            hedge,
            exact_len=record.shard_size,
            verify=verify,
        )
        if len(results) < record.k:
            raise _not_enough(record, results, misses)
        return [results.get(i) for i in range(n)]

    async def get_block(
        self, cid: CID, key: bytes, hints: Sequence[str | None] | None = None, *, hedge_after_s: float | None = None
    ) -> bytes:
        """A verified copy of block ``cid`` from any peer (hinted ones first, then by ``rank(key)``).

        Raises :class:`NotFound` if every peer asked says it has no such block,
        else :class:`PeerError` listing what went wrong.
        """
        candidates: list[Peer] = []
        for p in [*(self.table.peer_by_id(h) for h in hints or ()), *self.table.rank(key)]:
            if p is not None and p.alive and p not in candidates:
                candidates.append(p)
        hedge = hedge_after_s if hedge_after_s is not None else self.hedge_delay(TYPICAL_BLOCK_BYTES)
        results, misses = await self.gather([cid], 1, [candidates], [0], MAX_SHARD_BYTES, hedge)
        if 0 in results:
            return bytes(results[0])  # a metadata block: small, and its readers want bytes
        found = misses.get(0, [])
        text = cid_to_text(cid)
        if not candidates:
            raise PeerError(f"block {text}: no live peer to ask")
        if all(m.status == 404 for m in found):
            raise NotFound(f"block {text}: no peer holds it")
        raise PeerError(f"block {text}: no peer gave a verified copy: " + "; ".join(map(str, found)))


def _not_enough(
    record: PackRecord, results: dict[int, bytes | bytearray], misses: dict[int, list[Miss]]
) -> NotEnoughShards:
    """The error naming the pack and, per shard still missing, what each peer asked said."""
    try:
        name = cid_to_text(record.cid(HASH_NAMES.get(record.shards[0].hash.code, "blake3")))
    except Exception:
        name = f"(k={record.k}, m={record.m}, size={record.size})"
    misses = {i: ms for i, ms in misses.items() if i not in results}
    per_shard = "; ".join(
        f"shard {i} ({cid_to_text(record.shards[i])[-8:]}): "
        + (", ".join(str(m) for m in misses[i]) or "no live peer to ask")
        for i in sorted(misses)
    )
    err = NotEnoughShards(
        f"pack {name}: only {len(results)} of the {record.k} shards needed could be fetched and verified"
        + (f" — {per_shard}" if per_shard else "")
    )
    err.failures = {i: [str(m) for m in ms] for i, ms in misses.items()}  # type: ignore[attr-defined]
    return err
