"""Which blocks a peer can serve as an IPFS gateway, and readers for them.

A peer holds shards, not blocks. What it can serve is every block of every
dataset whose pointer it holds under ``/datasets/{id}``: the dataset's
metadata (manifest, UnixFS nodes, locator pages, placement), found by
pointer → metadata pack shards (held here, else fetched from the ``--peers``)
→ metadata CAR, every block checked against its CID and the whole rooted at
the dataset ID; and the dataset's chunks, found by digest in its locator and
read out of the shards of their pack (held here, else fetched from the
``--peers``, verified by the reader).

The index is refreshed from the pointer files before a lookup (a pointer file
changed since it was loaded is loaded again), so a dataset is servable as
soon as its pointer is put, with no hook in the PUT handler. Metadata is kept
in memory: it is bounded per dataset by MAX_METADATA_PACK_BYTES.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

from dstore.errors import DstoreError, FormatError, IntegrityError, NotFound
from dstore.fetch.packs import LocalThenPeers, data_region
from dstore.fetch.reader import DatasetReader
from dstore.fetch.remote import check_pointer
from dstore.format import unixfs
from dstore.format.cid import CID, DAG_CBOR, HASH_NAMES, RAW, cid_to_text, hash_digest, parse_cid
from dstore.format.locator import Locator
from dstore.format.manifest import Manifest
from dstore.format.pack import PackRecord
from dstore.format.pointer import Pointer, decode_placement, read_metadata_car
from dstore.net.sync import SyncPeerSet
from dstore.peer.storage import PeerStore
from dstore.store import Store
from dstore.store.shards import ShardFiles

__all__ = ["BlockIndex", "DatasetMeta", "GatewayReader"]

log = logging.getLogger("dstore.peer.gateway")

#: A dataset whose metadata could not be had is tried again at most this often (on a lookup miss).
RETRY_S = 5.0
#: Pointer files are looked at again at most this often when lookups hit (always on a miss).
REFRESH_S = 1.0


@dataclass(frozen=True)
class DatasetMeta:
    """One dataset's verified metadata, as loaded from the pointer this peer holds."""

    dataset: CID
    locator: CID
    manifest: Manifest
    blocks: dict[bytes, bytes]  # every metadata block by CID bytes, each checked against its CID
    block_bytes: int = 0  # their total size
    raw_blocks: int = 0  # how many are raw blocks (file bytes held as blocks: `dstore import --blocks`)
    #: pack ID -> the peer that took each shard, from the placement block (fetches ask those peers first)
    hints: dict[bytes, list[str | None]] = field(default_factory=dict)


class _PointerIndex:
    """The part of a store index a DatasetReader asks: one dataset's locator."""

    def __init__(self, meta: DatasetMeta) -> None:
        self._meta = meta

    def dataset_locator(self, dataset: bytes) -> bytes | None:
        return self._meta.locator.to_bytes() if dataset == self._meta.dataset.to_bytes() else None

    def placement(self, pack_id: bytes) -> list[str | None] | None:
        return None


class _MetadataStore:
    """A store view for :class:`DatasetReader`: metadata blocks from memory, shards from the peer's files."""

    def __init__(self, meta: DatasetMeta, shards: ShardFiles) -> None:
        self.index = _PointerIndex(meta)
        self.shards = shards
        self._blocks = meta.blocks

    def get_block(self, cid: bytes) -> bytes | None:
        return self._blocks.get(cid)


def _verified_shard(files: ShardFiles, cid: CID) -> bytes | None:
    hash_name = HASH_NAMES.get(cid.hash.code)
    if hash_name is None:
        return None
    try:
        data = files.read(cid_to_text(cid))
    except NotFound:
        return None
    return data if hash_digest(data, hash_name) == bytes(cid.hash.digest) else None


