"""Scrub: re-hash every held block at a bounded rate and drop those that fail their CID.

A pass walks ``shards/``, reads and hashes one block at a time in a worker
thread (so the event loop keeps answering), and sleeps as needed to stay under
``scrub_rate_bytes_s``. A block whose bytes do not hash to its name is deleted,
counted in ``/metrics`` and logged on stderr: a peer may lose data, never serve
altered data. Passes start ``scrub_interval_s`` apart; the last one is kept in
``<home>/scrub.json`` so the schedule and ``/health`` survive restarts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from dstore.errors import BadCID
from dstore.format.cid import HASH_NAMES, hash_digest, parse_cid
from dstore.peer.metrics import PeerMetrics
from dstore.peer.storage import PeerStore

__all__ = ["ScrubReport", "Scrubber", "pause_s"]

log = logging.getLogger("dstore.peer.scrub")

SCRUB_FILE = "scrub.json"


@dataclass
class ScrubReport:
    """One pass: wall-clock times (Unix seconds), blocks checked, blocks dropped."""

    started: float
    finished: float | None = None
    checked: int = 0
    bad: int = 0


def _check_file(path: Path, cid_text: str) -> tuple[bool | None, int, os.stat_result | None]:
    """(ok, size, stat at open): ok is None when the block vanished or its name is not a CID we check."""
    try:
        cid = parse_cid(cid_text)
    except BadCID:
        return None, 0, None
    hash_name = HASH_NAMES.get(cid.hash.code)
    if hash_name is None:
        return None, 0, None
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except FileNotFoundError:
        return None, 0, None
    return hash_digest(data, hash_name) == bytes(cid.hash.digest), len(data), st


def pause_s(hashed_bytes: int, rate_bytes_s: int, elapsed_s: float) -> float:
    """How long to sleep so that ``hashed_bytes`` took at least ``hashed_bytes / rate_bytes_s``."""
    return max(hashed_bytes / rate_bytes_s - elapsed_s, 0.0)


class Scrubber:
    #: The clock and sleep of the pacing (tests give their own to check it without waiting).
    clock: Callable[[], float] = staticmethod(time.monotonic)
    sleep: Callable[[float], Awaitable[None]] = staticmethod(asyncio.sleep)

    def __init__(self, store: PeerStore, metrics: PeerMetrics, rate_bytes_s: int, interval_s: float) -> None:
        self.store = store
        self.metrics = metrics
        self.rate_bytes_s = rate_bytes_s
        self.interval_s = interval_s
        self.state_path = store.home / SCRUB_FILE
        self.last: ScrubReport | None = self._load()
        self.current: ScrubReport | None = None

    def _load(self) -> ScrubReport | None:
        try:
            return ScrubReport(**json.loads(self.state_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _save(self, report: ScrubReport) -> None:
        tmp = self.state_path.with_name(f".{SCRUB_FILE}.tmp")
        try:
            tmp.write_text(json.dumps(asdict(report)))
            os.replace(tmp, self.state_path)
        except OSError as e:  # losing the schedule is harmless; say so and go on
            log.warning("cannot record the scrub pass in %s: %s", self.state_path, e)

    async def run_forever(self) -> None:
        """Run passes forever, ``interval_s`` apart (the first as soon as one is due)."""
        due = (self.last.started + self.interval_s) if self.last else 0.0
        while True:
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            started = time.time()
            try:
                await self.run_pass()
            except Exception:  # a disk error must not end scrubbing for the life of the peer
                log.exception("scrub pass failed; next one in %s s", self.interval_s)
            due = started + self.interval_s

    async def run_pass(self) -> ScrubReport:
        report = ScrubReport(started=time.time())
        self.current = report
        t0 = self.clock()
        hashed = 0
        try:
            for path in await asyncio.to_thread(lambda: list(self.store.files)):
                cid_text = path.name
                ok, size, st = await asyncio.to_thread(_check_file, path, cid_text)
                if ok is None:
                    continue
                report.checked += 1
                hashed += size
                self.metrics.scrub_checked.inc()
                self.metrics.scrub_checked_bytes.inc(size)
                if not ok and self.store.remove(cid_text, expect=st):
                    report.bad += 1
                    self.metrics.scrub_bad.inc()
                    log.error("scrub: block %s does not match its CID; deleted it", cid_text)
                # Stay under the rate: by now, ``hashed`` bytes may have taken hashed/rate seconds.
                await self.sleep(pause_s(hashed, self.rate_bytes_s, self.clock() - t0))
        finally:
            self.current = None
        report.finished = time.time()
        self.last = report
        self.metrics.scrub_passes.inc()
        self.metrics.scrub_last_finished.set(report.finished)
        await asyncio.to_thread(self._save, report)
        log.info("scrub: checked %d blocks, dropped %d", report.checked, report.bad)
        return report
