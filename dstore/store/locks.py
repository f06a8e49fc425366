"""The store's gc lock: ``$DSTORE_HOME/gc.lock`` (fcntl ``flock``).

Adds hold it shared for their whole run, so any number run side by side;
gc and ``fsck --rebuild`` take it exclusive and refuse to start while an add
runs, and an add that starts while they run waits for them. The lock goes
with the process: a killed add or gc leaves nothing to clean up.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from dstore.errors import StoreError

LOCK_NAME = "gc.lock"


class GcLock:
    def __init__(self, home: Path) -> None:
        self.path = home / LOCK_NAME
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise StoreError(f"cannot open {self.path}: {e.strerror or e}") from e
        return self._fd

    def shared(self) -> None:
        """Wait for any gc to finish, then hold the lock shared (until :meth:`release`)."""
        fcntl.flock(self._open(), fcntl.LOCK_SH)

    def exclusive(self, what: str) -> None:
        """Hold the lock alone, or StoreError at once if an add (or another gc) holds it."""
        try:
            fcntl.flock(self._open(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"cannot {what} while a dstore add or gc runs on this store; try again later") from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
