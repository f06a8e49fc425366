"""Write a dataset's files in batches: one native call decodes, verifies and writes thousands of files.

Files are queued in walk order; a batch closes at ``BATCH_BYTES`` of chunks or
``BATCH_FILES`` files, and a file larger than that spans batches (its chunks
carry their offsets in the file, so every file goes the same way). The native
kernel runs each batch on all cores with the GIL released while this thread
walks the tree and plans the next one. Chunks that fail to verify come back by
index: their packs are rebuilt from verified shards and just those chunks are
written again into the files already created.
"""

from __future__ import annotations

import itertools
import mmap
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dstore import _native
from dstore.errors import FormatError, IntegrityError
from dstore.fetch.packs import LocalShards, Parts
from dstore.fetch.reader import DatasetReader
from dstore.format import unixfs
from dstore.format.cid import CID, HASH_CODES, RAW, cid_to_text, hash_digest
from dstore.format.locator import ChunkEntry
from dstore.format.pack import PackRecord

BATCH_BYTES = 64 << 20
BATCH_FILES = 4096
# Batches handed to the writer and not yet settled: while the writer writes one, the next is mapped and
# queued, so neither the planning thread nor the writer waits on the other's every batch.
IN_FLIGHT_BATCHES = 2
# A big file's chunks are looked up this many at a time (one pass over the locator for all of them).
PRIME_LEAVES = 4096


@dataclass
class _Batch:
    """One native call's worth of files and chunks."""

    names: list[str] = field(default_factory=list)  # shown in errors
    paths: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    create: list[bool] = field(default_factory=list)
    packs: dict[bytes, tuple[int, PackRecord]] = field(default_factory=dict)
    refs: list[ChunkEntry] = field(default_factory=list)
    chunk_packs: list[int] = field(default_factory=list)
    chunk_files: list[int] = field(default_factory=list)
    file_offsets: list[int] = field(default_factory=list)
    chunk_bytes: int = 0
    done: list[Any] = field(default_factory=list)  # tokens of the files whose last chunk is in this batch

    def pack(self, pack_id: bytes, record: PackRecord) -> int:
        found = self.packs.get(pack_id)
        if found is None:
            found = self.packs[pack_id] = (len(self.packs), record)
        return found[0]

    def file(self, name: str, path: str, size: int, create: bool) -> int:
        self.names.append(name)
        self.paths.append(path)
        self.sizes.append(size)
        self.create.append(create)
        return len(self.paths) - 1

    def full(self) -> bool:
        return self.chunk_bytes >= BATCH_BYTES or len(self.paths) >= BATCH_FILES


_Pending = tuple[_Batch, list[Parts], Future[list[int]]]  # a batch, the parts its call uses, the call


