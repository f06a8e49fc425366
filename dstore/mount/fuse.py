"""A read-only FUSE file system over an open :class:`~dstore.mount.dataset.Dataset` (``dstore mount``).

Built on mfusepy's high-level ``Operations`` with ``raw_fi``: every ``open``
gets a :class:`~dstore.mount.fileobj.DatasetFile` of its own (its own
read-ahead window), found again by ``fi.fh``. Datasets never change, so the
kernel may keep file pages cached across opens (``keep_cache``) and metadata
is cached here once looked up. The mount is read-only (``-o ro``): the kernel
answers writes, ``mkdir`` and ``rm`` with EROFS itself; the write operations
here say EROFS too, for completeness. Any failure to read bytes (every peer
gone, a chunk that does not verify) is EIO, never a hang: reads are bounded
by the peer client's timeouts.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

import mfusepy

from dstore.errors import NotFound
from dstore.mount.dataset import Dataset
from dstore.mount.fileobj import DatasetFile

__all__ = ["MAX_READ_BYTES", "DatasetFS", "mount"]

#: Largest read the kernel sends at once (``-o max_read``); the kernel may cap it lower (max_pages).
MAX_READ_BYTES = 1 << 20
#: Metadata entries kept in memory (path → kind and size); a dataset's tree never changes.
MAX_CACHED_ENTRIES = 100_000

DIR_MODE = stat.S_IFDIR | 0o555
FILE_MODE = stat.S_IFREG | 0o444


def _erofs(*args: Any) -> None:
    raise mfusepy.FuseOSError(errno.EROFS)


class DatasetFS(mfusepy.Operations):
    """The folders and files of one dataset, read-only, every time stamp the mount's own."""

    use_ns = True

    def __init__(self, dataset: Dataset, on_mounted: Callable[[], None] | None = None) -> None:
        self.dataset = dataset
        self.on_mounted = on_mounted
        self.mtime_ns = time.time_ns()
        self.uid, self.gid = os.getuid(), os.getgid()
        self._entries: dict[str, tuple[bool, int]] = {}  # path -> (is folder, size)
        # A dataset read from this machine alone is CPU work under one GIL: one thread serves it faster than
        # several handing the GIL and the file's lock around. From peers, reads wait on the network: threads.
        self.threaded = bool(dataset.chunks.remote)
        # fh -> (file, its lock: the kernel may send reads of one handle at once; None with one thread)
        self._files: dict[int, tuple[DatasetFile, threading.Lock | None]] = {}
        self._next_fh = 1
        self._lock = threading.Lock()
        self.mounted = False

    # -- life ------------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        if conn is not None:  # libfuse insists the session's max_read and the connection's agree
            conn.max_read = MAX_READ_BYTES
            # libfuse sizes the kernel's requests (max_pages) from max_write: 128 KiB reads without it.
            conn.max_write = MAX_READ_BYTES
            conn.max_readahead = min(conn.max_readahead, MAX_READ_BYTES) if conn.max_readahead else MAX_READ_BYTES
        self.mounted = True
        if self.on_mounted is not None:
            self.on_mounted()

    def destroy(self, path: str) -> None:
        with self._lock:
            files, self._files = list(self._files.values()), {}
        for f, _ in files:
            f.close()

    # -- metadata --------------------------------------------------------------

    def _entry(self, path: str) -> tuple[bool, int]:
        key = path.strip("/")
        with self._lock:
            found = self._entries.get(key)
        if found is not None:
            return found
        try:
            info = self.dataset.info(key)
        except NotFound as e:
            raise mfusepy.FuseOSError(errno.ENOENT) from e
        except Exception as e:  # peers gone, metadata that does not verify
            raise mfusepy.FuseOSError(errno.EIO) from e
        found = (info.kind == "dir", info.size or 0)
        with self._lock:
            if len(self._entries) < MAX_CACHED_ENTRIES:
                self._entries[key] = found
        return found

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        is_dir, size = self._entry(path)
        t = self.mtime_ns
        return {
            "st_mode": DIR_MODE if is_dir else FILE_MODE,
            "st_nlink": 2 if is_dir else 1,
            "st_size": 0 if is_dir else size,
            "st_blocks": (size + 511) // 512,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_atime": t,
            "st_mtime": t,
            "st_ctime": t,
        }

    def readdir(self, path: str, fh: int) -> list[str]:
        key = path.strip("/")
        try:
            names = self.dataset.listdir(key)
        except NotFound as e:
            raise mfusepy.FuseOSError(errno.ENOENT) from e
        except NotADirectoryError as e:
            raise mfusepy.FuseOSError(errno.ENOTDIR) from e
        except Exception as e:
            raise mfusepy.FuseOSError(errno.EIO) from e
        # Names come from anyone: one the kernel cannot take as a directory entry is left out.
        return [".", "..", *(n for n in names if n not in (".", "..") and "/" not in n and "\0" not in n)]

    def statfs(self, path: str) -> dict[str, int]:
        size = self.dataset.manifest.size
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": (size + 4095) // 4096, "f_namemax": 255}

    # -- files -----------------------------------------------------------------

    def open(self, path: str, fi: Any) -> int:
        if fi.flags & os.O_ACCMODE != os.O_RDONLY or fi.flags & (os.O_TRUNC | os.O_APPEND):
            raise mfusepy.FuseOSError(errno.EROFS)
        is_dir, _ = self._entry(path)
        if is_dir:
            raise mfusepy.FuseOSError(errno.EISDIR)
        try:
            f = self.dataset.open(path.strip("/"))
        except NotFound as e:
            raise mfusepy.FuseOSError(errno.ENOENT) from e
        except Exception as e:
            raise mfusepy.FuseOSError(errno.EIO) from e
        with self._lock:
            fh, self._next_fh = self._next_fh, self._next_fh + 1
            self._files[fh] = (f, threading.Lock() if self.threaded else None)
        fi.fh = fh
        fi.keep_cache = 1  # the bytes of a dataset never change: pages cached by an earlier open stay good
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        """mfusepy's Operations interface (it also tells mfusepy that reads are served); the mount's own
        loop calls :meth:`read_into` instead."""
        buf = bytearray(min(size, MAX_READ_BYTES))
        return bytes(memoryview(buf)[: self.read_into(fi, memoryview(buf), offset)])

    def read_into(self, fi: Any, buf: memoryview, offset: int) -> int:
        """Fill ``buf`` (libfuse's reply buffer) with the file's bytes from ``offset``; the count."""
        handle = self._files.get(fi.fh)  # one look-up is atomic under the GIL (changes take self._lock)
        if handle is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        f, lock = handle
        try:
            if lock is None:  # one thread serves the mount
                return f.readinto_at(offset, buf[:MAX_READ_BYTES])
            with lock:  # a file object has one position
                return f.readinto_at(offset, buf[:MAX_READ_BYTES])
        except Exception as e:
            raise mfusepy.FuseOSError(errno.EIO) from e

    def release(self, path: str, fi: Any) -> int:
        with self._lock:
            handle = self._files.pop(fi.fh, None)
        if handle is not None:
            f, lock = handle
            with lock or contextlib.nullcontext():
                f.close()
        return 0

    # -- everything that would change the tree ----------------------------------

    chmod = chown = create = link = mkdir = mknod = removexattr = rename = rmdir = _erofs
    setxattr = symlink = truncate = unlink = utimens = write = _erofs


