"""``dstore import``: the UnixFS DAG(s) of a CAR file → dstore dataset(s), nothing stored from a bad CAR.

Three passes over the file (docs/format.md, "Imported datasets"):

1. **Scan**: every block is read once, bounded and checked against its CID
   (:class:`dstore.format.car.CarReader`: sha2-256, BLAKE3, identity); only
   its place in the file is kept.
2. **Plan**: each root's DAG is walked from the file (every node read back
   and checked again), checking what the nodes claim (blocksizes against the
   children's real sizes, filesizes, names, depth) and counting the files,
   folders and bytes its tree yields (memoised per distinct node: the work
   is that of the DAG, not of the tree it may describe).
3. **Store**, only once every root has planned: the file bytes become chunks
   (a raw leaf as it is; the inline Data of a dag-pb leaf and the bytes of an
   identity CID as the chunk of their digest), packed and erasure-coded
   exactly as ``add`` packs them; then, as add commits, shards → index →
   metadata (every node as it came, the locator, the manifest) → dataset entry.

A CAR that is truncated, malformed, holds a block that does not match its
CID, or whose DAG is incomplete or inconsistent fails in pass 1 or 2, before
anything is written. The file is read again in pass 3: a block that changed
meanwhile fails the import like a file that changes during ``add`` (the packs
written by then belong to no dataset; ``dstore gc`` removes them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

import zstandard

from dstore import _native
from dstore.errors import DstoreError, FormatError, InputError, IntegrityError
from dstore.format import unixfs
from dstore.format.car import CarReader
from dstore.format.cid import (
    CID,
    DAG_PB,
    HASH_NAMES,
    IDENTITY,
    RAW,
    cid_from_digest,
    cid_to_text,
    hash_digest,
    inline_block,
)
from dstore.format.locator import build_locator
from dstore.format.manifest import IMPORTED_CHUNKER, PROFILE_CAR_IMPORT, ChunkerParams, Manifest
from dstore.ingest.add import ZSTD_LEVEL, ShardSpec, _Adder, index_blocks, store_dataset, write_metadata
from dstore.ingest.sinks import LocalSink, PeerSink
from dstore.limits import MAX_METADATA_PACK_BYTES
from dstore.net.protocol import PeerClient
from dstore.store import Store

#: Chunks handed to the packer per call (bounds the chunk bytes held at once).
BATCH_BYTES = 16 << 20
_U64_MAX = (1 << 64) - 1

__all__ = ["BlocksImportResult", "ImportResult", "import_car", "import_car_blocks"]


@dataclass
class ImportResult:
    """One dataset made from one root of the CAR."""

    dataset: CID
    root: CID  # as the CAR names it (a CIDv0 stays CIDv0); the manifest holds its CIDv1
    bytes_in: int
    entries: int
    files: int
    chunks: int
    new_chunks: int
    new_stored_bytes: int
    new_metadata_bytes: int
    extra_blocks: int  # blocks of the CAR no root reaches, kept with this dataset's metadata
    shards: ShardSpec

    def to_json(self) -> dict[str, object]:
        return {
            "cid": cid_to_text(self.dataset),
            "root": str(self.root) if self.root.version == 0 else cid_to_text(self.root),
            "profile": PROFILE_CAR_IMPORT,
            "bytes_in": self.bytes_in,
            "entries": self.entries,
            "files": self.files,
            "chunks": self.chunks,
            "new_chunks": self.new_chunks,
            "new_bytes_stored": self.new_stored_bytes,
            "new_metadata_bytes": self.new_metadata_bytes,
            "extra_blocks": self.extra_blocks,
            "shards": str(self.shards),
        }


def _v1_key(cid: CID) -> bytes:
    return (cid.to_v1() if cid.version == 0 else cid).to_bytes()


class _CarFile:
    """The blocks of a scanned CAR file: where each lies, read back and checked again on every read."""

    def __init__(self, fp: BinaryIO) -> None:
        self.fp = fp
        reader = CarReader(fp)  # pass 1: every block bounded and verified as it is read
        self.roots: list[CID] = reader.roots
        self.places: dict[bytes, tuple[int, int]] = {}  # CIDv1 bytes -> (offset, length)
        for cid, block in reader:
            if inline_block(cid) is not None:
                continue  # its bytes are in its CID
            self.places.setdefault(cid.to_bytes(), (fp.tell() - len(block), len(block)))
        if not self.roots:
            raise FormatError("the CAR names no root")

    def has(self, cid: CID) -> bool:
        return inline_block(cid) is not None or _v1_key(cid) in self.places

    def length(self, cid: CID) -> int:
        inline = inline_block(cid)
        return len(inline) if inline is not None else self.places[_v1_key(cid)][1]

    def block(self, cid: CID) -> bytes:
        inline = inline_block(cid)
        if inline is not None:
            return inline
        place = self.places.get(_v1_key(cid))
        if place is None:
            raise FormatError(f"the CAR lacks block {cid_to_text(cid)} of the DAG it roots")
        self.fp.seek(place[0])
        data = self.fp.read(place[1])
        name = HASH_NAMES[cid.hash.code]  # the scan refused other hashes
        if len(data) != place[1] or hash_digest(data, name) != cid.hash.digest:
            raise IntegrityError(f"block {cid_to_text(cid)} of the CAR changed while it was imported")
        return data


@dataclass
class _Plan:
    """One root's DAG, checked: what it yields, its nodes, and where its file bytes come from."""

    root: CID
    hash_name: str
    entries: int = 0
    size: int = 0
    files: int = 0
    nodes: dict[bytes, None] = field(default_factory=dict)  # dag-pb blocks (CIDv1 bytes), parents first
    # Distinct chunks in reading order: digest -> (block holding the bytes, is it a node's Data)
    chunks: dict[bytes, tuple[CID, bool]] = field(default_factory=dict)
    leaves: set[bytes] = field(default_factory=set)  # raw leaf blocks of the CAR the DAG uses (empty ones too)


