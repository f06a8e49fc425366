"""What the layers above the network (ingest, fetch, the CLI) may ask of a set of storage peers.

:class:`PeerClient` is the synchronous face they use; :class:`dstore.net.sync.SyncPeerSet`
implements it. Typing against the protocol keeps those layers free of the
network's internals, and lets a test or a future transport stand in.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from dstore.format.cid import CID
from dstore.format.pack import PackRecord
from dstore.net.peers import Peer

if TYPE_CHECKING:  # pins and ranges load aiohttp; importing the protocol must not
    from dstore.net.pins import PinReport
    from dstore.net.ranges import RangeCall, RangeRead

__all__ = ["PeerClient"]


class PeerClient(Protocol):
    """Storage peers spoken to over HTTP (docs/http-api.md), blocking. Errors are :mod:`dstore.errors`."""

    @property
    def peers(self) -> list[Peer]:
        """Every peer configured, alive or not."""
        ...

    def rank(self, key: bytes) -> list[Peer]:
        """Live peers by rendezvous weight for ``key``, highest first."""
        ...

    def refresh(self) -> None:
        """Ask every peer for ``/health`` again."""
        ...

    def peer_by_id(self, peer_id: str | None) -> Peer | None:
        """The peer with this ID (a live one first), or None."""
        ...

    def put_pack(
        self, key: bytes, shards: Sequence[tuple[CID, bytes | memoryview]], *, concurrency: int = 8
    ) -> list[str]:
        """Place shard i on the i-th ranked peer for ``key`` (falling down the ranking); the holders' IDs."""
        ...

    def submit_put_pack(
        self, key: bytes, shards: Sequence[tuple[CID, bytes | memoryview]], *, concurrency: int = 8
    ) -> concurrent.futures.Future[list[str]]:
        """:meth:`put_pack` started in the background (buffers must not change until it is done)."""
        ...

    def put_block(self, key: bytes, cid: CID, data: bytes | memoryview, copies: int) -> list[str]:
        """One block on the first ``copies`` ranked peers that take it; their IDs."""
        ...

    def fetch_pack(
        self,
        record: PackRecord,
        key: bytes,
        hints: Sequence[str | None] | None = None,
        *,
        hedge_after_s: float | None = None,
        verify: bool = True,
    ) -> list[bytes | bytearray | None]:
        """At least k verified shards of a pack (None elsewhere), hedged; NotEnoughShards otherwise.

        ``verify=False``: only their lengths are checked (the caller checks the chunks it decodes from them,
        and fetches the pack again verified when one fails).
        """
        ...

    def submit_fetch_pack(
        self,
        record: PackRecord,
        key: bytes,
        hints: Sequence[str | None] | None = None,
        *,
        hedge_after_s: float | None = None,
        verify: bool = True,
    ) -> concurrent.futures.Future[list[bytes | bytearray | None]]:
        """:meth:`fetch_pack` started in the background (for read-ahead)."""
        ...

    def fetch_range(
        self,
        record: PackRecord,
        key: bytes,
        shard: int,
        offset: int,
        length: int,
        hints: Sequence[str | None] | None = None,
    ) -> RangeRead:
        """``length`` unverified bytes of data shard ``shard`` at ``offset`` (``Range``); NotFound or PeerError.

        The caller checks every chunk it decodes from them, and calls
        :meth:`report_bad_range` with ``peer_id`` of a range whose chunks failed.
        """
        ...

    def fetch_ranges(self, calls: Sequence[RangeCall]) -> list[RangeRead | None]:
        """Many :meth:`fetch_range` calls, concurrently: for each its unverified bytes, or None if no peer
        asked served them."""
        ...

    def report_bad_range(self, peer_id: str | None) -> None:
        """Score down the peer whose range bytes failed their chunk check."""
        ...

    def get_block(self, cid: CID, key: bytes, hints: Sequence[str | None] | None = None) -> bytes:
        """A verified copy of one block from any peer; NotFound or PeerError otherwise."""
        ...

    def confirm_shards(self, items: Sequence[tuple[str, CID]]) -> list[bool]:
        """For each (peer ID, shard CID): True if that peer is live and says (HEAD) it holds the shard."""
        ...

    def put_pointer(self, dataset: CID, pointer: dict, copies: int) -> list[str]:
        """The dataset's pointer on the first ``copies`` ranked peers that take it; their IDs."""
        ...

    def get_pointer(self, dataset: CID, *, validate: Callable[[dict], object] | None = None) -> dict | None:
        """The newest valid pointer, None if the peers that answered have none."""
        ...

    def get_pointers(
        self, dataset: CID, *, validate: Callable[[dict], object] | None = None, max_peers: int = ...
    ) -> list[dict]:
        """Every distinct valid pointer, highest ``seq`` first; PeerError only if no peer could answer."""
        ...

    def pin(self, dataset: CID, peers: Iterable[str] | None = None) -> PinReport:
        """``PUT /pins/{dataset}`` on the peers with these IDs (default: every live peer); each one's answer."""
        ...

    def unpin(self, dataset: CID) -> PinReport:
        """``DELETE /pins/{dataset}`` on every peer of the set; each one's answer (no pin there is no failure)."""
        ...

    def head(self, peer: Peer, cid: CID) -> bool:
        """Whether this one peer holds ``cid``; PeerError if it cannot say."""
        ...

    def get_from(self, peer: Peer, cid: CID) -> bytes:
        """``cid``'s verified bytes from this one peer; PeerError saying why not."""
        ...

    def put_to(self, peer: Peer, cid: CID, data: bytes | memoryview) -> None:
        """Store ``cid`` on this one peer (repair); PeerError saying why not."""
        ...

    def close(self) -> None:
        """Release the connections (idempotent)."""
        ...
