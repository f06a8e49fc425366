"""Reads from one peer, verified: ``GET`` a block and check it against its CID, ``HEAD`` to ask who holds it.

Also :class:`ShardConfirmer`, the batched ``HEAD`` that tells dedup whether a
pack's shards really are on the peers that took them.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence

from dstore._native import blake3
from dstore.format.cid import CID, HASH_NAMES, cid_to_text
from dstore.net.peers import Peer, PeerTable
from dstore.net.tasks import run_all
from dstore.net.transport import Miss, Transport

__all__ = [
    "CONFIRM_CACHE_S",
    "CONFIRM_CONCURRENCY",
    "LOCATE_CONCURRENCY",
    "ShardConfirmer",
    "get_verified",
    "head",
    "locate",
    "verify_block",
]

#: HEAD requests in flight at once when looking for a shard's holders.
LOCATE_CONCURRENCY = 8
#: HEAD requests in flight at once when confirming shards.
CONFIRM_CONCURRENCY = 16
#: A peer's "yes, I hold it" is believed for this long without asking again.
CONFIRM_CACHE_S = 60.0
#: Positive confirmations remembered at most (oldest forgotten first).
CONFIRM_CACHE_ENTRIES = 1 << 16
#: Hash offloaded to a worker thread above this size, so the event loop keeps serving other transfers.
THREAD_HASH_BYTES = 4 * 1024 * 1024


def verify_block(cid: CID, data: bytes | bytearray | memoryview) -> bool:
    """True if ``data`` hashes to ``cid``'s multihash (BLAKE3 or SHA2-256; False for any other hash).

    Both hash the buffer in place with the GIL released (native BLAKE3; hashlib's SHA-256 above 2 KiB).
    """
    name = HASH_NAMES.get(cid.hash.code)
    if name == "blake3":
        digest = blake3(data)
    elif name == "sha2-256":
        digest = hashlib.sha256(data).digest()
    else:
        return False
    return digest == bytes(cid.hash.digest)


async def head(transport: Transport, peer: Peer, cid: CID) -> bool:
    """Whether ``peer`` says it holds ``cid`` (``HEAD /shards/{cid}``); :class:`Miss` if it cannot say."""
    ans = await transport.call(peer, "HEAD", f"/shards/{cid_to_text(cid)}", data_plane=True)
    if ans.status in (200, 204):
        return True
    if ans.status == 404:
        return False
    raise Miss(peer, f"HTTP {ans.status}{ans.error}", status=ans.status)


async def get_verified(
    transport: Transport, peer: Peer, cid: CID, limit: int, *, verify: bool = True
) -> bytes | bytearray:
    """``cid``'s bytes from ``peer`` (at most ``limit``), checked against the CID; :class:`Miss` if not.

    The bytes are the buffer the body was received into (no copy). ``verify=False``: not checked, for a
    caller that checks every chunk it decodes from them and falls back to verified shards when one fails.
    """
    ans = await transport.call(peer, "GET", f"/shards/{cid_to_text(cid)}", limit=limit, data_plane=True)
    if ans.status == 200:
        if not verify:
            return ans.body
        if len(ans.body) >= THREAD_HASH_BYTES:
            good = await asyncio.to_thread(verify_block, cid, ans.body)
        else:
            good = verify_block(cid, ans.body)
        if not good:
            peer.record_bad_bytes()
            raise Miss(peer, "bad bytes (do not hash to the CID)", status=200)
        return ans.body
    reason = "not found" if ans.status == 404 else f"HTTP {ans.status}{ans.error}"
    raise Miss(peer, reason, status=ans.status)


async def locate(transport: Transport, cid: CID, peers: Sequence[Peer], misses: list[Miss]) -> list[Peer]:
    """The peers among ``peers`` that say (HEAD) they hold ``cid``, best score first; failures go to ``misses``."""
    slots = asyncio.Semaphore(LOCATE_CONCURRENCY)

    async def ask(p: Peer) -> bool:
        async with slots:
            if not p.alive:
                return False
            try:
                return await head(transport, p, cid)
            except Miss as e:
                misses.append(e)
                return False

    found = await run_all(ask(p) for p in peers)
    return sorted((p for p, yes in zip(peers, found, strict=True) if yes), key=lambda p: p.cost_s)


class ShardConfirmer:
    """Whether given peers hold given shards now: batched ``HEAD``, positive answers cached briefly."""

    def __init__(self, transport: Transport, table: PeerTable) -> None:
        self.transport = transport
        self.table = table
        self._confirmed: dict[tuple[str, bytes], float] = {}  # (peer ID, CID bytes) -> monotonic time

    async def confirm(self, items: Sequence[tuple[str, CID]]) -> list[bool]:
        """For each (peer ID, shard CID): True if that peer is live now and says it holds the shard.

        A peer not in the live set, an error or a 404 give False. Each
        distinct pair is asked once, ``CONFIRM_CONCURRENCY`` at a time; a
        "yes" is remembered for ``CONFIRM_CACHE_S`` (still only while the
        peer is live).
        """
        now = time.monotonic()
        live = {p.peer_id: p for p in self.table.alive}
        answers: dict[tuple[str, bytes], bool] = {}
        to_ask: dict[tuple[str, bytes], tuple[Peer, CID]] = {}
        for peer_id, cid in items:
            key = (peer_id, cid.to_bytes())
            peer = live.get(peer_id)
            if key in answers or key in to_ask:
                continue
            if peer is None:
                answers[key] = False
            elif now - self._confirmed.get(key, -float("inf")) < CONFIRM_CACHE_S:
                answers[key] = True
            else:
                to_ask[key] = (peer, cid)
        slots = asyncio.Semaphore(CONFIRM_CONCURRENCY)

        async def ask(peer: Peer, cid: CID) -> bool:
            async with slots:
                try:
                    return await head(self.transport, peer, cid)
                except Miss:
                    return False

        found = await run_all(ask(peer, cid) for peer, cid in to_ask.values())
        for key, yes in zip(to_ask, found, strict=True):
            answers[key] = yes
            if yes:
                self._remember(key, time.monotonic())
        return [answers[(peer_id, cid.to_bytes())] for peer_id, cid in items]

    def _remember(self, key: tuple[str, bytes], when: float) -> None:
        self._confirmed.pop(key, None)
        self._confirmed[key] = when  # dicts keep insertion order: the oldest entry comes first
        while len(self._confirmed) > CONFIRM_CACHE_ENTRIES:
            del self._confirmed[next(iter(self._confirmed))]
