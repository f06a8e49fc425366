"""Garbage collection: delete the shards no pin keeps, once they are past a grace period.

A shard is kept when any pin needs it (dstore/peer/pins.py), or when it was
uploaded or confirmed less than ``grace_s`` ago: its file's mtime is set when
it is written, and again by every ``HEAD`` or ``PUT`` of it while held (the
client's dedup check), so a shard a client was just told is here, or one
uploaded before its dataset's pin arrives, is never collected. Nothing is
collected while some pin is unresolved. A deletion re-checks the file under
the store's lock (same inode, size and mtime), so a confirmation racing the
collector wins.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from dstore.peer.pins import Pins
from dstore.peer.storage import PeerStore

__all__ = ["Collector", "GcReport"]

log = logging.getLogger("dstore.peer.gc")


@dataclass
class GcReport:
    deleted: int = 0
    deleted_bytes: int = 0
    kept: int = 0
    #: Why nothing was collected (a pin still unresolved), else None.
    skipped: str | None = None


class Collector:
    def __init__(
        self,
        store: PeerStore,
        pins: Pins,
        grace_s: float,
        interval_s: float,
        resolve_pending: Callable[[], Awaitable[None]],
    ) -> None:
        self.store = store
        self.pins = pins
        self.grace_s = grace_s
        self.interval_s = interval_s
        self.resolve_pending = resolve_pending
        self._lock = asyncio.Lock()

    async def run_pass(self) -> GcReport:
        """One collection (one at a time)."""
        async with self._lock:
            if self.pins.unresolved():
                await self.resolve_pending()
            needed = self.pins.needed()
            if needed is None:
                waiting = ", ".join(p.dataset for p in self.pins.unresolved())
                log.warning("gc: skipped, the shards of pinned dataset(s) %s are not known yet", waiting)
                return GcReport(skipped=f"unresolved pins: {waiting}")
            return await asyncio.to_thread(self._collect, needed)

    def _collect(self, needed: set[str]) -> GcReport:
        report = GcReport()
        cutoff = time.time() - self.grace_s
        for path in list(self.store.files):
            cid_text = path.name
            if cid_text in needed:
                report.kept += 1
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if st.st_mtime >= cutoff or not self.store.remove(cid_text, expect=st):
                report.kept += 1
                continue
            report.deleted += 1
            report.deleted_bytes += st.st_size
        if report.deleted:
            log.info("gc: deleted %d unpinned shards (%d bytes)", report.deleted, report.deleted_bytes)
        return report

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.run_pass()
            except Exception:  # a disk error must not end collection for the life of the peer
                log.exception("gc pass failed; next one in %s s", self.interval_s)
