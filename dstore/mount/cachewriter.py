"""Chunk-cache writes on a thread of their own: a read returns once its chunks are verified, not once they
are on disk (a cache entry costs a dozen system calls under a lock shared by every process).

Best effort, like the cache itself: at most ``MAX_PENDING_BYTES`` wait to be written (beyond that a chunk
is just not cached), and what is still waiting when the process ends unflushed is not cached. A dataset
flushes its writer when it is closed, and at exit (also the exit of a multiprocessing worker). One writer
per process: a forked child makes its own (the parent's thread and queue stay the parent's).
"""

from __future__ import annotations

import atexit
import multiprocessing.util
import os
import threading
import weakref
from collections import deque
from collections.abc import Sequence

from dstore.mount.cache import ChunkCache

__all__ = ["FLUSH_AT_EXIT_S", "MAX_PENDING_BYTES", "CacheWriter"]

#: Bytes of chunks waiting to be written, at most.
MAX_PENDING_BYTES = 64 << 20
#: How long the end of a process waits for the chunks still queued.
FLUSH_AT_EXIT_S = 10.0


class CacheWriter:
    """Queues verified chunks and writes them to ``cache`` on a thread of its own."""

    def __init__(self, cache: ChunkCache, max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self.cache = cache
        self.max_pending_bytes = max_pending_bytes
        self.skipped = 0  # chunks not cached because the queue was full
        self._cond = threading.Condition()
        self._queue: deque[tuple[str, bytes, bytes | memoryview]] = deque()
        self._pending_bytes = 0
        self._writing = 0  # chunks taken off the queue and not yet written
        self._thread: threading.Thread | None = None
        _WRITERS.add(self)
        _flush_at_exit_of_this_process()

    def put(self, hash_name: str, digest: bytes, data: bytes | memoryview, *, copy: bool = True) -> None:
        """Queue one chunk (see :meth:`put_many`)."""
        self.put_many(hash_name, [(digest, data)], copy=copy)

    def put_many(self, hash_name: str, items: Sequence[tuple[bytes, bytes | memoryview]], *, copy: bool = True) -> None:
        """Queue verified chunks to be cached; those that do not fit under ``max_pending_bytes`` are skipped.

        ``copy=False``: keep the caller's buffers as they are (they must never be written again, e.g.
        views of range answers); by default each chunk is copied, since the caller's buffer is often the
        reader's own.
        """
        with self._cond:
            for digest, data in items:
                size = len(data)
                if self._pending_bytes + size > self.max_pending_bytes:
                    self.skipped += 1
                    continue
                self._queue.append((hash_name, digest, bytes(data) if copy else data))
                self._pending_bytes += size
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dstore-cache-writer", daemon=True)
                self._thread.start()
            self._cond.notify()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued chunk is written; False if ``timeout_s`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._writing, timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue))
                batch = list(self._queue)
                self._queue.clear()
                self._writing = len(batch)
            try:
                by_hash: dict[str, list[tuple[bytes, bytes | memoryview]]] = {}
                for hash_name, digest, data in batch:
                    by_hash.setdefault(hash_name, []).append((digest, data))
                for hash_name, items in by_hash.items():
                    self.cache.put_many(hash_name, items)  # the lock once per batch; never raises for a disk problem
            finally:
                with self._cond:
                    self._pending_bytes -= sum(len(d) for _, _, d in batch)
                    self._writing = 0
                    self._cond.notify_all()


#: Every writer of this process, flushed at its end (once registered, however many datasets it opens).
_WRITERS: weakref.WeakSet[CacheWriter] = weakref.WeakSet()


def _flush_at_exit() -> None:
    for writer in list(_WRITERS):
        if writer._thread is not None and writer._thread.is_alive():
            writer.flush(FLUSH_AT_EXIT_S)


atexit.register(_flush_at_exit)
_finalizer_pid: int | None = None


def _flush_at_exit_of_this_process() -> None:
    """A multiprocessing child (a DataLoader worker) ends with os._exit after its finalizers, not atexit,
    and starts with the parent's finalizers cleared: register one in every process that makes a writer."""
    global _finalizer_pid
    if _finalizer_pid != os.getpid():
        _finalizer_pid = os.getpid()
        multiprocessing.util.Finalize(None, _flush_at_exit, exitpriority=10)
