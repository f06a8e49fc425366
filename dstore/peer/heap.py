"""Keep the peer's freed body buffers in its heap instead of handing them back to the kernel.

A peer allocates and frees a shard-sized buffer (up to ``MAX_SHARD_BYTES``) for every upload. With
glibc's defaults each such buffer is a fresh ``mmap`` (or heap growth that the next ``free`` trims
again), so every upload page-faults its whole body in anew and the kernel zeroes it first: about
480,000 faults on 14 peers per GiB added, 24,000 with these settings (docs/architecture.md, "The
peer's heap"). They must be set before the server is imported and started: set later, they were
measured to change nothing.
Raising the mmap and trim thresholds lets those pages be reused; the heap still never holds more than
the peer's largest concurrent bodies, which its connection limit bounds.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["keep_freed_buffers"]

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above 32 MiB on 64-bit (HEAP_MAX_SIZE / 2).
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 256 << 20


def keep_freed_buffers() -> bool:
    """Set the thresholds; False where the C library is not glibc (musl, macOS): nothing changes."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