class BlockIndex:
    """The datasets this peer can serve blocks of, refreshed from its pointer files.

    Thread-safe; every method blocks (run it in a thread). ``peer_urls`` (the ``--peers``) is
    where missing metadata and data shards are fetched from; they are connected to on first
    need (not at start, when they may not be up yet).
    """

    def __init__(self, store: PeerStore, peer_urls: list[str]) -> None:
        self.store = store
        self.peer_urls = peer_urls
        self._peers: SyncPeerSet | None = None
        self._connect_lock = threading.Lock()
        self._lock = threading.Lock()
        # dataset CID text -> (pointer file (mtime_ns, size), its metadata or None if it did not verify)
        self._loaded: dict[str, tuple[tuple[int, int], DatasetMeta | None]] = {}
        self._owners: dict[bytes, list[str]] = {}  # metadata block CID bytes -> datasets holding it
        self._last_retry = 0.0
        self._last_refresh = -REFRESH_S

    @property
    def peers(self) -> SyncPeerSet | None:
        if not self.peer_urls:
            return None
        with self._connect_lock:
            if self._peers is None:
                self._peers = SyncPeerSet.connect(self.peer_urls, None)
            return self._peers

    def close(self) -> None:
        with self._connect_lock:
            if self._peers is not None:
                self._peers.close()
                self._peers = None

    # -- loading -----------------------------------------------------------------------------------

    def _metadata_shards(self, record: PackRecord, key: bytes) -> list[bytes | bytearray | None]:
        local: list[bytes | bytearray | None] = [_verified_shard(self.store.files, c) for c in record.shards]
        if sum(s is not None for s in local) >= record.k:
            return local
        peers = self.peers
        if peers is None:
            raise NotFound(f"this peer holds {sum(s is not None for s in local)} of {record.k} metadata shards")
        fetched = peers.fetch_pack(record, key)
        return [a if a is not None else b for a, b in zip(local, fetched, strict=True)]

    def _load(self, dataset: CID, raw_pointer: Any) -> DatasetMeta:
        pointer = Pointer.from_json(raw_pointer)
        check_pointer(pointer)
        blocks: dict[bytes, bytes] = {}
        for i, (record, _) in enumerate(pointer.metadata_packs):  # several for a big tree (docs/format.md)
            shards = self._metadata_shards(record, dataset.to_bytes())
            region = bytes(data_region(shards, record)[: record.size])
            blocks.update(read_metadata_car(region, dataset, first=i == 0))
        manifest = Manifest.decode(blocks[dataset.to_bytes()])
        locator = Locator(functools.partial(_block_of, blocks), pointer.locator)
        if locator.dataset != dataset:
            raise IntegrityError("the pointer's locator belongs to another dataset")
        raw = sum(1 for key in blocks if CID.from_bytes(key).codec == RAW)
        return DatasetMeta(
            dataset, pointer.locator, manifest, blocks, sum(map(len, blocks.values())), raw, _hints(pointer, blocks)
        )

    def refresh(self) -> None:
        """Load the metadata of every pointer file that is new or changed since it was loaded."""
        self._last_refresh = time.monotonic()
        seen: dict[str, tuple[int, int]] = {}
        for path in self.store.datasets.glob("*.json"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            seen[path.stem] = (st.st_mtime_ns, st.st_size)
        with self._lock:
            changed = [d for d, stamp in seen.items() if self._loaded.get(d, (None,))[0] != stamp]
            gone = [d for d in self._loaded if d not in seen]
        for text in changed:
            meta: DatasetMeta | None = None
            try:
                dataset = parse_cid(text)
                raw = self.store.read_pointer(text)
                if raw is not None and dataset.codec == DAG_CBOR:
                    meta = self._load(dataset, raw)
            except DstoreError as e:
                log.warning("gateway: cannot serve dataset %s yet: %s", text, e)
            with self._lock:
                self._forget(text)
                self._loaded[text] = (seen[text], meta)
                if meta is not None:
                    for key in meta.blocks:
                        self._owners.setdefault(key, []).append(text)
        with self._lock:
            for text in gone:
                self._forget(text)
                self._loaded.pop(text, None)

    def _forget(self, text: str) -> None:
        old = self._loaded.get(text)
        if old is None or old[1] is None:
            return
        for key in old[1].blocks:
            owners = self._owners.get(key, [])
            if text in owners:
                owners.remove(text)
            if not owners:
                self._owners.pop(key, None)

    def _retry_failed(self) -> None:
        """Datasets whose metadata could not be had are tried again (at most every RETRY_S)."""
        now = time.monotonic()
        with self._lock:
            if now - self._last_retry < RETRY_S:
                return
            self._last_retry = now
            for text in [d for d, (_, meta) in self._loaded.items() if meta is None]:
                del self._loaded[text]

    # -- lookups -----------------------------------------------------------------------------------

    def datasets(self) -> list[DatasetMeta]:
        with self._lock:
            return [meta for _, meta in self._loaded.values() if meta is not None]

    def find(self, cid: CID) -> list[DatasetMeta]:
        """The datasets holding block ``cid`` (a metadata block, or a chunk in their locator).

        The pointer files are looked at again at most every REFRESH_S, and on every miss.
        """
        if time.monotonic() - self._last_refresh >= REFRESH_S:
            self.refresh()
        found = self._find(cid)
        if not found:
            self._retry_failed()
            self.refresh()
            found = self._find(cid)
        return found

    def _find(self, cid: CID) -> list[DatasetMeta]:
        key = cid.to_bytes()
        with self._lock:
            owners = list(self._owners.get(key, []))
            metas = {d: meta for d, (_, meta) in self._loaded.items() if meta is not None}
        out = [metas[d] for d in owners if d in metas]
        if out or cid.codec != RAW:
            return out
        for meta in metas.values():  # a chunk: named in the locator of its dataset
            if HASH_NAMES.get(cid.hash.code) != meta.manifest.hash_name:
                continue
            if bytes(cid.hash.digest) == hash_digest(b"", meta.manifest.hash_name) and meta.manifest.entries:
                out.append(meta)  # the empty file's block is in no pack
                continue
            try:
                locator = Locator(functools.partial(_block_of, meta.blocks), meta.locator)
                if locator.find(bytes(cid.hash.digest)) is not None:
                    out.append(meta)
            except DstoreError as e:
                log.warning("gateway: locator of %s unreadable: %s", cid_to_text(meta.dataset), e)
        return out

    def reader(self, meta: DatasetMeta) -> GatewayReader:
        """A reader of ``meta``'s dataset: shards from this peer's files, else from the ``--peers``.

        Not thread-safe (one per request); close it when done.
        """
        view = _MetadataStore(meta, self.store.files)
        return GatewayReader(cast(Store, view), meta, peers=self.peers)


class GatewayReader(DatasetReader):
    """A dataset as the gateway serves it: its tree, and every block its metadata holds.

    Metadata may hold blocks beyond the dataset's tree (docs/format.md, "Imported datasets":
    blocks of a CAR no root reaches, or every block of a CAR imported with ``--blocks``), raw
    blocks among them. A raw block held there is served from there, and DAGs of such blocks are
    walked like the tree; their work is bounded by the manifest's totals plus what the metadata
    holds (``max_entries``, ``max_bytes``), since blocks outside the tree are declared nowhere else.
    """

    def __init__(self, store: Store, meta: DatasetMeta, *, peers: SyncPeerSet | None) -> None:
        super().__init__(store, meta.dataset, peers=peers)
        self.hints = meta.hints  # shards are asked of the peers that took them first, as `dstore get` does
        if isinstance(self.packs.source, LocalThenPeers):
            self.packs.source.remote.hints = meta.hints
        self._held = meta.blocks
        self.max_entries = self.manifest.entries + len(meta.blocks)
        self.max_bytes = self.manifest.size + meta.block_bytes
        #: File bytes may be in held raw blocks: files are read block by block, not by the locator.
        self.holds_raw = meta.raw_blocks > 0

    def held(self, cid: CID) -> bytes | None:
        """The block if the dataset's metadata holds it (not yet checked against ``cid``)."""
        if not self.holds_raw and cid.codec == RAW:
            return None
        return self._held.get((cid.to_v1() if cid.version == 0 else cid).to_bytes())

    def node(self, cid: CID) -> unixfs.Node:
        if cid.codec == RAW:
            held = self.held(cid)
            if held is not None:
                return unixfs.Node(kind="raw", filesize=len(held))
        return super().node(cid)

    def entries(self, node: unixfs.Node) -> list[tuple[str, CID]]:
        limit = self.max_entries - 1
        out = []
        for ln in unixfs.directory_entries(self.block, node):
            out.append((ln.name, ln.cid))
            if len(out) > limit:
                raise FormatError(f"a folder lists more than the {limit} entries this dataset's metadata allows")
        return sorted(out, key=lambda e: e[0].encode("utf-8"))


def _hints(pointer: Pointer, blocks: dict[bytes, bytes]) -> dict[bytes, list[str | None]]:
    """Who took each shard, from the placement block the pointer names: only hints (none if unreadable)."""
    if pointer.placement is None:
        return {}
    placement = blocks.get(pointer.placement.to_bytes())
    try:
        if placement is None:
            raise FormatError("the metadata packs lack it")
        return decode_placement(placement)
    except FormatError as e:
        log.warning(
            "gateway: placement block %s unusable (%s): shards are looked for on every peer", pointer.placement, e
        )
        return {}


def _block_of(blocks: dict[bytes, bytes], cid: CID) -> bytes:
    try:
        return blocks[cid.to_bytes()]
    except KeyError:
        raise FormatError(f"metadata pack lacks block {cid_to_text(cid)}") from None
