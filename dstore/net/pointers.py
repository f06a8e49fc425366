"""Dataset pointers on peers: ``PUT /datasets/{id}`` to the first ranked peers, and reading them back.

A pointer is the one mutable record (docs/format.md, "Datasets on peers"). Peers
may hold different ones (an older version, a lying peer): readers get every
distinct valid pointer, newest (highest ``seq``) first, and try them in turn.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import aiohttp

from dstore.errors import PeerError
from dstore.format.cid import CID, cid_to_text
from dstore.limits import MAX_POINTER_BYTES
from dstore.net.peers import Peer, PeerTable
from dstore.net.tasks import run_all
from dstore.net.transport import Miss, Transport

__all__ = ["POINTER_PEERS", "POINTER_TIMEOUT_S", "Pointers", "StalePointer"]

#: Peers asked at once for a dataset's pointers (pointers live on the first k + m of the ranking).
POINTER_PEERS = 8
#: Bound on one pointer request, so one hung peer does not hold a read up for the whole read timeout.
POINTER_TIMEOUT_S = 10.0


class StalePointer(PeerError):
    """Every peer asked already holds a newer pointer for the dataset (409 ``stale_pointer``): this one went nowhere."""


def canonical_json(obj: object) -> bytes:
    """The one byte form of a JSON value: sorted keys, no spaces (what is sent, and what dedupes)."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def pointer_seq(obj: dict) -> int:
    """A pointer's ``seq`` (higher is newer); 0 when missing or not an integer."""
    seq = obj.get("seq", 0)
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else 0


class Pointers:
    """Writes and reads dataset pointers on the peers of a :class:`PeerTable`."""

    def __init__(self, transport: Transport, table: PeerTable) -> None:
        self.transport = transport
        self.table = table

    async def put_pointer(self, dataset: CID, pointer: dict, copies: int) -> list[str]:
        """``PUT /datasets/{dataset}`` on the first ``copies`` peers of ``rank(dataset)`` that take it.

        Returns the IDs of the peers that took it, in ranking order. A peer that
        answers 409 already holds a newer pointer (or another one of the same
        ``seq``) and keeps it: that is no failure, and the copy is not moved
        further down the ranking (a stale pointer is no use there). Raises
        :class:`StalePointer` when every peer asked answered 409, PeerError when
        no peer took it for other reasons.
        """
        body = canonical_json(pointer)
        if len(body) > MAX_POINTER_BYTES:
            raise ValueError(f"dataset pointer of {len(body)} bytes is over {MAX_POINTER_BYTES}")
        text = cid_to_text(dataset)
        what = f"dataset pointer {text}"
        ranking = self.table.rank(dataset.to_bytes())
        if not ranking:
            raise PeerError(f"{what}: no live peer (check --peers / DSTORE_PEERS)")
        queue = iter(sorted(ranking, key=lambda p: p.full))  # stable: ranking order, known-full peers last
        took: list[Peer] = []
        newer: list[str] = []
        misses: list[str] = []

        async def worker() -> None:
            for peer in queue:
                try:
                    await self.transport.put(peer, f"/datasets/{text}", body, "application/json")
                except Miss as e:
                    if e.status == 409:
                        newer.append(str(e))
                        return
                    if e.fatal:
                        raise PeerError(f"{what}: {e}", status=e.status, url=peer.url) from e
                    misses.append(str(e))
                else:
                    took.append(peer)
                    return

        await run_all(worker() for _ in range(max(1, copies)))
        if not took and newer and not misses:
            raise StalePointer(f"{what}: every peer asked keeps a newer one: " + "; ".join(newer), status=409)
        if not took:
            raise PeerError(f"{what}: no peer took it: " + "; ".join(newer + misses))
        return [p.peer_id for p in ranking if p in took and p.peer_id]

    async def get_pointers(
        self, dataset: CID, *, validate: Callable[[dict], object] | None = None, max_peers: int = POINTER_PEERS
    ) -> list[dict]:
        """Every distinct valid pointer the peers hold for ``dataset``, highest ``seq`` first.

        The first ``max_peers`` of ``rank(dataset)`` are asked at once; only
        when none of them has a valid pointer are the next ``max_peers`` asked,
        and so on down the ranking. A valid answer is a JSON object that
        ``validate`` (if given) accepts without raising or returning a false
        value. Duplicates (same canonical JSON) count once; equal ``seq`` keep
        ranking order. ``[]`` when the peers that answered have none;
        PeerError only when no peer could answer at all.
        """
        found, misses, answered = await self._collect(dataset, validate, max(1, max_peers))
        if not found and not answered:
            text = cid_to_text(dataset)
            if not misses:
                raise PeerError(f"dataset pointer {text}: no live peer (check --peers / DSTORE_PEERS)")
            raise PeerError(f"dataset pointer {text}: no peer answered: " + "; ".join(map(str, misses)))
        return found

    async def get_pointer(self, dataset: CID, *, validate: Callable[[dict], object] | None = None) -> dict | None:
        """The newest valid pointer (the first of :meth:`get_pointers`).

        None if every peer that answered had none; PeerError if some could not
        answer and none had one.
        """
        found, misses, answered = await self._collect(dataset, validate, POINTER_PEERS)
        if found:
            return found[0]
        if answered and all(m.status == 200 for m in misses):
            return None
        text = cid_to_text(dataset)
        if not misses:
            raise PeerError(f"dataset pointer {text}: no live peer (check --peers / DSTORE_PEERS)")
        raise PeerError(f"dataset pointer {text}: not found, and " + "; ".join(map(str, misses)))

    async def _collect(
        self, dataset: CID, validate: Callable[[dict], object] | None, batch: int
    ) -> tuple[list[dict], list[Miss], int]:
        """(distinct valid pointers newest first, the misses, how many peers answered at all)."""
        path = f"/datasets/{cid_to_text(dataset)}"
        ranking = self.table.rank(dataset.to_bytes())
        misses: list[Miss] = []
        answered = 0
        timeout = aiohttp.ClientTimeout(total=POINTER_TIMEOUT_S)

        async def ask(peer: Peer) -> dict | None:
            nonlocal answered
            try:
                ans = await self.transport.call(peer, "GET", path, limit=MAX_POINTER_BYTES, timeout=timeout)
                if ans.status == 404:
                    answered += 1
                    return None
                if ans.status != 200:
                    raise Miss(peer, f"HTTP {ans.status}{ans.error}", status=ans.status)
                answered += 1
                try:
                    obj = json.loads(ans.body)
                    if not isinstance(obj, dict) or (validate is not None and not validate(obj)):
                        raise ValueError("not a valid pointer")
                except Exception as e:
                    raise Miss(peer, f"invalid dataset pointer ({e})", status=200) from e
                return obj
            except Miss as e:
                misses.append(e)
                return None

        found: dict[bytes, dict] = {}
        for start in range(0, len(ranking), batch):
            answers: Sequence[dict | None] = await run_all(ask(p) for p in ranking[start : start + batch])
            for obj in answers:  # ranking order, so ties in seq keep it
                if obj is not None:
                    found.setdefault(canonical_json(obj), obj)
            if found:
                break
        return sorted(found.values(), key=pointer_seq, reverse=True), misses, answered
