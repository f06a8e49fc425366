"""The client side of placement and fetching: a set of storage peers spoken to over HTTP (docs/http-api.md).

This layer knows CIDs and pack records, nothing of files. Placement follows
docs (DESIGN.md, "Placement, fetching, durability"): shard i of a pack goes to
the i-th peer of the rendezvous ranking of the live peers for the pack's key,
falling back down the ranking when a peer is full or down. Reads ask for the
k data shards at once, hedge slow or failed requests with parity shards and
other peers, verify every response against its CID, keep the first k good
shards and cancel the rest (long-tail cancellation). Every answer updates the
peer's health (:class:`dstore.net.peers.Peer`), which steers later choices.

All methods are coroutines on one event loop; :class:`dstore.net.sync.SyncPeerSet`
wraps them for synchronous callers.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from dstore import __version__
from dstore._native import blake3
from dstore.errors import NotEnoughShards, NotFound, PeerError
from dstore.format.cid import CID, HASH_NAMES, cid_to_text, hash_digest
from dstore.format.pack import PackRecord
from dstore.net.config import normalize_url
from dstore.net.peers import DEFAULT_LATENCY_S, Peer, hrw_weight

__all__ = ["MAX_BLOCK_BYTES", "MAX_POINTER_BYTES", "MIN_HEDGE_S", "PeerSet", "verify_block"]

#: Largest block a peer takes (docs/http-api.md: PUT bodies of at most 17 MiB); a bound on reads too.
MAX_BLOCK_BYTES = 17 * 1024 * 1024
#: Bound on a dataset pointer answer.
MAX_POINTER_BYTES = 1024 * 1024
#: Shortest wait before a request is hedged; the default is ``HEDGE_FACTOR`` × the expected time.
MIN_HEDGE_S = 0.05
HEDGE_FACTOR = 3.0
#: Retries of a read after a transient failure (5xx, 429, dropped connection), with exponential backoff.
READ_RETRIES = 2
BACKOFF_S = 0.05
#: HEAD requests in flight at once when looking for a shard's holders.
LOCATE_CONCURRENCY = 8
#: Peers asked at once for a dataset pointer.
POINTER_CONCURRENCY = 3
#: Peers marked down are asked for ``/health`` again (in the background) at most this often.
REVIVE_INTERVAL_S = 30.0
#: Hash offloaded to a worker thread above this size, so the event loop keeps serving other transfers.
THREAD_HASH_BYTES = 4 * 1024 * 1024


def verify_block(cid: CID, data: bytes | memoryview) -> bool:
    """True if ``data`` hashes to ``cid``'s multihash (BLAKE3 or SHA2-256; False for any other hash)."""
    name = HASH_NAMES.get(cid.hash.code)
    if name is None:
        return False
    digest = blake3(data) if name == "blake3" else hash_digest(bytes(data), name)
    return digest == bytes(cid.hash.digest)


class _Miss(Exception):
    """One request to one peer did not give what was asked. ``fatal``: no other peer would answer otherwise."""

    def __init__(self, peer: Peer | None, reason: str, *, status: int | None = None, fatal: bool = False) -> None:
        super().__init__(f"{peer.name}: {reason}" if peer is not None else reason)
        self.peer = peer
        self.status = status
        self.fatal = fatal


class _Unavailable(Exception):
    """No peer asked gave a verified copy of a block."""

    def __init__(self, misses: list[_Miss]) -> None:
        super().__init__("; ".join(map(str, misses)) or "no live peer to ask")
        self.misses = misses


@dataclass(eq=False)
class _Attempt:
    """One effort to get shard ``shard`` (a task), as the fetch scheduler tracks it."""

    shard: int
    started: float
    peer: Peer | None = None
    hedged: bool = False


@dataclass
class _Answer:
    status: int
    body: bytes = b""
    error: str = ""
    headers: dict[str, str] = field(default_factory=dict)


