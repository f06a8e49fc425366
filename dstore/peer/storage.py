"""What a peer holds on disk: shard files with capacity accounting, and dataset pointers.

Layout of a peer's home::

    identity.key        Ed25519 key (PEM, 0600)
    token               generated write token, when neither --token nor $DSTORE_TOKEN is given
    shards/xy/<cid>     one file per block, named by its canonical CID text (ShardFiles)
    tmp/                temporary files, renamed into shards/ once fsynced
    datasets/<cid>.json the pointer of each dataset ID (tmp + fsync + rename)
    scrub.json          the last scrub pass, so /health and the schedule survive restarts
    pins/<cid>.json     pinned datasets and the shards they keep (pins.py)

Accounting is in memory: bytes and blocks are counted once at start (a walk
of ``shards/``) and updated on every write and delete. A write first reserves
its size under a lock, so concurrent uploads can never together overshoot the
capacity; an upload books its size only once its whole body has arrived, so a
client that stalls mid-body holds no capacity.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from dstore.errors import NotFound, StoreError
from dstore.format.cid import hash_digest
from dstore.store.shards import ShardFiles

__all__ = ["Full", "PeerStore"]


class Full(StoreError):
    """The peer's capacity would be exceeded."""


class PeerStore:
    """Shard files of a peer, with byte and block counts and a capacity limit."""

    def __init__(self, home: Path, capacity_bytes: int | None = None) -> None:
        self.home = home
        self.capacity_bytes = capacity_bytes
        self.files = ShardFiles(home)
        self.files.clean_tmp()
        self.datasets = home / "datasets"
        self.datasets.mkdir(exist_ok=True)
        for p in self.datasets.glob(".*.tmp"):
            p.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._reserved = 0
        self.bytes_stored = 0
        self.shards = 0
        for p in self.files:
            try:
                self.bytes_stored += p.stat().st_size
                self.shards += 1
            except FileNotFoundError:
                pass

    # -- shards ---------------------------------------------------------------------------------

    def path(self, cid_text: str) -> Path:
        return self.files.path(cid_text)

    def has(self, cid_text: str) -> bool:
        return self.files.has(cid_text)

    @property
    def bytes_reserved(self) -> int:
        """Capacity booked by writes under way."""
        return self._reserved

    def _check_room(self, size: int) -> None:
        if self.capacity_bytes is not None and self.bytes_stored + self._reserved + size > self.capacity_bytes:
            raise Full(
                f"storing {size} bytes would exceed this peer's capacity "
                f"({self.bytes_stored} of {self.capacity_bytes} bytes used)"
            )

    def check_room(self, size: int) -> None:
        """Raise :class:`Full` if ``size`` more bytes would not fit now (books nothing)."""
        with self._lock:
            self._check_room(size)

    def reserve(self, size: int) -> None:
        """Claim ``size`` bytes of capacity for a write about to happen; raises :class:`Full`."""
        with self._lock:
            self._check_room(size)
            self._reserved += size

    def release(self, size: int) -> None:
        """Give back a reservation whose write did not happen."""
        with self._lock:
            self._reserved -= size

    def write_reserved(self, cid_text: str, data: bytes, reserved: int) -> bool:
        """Write a verified block under its CID, consuming a reservation of ``reserved`` bytes.

        Returns False (and writes nothing) when the block is already held. Blocking: run it in a
        thread. The reservation is consumed whatever happens.
        """
        try:
            if self.files.has(cid_text):
                return False
            size = self.files.write(cid_text, [data])
            self.files.sync_dirs()
        except BaseException:
            self.release(reserved)
            raise
        with self._lock:
            self._reserved -= reserved
            self.bytes_stored += size
            self.shards += 1
        return True

    def touch(self, cid_text: str) -> bool:
        """Mark a held block as just confirmed (its mtime: gc's grace counts from it); False if absent."""
        with self._lock:  # against remove(expect=...) deciding on the old mtime
            try:
                os.utime(self.files.path(cid_text))
            except FileNotFoundError:
                return False
        return True

    def intact(self, cid_text: str, hash_name: str, digest: bytes) -> bool:
        """Whether the held block still hashes to its CID (blocking: run it in a thread)."""
        try:
            return hash_digest(self.files.read(cid_text), hash_name) == digest
        except NotFound:
            return False

    def remove(self, cid_text: str, expect: os.stat_result | None = None) -> bool:
        """Delete a block; with ``expect``, only if its file is still that very file (same inode,
        size and mtime), so a good copy uploaded meanwhile is not removed. Returns whether it was."""
        path = self.files.path(cid_text)
        with self._lock:
            try:
                st = path.stat()
            except FileNotFoundError:
                return False
            if expect is not None and (st.st_ino, st.st_size, st.st_mtime_ns) != (
                expect.st_ino,
                expect.st_size,
                expect.st_mtime_ns,
            ):
                return False
            path.unlink(missing_ok=True)
            self.bytes_stored -= st.st_size
            self.shards -= 1
        return True

    # -- dataset pointers -------------------------------------------------------------------------

    def _pointer_path(self, dataset_cid_text: str) -> Path:
        return self.datasets / f"{dataset_cid_text}.json"

    def read_pointer(self, dataset_cid_text: str) -> dict[str, Any] | None:
        try:
            pointer: dict[str, Any] = json.loads(self._pointer_path(dataset_cid_text).read_bytes())
        except FileNotFoundError:
            return None
        return pointer

    def write_pointer(self, dataset_cid_text: str, pointer: dict[str, Any]) -> None:
        """Replace a dataset's pointer atomically (tmp + fsync + rename + fsync of the folder)."""
        final = self._pointer_path(dataset_cid_text)
        tmp = self.datasets / f".{dataset_cid_text}.{os.getpid()}.{threading.get_ident()}.tmp"
        data = json.dumps(pointer, separators=(",", ":"), sort_keys=True).encode()
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            dfd = os.open(self.datasets, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write dataset pointer {dataset_cid_text}: {e.strerror or e}") from e
