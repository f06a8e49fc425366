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

A local dataset is served on one thread, and its files are read in windows
(:class:`_Windows`): a read that goes on where the last ended reads the file's
next ``WINDOW_BYTES`` into memory, the window after it is read meanwhile on a
helper thread, and the kernel's reads inside the window are answered by a
native callback (``dstore._native.mount_read_callback``) with one copy, no
Python and no GIL (docs/training.md, "A FUSE mount").
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import mfusepy

from dstore import _native
from dstore.errors import NotFound
from dstore.mount.dataset import Dataset
from dstore.mount.fileobj import DatasetFile

__all__ = ["FIRST_WINDOW_BYTES", "MAX_READ_BYTES", "WINDOW_BYTES", "DatasetFS", "mount"]

#: Largest read the kernel sends at once (``-o max_read``); the kernel may cap it lower (max_pages).
MAX_READ_BYTES = 1 << 20
#: A sequential reader of a local dataset's file is served from windows of this many bytes, read from the
#: file in one call each (two per open file: the one served and the next, read meanwhile).
WINDOW_BYTES = 4 << 20
#: The first window after a jump (or at the file's start), before the reader shows it goes on.
FIRST_WINDOW_BYTES = 1 << 20
#: Metadata entries kept in memory (path → kind and size); a dataset's tree never changes.
MAX_CACHED_ENTRIES = 100_000

DIR_MODE = stat.S_IFDIR | 0o555
FILE_MODE = stat.S_IFREG | 0o444


def _erofs(*args: Any) -> None:
    raise mfusepy.FuseOSError(errno.EROFS)


#: File handles, unique in the process: the native read callback finds a file's window by its handle alone.
_FILE_HANDLES = itertools.count(1)


class _Windows:
    """One open file of a local dataset, read in windows of ``WINDOW_BYTES``.

    A read that starts where the last one ended (or at the file's start) is sequential: the file's bytes from
    there on are read into the window (in one call, the file's runs of whole chunks decoded straight into it), and
    the window after it on the helper thread. Reads inside the window are copied out of it: by the native
    callback once the window is published (``fallback`` is the Python callback it hands the other reads to), else
    here. Any other read goes straight to the file. Only the mount's one thread calls this: while it runs, the
    native callback serves no read, so the helper may write the buffer the window leaves.
    """

    def __init__(self, file: DatasetFile, fh: int, fallback: int) -> None:
        self.file = file
        self._fh = fh
        self._fallback = fallback
        self._start = self._end = 0  # the window's place in the file
        self._window: bytearray | None = None
        self._spare: bytearray | None = None  # the other buffer, for the next window
        self._next: tuple[int, bytearray, Future[int]] | None = None  # the next window: start, buffer, its read
        self._helper: ThreadPoolExecutor | None = None
        self._last_end = 0  # where the last read ended
        if fallback:
            _native.mount_window_set(fh, fallback, None, 0)

    def read(self, offset: int, buf: memoryview) -> int:
        done, n = 0, len(buf)
        while done < n:
            pos = offset + done
            if self._window is not None and self._start <= pos < self._end:
                k = min(n - done, self._end - pos)
                at = pos - self._start
                buf[done : done + k] = memoryview(self._window)[at : at + k]
                done += k
            elif pos == self._last_end or (self._window is not None and pos == self._end):
                if not self._move(pos):
                    break  # the end of the file
            else:  # elsewhere: straight into the reply, no window read for it
                self._settle()
                done += self.file.readinto_at(pos, buf[done:])
                break
        self._last_end = offset + done
        return done

    def _move(self, pos: int) -> bool:
        """Make the window the file's bytes from ``pos`` on; False at the end of the file. A window that follows
        the last one is ``WINDOW_BYTES`` (the one read meanwhile, if it starts there) and has the one after it
        read meanwhile; a first one, after a jump, is ``FIRST_WINDOW_BYTES``, and nothing is read ahead of it
        (a random reader's reads in a row, which the kernel's read-ahead makes of each of its reads, read
        little more than they ask for)."""
        follows = self._window is not None and pos == self._end
        size = WINDOW_BYTES if follows else FIRST_WINDOW_BYTES
        taken = self._settle()
        if taken is not None and taken[0] == pos:
            _, buf, got = taken
        else:
            buf = self._buffer(self._spare, pos, size)
            got = self.file.readinto_at(pos, memoryview(buf)[: self._size(pos, size)])
        self._spare, self._window = self._window, buf
        self._start, self._end = pos, pos + got
        if self._fallback:  # published before the helper may write the buffer the old window was in
            _native.mount_window_set(self._fh, self._fallback, memoryview(buf)[:got] if got else None, pos)
        if follows and got and self._end < self.file.size:
            spare = self._spare = self._buffer(self._spare, self._end, WINDOW_BYTES)
            if self._helper is None:
                self._helper = ThreadPoolExecutor(1, thread_name_prefix="dstore-mount")
            view = memoryview(spare)[: self._size(self._end, WINDOW_BYTES)]
            self._next = (self._end, spare, self._helper.submit(self.file.readinto_at, self._end, view))
        return got > 0

    def _size(self, pos: int, size: int) -> int:
        return max(0, min(size, self.file.size - pos))

    def _buffer(self, buf: bytearray | None, pos: int, size: int) -> bytearray:
        """``buf`` if it holds ``size`` bytes of the file from ``pos`` on, else a new buffer that does."""
        need = self._size(pos, size)
        return buf if buf is not None and len(buf) >= need else bytearray(need)

    def _settle(self) -> tuple[int, bytearray, int] | None:
        """Wait for the next window's read if one runs: (its start, its buffer, the bytes read), None if it
        failed (it is read again when wanted, errors and all)."""
        nxt, self._next = self._next, None
        if nxt is None:
            return None
        start, buf, fut = nxt
        try:
            return start, buf, fut.result()
        except Exception:
            return None

    def close(self) -> None:
        _native.mount_window_drop(self._fh)
        self._settle()
        if self._helper is not None:
            self._helper.shutdown()
        self._window = self._spare = None
        self.file.close()


