"""Small reads of block files on the event loop, when their bytes are in memory.

A thread hop per read (what ``asyncio.to_thread`` and aiohttp's FileResponse do) costs a peer more CPU
than a ranged read of a shard itself. The bytes are read on the loop only when that cannot block: from
the page cache (``preadv`` with ``RWF_NOWAIT``), or from a file system in memory (tmpfs, ramfs, which do
not take ``RWF_NOWAIT``); otherwise the caller reads in a thread as before.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["read_if_cached"]

_IN_MEMORY_TYPES = {"tmpfs", "ramfs"}
_in_memory: dict[int, bool] = {}  # st_dev -> whether its file system keeps every byte in memory


def read_if_cached(path: Path, first: int, length: int) -> bytes | bytearray | None:
    """``length`` bytes of ``path`` at ``first`` if they can be read without waiting for a disk, else None
    (also when the file is shorter: the careful path says why).

    One copy of the bytes and no zero-filled buffer first: on a file system in memory a plain ``pread``
    into a new ``bytes``; elsewhere a ``preadv`` with ``RWF_NOWAIT`` into a ``bytearray`` handed on as is.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if _memory_fs(fd):
            data = os.pread(fd, length, first)
            return data if len(data) == length else None
        buf = bytearray(length)
        n = os.preadv(fd, [buf], first, os.RWF_NOWAIT)  # EAGAIN: not all in the page cache
        return buf if n == length else None
    except OSError:
        return None
    finally:
        os.close(fd)


def _memory_fs(fd: int) -> bool:
    dev = os.fstat(fd).st_dev
    known = _in_memory.get(dev)
    if known is None:
        known = _in_memory[dev] = _fs_type(dev) in _IN_MEMORY_TYPES
    return known


def _fs_type(dev: int) -> str | None:
    """The file system type of a device number, from /proc/self/mountinfo (None if not found)."""
    want = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == want and " - " in line:
                    return line.split(" - ", 1)[1].split()[0]
    except OSError:
        pass
    return None