class _Planner:
    """Walks one root's DAG from the CAR, checking every claim before anything depends on it."""

    def __init__(self, car: _CarFile, root: CID) -> None:
        self.car = car
        name = HASH_NAMES.get(root.hash.code)
        if name is None:
            raise FormatError(f"root {root} is not hashed with one of {sorted(HASH_NAMES.values())}")
        if root.codec not in (DAG_PB, RAW):
            raise FormatError(f"root {root} is not a UnixFS file or folder (codec 0x{root.codec:x})")
        self.plan = _Plan(root, name)
        # Per distinct entry node: (entries, bytes, files) its tree yields.
        self.stats: dict[bytes, tuple[int, int, int]] = {}

    def node(self, cid: CID) -> unixfs.Node:
        if cid.codec not in (DAG_PB, RAW):
            raise FormatError(f"{cid_to_text(cid)}: not a UnixFS block (codec 0x{cid.codec:x})")
        if not self.car.has(cid):
            raise FormatError(f"the CAR lacks block {cid_to_text(cid)} of the DAG rooted at {self.plan.root}")
        if cid.codec == RAW:
            return unixfs.Node(kind="raw", filesize=self.car.length(cid))
        if inline_block(cid) is None:
            self.plan.nodes.setdefault(_v1_key(cid), None)
        return unixfs.parse_node(cid, self.car.block(cid))

    def _get_block(self, cid: CID) -> bytes:
        self.node(cid)  # records HAMT shards as nodes of the DAG
        return self.car.block(cid)

    def _chunk(self, cid: CID, data_len: int, from_node: bool, data: bytes = b"") -> None:
        """Record the chunk of a raw leaf (``from_node`` False) or of a node's inline Data."""
        inline = inline_block(cid)
        if not from_node and inline is None:
            self.plan.leaves.add(cid.to_bytes())
        if data_len == 0:
            return
        if from_node:
            digest = hash_digest(data, self.plan.hash_name)
        elif inline is not None:
            digest = hash_digest(inline, self.plan.hash_name)
        elif HASH_NAMES.get(cid.hash.code) == self.plan.hash_name:
            digest = bytes(cid.hash.digest)
        else:
            used = HASH_NAMES.get(cid.hash.code, hex(cid.hash.code))
            raise FormatError(
                f"raw leaf {cid_to_text(cid)} is hashed with {used}, the DAG's root with {self.plan.hash_name}: "
                "dstore datasets have one hash"
            )
        self.plan.chunks.setdefault(digest, (cid, from_node))

    def file(self, cid: CID, node: unixfs.Node) -> int:
        """Check a file's DAG and record its chunks; returns its size."""
        if node.kind == "raw":
            self._chunk(cid, node.filesize or 0, False)
            return node.filesize or 0
        if node.kind != "file":
            raise FormatError(f"{cid_to_text(cid)} is a UnixFS {node.kind}: dstore datasets hold files and folders")
        self._chunk(cid, len(node.data), True, node.data)
        stack = [iter(zip(node.links, node.blocksizes, strict=True))]
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                continue
            link, size = item
            child = self.node(link.cid)
            if child.kind not in ("raw", "file") or child.filesize != size:
                raise FormatError(
                    f"UnixFS file {cid_to_text(cid)}: a link of {size} bytes leads to a {child.kind} "
                    f"of {child.filesize} bytes"
                )
            if child.kind == "raw":
                self._chunk(link.cid, size, False)
                continue
            self._chunk(link.cid, len(child.data), True, child.data)
            if len(stack) >= unixfs.MAX_FILE_DEPTH:
                raise FormatError(f"a file's DAG is deeper than {unixfs.MAX_FILE_DEPTH} levels")
            stack.append(iter(zip(child.links, child.blocksizes, strict=True)))
        return node.filesize or 0

    def walk(self) -> _Plan:
        """Check the whole DAG (children first, each distinct node once) and total what its tree yields."""
        root = self.plan.root.to_v1() if self.plan.root.version == 0 else self.plan.root
        root_node = self.node(root)
        if not root_node.is_dir:
            self.plan.entries, self.plan.files, self.plan.size = 1, 1, self.file(root, root_node)
            return self.plan
        # Frames: (folder key, its entries still to visit, [entries, bytes, files] so far). No recursion.
        stack: list[tuple[bytes, Iterator[unixfs.Link], list[int]]] = [
            (_v1_key(root), unixfs.directory_entries(self._get_block, root_node), [1, 0, 0])
        ]
        while stack:
            key, pending, totals = stack[-1]
            link = next(pending, None)
            if link is None:
                stack.pop()
                done = self.stats[key] = (totals[0], totals[1], totals[2])
                if stack:
                    _add(stack[-1][2], done)
                continue
            child_key = _v1_key(link.cid)
            known = self.stats.get(child_key)
            if known is None:
                child = self.node(link.cid)
                if child.is_dir:
                    if len(stack) >= unixfs.MAX_TREE_DEPTH:
                        raise FormatError(f"the CAR's folders nest deeper than {unixfs.MAX_TREE_DEPTH} levels")
                    stack.append((child_key, unixfs.directory_entries(self._get_block, child), [1, 0, 0]))
                    continue
                known = self.stats[child_key] = (1, self.file(link.cid, child), 1)
            _add(totals, known)
        self.plan.entries, self.plan.size, self.plan.files = self.stats[_v1_key(root)]
        return self.plan


