"""``dstore add``: walk → native pipeline → packs → shards → index → manifest.

Files are taken in batches: up to BATCH_BYTES of files below SEGMENT_BYTES
go to one Rust call that reads, chunks, hashes and compresses them on all
cores (GIL released) and hands back every chunk of the batch at once. A
bigger file streams through ``process_segment``, one 16 MiB segment a call.
Either way a file that no longer has the size the walk saw is an InputError.
Python then looks the batch's chunks up in the index in one read
transaction, reuses those whose pack is still there and strong enough
(docs/format.md, "When dedup reuses a pack"), and copies the others into the
open pack (one native copy per pack). Sealing a pack (erasure coding, shard
hashes) and writing shards run on other threads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dstore import _native
from dstore.errors import DstoreError, InputError, PeerError, StoreError, UsageError
from dstore.format import unixfs
from dstore.format.cid import CID, HASH_CODES, cid_to_text, raw_cid_bytes
from dstore.format.locator import build_locator
from dstore.format.manifest import PROFILE_DSTORE, ChunkerParams, Manifest, Profile, profile_named
from dstore.format.pack import PackRecord, shard_size
from dstore.format.pointer import Pointer, encode_placement, metadata_car, next_seq
from dstore.ingest.packer import Packer, encode_pack
from dstore.ingest.segments import SegmentReader
from dstore.ingest.sinks import LocalSink, PeerSink, ShardSink
from dstore.ingest.walk import DirEntry, FileEntry, count_entries, total_size, walk
from dstore.limits import MAX_CHUNK_BYTES, MAX_METADATA_PACK_BYTES, MAX_SHARDS
from dstore.net.protocol import PeerClient
from dstore.store import ChunkLoc, Store

SEGMENT_BYTES = 16 << 20
# A batch of whole files read by one native call: bounds the file bytes held at once.
BATCH_BYTES = 32 << 20
BATCH_MAX_FILES = 8192
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
    # Every distinct chunk of this dataset, by chunk CID, in first-use order
    # (a dict, not a set: the locator's pack order must not depend on hashing).
    seen: dict[bytes, None] = field(default_factory=dict)
    # Chunks found already stored before this add: chunk CID -> location.
    old_locations: dict[bytes, ChunkLoc] = field(default_factory=dict)
    blocks: list[tuple[CID | bytes, bytes]] = field(default_factory=list)
    # Packs found through dedup: whether this add may reuse each (still where
    # it stores, and strong enough), and the peers confirmed to hold their shards.
    usable_packs: dict[bytes, bool] = field(default_factory=dict)
    old_placement: dict[bytes, list[str | None]] = field(default_factory=dict)
    chunks_total: int = 0
    new_chunk_bytes: int = 0
    compressed_bytes: int = 0
    files: int = 0

    def __post_init__(self) -> None:
        self.packer = Packer(self.store, self.sink, self.spec.k, self.spec.m, self.hash_name)
        self.hash_code = HASH_CODES[self.hash_name]

    def close(self) -> None:
        self.packer.close()
        if self.reader is not None:
            self.reader.close()

    # -- files --------------------------------------------------------------

    def file_results(self, files: Iterator[FileEntry]) -> Iterator[tuple[CID, list[tuple[CID, bytes]], int]]:
        """Store the files' chunks in order; yields each file's UnixFS root CID, new dag-pb blocks and Tsize.

        Consecutive files below SEGMENT_BYTES are read together, up to
        BATCH_BYTES (or BATCH_MAX_FILES) per native call; a bigger file streams.
        """
        batch: list[FileEntry] = []
        batch_bytes = 0
        for entry in files:
            if entry.size >= SEGMENT_BYTES:
                yield from self._add_batch(batch)
                batch, batch_bytes = [], 0
                yield self.add_big_file(entry)
                continue
            if batch and (batch_bytes + entry.size > BATCH_BYTES or len(batch) >= BATCH_MAX_FILES):
                yield from self._add_batch(batch)
                batch, batch_bytes = [], 0
            batch.append(entry)
            batch_bytes += entry.size
        yield from self._add_batch(batch)

    def _add_batch(self, entries: list[FileEntry]) -> Iterator[tuple[CID, list[tuple[CID, bytes]], int]]:
        if not entries:
            return
        p = self.chunker
        paths = [os.fspath(e.path) for e in entries]
        sizes = [e.size for e in entries]
        batch = _native.process_files(paths, sizes, p.min, p.avg, p.max, ZSTD_LEVEL, self.hash_code)
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
        """Look the chunks up (one index transaction) and pack the new ones; returns their chunk CIDs."""
        digests = seg.digests
        hash_name = self.hash_name
        sizes = seg.lengths
        cids = [raw_cid_bytes(digests[32 * i : 32 * i + 32], hash_name) for i in range(len(sizes))]
        self.chunks_total += len(cids)
        seen = self.seen
        unseen = list(dict.fromkeys(c for c in cids if c not in seen))
        stored_before = dict(zip(unseen, self.store.index.lookup_chunks(unseen), strict=True))
        self._judge_packs({loc.pack_id: None for loc in stored_before.values() if loc is not None})
        picks = []
        for i, cid in enumerate(cids):
            if cid in seen:
                continue  # repeated within this add
            seen[cid] = None
            old = stored_before[cid]
            if old is not None and self.usable_packs[old.pack_id]:
                self.old_locations[cid] = old
                continue
            picks.append(i)  # new, or its pack is too weak or gone: store it again
        stored_lengths = seg.stored_lengths
        self.new_chunk_bytes += sum(sizes[i] for i in picks)
        self.compressed_bytes += sum(stored_lengths[i] for i in picks)
        self.packer.add_chunks(seg, picks, cids)
        return cids

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

    def forget_chunks(self) -> None:
        """Drop the per-chunk maps once the locator's inputs are made (peak memory of big trees)."""
        self.seen.clear()
        self.old_locations.clear()
        self.packer.locations.clear()

    # -- folders ------------------------------------------------------------

    def add_tree(self, node: FileEntry | DirEntry) -> tuple[CID, int]:
        """Store a file or folder; returns its UnixFS root CID and Tsize.

        Folders are built children first without recursion (deep trees cost
        no stack): one frame per open folder holds its built entries. Files
        are stored ahead in batches (``file_results``), in the order this
        walk meets them, so chunks, packs and blocks keep one order.
        """
        results = self.file_results(_files_in_order(node))
        if isinstance(node, FileEntry):
            root, blocks, tsize = next(results)
            self.blocks.extend(blocks)
            return root, tsize
        stack: list[tuple[DirEntry, Iterator[FileEntry | DirEntry], list[tuple[str, CID, int]]]]
        stack = [(node, iter(node.children), [])]
        while True:
            folder, pending, built = stack[-1]
            child = next(pending, None)
            if isinstance(child, FileEntry):
                root, blocks, tsize = next(results)
                self.blocks.extend(blocks)
                built.append((child.name, root, tsize))
            elif child is not None:
                stack.append((child, iter(child.children), []))
            else:
                root, blocks, tsize = unixfs.build_directory(built, self.hash_name)
                self.blocks.extend(blocks)
                folder.children = []  # built: let the walk's entries go (memory grows less per file)
                stack.pop()
                if not stack:
                    return root, tsize
                stack[-1][2].append((folder.name, root, tsize))

    # -- locator ------------------------------------------------------------

    def locator_inputs(
        self,
    ) -> tuple[list[tuple[bytes, int, int, int, int, int]], list[tuple[CID, PackRecord]]]:
        """Chunk-table entries and pack table for the locator of this dataset.

        Packs this add found already stored come first, in order of first use,
        then the packs it wrote: a new version of a dataset keeps its parent's
        pack indices, so its chunk-table pages stay the same where its chunks do.
        """
        locations = {**self.old_locations, **self.packer.locations}
        order = {loc.pack_id: None for loc in (locations[cid] for cid in self.seen)}
        ordered = [p for p in order if p not in self.packer.packs] + [p for p in order if p in self.packer.packs]
        pack_index = {pack_id: i for i, pack_id in enumerate(ordered)}
        packs = [(CID.from_bytes(pack_id), self._pack_record(pack_id)) for pack_id in ordered]
        entries = []
        for cid in self.seen:
            loc = locations[cid]
            entries.append((cid[4:], pack_index[loc.pack_id], loc.offset, loc.stored_len, loc.size, loc.codec))
        return entries, packs