class DatasetFS(mfusepy.Operations):
    """The folders and files of one dataset, read-only, every time stamp the mount's own."""

    use_ns = True

    def __init__(self, dataset: Dataset, on_mounted: Callable[[], None] | None = None) -> None:
        self.dataset = dataset
        self.on_mounted = on_mounted
        self.mtime_ns = time.time_ns()
        self.uid, self.gid = os.getuid(), os.getgid()
        self._entries: dict[str, tuple[bool, int]] = {}  # path -> (is folder, size)
        # A dataset read from this machine alone is CPU work, most of its reads answered natively out of a window:
        # one thread serves it (libfuse's threads only add switches). From peers, reads wait on the network: threads.
        self.threaded = bool(dataset.chunks.remote)
        # fh -> (file, its lock: the kernel may send reads of one handle at once) with threads, else its windows
        self._files: dict[int, tuple[DatasetFile, threading.Lock] | _Windows] = {}
        self._lock = threading.Lock()
        self.mounted = False
        #: The address of mfusepy's read callback, once the native one stands in front of it (one thread only).
        self.fallback_read = 0

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
        for handle in files:
            (handle if isinstance(handle, _Windows) else handle[0]).close()

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
        fh = next(_FILE_HANDLES)
        handle = (f, threading.Lock()) if self.threaded else _Windows(f, fh, self.fallback_read)
        with self._lock:
            self._files[fh] = handle
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
        try:
            if isinstance(handle, _Windows):  # one thread serves the mount
                return handle.read(offset, buf[:MAX_READ_BYTES])
            f, lock = handle
            with lock:  # a file object has one position
                return f.readinto_at(offset, buf[:MAX_READ_BYTES])
        except Exception as e:
            raise mfusepy.FuseOSError(errno.EIO) from e

    def release(self, path: str, fi: Any) -> int:
        with self._lock:
            handle = self._files.pop(fi.fh, None)
        if isinstance(handle, _Windows):
            handle.close()
        elif handle is not None:
            f, lock = handle
            with lock:
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


@contextlib.contextmanager
def _native_reads(fs: DatasetFS) -> Iterator[None]:
    """While mfusepy mounts ``fs``, libfuse calls the native read callback, which answers reads inside a window
    and hands the others to mfusepy's. mfusepy takes no native callback: the operations it hands libfuse get it
    on their way (its module's ``fuse_main_real``, for this call alone)."""
    real = mfusepy.fuse_main_real

    def fuse_main_real(argc: int, argv: Any, ops: Any, size: int, user_data: Any) -> int:
        python_read = ops.contents.read  # held here: libfuse calls it until the loop ends
        fs.fallback_read = ctypes.cast(python_read, ctypes.c_void_p).value or 0
        native = _native.mount_read_callback(mfusepy.fuse_file_info.fh.offset)
        ops.contents.read = type(python_read)(native)
        try:
            return int(real(argc, argv, ops, size, user_data))
        finally:
            ops.contents.read = python_read

    mfusepy.fuse_main_real = fuse_main_real
    try:
        yield
    finally:
        mfusepy.fuse_main_real = real


def _serve(fs: DatasetFS, mountpoint: str) -> None:
    with contextlib.nullcontext() if fs.threaded else _native_reads(fs):
        _FUSE(
            fs,
            mountpoint,
            raw_fi=True,
            foreground=True,
            ro=True,
            fsname=f"dstore:{fs.dataset.cid}",
            subtype="dstore",
            max_read=MAX_READ_BYTES,
            nothreads=not fs.threaded,
        )