async def _run_all(aws: Iterable[Awaitable[Any]]) -> list[Any]:
    """Run concurrently; on the first exception cancel the others (and wait for them) and raise it."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    """``": <error> (<code>)"`` from a JSON error answer, best effort, read bounded."""
    try:
        raw = await resp.content.read(4096)
        obj = json.loads(raw)
        return f": {str(obj.get('error', ''))[:200]} ({str(obj.get('code', ''))[:40]})"
    except Exception:
        return ""


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None if it is (or claims to be) larger than ``limit``."""
    if resp.content_length is not None:
        if resp.content_length > limit:
            return None
        body = await resp.read()
        return body if len(body) <= limit else None
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(1 << 20):
        buf += chunk
        if len(buf) > limit:
            return None
    return bytes(buf)


READ_BUFFER_BYTES = 1 << 20


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
    ) -> None:
        """Prefer :meth:`connect`; a PeerSet built here without a session can only :meth:`rank`."""
        self.peers: list[Peer] = list(peers)
        self.token = token
        self.timeout_s = timeout_s
        self._session = session
        self._max_concurrency = max_concurrency
        self._put_slots: asyncio.Semaphore | None = None
        self._revived_at = time.monotonic()
        self._background: set[asyncio.Future[None]] = set()

    # -- setup ---------------------------------------------------------------

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
        # Shards are ~1 MiB: read them in big pieces rather than aiohttp's default 64 KiB.
        connector = aiohttp.TCPConnector(limit=64, limit_per_host=8, keepalive_timeout=30.0, ttl_dns_cache=300)
        session = aiohttp.ClientSession(
            connector=connector,
            read_bufsize=READ_BUFFER_BYTES,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=read_timeout_s),
            headers={"User-Agent": f"dstore/{__version__}"},
        )
        self = cls(peers, token, session, timeout_s=timeout_s, max_concurrency=max_concurrency)
        try:
            await self.refresh()
        except BaseException:
            await self.close()
            raise
        return self

    async def refresh(self, peers: Iterable[Peer] | None = None) -> None:
        """Ask ``peers`` (default: all) for ``/health`` concurrently; mark each alive or not, learn its peer ID."""
        await asyncio.gather(*(self._probe(p) for p in (self.peers if peers is None else peers)))

    async def _probe(self, peer: Peer) -> None:
        try:
            ans = await self._call(
                peer, "GET", "/health", limit=64 * 1024, retries=0, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            )
            info: Any = json.loads(ans.body) if ans.status == 200 else None
            peer_id = info.get("peer_id") if isinstance(info, dict) else None
            if not isinstance(peer_id, str) or not 1 <= len(peer_id) <= 128 or not peer_id.isprintable():
                raise _Miss(peer, f"bad /health answer (HTTP {ans.status})")
        except (_Miss, ValueError):
            peer.alive = False
            return
        twin = self.peer_by_id(peer_id)
        if twin is not None and twin is not peer and twin.alive:
            peer.alive = False  # the same peer under a second address: rank it once
            return
        peer.peer_id = peer_id
        peer.health = info
        peer.alive = True

    def _maybe_revive(self) -> None:
        """Every ``REVIVE_INTERVAL_S`` at most, re-probe peers marked down, in the background."""
        now = time.monotonic()
        down = [p for p in self.peers if not p.alive]
        if not down or now - self._revived_at < REVIVE_INTERVAL_S or self._background:
            return
        self._revived_at = now
        task = asyncio.ensure_future(self.refresh(down))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Close the HTTP session (idempotent)."""
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._session is not None and not self._session.closed:
            await self._session.close()
        await asyncio.sleep(0)

    async def __aenter__(self) -> PeerSet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- peers and ranking -----------------------------------------------------

    @property
    def alive(self) -> list[Peer]:
        return [p for p in self.peers if p.alive and p.peer_id]

    def peer_by_id(self, peer_id: str | None) -> Peer | None:
        if peer_id is None:
            return None
        for p in self.peers:
            if p.peer_id == peer_id and p.alive:
                return p
        for p in self.peers:
            if p.peer_id == peer_id:
                return p
        return None

    def rank(self, key: bytes) -> list[Peer]:
        """Live peers by rendezvous weight for ``key``, highest first (see :func:`dstore.net.peers.hrw_weight`)."""
        return self._rank(key, self.alive)

    def _rank_known(self, key: bytes) -> list[Peer]:
        """Every peer with a known ID, alive or not: where a pack went if all were alive when it was placed."""
        seen: dict[str, Peer] = {}
        for p in self.peers:
            if p.peer_id and (p.peer_id not in seen or (p.alive and not seen[p.peer_id].alive)):
                seen[p.peer_id] = p
        return self._rank(key, seen.values())

    @staticmethod
    def _rank(key: bytes, peers: Iterable[Peer]) -> list[Peer]:
        key = bytes(key)
        return sorted(peers, key=lambda p: (hrw_weight(key, p.peer_id or ""), p.peer_id), reverse=True)

    def _hedge_delay(self, nbytes: int) -> float:
        """``HEDGE_FACTOR`` × the typical (median over live peers) time to fetch ``nbytes``, >= ``MIN_HEDGE_S``."""
        alive = self.alive
        lat = [p.latency_ewma_s for p in alive if p.latency_ewma_s is not None]
        thr = [p.throughput_ewma_bps for p in alive if p.throughput_ewma_bps]
        expect = statistics.median(lat) if lat else DEFAULT_LATENCY_S
        if thr:
            expect += nbytes / statistics.median(thr)
        return max(MIN_HEDGE_S, HEDGE_FACTOR * expect)

    # -- one request -------------------------------------------------------------

    async def _call(
        self,
        peer: Peer,
        method: str,
        path: str,
        *,
        body: bytes | memoryview | None = None,
        content_type: str | None = None,
        auth: bool = False,
        limit: int = 0,
        retries: int = READ_RETRIES,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> _Answer:
        """One request with health bookkeeping; 5xx/429/dropped connections retried with backoff.

        Returns the answer (body read up to ``limit`` bytes for 2xx, else the
        error text). Raises :class:`_Miss` when the peer is unreachable, times
        out, keeps failing, or sends a body over ``limit``.
        """
        if self._session is None:
            raise RuntimeError("PeerSet has no session: use PeerSet.connect")
        headers: dict[str, str] = {}
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if content_type:
            headers["Content-Type"] = content_type
        url = peer.url + path
        extra: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
        last: _Miss | None = None
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(BACKOFF_S * 2 ** (attempt - 1) * (0.5 + random.random()))
            t0 = time.monotonic()
            try:
                async with self._session.request(method, url, data=body, headers=headers, **extra) as resp:
                    t1 = time.monotonic()
                    peer.observe_latency(t1 - t0)
                    status = resp.status
                    if (status >= 500 and status != 507) or status == 429:
                        peer.record_error()
                        last = _Miss(peer, f"HTTP {status}{await _error_text(resp)}", status=status)
                        continue
                    if not 200 <= status < 300:
                        peer.record_ok()
                        return _Answer(status, error=await _error_text(resp))
                    data = b""
                    if limit and method != "HEAD":
                        read = await _read_bounded(resp, limit)
                        if read is None:
                            peer.record_bad_bytes()
                            raise _Miss(peer, f"answer over {limit} bytes", status=status)
                        data = read
                        peer.observe_throughput(len(data), time.monotonic() - t1)
                    peer.record_ok()
                    return _Answer(status, data, headers=dict(resp.headers))
            except _Miss:
                raise
            except TimeoutError as e:
                peer.record_error()
                peer.observe_slow(time.monotonic() - t0)
                if isinstance(e, aiohttp.ConnectionTimeoutError):
                    peer.alive = False
                raise _Miss(peer, "timed out") from e
            except aiohttp.ClientConnectorError as e:
                peer.record_unreachable()
                raise _Miss(peer, f"unreachable ({e.os_error.strerror or e.os_error})") from e
            except aiohttp.ClientError as e:
                peer.record_error()
                last = _Miss(peer, f"connection failed ({type(e).__name__})")
                continue
            except asyncio.CancelledError:
                # Abandoned (hedged or no longer needed): it took at least this long.
                peer.observe_slow(time.monotonic() - t0)
                raise
        assert last is not None
        raise last

    # -- reads -----------------------------------------------------------------------

    async def head(self, peer: Peer, cid: CID) -> bool:
        """Whether ``peer`` holds ``cid`` (``HEAD /shards/{cid}``); PeerError if it cannot say."""
        try:
            return await self._head(peer, cid)
        except _Miss as e:
            raise PeerError(str(e), status=e.status, url=peer.url) from e

    async def _head(self, peer: Peer, cid: CID) -> bool:
        ans = await self._call(peer, "HEAD", f"/shards/{cid_to_text(cid)}")
        if ans.status in (200, 204):
            return True
        if ans.status == 404:
            return False
        raise _Miss(peer, f"HTTP {ans.status}{ans.error}", status=ans.status)

    async def get_from(self, peer: Peer, cid: CID, limit: int = MAX_BLOCK_BYTES) -> bytes:
        """``cid``'s bytes from this one peer, verified; PeerError saying why not (for verify)."""
        try:
            return await self._get_verified(peer, cid, limit)
        except _Miss as e:
            raise PeerError(str(e), status=e.status, url=peer.url) from e

    async def put_to(self, peer: Peer, cid: CID, data: bytes | memoryview) -> None:
        """Store ``cid`` on this one peer (for repair); PeerError saying why not."""
        try:
            await self._put(peer, f"/shards/{cid_to_text(cid)}", data, "application/octet-stream")
        except _Miss as e:
            raise PeerError(str(e), status=e.status, url=peer.url) from e

    async def _get_verified(self, peer: Peer, cid: CID, limit: int) -> bytes:
        ans = await self._call(peer, "GET", f"/shards/{cid_to_text(cid)}", limit=limit)
        if ans.status == 200:
            if len(ans.body) >= THREAD_HASH_BYTES:
                good = await asyncio.to_thread(verify_block, cid, ans.body)
            else:
                good = verify_block(cid, ans.body)
            if not good:
                peer.record_bad_bytes()
                raise _Miss(peer, "bad bytes (do not hash to the CID)", status=200)
            return ans.body
        reason = "not found" if ans.status == 404 else f"HTTP {ans.status}{ans.error}"
        raise _Miss(peer, reason, status=ans.status)

    async def _locate(self, cid: CID, peers: Sequence[Peer], misses: list[_Miss]) -> list[Peer]:
        """The peers among ``peers`` that say (HEAD) they hold ``cid``, best score first."""
        slots = asyncio.Semaphore(LOCATE_CONCURRENCY)

        async def ask(p: Peer) -> bool:
            async with slots:
                if not p.alive:
                    return False
                try:
                    return await self._head(p, cid)
                except _Miss as e:
                    misses.append(e)
                    return False

        found = await _run_all(ask(p) for p in peers)
        return sorted((p for p, yes in zip(peers, found, strict=True) if yes), key=lambda p: p.cost_s)

    async def _fetch_one(
        self, cid: CID, candidates: Sequence[Peer], exclude: set[Peer], attempt: _Attempt, limit: int
    ) -> bytes:
        """A verified copy of ``cid``: GET from the first live candidate; else HEAD the others, GET from holders."""
        misses: list[_Miss] = []
        cands = [p for p in candidates if p.alive and p not in exclude]
        for p in cands[:1]:
            attempt.peer = p
            try:
                return await self._get_verified(p, cid, limit)
            except _Miss as e:
                misses.append(e)
        rest = [p for p in cands[1:] if p.alive]
        if rest:
            holders = await self._locate(cid, rest, misses)
            if not holders:
                misses.append(_Miss(None, f"not found on the {len(rest)} other live peers asked", status=404))
            for p in holders:
                attempt.peer = p
                try:
                    return await self._get_verified(p, cid, limit)
                except _Miss as e:
                    misses.append(e)
        raise _Unavailable(misses)

    async def _gather(
        self,
        cids: Sequence[CID],
        need: int,
        candidates: Sequence[Sequence[Peer]],
        order: Sequence[int],
        limit: int,
        hedge_after_s: float,
    ) -> tuple[dict[int, bytes], dict[int, list[_Miss]]]:
        """Get ``need`` of the blocks ``cids`` (verified), hedged; return them by index, and the misses.

        Starts the first ``need`` of ``order``; a failed block is replaced by
        the next of ``order``; a request running longer than ``hedge_after_s``
        is hedged once, with the next block of ``order`` or, when none is
        left, the same block from other peers. When ``need`` blocks are in,
        everything still running is cancelled.
        """
        results: dict[int, bytes] = {}
        misses: dict[int, list[_Miss]] = {}
        pending = list(order)
        running: dict[asyncio.Future[bytes], _Attempt] = {}
        abandoned: list[asyncio.Future[bytes]] = []

        def launch(i: int, exclude: set[Peer]) -> None:
            a = _Attempt(i, time.monotonic())
            task = asyncio.ensure_future(self._fetch_one(cids[i], candidates[i], exclude, a, limit))
            running[task] = a

        def top_up() -> None:
            while pending and len(results) + len({a.shard for a in running.values()} - results.keys()) < need:
                launch(pending.pop(0), set())

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
                    except _Unavailable as e:
                        misses.setdefault(a.shard, []).extend(e.misses)
                        continue
                    results.setdefault(a.shard, data)
                    for other, b in list(running.items()):
                        if b.shard == a.shard:  # a hedge for the same block: no longer needed
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

    def _shard_candidates(self, i: int, hint: str | None, known: list[Peer], live: list[Peer]) -> list[Peer]:
        """Peers to ask for shard ``i``: the hinted holder, its place in the ranking, then every other live peer.

        When the holder (by hint, else by ranking) is known and down, it stays
        first in the list: the shard is then asked for only after the shards
        whose holders are up (see :meth:`_shard_order`), instead of being
        searched for on every live peer while parity is at hand.
        """
        if hint:
            # A holder we cannot reach now (down, or never answered) stands in as a dead peer.
            holder: Peer | None = self.peer_by_id(hint) or Peer(url=f"peer {hint}", peer_id=hint)
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

    def _shard_order(self, candidates: Sequence[Sequence[Peer]], k: int) -> list[int]:
        """Which shards to ask for first: data shards whose first peer is healthy, then parity, then the rest.

        A shard whose first peer served bad bytes, keeps failing or is much
        slower than its fellows goes behind healthy parity shards.
        """
        costs = [p.cost_s for p in self.alive]
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
    ) -> list[bytes | None]:
        """At least k verified shards of the pack ``record`` (None elsewhere), as a list of k + m.

        ``key`` is the pack's rendezvous key (its ID as binary CID); ``hints``
        the peer ID that took each shard (as :meth:`put_pack` returned).
        ``hedge_after_s`` defaults to 3× the typical time to fetch one shard,
        at least 50 ms. Raises :class:`NotEnoughShards` naming the pack and
        each shard's failures when fewer than k verified shards can be had.
        """
        self._maybe_revive()
        n = record.k + record.m
        if len(record.shards) != n:
            raise ValueError(f"pack record has {len(record.shards)} shard CIDs, expected {n}")
        known, live = self._rank_known(key), self.rank(key)
        hint_list = list(hints or [])[:n] + [None] * max(0, n - len(hints or []))
        candidates = [self._shard_candidates(i, hint_list[i], known, live) for i in range(n)]
        order = self._shard_order(candidates, record.k)
        hedge = hedge_after_s if hedge_after_s is not None else self._hedge_delay(record.shard_size)
        results, misses = await self._gather(record.shards, record.k, candidates, order, record.shard_size, hedge)
        if len(results) < record.k:
            raise self._not_enough(record, results, misses)
        return [results.get(i) for i in range(n)]

    @staticmethod
    def _not_enough(record: PackRecord, results: dict[int, bytes], misses: dict[int, list[_Miss]]) -> NotEnoughShards:
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

    async def get_block(
        self, cid: CID, key: bytes, hints: Sequence[str | None] | None = None, *, hedge_after_s: float | None = None
    ) -> bytes:
        """A verified copy of block ``cid`` from any peer (hinted ones first, then by ``rank(key)``).

        Raises :class:`NotFound` if every peer asked says it has no such block,
        else :class:`PeerError` listing what went wrong.
        """
        candidates: list[Peer] = []
        for p in [*(self.peer_by_id(h) for h in hints or ()), *self.rank(key)]:
            if p is not None and p.alive and p not in candidates:
                candidates.append(p)
        hedge = hedge_after_s if hedge_after_s is not None else self._hedge_delay(64 * 1024)
        results, misses = await self._gather([cid], 1, [candidates], [0], MAX_BLOCK_BYTES, hedge)
        if 0 in results:
            return results[0]
        found = misses.get(0, [])
        text = cid_to_text(cid)
        if not candidates:
            raise PeerError(f"block {text}: no live peer to ask")
        if all(m.status == 404 for m in found):
            raise NotFound(f"block {text}: no peer holds it")
        raise PeerError(f"block {text}: no peer gave a verified copy: " + "; ".join(map(str, found)))

    # -- writes ---------------------------------------------------------------------------

    async def _put(self, peer: Peer, path: str, body: bytes | memoryview, content_type: str) -> None:
        """PUT, or raise :class:`_Miss` (``fatal`` when another peer would refuse it the same way)."""
        ans = await self._call(peer, "PUT", path, body=body, content_type=content_type, auth=True, retries=0)
        if ans.status in (200, 201, 204):
            return
        if ans.status == 507:
            peer.full_at = time.monotonic()
            raise _Miss(peer, f"full (HTTP 507){ans.error}", status=507)
        if ans.status in (401, 403):
            hint = "no token given" if not self.token else "token refused"
            raise _Miss(peer, f"HTTP {ans.status}{ans.error}: {hint} (--token / DSTORE_TOKEN)", status=401, fatal=True)
        raise _Miss(peer, f"HTTP {ans.status}{ans.error}", status=ans.status, fatal=400 <= ans.status < 500)

    def _put_semaphore(self) -> asyncio.Semaphore:
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
        self._maybe_revive()
        ranking = self.rank(key)
        if not ranking:
            raise PeerError("no live peer to place the pack on (check --peers / DSTORE_PEERS)")
        used: set[Peer] = set()
        held: Counter[Peer] = Counter()
        position = {p: n for n, p in enumerate(ranking)}
        local = asyncio.Semaphore(max(1, concurrency))
        slots = self._put_semaphore()

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
                            await self._put(peer, path, data, "application/octet-stream")
                    except _Miss as e:
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

        return await _run_all(place(i, cid, data) for i, (cid, data) in enumerate(shards))

    async def _replicate(
        self, key: bytes, copies: int, what: str, path: str, body: bytes | memoryview, content_type: str
    ) -> list[str]:
        """PUT to the first ``copies`` peers of ``rank(key)`` that take it; their IDs in ranking order."""
        ranking = self.rank(key)
        if not ranking:
            raise PeerError(f"{what}: no live peer (check --peers / DSTORE_PEERS)")
        queue = iter(sorted(ranking, key=lambda p: p.full))  # stable: ranking order, known-full peers last
        took: list[Peer] = []
        misses: list[str] = []

        async def worker() -> None:
            for peer in queue:
                try:
                    async with self._put_semaphore():
                        await self._put(peer, path, body, content_type)
                except _Miss as e:
                    if e.fatal:
                        raise PeerError(f"{what}: {e}", status=e.status, url=peer.url) from e
                    misses.append(str(e))
                else:
                    took.append(peer)
                    return

        await _run_all(worker() for _ in range(max(1, copies)))
        if not took:
            raise PeerError(f"{what}: no peer took it: " + "; ".join(misses))
        return [p.peer_id for p in ranking if p in took and p.peer_id]

    async def put_block(self, key: bytes, cid: CID, data: bytes | memoryview, copies: int) -> list[str]:
        """Store one block on the first ``copies`` ranked peers that take it (falling down the ranking).

        Returns the IDs of the peers that took it (fewer than ``copies`` only
        when fewer peers would); PeerError if none did.
        """
        return await self._replicate(
            key, copies, f"block {cid_to_text(cid)}", f"/shards/{cid_to_text(cid)}", data, "application/octet-stream"
        )

    async def put_pointer(self, dataset: CID, pointer: dict, copies: int) -> list[str]:
        """``PUT /datasets/{dataset}`` on the first ``copies`` peers of ``rank(dataset)`` that take it."""
        body = json.dumps(pointer, separators=(",", ":"), sort_keys=True).encode()
        if len(body) > MAX_POINTER_BYTES:
            raise ValueError(f"dataset pointer of {len(body)} bytes is over {MAX_POINTER_BYTES}")
        text = cid_to_text(dataset)
        return await self._replicate(
            dataset.to_bytes(), copies, f"dataset pointer {text}", f"/datasets/{text}", body, "application/json"
        )

    async def get_pointer(self, dataset: CID, *, validate: Callable[[dict], object] | None = None) -> dict | None:
        """The dataset's pointer from the first peer of ``rank(dataset)`` to give a valid one.

        Peers are asked in ranking order, ``POINTER_CONCURRENCY`` at a time. A
        valid answer is a JSON object that ``validate`` (if given) accepts
        without raising or returning a false value. None if every peer that
        answered had none; PeerError if some could not answer and none had it.
        """
        key = dataset.to_bytes()
        path = f"/datasets/{cid_to_text(dataset)}"
        ranking = iter(self.rank(key))
        misses: list[_Miss] = []
        answered = 0

        async def ask(peer: Peer) -> dict | None:
            nonlocal answered
            ans = await self._call(peer, "GET", path, limit=MAX_POINTER_BYTES)
            if ans.status == 404:
                answered += 1
                return None
            if ans.status != 200:
                raise _Miss(peer, f"HTTP {ans.status}{ans.error}", status=ans.status)
            answered += 1
            try:
                obj = json.loads(ans.body)
                if not isinstance(obj, dict) or (validate is not None and not validate(obj)):
                    raise ValueError("not a valid pointer")
            except Exception as e:
                raise _Miss(peer, f"invalid dataset pointer ({e})", status=200) from e
            return obj

        running: set[asyncio.Future[dict | None]] = set()

        def launch() -> None:
            peer = next(ranking, None)
            if peer is not None:
                running.add(asyncio.ensure_future(ask(peer)))

        for _ in range(POINTER_CONCURRENCY):
            launch()
        try:
            while running:
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    running.discard(task)
                    try:
                        obj = task.result()
                    except _Miss as e:
                        misses.append(e)
                        obj = None
                    if obj is not None:
                        return obj
                    launch()
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        if answered and all(m.status == 200 for m in misses):
            return None
        if not misses and not answered:
            raise PeerError(f"dataset pointer {cid_to_text(dataset)}: no live peer (check --peers / DSTORE_PEERS)")
        raise PeerError(f"dataset pointer {cid_to_text(dataset)}: not found, and " + "; ".join(map(str, misses)))
