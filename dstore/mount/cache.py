"""A chunk cache on local disk, shared by every process of the machine (docs/training.md, "The chunk cache").

One file per chunk, named by its chunk ID: ``<root>/chunks-v1/<hash>/<ab>/<hex digest>``.
Entries are written to a temporary file and renamed into place, so a reader
sees a whole entry or none; every entry is checked against its ID when read,
and one that fails (damaged, truncated) is dropped and the chunk fetched
again. Size accounting and eviction happen under an exclusive POSIX record lock on
``<root>/chunks-v1/lock``, whose neighbour ``size`` holds the bytes cached:
an insert that would pass the cap first evicts least recently used entries
(by mtime, bumped on a hit at most once per ``TOUCH_INTERVAL_S``) down to
``LOW_WATER`` of the cap, recounting from the files themselves. So the cache
never holds more than the cap, plus the one entry each process is writing.

The cache never fails a read: any error of its own (full disk, read-only
folder, a damaged entry, a lock it cannot take) makes it a miss, or skips the write.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import blake3

from dstore import _native
from dstore.units import parse_size

__all__ = ["DEFAULT_CACHE_BYTES", "ChunkCache", "cache_from_env", "chunk_hasher", "default_cache_dir"]

DEFAULT_CACHE_BYTES = 10 << 30
#: Eviction frees room down to this fraction of the cap, so scans are rare.
LOW_WATER = 0.9
#: A hit refreshes the entry's mtime (its LRU age) at most this often.
TOUCH_INTERVAL_S = 60.0
#: Temporary files older than this were left by a process that died while writing.
STALE_TMP_S = 3600.0
#: :meth:`ChunkCache.put_many` takes the lock once per this many bytes of entries.
PUT_BATCH_BYTES = 8 << 20
LAYOUT = "chunks-v1"
_SIZE = struct.Struct("<Q")
_IN_PROCESS = threading.Lock()


def _new_process_lock() -> None:
    global _IN_PROCESS
    _IN_PROCESS = threading.Lock()  # a thread of the parent may have held it at the fork


os.register_at_fork(after_in_child=_new_process_lock)


def default_cache_dir() -> Path:
    """``$DSTORE_CACHE``, else ``$XDG_CACHE_HOME/dstore``, else ``~/.cache/dstore``."""
    if os.environ.get("DSTORE_CACHE"):
        return Path(os.environ["DSTORE_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "dstore" if xdg else Path.home() / ".cache" / "dstore"


def cache_from_env(cache: str | os.PathLike[str] | bool | ChunkCache | None = None) -> ChunkCache | None:
    """The cache ``dstore.open(cache=...)`` asks for.

    None: ``$DSTORE_CACHE`` / the default folder, capped at ``$DSTORE_CACHE_SIZE``
    (e.g. ``10G``; default 10 GiB; ``0`` turns it off); False: no disk cache;
    a path: that folder; a :class:`ChunkCache`: itself.
    """
    if cache is False:
        return None
    if cache is True:
        cache = None
    if isinstance(cache, ChunkCache):
        return cache
    size_text = os.environ.get("DSTORE_CACHE_SIZE")
    cap = parse_size(size_text) if size_text else DEFAULT_CACHE_BYTES
    if cap <= 0:
        return None
    root = default_cache_dir() if cache is None else Path(cache)
    return ChunkCache(root, cap)


def chunk_hasher(hash_name: str) -> Callable[[bytes | memoryview], bytes]:
    """The digest function of a chunk hash. The blake3 package, not ``_native.blake3``: for a chunk
    (16-256 KiB) handing the work to the native thread pool costs more than the hash itself."""
    if hash_name == "blake3":
        return lambda data: blake3.blake3(data).digest()
    name = hash_name.replace("sha2-", "sha")
    return lambda data: hashlib.new(name, data).digest()


def _digest(data: memoryview | bytes, hash_name: str) -> bytes:
    return chunk_hasher(hash_name)(data)


class ChunkCache:
    """Verified chunks by chunk ID, on disk, size-capped, LRU; safe across threads and processes."""

    def __init__(self, root: str | Path, cap_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.root = Path(root) / LAYOUT
        self.cap_bytes = cap_bytes
        self._ready = False
        self._folders: set[str] = set()  # fan-out folders known to exist
        #: A write of this process failed (full disk, read-only folder): others cannot count on its entries.
        self.write_failed = False
        self.hits = 0
        self.misses = 0
        self.dropped = 0  # entries that failed their check

    def path(self, hash_name: str, digest: bytes) -> Path:
        text = digest.hex()
        return self.root / hash_name / text[:2] / text

    # -- reads ----------------------------------------------------------------

    def get_into(self, hash_name: str, digest: bytes, out: memoryview) -> bool:
        """Fill ``out`` (exactly the chunk's size) with the cached chunk, checked; False on any miss."""
        path = self.path(hash_name, digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.misses += 1
            return False
        try:
            st = os.fstat(fd)
            got = 0
            if st.st_size == len(out):
                while got < len(out):
                    n = os.readv(fd, [out[got:]])
                    if n <= 0:
                        break
                    got += n
        except OSError:
            got = -1
        finally:
            os.close(fd)
        if got != len(out) or _digest(out, hash_name) != digest:
            self.dropped += 1
            self.misses += 1
            self._drop(path)
            return False
        self.hits += 1
        if time.time() - st.st_mtime > TOUCH_INTERVAL_S:
            try:
                os.utime(path)
            except OSError:
                pass
        return True

    def get(self, hash_name: str, digest: bytes, size: int) -> bytes | None:
        """The cached chunk of ``size`` bytes, checked; None on any miss."""
        buf = bytearray(size)
        return bytes(buf) if self.get_into(hash_name, digest, memoryview(buf)) else None

    def get_many(self, hash_name: str, wants: Sequence[tuple[bytes, int]]) -> dict[bytes, bytes]:
        """The cached chunks among ``wants`` (digest, size), each checked against its ID; misses are left out.

        What a data loader's next samples need, with as little Python per entry as can be: one read
        into a ``bytes`` of its own (a one-chunk sample is then handed on without a copy) and one hash.
        An entry that fails its check is dropped, as by :meth:`get_into`.
        """
        out: dict[bytes, bytes] = {}
        now = time.time()
        root = f"{self.root}/{hash_name}/"
        digest_of = chunk_hasher(hash_name)
        for digest, size in wants:
            text = digest.hex()
            path = f"{root}{text[:2]}/{text}"
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                data = os.read(fd, size) if st.st_size == size else b""
            except OSError:
                data = b""
            finally:
                os.close(fd)
            if len(data) != size or digest_of(data) != digest:
                self._drop_damaged(Path(path))
                continue
            if now - st.st_mtime > TOUCH_INTERVAL_S:
                try:
                    os.utime(path)
                except OSError:
                    pass
            out[digest] = data
        self.hits += len(out)
        self.misses += len(wants) - len(out)
        return out

    def has(self, hash_name: str, digest: bytes) -> bool:
        """Whether an entry for the chunk is there (unchecked: whoever reads it checks it)."""
        text = digest.hex()
        return os.path.exists(f"{self.root}/{hash_name}/{text[:2]}/{text}")

    def _drop_damaged(self, path: Path) -> None:
        if path.exists():
            self.dropped += 1
            self._drop(path)

    # -- writes ---------------------------------------------------------------

    def put(self, hash_name: str, digest: bytes, data: bytes | memoryview) -> None:
        """Cache a chunk the caller has verified; any failure just leaves it uncached."""
        self.put_many(hash_name, [(digest, data)])

    def put_many(self, hash_name: str, items: Sequence[tuple[bytes, bytes | memoryview]]) -> None:
        """Cache chunks the caller has verified, taking the lock once per ``PUT_BATCH_BYTES`` (or an eighth of the cap).

        Each entry is written and renamed into place under the lock, so as with :meth:`put` at most one
        temporary file per process exists beyond the cap. Any failure just leaves entries uncached.
        """
        batch: list[tuple[str, bytes | memoryview]] = []
        batch_bytes = 0
        limit = max(1, min(PUT_BATCH_BYTES, self.cap_bytes // 8))  # a batch fits the room eviction makes
        root = f"{self.root}/{hash_name}/"
        for digest, data in items:
            if len(data) > self.cap_bytes:
                continue
            text = digest.hex()
            if batch and batch_bytes + len(data) > limit:
                self._put_batch(batch)
                batch, batch_bytes = [], 0
            batch.append((f"{root}{text[:2]}/{text}", data))
            batch_bytes += len(data)
            if batch_bytes >= limit:
                self._put_batch(batch)
                batch, batch_bytes = [], 0
        if batch:
            self._put_batch(batch)

    def _put_batch(self, batch: list[tuple[str, bytes | memoryview]]) -> None:
        try:
            if not self._ready:
                self.root.mkdir(parents=True, exist_ok=True)
                self._ready = True
            for path, _ in batch:
                folder = path[: path.rindex("/")]
                if folder not in self._folders:
                    os.makedirs(folder, exist_ok=True)
                    self._folders.add(folder)
            size = sum(len(d) for _, d in batch)  # room for all, though some may exist already
            tmp_name = f"/.tmp-{os.getpid()}-{time.monotonic_ns()}"
            with self._locked() as lock_fd:
                total = self._read_total(lock_fd)
                if total is None or total + size > self.cap_bytes:
                    total = self._evict(int(self.cap_bytes * LOW_WATER) - size)
                # Written natively, the GIL released: each entry to a temporary file renamed into place,
                # those already cached skipped (another process wrote them meanwhile).
                written, error = _native.write_new_files(
                    [p for p, _ in batch], [p[: p.rindex("/")] + tmp_name for p, _ in batch], [d for _, d in batch]
                )
                total += sum(len(d) for (_, d), done in zip(batch, written, strict=True) if done)
                if error is not None:
                    self.write_failed = True  # a full disk: count what was cached, leave the rest
                self._write_total(lock_fd, total)
        except OSError:
            self.write_failed = True  # full disk, read-only folder, …: the read goes on without the cache

    def writable(self) -> bool:
        """Whether entries can be written here (the folder exists or can be made, and takes writes)."""
        if self.write_failed:
            return False
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError:
            return False
        return os.access(self.root, os.W_OK)

    def _drop(self, path: Path) -> None:
        try:
            with self._locked() as lock_fd:
                try:
                    size = path.stat().st_size
                    path.unlink()
                except FileNotFoundError:
                    return
                total = self._read_total(lock_fd)
                if total is not None:
                    self._write_total(lock_fd, max(0, total - size))
        except OSError:
            pass

    # -- accounting (under the lock) ------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[int]:
        # A POSIX record lock, not flock: a flock belongs to the open file, which a child forked while a
        # thread held it (a DataLoader worker) would keep open, and locked, forever. A record lock
        # belongs to the process and is not inherited; threads of one process queue on _IN_PROCESS.
        with _IN_PROCESS:
            fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX)
                yield fd
            finally:
                os.close(fd)  # closing releases the lock

    def _read_total(self, lock_fd: int) -> int | None:
        try:
            with open(self.root / "size", "rb") as f:
                raw = f.read(_SIZE.size + 1)
        except FileNotFoundError:
            return None
        return _SIZE.unpack(raw)[0] if len(raw) == _SIZE.size else None

    def _write_total(self, lock_fd: int, total: int) -> None:
        tmp = self.root / f".size-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(_SIZE.pack(total))
        os.replace(tmp, self.root / "size")

    def entries(self) -> list[tuple[float, int, Path]]:
        """Every entry as (mtime, bytes, path); stale temporary files are removed on the way."""
        out: list[tuple[float, int, Path]] = []
        now = time.time()
        for algo in _scandir(self.root):
            if not algo.is_dir():
                continue
            for fan in _scandir(Path(algo.path)):
                if not fan.is_dir():
                    continue
                for entry in _scandir(Path(fan.path)):
                    try:
                        st = entry.stat()
                    except OSError:
                        continue
                    if entry.name.startswith(".tmp-"):
                        if now - st.st_mtime > STALE_TMP_S:
                            _unlink(Path(entry.path))
                        continue
                    out.append((st.st_mtime, st.st_size, Path(entry.path)))
        return out

    def _evict(self, target_bytes: int) -> int:
        """Remove the oldest entries until at most ``target_bytes`` remain; the bytes left."""
        entries = sorted(self.entries(), key=lambda e: e[0])
        total = sum(e[1] for e in entries)
        for _, size, path in entries:
            if total <= max(0, target_bytes):
                break
            if _unlink(path):
                total -= size
        return total

    def total_bytes(self) -> int:
        """Bytes held now, counted from the files."""
        return sum(e[1] for e in self.entries())


def _scandir(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:
        return []


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except OSError as e:
        return e.errno == errno.ENOENT
