"""One storage peer's address, identity and health, and the rendezvous ranking of peers.

Rendezvous (highest-random-weight) hashing: for a key (a pack or dataset ID,
as binary CID bytes) every peer gets the weight ``blake3(key || peer_id)``
read as a 256-bit big-endian integer, and peers are ranked by weight,
highest first. The ranking needs no coordination, depends only on the key
and the set of peer IDs (not on addresses or their order), and removing a
peer moves only the keys that peer held: everybody else keeps their place
relative to each other.

:class:`PeerTable` is the client's list of peers: which are alive, which
peer has an ID, and the ranking of the live (or of all known) peers for a key.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dstore._native import blake3

__all__ = ["BAD_BYTES_PENALTY_S", "DEFAULT_LATENCY_S", "FULL_RETRY_S", "Peer", "PeerTable", "hrw_rank", "hrw_weight"]

#: Latency assumed for a peer with no observation yet.
DEFAULT_LATENCY_S = 0.02
#: Cost added per response that failed its CID: far above any honest latency.
BAD_BYTES_PENALTY_S = 60.0
#: A peer that answered 507 (full) is not offered new blocks for this long.
FULL_RETRY_S = 60.0
#: Weight of a new observation in the latency and error EWMAs.
EWMA_ALPHA = 0.2


def hrw_weight(key: bytes, peer_id: str) -> int:
    """Rendezvous weight of ``peer_id`` for ``key``: ``int.from_bytes(blake3(key + peer_id.encode()), "big")``."""
    return int.from_bytes(blake3(bytes(key) + peer_id.encode()), "big")


def hrw_rank(key: bytes, peer_ids: Iterable[str]) -> list[str]:
    """``peer_ids`` by descending :func:`hrw_weight` for ``key`` (ties, which need a BLAKE3 collision, by ID)."""
    return sorted(set(peer_ids), key=lambda pid: (hrw_weight(key, pid), pid), reverse=True)


@dataclass(eq=False)
class Peer:
    """A storage peer as this client sees it.

    ``peer_id`` is learned from ``GET /health`` (None until the peer has
    answered once); ``alive`` goes false when a connection to it is refused
    and true again when it answers. The health figures steer later requests
    through :attr:`cost_s` / :attr:`score`.
    """

    url: str
    peer_id: str | None = None
    alive: bool = False
    #: EWMA of the time to response headers, seconds (None until observed).
    latency_ewma_s: float | None = None
    #: EWMA of body throughput (bytes/s) over large responses (None until observed).
    throughput_ewma_bps: float | None = None
    #: EWMA of the failure rate of requests (0 = none failed lately, 1 = all).
    error_ewma: float = 0.0
    requests: int = 0
    errors: int = 0
    #: Responses that did not hash to the CID asked for.
    bad_bytes: int = 0
    #: ``time.monotonic()`` of the last 507 answer, or None.
    full_at: float | None = None
    #: Stats reported by ``/health`` at connect (bytes_stored, capacity, …).
    health: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        """Short label for messages: the peer ID's tail if known, else the URL."""
        return f"{self.url} ({self.peer_id[-8:]})" if self.peer_id else self.url

    @property
    def cost_s(self) -> float:
        """Expected cost of asking this peer, in seconds-ish: lower is better, ``inf`` if not alive.

        Latency EWMA, inflated by the recent error rate, plus a large penalty
        per bad response — a peer that served wrong bytes goes behind every
        honest one.
        """
        if not self.alive:
            return math.inf
        latency = self.latency_ewma_s if self.latency_ewma_s is not None else DEFAULT_LATENCY_S
        return latency * (1.0 + 10.0 * self.error_ewma) + BAD_BYTES_PENALTY_S * self.bad_bytes

    @property
    def score(self) -> float:
        """Health in (0, 1], higher is better: ``1 / (1 + cost_s / DEFAULT_LATENCY_S)``; 0 if not alive."""
        cost = self.cost_s
        return 0.0 if math.isinf(cost) else 1.0 / (1.0 + cost / DEFAULT_LATENCY_S)

    @property
    def full(self) -> bool:
        """True while a recent 507 says this peer has no room."""
        return self.full_at is not None and time.monotonic() - self.full_at < FULL_RETRY_S

    def weight(self, key: bytes) -> int:
        """This peer's rendezvous weight for ``key`` (0 without a peer ID)."""
        return hrw_weight(key, self.peer_id) if self.peer_id else 0

    # -- observations ------------------------------------------------------

    def observe_latency(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        if self.latency_ewma_s is None:
            self.latency_ewma_s = seconds
        else:
            self.latency_ewma_s += EWMA_ALPHA * (seconds - self.latency_ewma_s)

    def observe_slow(self, seconds: float) -> None:
        """A request was abandoned (hedged, timed out) after ``seconds`` without an answer.

        Its latency was at least that; the estimate jumps there at once, so the
        next choice already avoids this peer, and comes down again with answers.
        """
        if self.latency_ewma_s is None or seconds > self.latency_ewma_s:
            self.latency_ewma_s = max(0.0, seconds)

    def observe_throughput(self, nbytes: int, seconds: float) -> None:
        if nbytes < 256 * 1024 or seconds <= 0:
            return
        bps = nbytes / seconds
        if self.throughput_ewma_bps is None:
            self.throughput_ewma_bps = bps
        else:
            self.throughput_ewma_bps += EWMA_ALPHA * (bps - self.throughput_ewma_bps)

    def record_ok(self) -> None:
        """A request got a well-formed answer (a 404 counts: the peer is healthy)."""
        self.requests += 1
        self.alive = True
        self.error_ewma *= 1.0 - EWMA_ALPHA

    def record_error(self) -> None:
        """A request failed (5xx, timeout, dropped connection)."""
        self.requests += 1
        self.errors += 1
        self.error_ewma += EWMA_ALPHA * (1.0 - self.error_ewma)

    def record_unreachable(self) -> None:
        """A connection was refused: the peer is down until it answers again."""
        self.record_error()
        self.alive = False

    def record_bad_bytes(self) -> None:
        self.record_error()
        self.bad_bytes += 1


class PeerTable:
    """The peers a client knows, in the order given; ranking and lookup by peer ID."""

    def __init__(self, peers: Sequence[Peer]) -> None:
        self.peers: list[Peer] = list(peers)

    @property
    def alive(self) -> list[Peer]:
        """Peers that answered lately and have an ID."""
        return [p for p in self.peers if p.alive and p.peer_id]

    def peer_by_id(self, peer_id: str | None) -> Peer | None:
        """The peer with this ID, a live one first when it was reached under two addresses."""
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
        """Live peers by rendezvous weight for ``key``, highest first (see :func:`hrw_weight`)."""
        return rank_peers(key, self.alive)

    def rank_known(self, key: bytes) -> list[Peer]:
        """Every peer with a known ID, alive or not: where a pack went if all were alive when it was placed."""
        seen: dict[str, Peer] = {}
        for p in self.peers:
            if p.peer_id and (p.peer_id not in seen or (p.alive and not seen[p.peer_id].alive)):
                seen[p.peer_id] = p
        return rank_peers(key, seen.values())


def rank_peers(key: bytes, peers: Iterable[Peer]) -> list[Peer]:
    """``peers`` by descending rendezvous weight for ``key`` (ties by peer ID)."""
    key = bytes(key)
    return sorted(peers, key=lambda p: (hrw_weight(key, p.peer_id or ""), p.peer_id or ""), reverse=True)
