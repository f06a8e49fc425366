"""Give back the pages of a memory-mapped file that this process has touched (LMDB's data file).

LMDB reads through a map of its data file: every page a lookup touches stays
in this process's resident set (shared file pages, but counted in its RSS)
until the map is closed, so a long add or get over a big index would look
as large as the index. ``MADV_DONTNEED`` on a shared file mapping drops only
this process's page-table entries: the pages stay in the kernel's page cache
and the next access maps them again (a minor fault), nothing is lost or
re-read from disk. Linux only; elsewhere a no-op.
"""

from __future__ import annotations

import ctypes
import os
import sys

_MADV_DONTNEED = 4
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def shared_file_ranges(path: str | os.PathLike[str]) -> list[tuple[int, int]]:
    """``(start, end)`` of this process's shared mappings of ``path`` (from /proc/self/maps; [] elsewhere).

    Only shared ones: a private mapping may hold this process's own changes. A range stays valid only
    while the mapping does (for LMDB's map: while its environment is open, in this process).
    """
    if _libc is None:
        return []
    target = os.path.realpath(path)
    try:
        with open("/proc/self/maps") as maps:
            lines = [line for line in maps if line.rstrip("\n").endswith(target)]
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5].strip() != target or "s" not in fields[1]:
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        ranges.append((start, end))
    return ranges


def release_ranges(ranges: list[tuple[int, int]]) -> int:
    """``MADV_DONTNEED`` over ranges of :func:`shared_file_ranges` (still mapped); returns the bytes advised."""
    advised = 0
    for start, end in ranges:
        size = end - start
        if _libc is not None and _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(size), _MADV_DONTNEED) == 0:
            advised += size
    return advised
