#!/usr/bin/env python3
"""The FUSE floor of the `train` section: a minimal read-only passthrough mount in Python.

    python bench/fusepass.py SOURCE_DIR MOUNTPOINT

Serves SOURCE_DIR at MOUNTPOINT with mfusepy and the options `dstore mount` uses
(dstore/mount/fuse.py): high-level Operations with ``raw_fi``, libfuse's multi-threaded
loop, ``-o ro``, ``max_read`` 1 MiB (and the connection's max_read, max_write / max_readahead),
``keep_cache`` on every open. Each read is one ``os.pread`` of the source file, so what
it costs beyond the kernel's page cache is FUSE and Python alone: the least any Python
FUSE file system can spend. Prints ``mounted`` once the mount is up and stays in the
foreground until SIGTERM / Ctrl-C, when libfuse unmounts.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

import mfusepy

MAX_READ_BYTES = 1 << 20  # as dstore.mount.fuse.MAX_READ_BYTES


class Passthrough(mfusepy.Operations):
    use_ns = True

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def _path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def init_with_config(self, conn: Any, config: Any) -> None:
        if conn is not None:
            conn.max_read = MAX_READ_BYTES
            # libfuse sizes the kernel's requests (max_pages) from max_write: 128 KiB reads without it.
            conn.max_write = MAX_READ_BYTES
            conn.max_readahead = min(conn.max_readahead, MAX_READ_BYTES) if conn.max_readahead else MAX_READ_BYTES
        print("mounted", flush=True)

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        try:
            st = os.lstat(self._path(path))
        except OSError as e:
            raise mfusepy.FuseOSError(e.errno or errno.EIO) from e
        keys = ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid")
        out: dict[str, Any] = {k: getattr(st, k) for k in keys}
        out |= {"st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns}
        return out

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._path(path))]

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._path(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_frsize")
        return {k: getattr(st, k) for k in keys} | {"f_namemax": 255}

    def open(self, path: str, fi: Any) -> int:
        fi.fh = os.open(self._path(path), os.O_RDONLY)
        fi.keep_cache = 1
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        return os.pread(fi.fh, min(size, MAX_READ_BYTES), offset)

    def release(self, path: str, fi: Any) -> int:
        os.close(fi.fh)
        return 0


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    source, mountpoint = sys.argv[1:]
    try:
        mfusepy.FUSE(
            Passthrough(source),
            mountpoint,
            raw_fi=True,
            foreground=True,
            ro=True,
            fsname="fusepass",
            subtype="fusepass",
            max_read=MAX_READ_BYTES,
        )
    except RuntimeError:
        pass  # libfuse reports a loop ended by a signal as an error, after unmounting


if __name__ == "__main__":
    main()
