"""A blocking face on :class:`dstore.net.client.PeerSet` for the synchronous add and get pipelines.

:class:`SyncPeerSet` implements :class:`dstore.net.protocol.PeerClient`, the
face ingest, fetch and the CLI use.

One event loop runs in a daemon thread; each call submits a coroutine to it
with :func:`asyncio.run_coroutine_threadsafe` and waits for the result.
Buffers handed to :meth:`SyncPeerSet.submit_put_pack` must not change until
its future is done.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from dstore.format.cid import CID
from dstore.format.pack import PackRecord
from dstore.net.client import PeerSet
from dstore.net.peers import Peer
from dstore.net.pins import PinReport
from dstore.net.pointers import POINTER_PEERS
from dstore.net.ranges import RangeCall, RangeRead

__all__ = ["SyncPeerSet"]

T = TypeVar("T")


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        tasks = asyncio.all_tasks(loop)
        for t in tasks:
            t.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


#: How long a peer set left open may take to close when collected or at exit.
ABANDONED_CLOSE_TIMEOUT_S = 5.0


def _shut_down(peerset: PeerSet, loop: asyncio.AbstractEventLoop, thread: threading.Thread, pid: int) -> None:
    """Close an abandoned peer set's session and stop its loop, bounded (never in a forked child: the
    loop thread is the parent's; never waiting from the loop's own thread)."""
    if os.getpid() != pid or loop.is_closed():
        return
    try:
        fut = asyncio.run_coroutine_threadsafe(peerset.close(), loop)
        if threading.current_thread() is not thread:
            fut.result(timeout=ABANDONED_CLOSE_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - abandoned: nobody to report to
        pass
    loop.call_soon_threadsafe(loop.stop)
    if threading.current_thread() is not thread:
        thread.join(timeout=ABANDONED_CLOSE_TIMEOUT_S)


class SyncPeerSet:
    """The :class:`PeerSet` API, blocking: a :class:`dstore.net.protocol.PeerClient`.

    Build with :meth:`connect`; :meth:`close` (or ``with``) when done.
    """

    def __init__(self, peerset: PeerSet, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self._ps = peerset
        self._loop = loop
        self._thread = thread
        self._closed = False
        # A peer set nobody closed (a SampleStream, a dstore.open without `with`) is closed when it is
        # collected or at exit, so aiohttp does not complain of an unclosed session.
        self._finalizer = weakref.finalize(self, _shut_down, peerset, loop, thread, os.getpid())

    @classmethod
    def connect(cls, urls: Sequence[str], token: str | None, *, timeout_s: float = 5.0, **kwargs: Any) -> SyncPeerSet:
        """Start the loop thread and :meth:`PeerSet.connect` on it."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=_run_loop, args=(loop,), name="dstore-net", daemon=True)
        thread.start()
        try:
            fut = asyncio.run_coroutine_threadsafe(PeerSet.connect(urls, token, timeout_s=timeout_s, **kwargs), loop)
            peerset = fut.result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            raise
        return cls(peerset, loop, thread)

    @property
    def peerset(self) -> PeerSet:
        """The async PeerSet (use its coroutines only on this object's loop)."""
        return self._ps

    @property
    def peers(self) -> list[Peer]:
        return self._ps.peers

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self._closed:
            coro.close()
            raise RuntimeError("SyncPeerSet is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        fut = self._submit(coro)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()  # e.g. KeyboardInterrupt: do not leave the transfer running
            raise

    def _on_loop(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return self._call(run())

    def rank(self, key: bytes) -> list[Peer]:
        return self._on_loop(lambda: self._ps.rank(key))

    def refresh(self) -> None:
        self._call(self._ps.refresh())

    def put_pack(
        self, key: bytes, shards: Sequence[tuple[CID, bytes | memoryview]], *, concurrency: int = 8
    ) -> list[str]:
        return self._call(self._ps.put_pack(key, shards, concurrency=concurrency))

    def submit_put_pack(
        self, key: bytes, shards: Sequence[tuple[CID, bytes | memoryview]], *, concurrency: int = 8
    ) -> concurrent.futures.Future[list[str]]:
        """Start :meth:`put_pack` and return at once; the future gives the peer IDs (or raises PeerError)."""
        return self._submit(self._ps.put_pack(key, shards, concurrency=concurrency))

    def put_block(self, key: bytes, cid: CID, data: bytes | memoryview, copies: int) -> list[str]:
        return self._call(self._ps.put_block(key, cid, data, copies))

    def fetch_pack(
        self,
        record: PackRecord,
        key: bytes,
        hints: Sequence[str | None] | None = None,
        *,
        hedge_after_s: float | None = None,
        verify: bool = True,
    ) -> list[bytes | bytearray | None]:
        return self._call(self._ps.fetch_pack(record, key, hints, hedge_after_s=hedge_after_s, verify=verify))

    def submit_fetch_pack(
        self,
        record: PackRecord,
        key: bytes,
        hints: Sequence[str | None] | None = None,
        *,
        hedge_after_s: float | None = None,
        verify: bool = True,
    ) -> concurrent.futures.Future[list[bytes | bytearray | None]]:
        """Start :meth:`fetch_pack` and return at once (for read-ahead)."""
        return self._submit(self._ps.fetch_pack(record, key, hints, hedge_after_s=hedge_after_s, verify=verify))

    def fetch_range(
        self,
        record: PackRecord,
        key: bytes,
        shard: int,
        offset: int,
        length: int,
        hints: Sequence[str | None] | None = None,
    ) -> RangeRead:
        return self._call(self._ps.fetch_range(record, key, shard, offset, length, hints))

    def fetch_ranges(self, calls: Sequence[RangeCall]) -> list[RangeRead | None]:
        return self._call(self._ps.fetch_ranges(calls))

    def report_bad_range(self, peer_id: str | None) -> None:
        self._on_loop(lambda: self._ps.report_bad_range(peer_id))

    def put_pointer(self, dataset: CID, pointer: dict, copies: int) -> list[str]:
        return self._call(self._ps.put_pointer(dataset, pointer, copies))

    def get_pointer(self, dataset: CID, *, validate: Callable[[dict], object] | None = None) -> dict | None:
        return self._call(self._ps.get_pointer(dataset, validate=validate))

    def get_pointers(
        self, dataset: CID, *, validate: Callable[[dict], object] | None = None, max_peers: int = POINTER_PEERS
    ) -> list[dict]:
        return self._call(self._ps.get_pointers(dataset, validate=validate, max_peers=max_peers))

    def pin(self, dataset: CID, peers: Iterable[str] | None = None) -> PinReport:
        return self._call(self._ps.pin(dataset, peers))

    def unpin(self, dataset: CID) -> PinReport:
        return self._call(self._ps.unpin(dataset))

    def confirm_shards(self, items: Sequence[tuple[str, CID]]) -> list[bool]:
        return self._call(self._ps.confirm_shards(items))

    def head(self, peer: Peer, cid: CID) -> bool:
        return self._call(self._ps.head(peer, cid))

    def get_from(self, peer: Peer, cid: CID) -> bytes:
        return self._call(self._ps.get_from(peer, cid))

    def put_to(self, peer: Peer, cid: CID, data: bytes | memoryview) -> None:
        self._call(self._ps.put_to(peer, cid, data))

    def peer_by_id(self, peer_id: str | None) -> Peer | None:
        return self._ps.peer_by_id(peer_id)

    def get_block(self, cid: CID, key: bytes, hints: Sequence[str | None] | None = None) -> bytes:
        return self._call(self._ps.get_block(cid, key, hints))

    def close(self) -> None:
        """Close the session, stop the loop and join its thread (idempotent)."""
        if self._closed:
            return
        self._finalizer.detach()
        try:
            self._call(self._ps.close())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    def __enter__(self) -> SyncPeerSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