def _add(totals: list[int], child: tuple[int, int, int]) -> None:
    for i, n in enumerate(child):
        totals[i] += n
    if totals[0] > _U64_MAX or totals[1] > _U64_MAX:
        raise FormatError("the CAR's tree yields more than 2**64 files and folders or bytes")


class _ChunkBatch:
    """Chunks from a CAR, stored as add stores them (zstd when smaller), shaped like the native pipeline's batches.

    What :meth:`dstore.ingest.add._Adder._take_chunks` and the Packer read
    from a ``_native.FileBatch``: lengths, digests, codecs, stored lengths,
    ``copy_into``.
    """

    def __init__(self) -> None:
        self.lengths: list[int] = []
        self.stored_lengths: list[int] = []
        self.codecs: list[int] = []
        self._digests = bytearray()
        self._stored: list[bytes] = []
        self.nbytes = 0
        self._zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL)

    @property
    def digests(self) -> bytes:
        return bytes(self._digests)

    def append(self, digest: bytes, data: bytes) -> None:
        packed = self._zstd.compress(data)
        small = len(packed) < len(data)
        self._stored.append(packed if small else data)
        self.lengths.append(len(data))
        self.stored_lengths.append(len(self._stored[-1]))
        self.codecs.append(1 if small else 0)
        self._digests += digest
        self.nbytes += len(data)

    def copy_into(self, indices: list[int], dest: bytearray, offset: int) -> int:
        for i in indices:
            n = self.stored_lengths[i]
            dest[offset : offset + n] = self._stored[i]
            offset += n
        return offset

    def __len__(self) -> int:
        return len(self.lengths)


def _chunk_bytes(car: _CarFile, source: CID, from_node: bool) -> bytes:
    block = car.block(source)
    return unixfs.parse_node(source, block).data if from_node else block


