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


def release_file_mapping(path: str | os.PathLike[str]) -> int:
    """Drop this process's resident pages of every mapping of ``path``; returns the bytes of mappings advised."""
    if _libc is None:
        return 0
    target = os.path.realpath(path)
    advised = 0
    try:
        with open("/proc/self/maps") as maps:
            lines = [line for line in maps if line.rstrip("\n").endswith(target)]
    except OSError:
        return 0
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5].strip() != target or "s" not in fields[1]:
            continue  # only shared file mappings: a private one may hold this process's own changes
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED) == 0:
            advised += end - start
    return advised