def _files_in_order(node: FileEntry | DirEntry) -> Iterator[FileEntry]:
    """The files under ``node`` in the order ``_Adder.add_tree`` meets them (children in name order, depth first)."""
    stack: list[Iterator[FileEntry | DirEntry]] = [iter((node,))]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
        elif isinstance(child, FileEntry):
            yield child
        else:
            stack.append(iter(child.children))


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
) -> AddResult:
    """Add the file or folder at ``path`` to ``store``; returns the dataset ID and figures.

    With ``peers`` (a dstore.net SyncPeerSet) the shards and the dataset's
    metadata go to storage peers; the local store keeps the index (for dedup)
    and the metadata blocks. ``on_start`` is called with the total input bytes
    once the tree is walked. ``profile`` (docs/format.md, "Profiles") fixes the
    hashes allowed (``hash_name``: its default when None) and may fix the chunker.
    """
    layout = _profile(profile, hash_name, chunker)
    hash_name = hash_name or layout.default_hash
    chunker = layout.chunker or chunker or ChunkerParams()
    store.lock_for_add()  # no gc runs while this store is open (docs/lifetime.md)
    tree = walk(Path(path))
    size = total_size(tree)
    entries_count = count_entries(tree)  # before add_tree, which empties the folders it has built
    if on_start:
        on_start(size)
    sink = PeerSink(peers) if peers is not None else LocalSink(store)
    adder = _Adder(store, sink, spec, chunker, hash_name, progress, layout.links_per_node)
    # Reader, sealer and writer threads each hold the GIL only briefly between
    # long GIL-free calls; the default 5 ms switch interval makes them queue
    # behind each other (measured: 1 GiB add took 3.7 s instead of 1.7 s).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        root, _ = adder.add_tree(tree)
        adder.packer.finish()
    finally:
        sys.setswitchinterval(interval)
        adder.close()
    manifest = Manifest(
        root=root,
        hash_name=hash_name,
        chunker=adder.chunker,
        size=size,
        entries=entries_count,
        meta=meta or {},
        parent=parent,
        profile=profile,
    )
    manifest_block = manifest.encode()
    dataset = manifest.cid
    entries, packs = adder.locator_inputs()
    unique_chunks, new_chunks = len(adder.seen), len(adder.packer.locations)
    adder.forget_chunks()  # the locator's entries hold what is needed from here on
    locator_root, locator_blocks = build_locator(dataset, entries, packs, hash_name)
    del entries
    blocks = [(c if isinstance(c, bytes) else c.to_bytes(), b) for c, b in adder.blocks]
    adder.blocks.clear()
    blocks += [(c.to_bytes(), b) for c, b in locator_blocks]
    blocks.append((dataset.to_bytes(), manifest_block))
    if peers is not None:
        placement = {**adder.old_placement, **adder.packer.placement}
        publish_metadata(peers, dataset, locator_root, blocks, placement, spec, hash_name)
    store.keep_metadata(dataset, locator_root, blocks, adder.old_placement | adder.packer.placement, spec.k, spec.m)
    new_metadata_bytes = store.index.commit_dataset(blocks, dataset.to_bytes(), locator_root.to_bytes())
    return AddResult(
        dataset=dataset,
        root=root,
        bytes_in=size,
        files=adder.files,
        chunks=adder.chunks_total,
        unique_chunks=unique_chunks,
        new_chunks=new_chunks,
        new_chunk_bytes=adder.new_chunk_bytes,
        new_stored_bytes=adder.packer.bytes_stored,
        compressed_bytes=adder.compressed_bytes,
        new_metadata_bytes=new_metadata_bytes,
        shards=spec,
    )


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
    """Put the dataset's metadata on peers with the data's redundancy, then the pointer to it.

    The metadata pack (a CAR of every metadata block plus the placement
    hints) is erasure-coded with the same k+m and placed by rendezvous on the
    dataset ID; the pointer goes to the first k+m peers of that ranking
    (docs/format.md, "Datasets on peers"). The pointer's ``seq`` is past
    ``replaces_seq`` (repair publishes over the pointer it read).
    """
    placement_cid, placement_block = encode_placement(placement, hash_name)
    car = metadata_car(dataset, [*blocks, (placement_cid, placement_block)])
    if len(car) > MAX_METADATA_PACK_BYTES:
        raise UsageError(
            f"the dataset's metadata ({len(car)} bytes) is over the {MAX_METADATA_PACK_BYTES}-byte limit of one "
            "metadata pack on peers; split the dataset into several"
        )
    # More data shards, not bigger ones, for big metadata: a shard stays within what a peer takes.
    k = max(spec.k, -(-len(car) // MAX_CHUNK_BYTES))
    if k + spec.m > MAX_SHARDS:
        raise UsageError(f"--shards {spec}: the metadata pack needs {k} data shards, over {MAX_SHARDS} with parity")
    buf = bytearray(k * shard_size(len(car), k))
    buf[: len(car)] = car
    encoded = encode_pack(buf, len(car), k, spec.m, hash_name)
    holders = peers.put_pack(dataset.to_bytes(), encoded.shards)
    pointer = Pointer(locator, encoded.record, tuple(holders), placement_cid, next_seq(replaces_seq))
    try:
        peers.put_pointer(dataset, pointer.to_json(), spec.k + spec.m)
    except PeerError as e:  # 409: every peer asked keeps a newer pointer (dstore.net.pointers.StalePointer)
        if e.status != 409 or replaces_seq is not None:
            raise  # repair: its new placement went nowhere; run it again over the newest pointer
        # add: the peers already publish this very dataset ID under a newer pointer; that one stays.
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
