"""``dstore add``: walk → native pipeline → packs → shards → index → manifest.

Memory does not grow with the number of files: the walk is a stream, the
UnixFS nodes and the locator's chunk-table entries go to disk spools as they
are made (dstore.ingest.spool), folders are built bottom up as soon as they
are complete, and the metadata is written out in packs of at most
METADATA_PACK_BYTES (docs/format.md, "Metadata in several packs").

Files are taken in batches: up to BATCH_BYTES of files below SEGMENT_BYTES
go to one Rust call that reads, chunks, hashes and compresses them on all
cores (GIL released) and hands back every chunk of the batch at once; the
call for the next batch runs while this thread stores the one before. A
bigger file streams through ``process_segment``, one 16 MiB segment a call.
Either way a file that no longer has the size the walk saw is an InputError.
Python then looks the batch's chunks up in the index in one read
transaction, reuses those whose pack is still there and strong enough
(docs/format.md, "When dedup reuses a pack"), and copies the others into the
open pack (one native copy per pack). Sealing a pack (erasure coding, shard
hashes) and writing shards run on other threads.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dstore import _native
from dstore.errors import DstoreError, InputError, PeerError, StoreError, UsageError
from dstore.format import unixfs
from dstore.format.cbor import block_cid
from dstore.format.cid import CID, HASH_CODES, cid_to_text, raw_cid_bytes
from dstore.format.locator import locator_root
from dstore.format.manifest import PROFILE_DSTORE, ChunkerParams, Manifest, Profile, profile_named
from dstore.format.pack import PackRecord
from dstore.format.pointer import Pointer, encode_placement
from dstore.ingest.packer import Packer
from dstore.ingest.segments import SegmentReader
from dstore.ingest.sinks import LocalSink, PeerSink, ShardSink
from dstore.ingest.spool import RECORD_BYTES, BlockSpool, ChunkSpool
from dstore.ingest.walk import Enter, Event, FileEntry, survey, walk
from dstore.limits import MAX_SHARDS
from dstore.net.protocol import PeerClient
from dstore.store import ChunkLoc, Store
from dstore.store.metadata import (
    METADATA_PACK_BYTES,
    MetadataPack,
    encode_metadata_packs,
    metadata_pointer,
    write_pointer,
)

SEGMENT_BYTES = 16 << 20
# A batch of whole files read by one native call: bounds the file bytes held at once.
BATCH_BYTES = 32 << 20
BATCH_MAX_FILES = 8192
BATCH_MAX_EVENTS = 4 * BATCH_MAX_FILES  # walk events (files, folders entered and left) held per batch
# Chunks looked up in the index per read transaction.
LOOKUP_CHUNKS = 2048
# Chunk-table records turned into locator pages per native call (61 bytes each).
LOCATOR_RECORDS = 1 << 16
# Metadata blocks written to the index per transaction: LMDB keeps a copy of every page a transaction
# dirties, and blocks with random CIDs each land on a page of their own, so a transaction is bounded by
# its count of blocks (4,096 pages, 16 MiB, at most) as well as by its bytes.
INDEX_TXN_BYTES = 4 << 20
INDEX_TXN_BLOCKS = 4096
GIL_SWITCH_INTERVAL_S = 0.0005
ZSTD_LEVEL = 1  # docs/cli.md: as small as per-chunk level 3 on CSV, and faster

Progress = Callable[[int], None]


@dataclass(frozen=True)
class ShardSpec:
    """Erasure-coding parameters: k data + m parity shards per pack."""

    k: int
    m: int

    @classmethod
    def parse(cls, text: str) -> ShardSpec:
        """Parse ``K+M`` (for example ``10+4``; M may be 0)."""
        k_text, plus, m_text = text.partition("+")
        try:
            k, m = int(k_text), int(m_text)
        except ValueError:
            raise UsageError(f"--shards must look like K+M (for example 10+4), got {text!r}") from None
        if not plus or k < 1 or m < 0 or k + m > MAX_SHARDS:
            raise UsageError(f"--shards {text}: need K >= 1, M >= 0 and K + M <= {MAX_SHARDS}")
        return cls(k, m)

    def __str__(self) -> str:
        return f"{self.k}+{self.m}"


@dataclass
class AddResult:
    """What an add produced and how much it stored."""

    dataset: CID
    root: CID
    bytes_in: int
    files: int
    chunks: int
    unique_chunks: int
    new_chunks: int
    new_chunk_bytes: int  # uncompressed bytes of chunks this add stored
    new_stored_bytes: int  # bytes of shards this add wrote (including parity)
    compressed_bytes: int  # stored (compressed/raw) bytes of new chunks, before parity
    new_metadata_bytes: int  # UnixFS nodes, locator and manifest blocks not stored before
    shards: ShardSpec

    def to_json(self) -> dict[str, object]:
        return {
            "cid": self.dataset.encode("base32"),
            "root": self.root.encode("base32"),
            "bytes_in": self.bytes_in,
            "files": self.files,
            "chunks": self.chunks,
            "new_chunks": self.new_chunks,
            "new_bytes_stored": self.new_stored_bytes,
            "new_metadata_bytes": self.new_metadata_bytes,
            "dedup_ratio": round(self.bytes_in / self.new_chunk_bytes, 4) if self.new_chunk_bytes else None,
            "compression_ratio": (
                round(self.new_chunk_bytes / self.compressed_bytes, 4) if self.compressed_bytes else None
            ),
            "shards": str(self.shards),
        }


@dataclass
class _Started:
    """A batch of the walk: its files (their native call started, or None without files) and its events."""

    files: list[FileEntry]
    events: list[Event]
    started: Future[_native.FileBatch] | None


@dataclass
class _Adder:
    store: Store
    sink: ShardSink
    spec: ShardSpec
    chunker: ChunkerParams
    hash_name: str
    progress: Progress | None
    links_per_node: int  # width of the file layout (the profile's)
    packer: Packer = field(init=False)
    hash_code: int = field(init=False)  # multihash code the native kernels hash chunks with
    reader: SegmentReader | None = field(init=False, default=None)  # made for the first big file
    # Runs the native call of the next batch of small files while this thread stores the one before.
    batch_reader: ThreadPoolExecutor = field(init=False)
    # The dataset's metadata blocks and chunk-table entries, on disk as they are made (memory stays flat).
    meta: BlockSpool = field(default_factory=BlockSpool)
    chunk_table: ChunkSpool = field(default_factory=ChunkSpool)
    # This add's number for each pack its chunk table names, in order of first use.
    pack_numbers: dict[bytes, int] = field(default_factory=dict)
    # Packs found through dedup: whether this add may reuse each (still where
    # it stores, and strong enough), and the peers confirmed to hold their shards.
    usable_packs: dict[bytes, bool] = field(default_factory=dict)
    old_placement: dict[bytes, list[str | None]] = field(default_factory=dict)
    chunks_total: int = 0
    new_chunks: int = 0
    new_chunk_bytes: int = 0
    compressed_bytes: int = 0
    files: int = 0
    size: int = 0  # file bytes met (the manifest's size)
    entries: int = 0  # files and folders met (the manifest's entries)
    unique_chunks: int = 0  # chunks in the locator (known once it is written)

    def __post_init__(self) -> None:
        self.packer = Packer(self.store, self.sink, self.spec.k, self.spec.m, self.hash_name, self._pack_durable)
        self.hash_code = HASH_CODES[self.hash_name]
        self.batch_reader = ThreadPoolExecutor(1, thread_name_prefix="dstore-batch")

    def close(self) -> None:
        self.batch_reader.shutdown(wait=True, cancel_futures=True)
        self.packer.close()
        if self.reader is not None:
            self.reader.close()

    def close_spools(self) -> None:
        self.meta.close()
        self.chunk_table.close()

    def add_blocks(self, blocks: list[tuple[CID, bytes]]) -> None:
        for cid, block in blocks:
            self.meta.add(cid.to_bytes(), block)

    # -- files --------------------------------------------------------------

    def _start_batch(self, entries: list[FileEntry]) -> Future[_native.FileBatch] | None:
        """Start the native call that reads, chunks, hashes and compresses ``entries`` (on the reader thread).

        The call holds no GIL and keeps no state of the add, so it runs while
        this thread stores the batch before it (see :meth:`add_tree`).
        """
        if not entries:
            return None
        p = self.chunker
        paths = [e.path for e in entries]
        sizes = [e.size for e in entries]
        args = (paths, sizes, p.min, p.avg, p.max, ZSTD_LEVEL, self.hash_code)
        return self.batch_reader.submit(_native.process_files, *args)

    def _add_batch(
        self, entries: list[FileEntry], started: Future[_native.FileBatch] | None
    ) -> Iterator[tuple[CID, list[tuple[CID, bytes]], int]]:
        if started is None:
            return
        batch = started.result()
        if batch.errors:
            index, errno, message = batch.errors[0]
            if not errno:  # the file grew or shrank since the walk listed it
                detail = message.replace(" while being added", "")  # "file grew (was N bytes)"
                raise InputError(f"cannot read {entries[index].path}: changed while being added ({detail})")
            raise InputError(f"cannot read {entries[index].path}: {os.strerror(errno)}")
        cids = self._take_chunks(batch)
        if self.progress:
            self.progress(batch.bytes_in)
        lengths = batch.lengths
        start = 0
        hash_name, width = self.hash_name, self.links_per_node
        for count in batch.chunk_counts:
            end = start + count
            self.files += 1
            yield unixfs.build_file(list(zip(cids[start:end], lengths[start:end], strict=True)), hash_name, width)
            start = end

    def add_big_file(self, entry: FileEntry) -> tuple[CID, list[tuple[CID, bytes]], int]:
        """Store one file segment by segment; returns its UnixFS root CID, new blocks and Tsize."""
        leaves: list[tuple[bytes, int]] = []
        p = self.chunker
        total = 0
        if self.reader is None:  # two 16 MiB buffers: only for trees that have big files
            self.reader = SegmentReader(SEGMENT_BYTES, self.chunker.max)
        try:
            with open(entry.path, "rb", buffering=0) as f:
                segments = self.reader.segments(f)
                view, final = next(segments)
                while True:
                    seg = _native.process_segment(view, final, p.min, p.avg, p.max, ZSTD_LEVEL, self.hash_code)
                    cids = self._take_chunks(seg)
                    leaves.extend(zip(cids, seg.lengths, strict=True))
                    if self.progress:
                        self.progress(seg.consumed)
                    consumed = seg.consumed
                    total += consumed
                    del seg, view  # the buffer is reused for a later segment
                    try:
                        view, final = segments.send(consumed)
                    except StopIteration:
                        break
        except DstoreError:
            raise  # store errors (an OSError too) are not about the input
        except OSError as e:
            raise InputError(f"cannot read {entry.path}: {e.strerror or e}") from e
        if total != entry.size:
            raise InputError(
                f"cannot read {entry.path}: changed while being added ({entry.size} bytes listed, {total} read)"
            )
        self.files += 1
        return unixfs.build_file(leaves, self.hash_name, self.links_per_node)

    def _take_chunks(self, seg: _native.Segment | _native.FileBatch) -> list[bytes]:
        """Look the chunks up (one index transaction) and pack the new ones; returns their chunk CIDs.

        A chunk met before in this add is in a pack being written (the
        packer's ``pending``) or, once that pack is durable, in the index,
        which is what makes it found again: no per-chunk set grows with the add.
        """
        digests = seg.digests
        hash_name = self.hash_name
        sizes = seg.lengths
        cids = [raw_cid_bytes(digests[32 * i : 32 * i + 32], hash_name) for i in range(len(sizes))]
        self.chunks_total += len(cids)
        pending = self.packer.pending
        unseen = list(dict.fromkeys(c for c in cids if c not in pending))
        stored_before: dict[bytes, ChunkLoc | None] = {}
        for start in range(0, len(unseen), LOOKUP_CHUNKS):
            part = unseen[start : start + LOOKUP_CHUNKS]
            stored_before.update(zip(part, self.store.index.lookup_chunks(part), strict=True))
        self._judge_packs({loc.pack_id: None for loc in stored_before.values() if loc is not None})
        picks = []
        taken: set[bytes] = set()
        for i, cid in enumerate(cids):
            if cid in pending or cid in taken:
                continue  # repeated within this add
            taken.add(cid)
            old = stored_before[cid]
            if old is not None and self.usable_packs[old.pack_id]:
                if old.pack_id not in self.packer.packs:  # stored before this add: into the chunk table now
                    self._table_entry(cid, old)
                continue
            picks.append(i)  # new, or its pack is too weak or gone: store it again
        stored_lengths = seg.stored_lengths
        self.new_chunk_bytes += sum(sizes[i] for i in picks)
        self.compressed_bytes += sum(stored_lengths[i] for i in picks)
        self.packer.add_chunks(seg, picks, cids)
        return cids

    def _table_entry(self, cid: bytes, loc: ChunkLoc) -> None:
        number = self.pack_numbers.setdefault(loc.pack_id, len(self.pack_numbers))
        self.chunk_table.add(cid[4:], number, loc.offset, loc.stored_len, loc.size, loc.codec)

    def _pack_durable(self, pack_id: bytes, chunks: list[tuple[bytes, ChunkLoc]]) -> None:
        """A pack this add wrote is durable and indexed: its chunks go to the chunk table, it may be reused."""
        self.usable_packs[pack_id] = True
        for cid, loc in chunks:
            self._table_entry(cid, loc)
        self.new_chunks += len(chunks)

    def _judge_packs(self, pack_ids: dict[bytes, None]) -> None:
        """Decide, for the packs not judged yet, whether this add may reuse their chunks.

        Only a pack that is still where this add stores and at least as strong
        as the pack this add would write (docs/format.md, "When dedup reuses a
        pack"). All the segment's candidates are checked in one round (one
        batch of HEAD requests with peers).
        """
        new = [p for p in pack_ids if p not in self.usable_packs]
        if not new:
            return
        candidates: list[bytes] = []
        packs: list[tuple[PackRecord, list[str | None] | None]] = []
        for pack_id in new:
            record = self._stored_record(pack_id)
            if record is None:
                self.usable_packs[pack_id] = False
                continue
            candidates.append(pack_id)
            packs.append((record, self.store.index.placement(pack_id)))
        target = self.sink.target(self.spec.k, self.spec.m)
        for pack_id, held in zip(candidates, self.sink.held(packs), strict=True):
            usable = held is not None and held.strength.covers(target)
            if usable and held is not None and held.placement is not None:
                self.old_placement[pack_id] = held.placement
            self.usable_packs[pack_id] = usable

    def _stored_record(self, pack_id: bytes) -> PackRecord | None:
        """The record of a pack the index names, or None if it is missing or unreadable (then store again)."""
        block = self.store.get_block(pack_id)
        if block is None:
            return None
        try:
            return PackRecord.decode(block)
        except DstoreError:
            return None

    def _pack_record(self, pack_id: bytes) -> PackRecord:
        record = self.packer.packs.get(pack_id)
        if record is None:
            block = self.store.get_block(pack_id)
            if block is None:
                raise StoreError("store index is inconsistent: a pack record is missing")
            record = PackRecord.decode(block)
        return record

    # -- folders ------------------------------------------------------------

    def add_tree(self, events: Iterator[Event]) -> tuple[CID, int]:
        """Store the walk's files and folders; returns the root's UnixFS CID and Tsize.

        Files below SEGMENT_BYTES are read in batches of up to BATCH_BYTES (or
        BATCH_MAX_FILES) by one native call; a bigger file streams. The walk's
        events of a batch are kept until its files are stored, then replayed to
        build the folders bottom up, each as soon as it is complete (a folder
        needs its children's CIDs and sizes, not their subtrees).

        Batches overlap: while this thread stores one batch (dedup lookups,
        packing, UnixFS nodes: Python), the native call of the next one reads
        and chunks its files on the other cores. At most two batches are in
        hand, so memory stays bounded whatever the number of files.
        """
        folders = _Folders(self)
        files: list[FileEntry] = []
        pending: list[Event] = []
        batch_bytes = 0
        ahead: _Started | None = None  # the batch whose native call runs while the one before is stored

        def close_batch() -> None:
            nonlocal ahead, files, pending, batch_bytes
            started = _Started(files, pending, self._start_batch(files))
            if ahead is not None:
                self._replay(ahead, folders)
            ahead = started
            files, pending, batch_bytes = [], [], 0

        def drain() -> None:
            nonlocal ahead
            close_batch()
            assert ahead is not None
            self._replay(ahead, folders)
            ahead = None

        for event in events:
            if isinstance(event, FileEntry):
                self.size += event.size
                self.entries += 1
                if event.size >= SEGMENT_BYTES:
                    drain()
                    folders.file(event.name, self.add_big_file(event))
                    continue
                if files and (batch_bytes + event.size > BATCH_BYTES or len(files) >= BATCH_MAX_FILES):
                    close_batch()
                files.append(event)
                batch_bytes += event.size
            elif isinstance(event, Enter):
                self.entries += 1
            pending.append(event)
            if len(pending) >= BATCH_MAX_EVENTS:  # a tree of empty folders holds no files to batch
                close_batch()
        drain()
        return folders.result()

    def _replay(self, batch: _Started, folders: _Folders) -> None:
        results = self._add_batch(batch.files, batch.started)
        for event in batch.events:
            if isinstance(event, FileEntry):
                folders.file(event.name, next(results))
            elif isinstance(event, Enter):
                folders.enter(event.name)
            else:
                folders.leave()
        for _ in results:
            raise AssertionError("a batch yielded more files than it was given")

    # -- locator ------------------------------------------------------------

    def write_locator(self, dataset: CID) -> CID:
        """Write the locator's pages to the metadata spool from the chunk table; returns its root CID.

        Packs this add found already stored come first, in order of first use,
        then the packs it wrote: a new version of a dataset keeps its parent's
        pack indices, so its chunk-table pages stay the same where its chunks do.
        """
        numbers = self.pack_numbers
        new = self.packer.packs
        ordered = [p for p in numbers if p not in new] + [p for p in numbers if p in new]
        index_of = {numbers[pack_id]: i for i, pack_id in enumerate(ordered)}
        packs = [(CID.from_bytes(pack_id), self._pack_record(pack_id)) for pack_id in ordered]
        spool = self.meta
        chunk_refs = self._chunk_pages(
            [index_of[n] for n in range(len(numbers))], [record.size for _, record in packs], spool
        )
        root, root_block = locator_root(
            dataset, chunk_refs, packs, lambda c, b: spool.add(c.to_bytes(), b), self.hash_name
        )
        self.chunk_table.close()
        spool.add(root.to_bytes(), root_block)
        return root

    def _chunk_pages(self, pack_index: list[int], pack_sizes: list[int], spool: BlockSpool) -> list[list[object]]:
        """The locator's chunk pages, made natively from the chunk table's sorted records LOCATOR_RECORDS at a
        time, to ``spool``; returns ``[first digest, page CID]`` per page. The same pages as
        build_locator (docs/format.md, "Locator"); memory is one piece of records and one page."""
        refs: list[list[object]] = []
        records = self.chunk_table.sorted_unique_records()
        carry, after, count = b"", None, 0
        while True:
            piece = list(itertools.islice(records, LOCATOR_RECORDS))
            last = len(piece) < LOCATOR_RECORDS
            data = carry + b"".join(piece)
            pages, done = _native.locator_pages(data, pack_index, pack_sizes, after, last)
            for page in pages:
                cid = block_cid(page, self.hash_name)
                spool.add(cid.to_bytes(), page)
                refs.append([_first_digest(page), cid])
            if done:
                after = data[(done - 1) * RECORD_BYTES : (done - 1) * RECORD_BYTES + 32]
            count += done
            carry = data[done * RECORD_BYTES :]
            if last:
                break
        self.unique_chunks = count
        return refs


def _first_digest(page: bytes) -> bytes:
    """The first digest of a chunk page: after the array head (1 to 3 bytes: at most CHUNKS_PER_PAGE
    entries) and the first entry's head (array of 6, bytes of 32)."""
    info = page[0] & 0x1F
    start = (1 if info < 24 else 2 if info == 24 else 3) + 3
    return page[start : start + 32]


class _Folders:
    """Builds folders bottom up as the walk's events are replayed: one open list per folder on the path."""

    def __init__(self, adder: _Adder) -> None:
        self.adder = adder
        self.stack: list[tuple[str, list[tuple[str, CID, int]]]] = []
        self.root: tuple[CID, int] | None = None

    def enter(self, name: str) -> None:
        self.stack.append((name, []))

    def file(self, name: str, built: tuple[CID, list[tuple[CID, bytes]], int]) -> None:
        root, blocks, tsize = built
        self.adder.add_blocks(blocks)
        self._done(name, root, tsize)

    def leave(self) -> None:
        name, entries = self.stack.pop()
        root, blocks, tsize = unixfs.build_directory(entries, self.adder.hash_name)
        self.adder.add_blocks(blocks)
        self._done(name, root, tsize)

    def _done(self, name: str, root: CID, tsize: int) -> None:
        if self.stack:
            self.stack[-1][1].append((name, root, tsize))
        else:
            self.root = (root, tsize)

    def result(self) -> tuple[CID, int]:
        if self.root is None or self.stack:
            raise AssertionError("the walk ended inside a folder")
        return self.root


def add(
    path: Path,
    store: Store,
    spec: ShardSpec,
    *,
    chunker: ChunkerParams | None = None,
    hash_name: str | None = None,
    profile: str = PROFILE_DSTORE,
    meta: dict[str, str] | None = None,
    parent: CID | None = None,
    progress: Progress | None = None,
    on_start: Callable[[int], None] | None = None,
    peers: PeerClient | None = None,
    metadata_pack_bytes: int = METADATA_PACK_BYTES,
) -> AddResult:
    """Add the file or folder at ``path`` to ``store``; returns the dataset ID and figures.

    With ``peers`` (a dstore.net SyncPeerSet) the shards and the dataset's
    metadata go to storage peers; the local store keeps the index (for dedup)
    and the metadata blocks. ``on_start`` is called with the total input bytes
    once the tree is walked. ``profile`` (docs/format.md, "Profiles") fixes the
    hashes allowed (``hash_name``: its default when None) and may fix the chunker.
    ``metadata_pack_bytes`` bounds each metadata pack (docs/format.md,
    "Metadata in several packs"; tests pass a small one).
    """
    layout = _profile(profile, hash_name, chunker)
    hash_name = hash_name or layout.default_hash
    chunker = layout.chunker or chunker or ChunkerParams()
    store.lock_for_add()  # no gc runs while this store is open (docs/lifetime.md)
    size, _ = survey(Path(path))  # a faulty tree fails here, before anything is stored
    if on_start:
        on_start(size)
    sink = PeerSink(peers) if peers is not None else LocalSink(store)
    adder = _Adder(store, sink, spec, chunker, hash_name, progress, layout.links_per_node)
    try:
        # Reader, sealer and writer threads each hold the GIL only briefly between
        # long GIL-free calls; the default 5 ms switch interval makes them queue
        # behind each other (measured: 1 GiB add took 3.7 s instead of 1.7 s).
        interval = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        try:
            root, _ = adder.add_tree(walk(Path(path)))
            adder.packer.finish()
        finally:
            sys.setswitchinterval(interval)
            adder.close()
        manifest = Manifest(
            root=root,
            hash_name=hash_name,
            chunker=adder.chunker,
            size=adder.size,
            entries=adder.entries,
            meta=meta or {},
            parent=parent,
            profile=profile,
        )
        new_metadata_bytes = store_dataset(store, adder, manifest, peers, metadata_pack_bytes=metadata_pack_bytes)
    finally:
        adder.close_spools()
    return AddResult(
        dataset=manifest.cid,
        root=root,
        bytes_in=adder.size,
        files=adder.files,
        chunks=adder.chunks_total,
        unique_chunks=adder.unique_chunks,
        new_chunks=adder.new_chunks,
        new_chunk_bytes=adder.new_chunk_bytes,
        new_stored_bytes=adder.packer.bytes_stored,
        compressed_bytes=adder.compressed_bytes,
        new_metadata_bytes=new_metadata_bytes,
        shards=spec,
    )


def store_dataset(
    store: Store,
    adder: _Adder,
    manifest: Manifest,
    peers: PeerClient | None,
    *,
    metadata_pack_bytes: int = METADATA_PACK_BYTES,
) -> int:
    """Write the locator, the metadata packs, the pointer(s) and the index entry; returns new metadata bytes.

    Order of writes (docs/format.md): metadata packs (local shard files, and
    peers), then the pointers, then the index's blocks and, last, the dataset
    entry. The metadata is read back from the add's spool pack by pack, so
    memory is one metadata pack whatever the dataset's size.
    """
    dataset = manifest.cid
    locator = adder.write_locator(dataset)
    adder.meta.add(dataset.to_bytes(), manifest.encode())
    placement = {**adder.old_placement, **adder.packer.placement}
    write_metadata(
        store, dataset, locator, adder.meta, placement, adder.spec, manifest.hash_name, peers, metadata_pack_bytes
    )
    return index_blocks(store, adder.meta, dataset, locator)


def write_metadata(
    store: Store | None,
    dataset: CID,
    locator: CID,
    blocks: Iterable[tuple[bytes, bytes]],
    placement: dict[bytes, list[str | None]],
    spec: ShardSpec,
    hash_name: str,
    peers: PeerClient | None,
    metadata_pack_bytes: int = METADATA_PACK_BYTES,
    *,
    replaces_seq: int | None = None,
) -> None:
    """The metadata packs of ``blocks`` (plus the placement block) to local shard files (unless ``store`` is
    None) and to peers, then the pointers: the peers' and the local one. ``blocks`` is read once, pack by pack.

    The packs (CARs of the metadata blocks plus the placement hints, docs/format.md "Datasets on peers")
    are erasure-coded with the data's k+m and placed by rendezvous on the dataset ID; the pointer goes to
    the first k+m peers of that ranking.
    """
    placement_cid, placement_block = encode_placement(placement, hash_name)
    # The placement block travels in the metadata packs only (the index keeps placement per pack).
    every_block = itertools.chain(blocks, [(placement_cid.to_bytes(), placement_block)])
    written: list[tuple[MetadataPack, tuple[str | None, ...]]] = []
    for pack in encode_metadata_packs(dataset, every_block, spec.k, spec.m, pack_bytes=metadata_pack_bytes):
        if store is not None:
            for shard_cid, part in pack.shards:
                store.metadata_shards.write(shard_cid.encode("base32"), (part,))
        holders = tuple(peers.put_pack(dataset.to_bytes(), pack.shards)) if peers is not None else ()
        written.append((MetadataPack(pack.record, [], pack.has_manifest), holders))
        del pack  # its buffers: the next pack reuses the memory
    if store is not None:
        store.metadata_shards.sync_dirs()
    if peers is not None:
        pointer = metadata_pointer(locator, written, placement_cid, replaces_seq)
        publish_pointer(peers, dataset, pointer, placement, spec.k + spec.m, replaces_seq=replaces_seq)
    if store is None:
        return
    try:
        write_pointer(store.home, dataset, metadata_pointer(locator, [(p, ()) for p, _ in written], placement_cid))
    except OSError as e:
        raise StoreError(f"cannot write the pointer of {cid_to_text(dataset)}: {e.strerror or e}") from e


def index_blocks(store: Store, blocks: Iterable[tuple[bytes, bytes]], dataset: CID, locator: CID) -> int:
    """Metadata blocks into the index in transactions of INDEX_TXN_BYTES or INDEX_TXN_BLOCKS, then the dataset
    entry (the index keeps its share of RSS flat as it goes: Index.release_pages)."""
    new_bytes = 0
    batch: list[tuple[bytes, bytes]] = []
    batch_bytes = 0
    for cid, block in blocks:
        batch.append((cid, block))
        batch_bytes += len(block)
        if batch_bytes >= INDEX_TXN_BYTES or len(batch) >= INDEX_TXN_BLOCKS:
            new_bytes += store.index.put_blocks(batch)
            batch, batch_bytes = [], 0
    return new_bytes + store.index.commit_dataset(batch, dataset.to_bytes(), locator.to_bytes())


def _profile(name: str, hash_name: str | None, chunker: ChunkerParams | None) -> Profile:
    """The profile ``name``, checked against the hash and chunker asked for (UsageError)."""
    try:
        layout = profile_named(name)
    except ValueError as e:
        raise UsageError(f"--profile: {e}") from None
    if hash_name is not None and hash_name not in layout.hashes:
        allowed = " or ".join(layout.hashes)
        raise UsageError(f"--hash {hash_name}: profile {name} hashes with {allowed}")
    if layout.chunker is not None and chunker is not None and chunker != layout.chunker:
        raise UsageError(f"profile {name} cuts fixed {layout.chunker.max}-byte chunks; it takes no chunker settings")
    return layout


def publish_metadata(
    peers: PeerClient,
    dataset: CID,
    locator: CID,
    blocks: list[tuple[bytes, bytes]],
    placement: dict[bytes, list[str | None]],
    spec: ShardSpec,
    hash_name: str,
    *,
    replaces_seq: int | None = None,
) -> None:
    """Put a dataset's metadata (blocks in hand) on peers only, then the pointer to it (repair publishes over
    the pointer it read: the new pointer's ``seq`` is past ``replaces_seq``)."""
    write_metadata(None, dataset, locator, blocks, placement, spec, hash_name, peers, replaces_seq=replaces_seq)


def publish_pointer(
    peers: PeerClient,
    dataset: CID,
    pointer: Pointer,
    placement: dict[bytes, list[str | None]],
    copies: int,
    *,
    replaces_seq: int | None = None,
) -> None:
    """Put the pointer on the first ``copies`` (k+m) peers of the dataset's ranking, then pin on every holder."""
    try:
        peers.put_pointer(dataset, pointer.to_json(), copies)
    except PeerError as e:  # 409: every peer asked keeps a newer pointer (dstore.net.pointers.StalePointer)
        if e.status != 409 or replaces_seq is not None:
            raise  # repair: its new placement went nowhere; run it again over the newest pointer
        # add: the peers already publish this very dataset ID under a newer pointer; that one stays.
    holders = [h for _, hints in pointer.metadata_packs for h in hints if h]
    pin_holders(peers, dataset, [*holders, *(h for row in placement.values() for h in row if h)])


def pin_holders(peers: PeerClient, dataset: CID, holders: list[str]) -> None:
    """Pin the dataset on every live peer that holds some shard of it (docs/lifetime.md, "On storage peers").

    Only holders: a peer holding nothing keeps nothing, and a pin would cost it
    a metadata fetch. A holder that cannot pin would collect its shards after
    its gc grace period, so that fails the publish (PeerError, exit 9): the
    add or repair run again places and pins anew.
    """
    report = peers.pin(dataset, holders)
    if not report.ok:
        raise PeerError(
            f"dataset {cid_to_text(dataset)}: pinned on {len(report.done)} of "
            f"{len(report.done) + len(report.failed)} peers holding its shards, not on {report.failures()}; "
            "unpinned shards are deleted after the peer's gc grace period: run the command again"
        )
