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
from dstore.net.placement import Placement
from dstore.net.tasks import run_all
from dstore.net.transport import Miss, Transport

__all__ = ["POINTER_PEERS", "POINTER_TIMEOUT_S", "Pointers"]

#: Peers asked at once for a dataset's pointers (pointers live on the first k + m of the ranking).
POINTER_PEERS = 8
#: Bound on one pointer request, so one hung peer does not hold a read up for the whole read timeout.
POINTER_TIMEOUT_S = 10.0


def canonical_json(obj: object) -> bytes:
    """The one byte form of a JSON value: sorted keys, no spaces (what is sent, and what dedupes)."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def pointer_seq(obj: dict) -> int:
    """A pointer's ``seq`` (higher is newer); 0 when missing or not an integer."""
    seq = obj.get("seq", 0)
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else 0


class Pointers:
    """Writes and reads dataset pointers on the peers of a :class:`PeerTable`."""

    def __init__(self, transport: Transport, table: PeerTable, placement: Placement) -> None:
        self.transport = transport
        self.table = table
        self.placement = placement

    async def put_pointer(self, dataset: CID, pointer: dict, copies: int) -> list[str]:
        """``PUT /datasets/{dataset}`` on the first ``copies`` peers of ``rank(dataset)`` that take it."""
        body = canonical_json(pointer)
        if len(body) > MAX_POINTER_BYTES:
            raise ValueError(f"dataset pointer of {len(body)} bytes is over {MAX_POINTER_BYTES}")
        text = cid_to_text(dataset)
        return await self.placement.replicate(
            dataset.to_bytes(), copies, f"dataset pointer {text}", f"/datasets/{text}", body, "application/json"
        )

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