def mount(dataset: Dataset, mountpoint: str, on_mounted: Callable[[], None] | None = None) -> None:
    """Mount ``dataset`` read-only at ``mountpoint`` and serve it until SIGTERM, SIGINT or ``fusermount3 -u``.

    libfuse handles SIGTERM/SIGINT/SIGHUP itself: its loop ends, it unmounts, and this returns.
    Raises RuntimeError when the mount fails.
    """
    fs = DatasetFS(dataset, on_mounted)
    try:
        _serve(fs, mountpoint)
    except RuntimeError:
        # libfuse reports a loop ended by a signal as an error (fuse_main's 8), after unmounting:
        # once mounted, that is the normal way out.
        if not fs.mounted:
            raise


class _FUSE(mfusepy.FUSE):
    """mfusepy's loop, with reads decoded straight into libfuse's reply buffer.

    mfusepy's own ``read`` takes the bytes an operation returns and copies them in; for a file object that
    meant a zeroed buffer, the decode into it, a copy to ``bytes`` and that copy: three passes more per byte.
    """

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        target = (ctypes.c_char * size).from_address(ctypes.addressof(buf.contents))
        operations: DatasetFS = self.operations
        return operations.read_into(fip.contents, memoryview(target).cast("B"), offset)


def _serve(fs: DatasetFS, mountpoint: str) -> None:
    dataset = fs.dataset
    _FUSE(
        fs,
        mountpoint,
        raw_fi=True,
        foreground=True,
        ro=True,
        fsname=f"dstore:{dataset.cid}",
        subtype="dstore",
        max_read=MAX_READ_BYTES,
        nothreads=not fs.threaded,
    )