def _imported_chunker(sizes: list[int]) -> ChunkerParams:
    """The manifest's chunker for imported chunks: the sizes they have (0/0/0 for a tree of empty files)."""
    if not sizes:
        return ChunkerParams(min=0, avg=0, max=0, name=IMPORTED_CHUNKER)
    return ChunkerParams(min=min(sizes), avg=sum(sizes) // len(sizes), max=max(sizes), name=IMPORTED_CHUNKER)


def _store_plan(
    car: _CarFile,
    plan: _Plan,
    extra: list[tuple[bytes, bytes]],
    store: Store,
    spec: ShardSpec,
    peers: PeerClient | None,
) -> ImportResult:
    """Pass 3 for one root: chunks → packs → shards → index, then metadata and the dataset entry."""
    hash_name = plan.hash_name
    sink = PeerSink(peers) if peers is not None else LocalSink(store)
    adder = _Adder(store, sink, spec, ChunkerParams(), hash_name, None, 174)  # builds no file nodes
    sizes: list[int] = []
    try:
        batch = _ChunkBatch()
        for digest, (source, from_node) in plan.chunks.items():
            data = _chunk_bytes(car, source, from_node)
            if hash_digest(data, hash_name) != digest:
                raise IntegrityError(f"block {cid_to_text(source)} of the CAR changed while it was imported")
            batch.append(digest, data)
            sizes.append(len(data))
            if batch.nbytes >= BATCH_BYTES:
                adder._take_chunks(cast(_native.FileBatch, batch))  # duck-typed: see _ChunkBatch
                batch = _ChunkBatch()
        if len(batch):
            adder._take_chunks(cast(_native.FileBatch, batch))
        adder.packer.finish()
    finally:
        adder.close()
    root = plan.root.to_v1() if plan.root.version == 0 else plan.root
    manifest = Manifest(
        root=root,
        hash_name=hash_name,
        chunker=_imported_chunker(sizes),
        size=plan.size,
        entries=plan.entries,
        profile=PROFILE_CAR_IMPORT,
    )
    try:
        for key in plan.nodes:  # the nodes as they came
            adder.meta.add(key, car.block(CID.from_bytes(key)))
        for key, block in extra:
            adder.meta.add(key, block)
        new_metadata_bytes = store_dataset(store, adder, manifest, peers)
    finally:
        adder.close_spools()
    dataset = manifest.cid
    return ImportResult(
        dataset=dataset,
        root=plan.root,
        bytes_in=plan.size,
        entries=plan.entries,
        files=plan.files,
        chunks=len(plan.chunks),
        new_chunks=adder.new_chunks,
        new_stored_bytes=adder.packer.bytes_stored,
        new_metadata_bytes=new_metadata_bytes,
        extra_blocks=len(extra),
        shards=spec,
    )


def import_car(path: Path, store: Store, spec: ShardSpec, *, peers: PeerClient | None = None) -> list[ImportResult]:
    """Import every root of the CAR at ``path`` as a dataset (one result per root, in the header's order).

    Every root must be a complete UnixFS file or folder of the CAR, else
    nothing is stored (FormatError; IntegrityError for a block that does not
    match its CID). Blocks of the CAR that no root reaches are kept with the
    first dataset's metadata, so that every verified block stays servable.
    """
    try:
        fp = open(path, "rb")  # noqa: SIM115 - closed below, after the last pass
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from e
    with fp:
        try:
            car = _CarFile(fp)
            plans = [_Planner(car, root).walk() for root in car.roots]
        except DstoreError:
            raise
        except OSError as e:
            raise InputError(f"cannot read {path}: {e.strerror or e}") from e
        reached: set[bytes] = set()
        for plan in plans:
            reached.update(plan.nodes)
            reached.update(plan.leaves)
        extra = [(key, car.block(CID.from_bytes(key))) for key in car.places if key not in reached]
        store.lock_for_add()  # no gc runs while this store is open (docs/lifetime.md)
        results = []
        for i, plan in enumerate(plans):
            results.append(_store_plan(car, plan, extra if i == 0 else [], store, spec, peers))
        return results


# -- blocks-only import (``dstore import --blocks``) ---------------------------------------------------------

#: The empty UnixFS folder (``Data = {Type: Directory}``): the root of a block-holding dataset.
EMPTY_DIR_BLOCK = b"\x0a\x02\x08\x01"
#: Room kept in the metadata pack for the manifest, the folder and the (empty) locator.
_BLOCKS_OVERHEAD_BYTES = 64 << 10


@dataclass
class BlocksImportResult:
    """The one dataset a blocks-only import makes: its metadata holds every block of the CAR."""

    dataset: CID
    roots: list[CID]
    blocks: int  # blocks kept (verified), identity ones not counted: their CID is their block
    block_bytes: int
    skipped: list[CID]  # blocks whose hash dstore cannot verify: not kept
    new_metadata_bytes: int
    shards: ShardSpec

    def to_json(self) -> dict[str, object]:
        return {
            "cid": cid_to_text(self.dataset),
            "roots": [cid_to_text(r) for r in self.roots],
            "profile": PROFILE_CAR_IMPORT,
            "blocks": self.blocks,
            "block_bytes": self.block_bytes,
            "skipped_blocks": [cid_to_text(c) for c in self.skipped],
            "new_metadata_bytes": self.new_metadata_bytes,
            "shards": str(self.shards),
        }


def _scan_blocks(fp: BinaryIO) -> tuple[list[CID], dict[bytes, bytes], list[CID]]:
    """Every block of the CAR, each checked against its CID: (roots, kept blocks by CIDv1 bytes, skipped).

    A block hashed with a function dstore does not verify (not sha2-256 or BLAKE3) is skipped, never kept
    unverified; a block that does not match its CID fails the whole import.
    """
    reader = CarReader(fp, verify=False)  # verified below, so that an unknown hash skips instead of failing
    kept: dict[bytes, bytes] = {}
    skipped: dict[bytes, CID] = {}
    total = 0
    for cid, block in reader:
        if cid.hash.code == IDENTITY:
            if bytes(cid.hash.digest) != block:
                raise IntegrityError(f"CAR block does not match its identity CID {cid_to_text(cid)}")
            continue
        name = HASH_NAMES.get(cid.hash.code)
        if name is None:
            skipped.setdefault(cid.to_bytes(), cid)
            continue
        if hash_digest(block, name) != bytes(cid.hash.digest):
            raise IntegrityError(f"CAR block does not match its CID {cid_to_text(cid)}")
        key = cid.to_bytes()
        if key in kept:
            continue
        total += len(block)
        if total > MAX_METADATA_PACK_BYTES - _BLOCKS_OVERHEAD_BYTES:
            raise InputError(
                f"the CAR's blocks exceed the {MAX_METADATA_PACK_BYTES} bytes a dataset's metadata may hold: "
                "import it without --blocks"
            )
        kept[key] = block
    return reader.roots, kept, list(skipped.values())


def _blocks_meta(keys: list[bytes]) -> dict[str, str]:
    """What makes a block-holding dataset's ID its own: the digest of the CIDs of the blocks it holds."""
    digest = hashlib.sha256(b"".join(sorted(keys))).hexdigest()
    return {"description": f"blocks of a CAR: {len(keys)} blocks, sha2-256 of their sorted CIDs {digest}"}


def import_car_blocks(
    path: Path, store: Store, spec: ShardSpec, *, peers: PeerClient | None = None
) -> BlocksImportResult:
    """Keep every block of the CAR at ``path``, of any codec, as a block: one dataset whose metadata holds them.

    For CARs that are not (only) complete UnixFS DAGs: DAG-CBOR or DAG-JSON roots, DAGs with blocks
    missing, loose blocks. The dataset's tree is the empty folder; its manifest's ``meta.description``
    names the blocks (docs/format.md, "Imported datasets"). Every block is checked against its CID
    before anything is stored; a bad CAR stores nothing.
    """
    try:
        fp = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from e
    with fp:
        try:
            roots, kept, skipped = _scan_blocks(fp)
        except OSError as e:
            raise InputError(f"cannot read {path}: {e.strerror or e}") from e
    if not roots:
        raise FormatError("the CAR names no root")
    folder = cid_from_digest(DAG_PB, hash_digest(EMPTY_DIR_BLOCK, "sha2-256"), "sha2-256")
    manifest = Manifest(
        root=folder,
        hash_name="sha2-256",
        chunker=_imported_chunker([]),
        size=0,
        entries=1,
        meta=_blocks_meta(list(kept)),
        profile=PROFILE_CAR_IMPORT,
    )
    dataset = manifest.cid
    locator_root, locator_blocks = build_locator(dataset, [], [], "sha2-256")
    blocks = [(folder.to_bytes(), EMPTY_DIR_BLOCK), *kept.items()]
    blocks += [(c.to_bytes(), b) for c, b in locator_blocks]
    blocks.append((dataset.to_bytes(), manifest.encode()))
    store.lock_for_add()  # no gc runs while this store is open (docs/lifetime.md)
    write_metadata(store, dataset, locator_root, blocks, {}, spec, "sha2-256", peers)
    new_metadata_bytes = index_blocks(store, blocks, dataset, locator_root)
    return BlocksImportResult(
        dataset=dataset,
        roots=roots,
        blocks=len(kept),
        block_bytes=sum(len(b) for b in kept.values()),
        skipped=skipped,
        new_metadata_bytes=new_metadata_bytes,
        shards=spec,
    )
