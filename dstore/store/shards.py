"""One file per shard, named by its CID, written durably.

A shard is first written under a unique temporary name in ``tmp/`` (same
filesystem as ``shards/``, so the rename is atomic), fsynced, then renamed to
its final name. A crash therefore never leaves a file under a final name whose
bytes do not hash to that name.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from dstore.errors import NotFound, StoreError


class ShardFiles:
    """A folder of shard files: ``shards/`` (data packs) or ``metadata/`` (metadata packs) of a store."""

    # One count per process, so two folders sharing tmp/ never pick the same temporary name.
    _counter = 0
    _count_lock = threading.Lock()

    def __init__(self, home: Path, folder: str = "shards") -> None:
        self.root = home / folder
        self.tmp = home / "tmp"
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._dirty_dirs: set[Path] = set()

    def path(self, cid_text: str) -> Path:
        # The last two base32 characters spread files evenly (the prefix is constant).
        return self.root / cid_text[-2:] / cid_text

    def has(self, cid_text: str) -> bool:
        return self.path(cid_text).exists()

    def write(self, cid_text: str, parts: Iterable[bytes | memoryview]) -> int:
        """Write a shard durably under its final name; returns its size. Thread-safe."""
        final = self.path(cid_text)
        with ShardFiles._count_lock:
            ShardFiles._counter += 1
            tmp = self.tmp / f"{cid_text}.{os.getpid()}.{ShardFiles._counter}.tmp"
        try:
            final.parent.mkdir(exist_ok=True)
            size = write_atomically(final, tmp, parts, 0o644)
        except OSError as e:
            raise StoreError(f"cannot write shard {cid_text}: {e.strerror or e}") from e
        with self._lock:
            self._dirty_dirs.add(final.parent)
        return size

    def sync_dirs(self) -> None:
        """fsync the folders that received renames, so the new names are durable."""
        with self._lock:
            dirs, self._dirty_dirs = self._dirty_dirs, set()
        for d in dirs:
            fsync_dir(d)

    def read_into(self, cid_text: str, buf: memoryview, offset: int = 0) -> None:
        """Fill ``buf`` with the shard's bytes starting at ``offset``."""
        try:
            with open(self.path(cid_text), "rb", buffering=0) as f:
                if offset:
                    f.seek(offset)
                got = read_full(f, buf)
        except FileNotFoundError as e:
            raise NotFound(f"shard {cid_text} is missing from the store") from e
        if got < len(buf):
            raise NotFound(f"shard {cid_text} is truncated")

    def read(self, cid_text: str) -> bytes:
        try:
            return self.path(cid_text).read_bytes()
        except FileNotFoundError as e:
            raise NotFound(f"shard {cid_text} is missing from the store") from e

    def remove(self, cid_text: str) -> None:
        self.path(cid_text).unlink(missing_ok=True)

    def clean_tmp(self) -> None:
        """Remove temporary files left by an interrupted add (never under a final name)."""
        for p in self.tmp.glob("*.tmp"):
            try:
                pid = int(p.name.split(".")[-3])
            except (ValueError, IndexError):
                pid = -1
            if pid != os.getpid() and not pid_alive(pid):
                p.unlink(missing_ok=True)

    def __iter__(self) -> Iterator[Path]:
        return (p for d in self.root.iterdir() if d.is_dir() for p in d.iterdir())


def write_atomically(final: Path, tmp: Path, parts: Iterable[bytes | memoryview], mode: int) -> int:
    """Write ``parts`` to ``tmp`` (same filesystem as ``final``), fsync, rename to ``final``.

    Returns the bytes written. On any error ``tmp`` is removed and ``final`` is
    untouched, so a crash never leaves a half-written file under its real name.
    """
    size = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                    size += written
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size


def read_full(f: io.RawIOBase | io.BufferedIOBase, view: memoryview) -> int:
    """Fill ``view`` from ``f``; returns the bytes read (fewer than asked means end of file)."""
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def fsync_dir(path: Path) -> None:
    """Make renames and deletions in folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
