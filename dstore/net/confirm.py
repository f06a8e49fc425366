"""Confirm that given peers hold given shards: one concurrent round of ``HEAD /shards/{cid}``.

Dedup asks this before it reuses a pack recorded in the local index: the
index remembers where shards went, which is not proof that they are still
there (docs/format.md, "When dedup reuses a pack"). Positive answers are
remembered for ``CONFIRMED_TTL_S``; negative ones are never cached, so a shard
put back (repair, a re-add) is seen at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from dstore.errors import PeerError
from dstore.format.cid import CID

__all__ = ["CONFIRMED_TTL_S", "CONFIRM_CONCURRENCY", "confirm_shards"]

#: How long a peer's "I hold this shard" is trusted without asking again.
CONFIRMED_TTL_S = 60.0
#: HEAD requests in flight at once for one batch.
CONFIRM_CONCURRENCY = 16
#: Positive confirmations remembered at most (oldest dropped first).
MAX_CONFIRMED_ENTRIES = 100_000

# (peer ID, shard CID bytes) -> time.monotonic() of the confirmation. Peer IDs
# are identities (keys), not addresses, so one cache serves every PeerSet;
# the lock because each SyncPeerSet runs its own loop thread.
_confirmed: OrderedDict[tuple[str, bytes], float] = OrderedDict()
_lock = threading.Lock()


def _cached(key: tuple[str, bytes], now: float) -> bool:
    with _lock:
        at = _confirmed.get(key)
        if at is None:
            return False
        if now - at < CONFIRMED_TTL_S:
            return True
        del _confirmed[key]
        return False


def _remember(key: tuple[str, bytes], now: float) -> None:
    with _lock:
        _confirmed[key] = now
        _confirmed.move_to_end(key)
        while len(_confirmed) > MAX_CONFIRMED_ENTRIES:
            _confirmed.popitem(last=False)


async def confirm_shards(peerset: Any, items: Sequence[tuple[str, CID]]) -> list[bool]:
    """For each ``(peer ID, shard CID)``: True iff that peer is a live peer of ``peerset`` and answers 200.

    ``peerset`` is a :class:`dstore.net.client.PeerSet` (its ``peer_by_id``
    and ``head``). A peer that is unknown, down, or cannot answer (timeout,
    5xx) counts as not holding the shard. Requests run concurrently, at most
    ``CONFIRM_CONCURRENCY`` at once; an item asked twice is asked once.
    """
    now = time.monotonic()
    answers: dict[tuple[str, bytes], bool] = {}
    to_ask: dict[tuple[str, bytes], tuple[Any, CID]] = {}
    for peer_id, cid in items:
        key = (peer_id, cid.to_bytes())
        if key in answers or key in to_ask:
            continue
        peer = peerset.peer_by_id(peer_id)
        if peer is None or not peer.alive:
            answers[key] = False
        elif _cached(key, now):
            answers[key] = True
        else:
            to_ask[key] = (peer, cid)
    slots = asyncio.Semaphore(CONFIRM_CONCURRENCY)

    async def ask(key: tuple[str, bytes], peer: Any, cid: CID) -> None:
        async with slots:
            try:
                held = await peerset.head(peer, cid)
            except PeerError:
                held = False
        answers[key] = held
        if held:
            _remember(key, time.monotonic())

    await asyncio.gather(*(ask(key, peer, cid) for key, (peer, cid) in to_ask.items()))
    return [answers[(peer_id, cid.to_bytes())] for peer_id, cid in items]