class BatchWriter:
    """Writes files of ``reader`` under ``folder`` (which, with any subfolders, the caller creates first)."""

    def __init__(
        self,
        reader: DatasetReader,
        folder: Path,
        progress: Callable[[int], None] | None = None,
        *,
        on_done: Callable[[Any], None] | None = None,
    ) -> None:
        self.reader = reader
        self.folder = str(folder)
        self.progress = progress
        self.on_done = on_done  # called with a batch's ``done`` tokens once all their files' chunks are written
        self.hash_code = HASH_CODES[reader.hash_name]  # the native writer verifies either hash a manifest allows
        self._empty_digest = hash_digest(b"", reader.hash_name)
        self._batch = _Batch()
        self._maps: dict[bytes, Parts] = {}  # packs mapped (or rebuilt) for the batches in hand
        self._replaced: list[Parts] = []  # mappings a rebuild replaced, closed once no call uses them
        self._pending: deque[_Pending] = deque()  # the calls in flight, oldest first
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="dstore-write")
        # Maps the packs of the next batch (and unmaps those of the last) while the writer thread writes.
        self._mapper = ThreadPoolExecutor(1, thread_name_prefix="dstore-map")
        # Packs of the local store alone are mapped by the writer thread (peers' are fetched by this one).
        source = reader.packs.source
        self._local = source if isinstance(source, LocalShards) else None

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            if exc_type is None:
                self._flush()
                while self._pending:
                    self._settle(self._pending.popleft())
        finally:
            # Never leave the kernel writing into a tree the caller is about to remove.
            while self._pending:
                self._pending.popleft()[2].exception()
            self._pool.shutdown(wait=True)
            self._mapper.shutdown(wait=True)  # after the writer: its last unmaps are queued here
            self._release()

    def add(self, path: str, cid: CID, node: unixfs.Node | None, name: str | None = None, *, done: Any = None) -> None:
        """Queue the file ``cid`` to be written at ``path`` (relative to the folder); ``name`` is for errors.

        ``node`` may be None for a one-chunk file (a raw CID). ``on_done([done, …])`` gets the file's
        token once every chunk of it is written and verified (when the batch holding its last chunk settles).
        """
        name = name or path
        if cid.codec == RAW:
            digest = self.reader.chunk_digest(cid)
            if digest == self._empty_digest:
                self._batch.file(name, path, 0, True)  # the empty file: no chunk to write
                self._batch.done.append(done)
            else:
                self._add_one_chunk(path, digest, name, done)
            return
        node = node or self.reader.node(cid)
        size = node.filesize or 0
        chunks = self._chunks(cid, node, name)
        batch = self._batch
        file = batch.file(name, path, size, True)
        at = 0
        for pack_id, record, ref in chunks:
            if ref.offset + ref.stored_len > record.size:
                raise IntegrityError(f"{name}: the locator points past the end of a pack (corrupt locator)")
            if batch.full():
                # The rest of this file goes into the next batch, into the file created by this one.
                self._flush()
                batch = self._batch
                file = batch.file(name, path, size, False)
            batch.refs.append(ref)
            batch.chunk_packs.append(batch.pack(pack_id, record))
            batch.chunk_files.append(file)
            batch.file_offsets.append(at)
            batch.chunk_bytes += ref.size
            at += ref.size
        if at != size:
            raise FormatError(f"{name}: chunks add up to {at} bytes, the file says {size}")
        batch.done.append(done)
        if batch.full():
            self._flush()

    def _add_one_chunk(self, path: str, digest: bytes, name: str, done: Any) -> None:
        """``add`` for a one-chunk file (most small files; its size is its chunk's), kept lean."""
        pack_id, record, ref = self.reader._ref(digest)
        if ref.offset + ref.stored_len > record.size:
            raise IntegrityError(f"{name}: the locator points past the end of a pack (corrupt locator)")
        batch = self._batch
        batch.refs.append(ref)
        batch.chunk_packs.append(batch.pack(pack_id, record))
        batch.chunk_files.append(batch.file(name, path, ref.size, True))
        batch.file_offsets.append(0)
        batch.chunk_bytes += ref.size
        batch.done.append(done)
        if batch.full():
            self._flush()

    def _chunks(self, cid: CID, node: unixfs.Node, name: str) -> Iterator[tuple[bytes, PackRecord, ChunkEntry]]:
        """Where each chunk of a file of several chunks lies, in order (looked up a window at a time)."""
        leaves = self.reader.leaves(cid, node)
        while window := list(itertools.islice(leaves, PRIME_LEAVES)):
            if len(window) > 16:  # a small file's chunks were looked up with its folder's (reader.walk)
                self.reader.prime([digest for digest, _ in window])
            for digest, size in window:
                found = self.reader._ref(digest)
                if found[2].size != size:
                    raise IntegrityError(
                        f"{name}: chunk {digest.hex()[:16]}… has size {found[2].size} in the locator, "
                        f"{size} in the file"
                    )
                yield found

    # -- batches ------------------------------------------------------------

    def _flush(self) -> None:
        """Start the native call for the queued batch, then settle the oldest beyond IN_FLIGHT_BATCHES."""
        batch, self._batch = self._batch, _Batch()
        if not batch.paths:
            return
        parts: list[Parts] = []
        if self._local is not None:
            # Mapped (and unmapped) on a helper thread, not this one: mmap and munmap of a batch's
            # shards cost as much as planning a batch of small files. The next batch is mapped
            # while the writer thread writes this one.
            mapped = self._mapper.submit(self._map, self._local, batch)
            job = self._pool.submit(self._write_mapped, batch, mapped)
        else:
            self.reader.packs.source.prefetch([(p, r) for p, (_, r) in batch.packs.items() if p not in self._maps])
            for pack_id, (index, record) in batch.packs.items():
                try:
                    parts.append(self._parts(pack_id, record))
                except IntegrityError as e:
                    raise _named(batch.names[batch.chunk_files[batch.chunk_packs.index(index)]], e) from e
            job = self._pool.submit(self._call, batch, parts, batch.refs, None)
        self._pending.append((batch, parts, job))
        while len(self._pending) > IN_FLIGHT_BATCHES:
            self._settle(self._pending.popleft())
        self._release()
        # The index pages this batch's metadata reads touched: unmapped, still cached (flat RSS).
        self.reader.release_index_pages()

    def _settle(self, pending: _Pending) -> None:
        """Wait for a batch's native call; retry its failed chunks from rebuilt packs."""
        batch, _, job = pending
        failed = job.result()
        if failed:
            self._retry(batch, failed)
        if self.on_done is not None and batch.done:
            self.on_done(batch.done)
        if self.progress:
            self.progress(batch.chunk_bytes)

    def _map(self, local: LocalShards, batch: _Batch) -> list[Parts]:
        """On the mapping thread: the batch's packs from the local store (rebuilt where a shard is
        missing or damaged). Each batch maps its own packs."""
        parts: list[Parts] = []
        try:
            for pack_id, (index, record) in batch.packs.items():
                mapped = local.map(pack_id, record)
                try:
                    parts.append(mapped if mapped is not None else [local.rebuild(pack_id, record)])
                except IntegrityError as e:
                    raise _named(batch.names[batch.chunk_files[batch.chunk_packs.index(index)]], e) from e
        except BaseException:
            _release_all(parts)
            raise
        return parts

    def _write_mapped(self, batch: _Batch, mapped: Future[list[Parts]]) -> list[int]:
        """On the writer thread: write the batch once its packs are mapped; unmapped on the mapping thread."""
        parts = mapped.result()
        try:
            return self._call(batch, parts, batch.refs, None)
        finally:
            self._mapper.submit(_release_all, parts)

    def _call(self, batch: _Batch, parts: list[Parts], refs: list[ChunkEntry], create: list[bool] | None) -> list[int]:
        args = (
            self.folder,
            batch.paths,
            batch.sizes,
            batch.create if create is None else create,
            parts,
            batch.chunk_packs,
            [r.offset for r in refs],
            [r.stored_len for r in refs],
            [r.size for r in refs],
            [r.codec for r in refs],
            batch.chunk_files,
            batch.file_offsets,
            b"".join(r.digest for r in refs),
        )
        return _native.write_files(*args, self.hash_code)

    def _retry(self, batch: _Batch, failed: list[int]) -> None:
        """Rebuild the packs of the failed chunks and write just those chunks into the existing files."""
        records = {index: (pack_id, record) for pack_id, (index, record) in batch.packs.items()}
        retry = _Batch(names=batch.names, paths=batch.paths, sizes=batch.sizes)
        for i in failed:
            pack_id, record = records[batch.chunk_packs[i]]
            if pack_id not in retry.packs:
                try:
                    self._rebuild(pack_id, record)
                except IntegrityError as e:
                    raise _named(batch.names[batch.chunk_files[i]], e) from e
            retry.refs.append(batch.refs[i])
            retry.chunk_packs.append(retry.pack(pack_id, record))
            retry.chunk_files.append(batch.chunk_files[i])
            retry.file_offsets.append(batch.file_offsets[i])
        parts = [self._maps[pack_id] for pack_id in retry.packs]
        still = self._call(retry, parts, retry.refs, [False] * len(retry.paths))
        if still:
            i = still[0]
            ref, pack_id = retry.refs[i], list(retry.packs)[retry.chunk_packs[i]]
            raise IntegrityError(
                f"{retry.names[retry.chunk_files[i]]}: chunk {ref.digest.hex()[:16]}… in pack {cid_to_text(pack_id)} "
                "does not match its ID even after rebuilding the pack from verified shards (the locator is wrong)"
            )

    # -- packs ----------------------------------------------------------------

    def _parts(self, pack_id: bytes, record: PackRecord) -> Parts:
        """The pack's data shards mapped (kept while batches use them), else the pack rebuilt."""
        parts = self._maps.get(pack_id)
        if parts is None:
            parts = self.reader.packs.source.map(pack_id, record)
            if parts is None:
                return self._rebuild(pack_id, record)
            self._maps[pack_id] = parts
        return parts

    def _rebuild(self, pack_id: bytes, record: PackRecord) -> Parts:
        old = self._maps.get(pack_id)
        self._maps[pack_id] = [self.reader.packs.source.rebuild(pack_id, record)]
        if old is not None:
            self._replaced.append(old)
        return self._maps[pack_id]

    def _release(self) -> None:
        """Close the mappings no call in flight uses (all of them when none is)."""
        packs = {pack_id for batch, _, _ in self._pending for pack_id in batch.packs}
        in_use = {id(p) for _, parts, _ in self._pending for p in parts}
        for pack_id in [p for p in self._maps if p not in packs]:
            _release(self._maps.pop(pack_id))
        for old in [p for p in self._replaced if id(p) not in in_use]:
            self._replaced.remove(old)
            _release(old)


def _named(name: str, e: IntegrityError) -> IntegrityError:
    """The same error, naming the file that is lost (not only the pack)."""
    return type(e)(f"{name}: {e}")


def _release_all(parts: list[Parts]) -> None:
    for part in parts:
        _release(part)


def _release(parts: Parts) -> None:
    for part in parts:
        if isinstance(part, mmap.mmap):
            part.close()
