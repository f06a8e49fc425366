"""``dstore.open(cid)``: a dataset handle and seekable file objects over it.

A file object reads only the chunks that cover the bytes asked for: the
locator maps each chunk to a pack and offset, and only the data-shard bytes
holding that chunk are read (docs/format.md, "Locator").
"""

from __future__ import annotations

import bisect
import io
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dstore.fetch.reader import DatasetReader, Entry
from dstore.store import Store

# Decoded chunks kept per open file, so small sequential reads don't re-read shards.
CHUNK_CACHE = 4


class Dataset:
    """An open dataset: list its folders, walk it, open its files."""

    def __init__(self, store: Store, cid: str) -> None:
        self._store = store
        self.reader = DatasetReader(store, cid)
        self.cid = self.reader.cid.encode("base32")
        self.manifest = self.reader.manifest

    def ls(self, path: str = "") -> list[Entry]:
        """Entries of the folder at ``path`` (or the file itself), sorted by name."""
        return self.reader.ls(path)

    def walk(self, path: str = "") -> Iterator[tuple[str, list[str], list[str]]]:
        """Like :func:`os.walk`: ``(folder path, folder names, file names)`` top down."""
        _, node = self.reader.resolve(path)
        if not node.is_dir:
            raise NotADirectoryError(path)
        stack = [(path.strip("/"), node)]
        while stack:
            prefix, node = stack.pop(0)
            dirs, files = [], []
            for name, cid in self.reader.entries(node):
                child = self.reader.node(cid)
                if child.is_dir:
                    dirs.append(name)
                    stack.append((f"{prefix}/{name}" if prefix else name, child))
                else:
                    files.append(name)
            yield prefix, dirs, files

    def open(self, path: str, mode: str = "rb") -> DatasetFile:
        """A seekable, read-only binary file object for the file at ``path``."""
        if mode not in ("r", "rb"):
            raise ValueError("datasets are read-only: open them with mode 'rb'")
        cid, node = self.reader.resolve(path)
        if node.is_dir:
            raise IsADirectoryError(path)
        return DatasetFile(self.reader, list(self.reader.leaves(cid, node)), path)

    def close(self) -> None:
        self.reader.close()
        self._store.close()

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DatasetFile(io.BufferedIOBase):
    """Read-only, seekable view of one file of a dataset."""

    def __init__(self, reader: DatasetReader, leaves: list[tuple[bytes, int]], name: str) -> None:
        super().__init__()
        self._reader = reader
        self._digests = [d for d, _ in leaves]
        self._starts = []
        pos = 0
        for _, size in leaves:
            self._starts.append(pos)
            pos += size
        self._size = pos
        self._pos = 0
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self.name = name

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check_open()
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def _chunk(self, index: int) -> bytes:
        data = self._cache.get(index)
        if data is None:
            data = self._reader.read_chunk(self._digests[index])
            self._cache[index] = data
            if len(self._cache) > CHUNK_CACHE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(index)
        return data

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        if end <= self._pos:
            return b""
        out = bytearray()
        pos = self._pos
        index = bisect.bisect_right(self._starts, pos) - 1
        while pos < end:
            chunk = self._chunk(index)
            within = pos - self._starts[index]
            take = min(len(chunk) - within, end - pos)
            out += chunk[within : within + take]
            pos += take
            index += 1
        self._pos = pos
        return bytes(out)

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")


def open_dataset(cid: str, *, home: str | Path | None = None) -> Dataset:
    """Open dataset ``cid`` from the local store at ``home`` (default: $DSTORE_HOME)."""
    store = Store(home)
    try:
        return Dataset(store, cid)
    except BaseException:
        store.close()
        raise
