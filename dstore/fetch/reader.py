"""Read a dataset in place: manifest → UnixFS tree → locator → packs → chunks.

Every metadata block is checked against its CID when it is read, and every
chunk against its chunk ID (in Rust) after decompression, so a damaged store
or a wrong locator can make a read fail but never return wrong bytes.

Nodes may be reused many times in one DAG (that is legitimate), so work is
bounded by what the manifest declares, not by the blocks: a walk fails with
FormatError as soon as the tree yields more files and folders than
``entries`` or more file bytes than ``size``, and a walk of the whole dataset
fails unless it yields exactly those. Every walk is iterative and refuses
trees deeper than MAX_TREE_DEPTH (file DAGs: MAX_FILE_DEPTH).

A dataset that neither the store nor a peer knows is read from trustless
gateways, when some are given, block by block (dstore/fetch/gateway.py).
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dstore import _native
from dstore.errors import BadCID, DstoreError, FormatError, IntegrityError, NotFound
from dstore.fetch.packs import LocalShards, LocalThenPeers, PackReader, PackSource, PeerShards
from dstore.fetch.remote import BlockTable, RemoteMetadata, load_from_peers
from dstore.format import unixfs
from dstore.format.cid import (
    CID,
    DAG_CBOR,
    DAG_PB,
    HASH_CODES,
    RAW,
    cid_from_digest,
    cid_to_text,
    hash_digest,
    inline_block,
    parse_cid,
)
from dstore.format.locator import ChunkEntry, Locator
from dstore.format.manifest import Manifest
from dstore.format.pack import PackRecord
from dstore.format.pointer import Pointer
from dstore.net.protocol import PeerClient
from dstore.store import Store

if TYPE_CHECKING:  # read from gateways only when some are given: a local get does not import HTTP clients
    from dstore.fetch.gateway import FileStream, GatewayBlocks
    from dstore.net.gateways import GatewayClient

# Files are read in runs of chunks from one pack, at most this many bytes per run.
RUN_BYTES = 16 << 20
_BLOCK_CACHE = 256
# A walk of the local store looks up the chunks of this many files of a folder ahead, at once (one pass
# over the locator instead of one lookup per file); at most PRIMED_CHUNKS lookups are kept waiting.
PRIME_FILES = 1024
PRIME_CHUNKS = 1 << 16
# Parsed folder nodes kept, by the bytes of their blocks: opening files by path parses each folder on the way
# once, not once per open (a 500-entry folder takes milliseconds to parse).
_DIR_CACHE_BYTES = 16 << 20


class TreeBudget:
    """What a manifest says its tree yields; a walk that yields more is a FormatError."""

    def __init__(self, manifest: Manifest) -> None:
        self.max_entries = manifest.entries
        self.max_bytes = manifest.size
        self.entries = 0
        self.bytes = 0

    def take(self, node: unixfs.Node) -> None:
        """Count one yielded file or folder (a file with its declared size), before it is used."""
        self.entries += 1
        if self.entries > self.max_entries:
            raise FormatError(
                f"the dataset's tree yields more than the {self.max_entries} files and folders its manifest declares"
            )
        if not node.is_dir:
            self.bytes += node.filesize or 0
            if self.bytes > self.max_bytes:
                raise FormatError(
                    f"the dataset's files hold more than the {self.max_bytes} bytes its manifest declares"
                )

    def finish(self) -> None:
        """After a walk of the whole tree: it must have yielded exactly what the manifest declares."""
        if (self.entries, self.bytes) != (self.max_entries, self.max_bytes):
            raise FormatError(
                f"the dataset's tree yields {self.entries} files and folders and {self.bytes} bytes, "
                f"its manifest declares {self.max_entries} and {self.max_bytes}"
            )


@dataclass(frozen=True)
class Entry:
    """One entry of a dataset folder, as ``ls`` shows it."""

    name: str
    kind: str  # "file" or "dir"
    size: int | None  # file bytes; None for folders
    cid: CID

    @property
    def cid_text(self) -> str:
        return cid_to_text(self.cid)


class DatasetReader:
    """A dataset of the local store, opened by dataset ID."""

    def __init__(
        self,
        store: Store,
        dataset: str | CID,
        *,
        peers: PeerClient | None = None,
        gateways: GatewayClient | None = None,
        remote: RemoteMetadata | None = None,
    ) -> None:
        """Open ``dataset`` from the local store, else (with ``peers``, a SyncPeerSet) from peers, else (with
        ``gateways``) from trustless gateways, which also read a plain UnixFS root CID. ``remote``: the
        dataset's metadata already loaded from peers and verified (a forked parent's :meth:`remote_view`),
        used instead of loading it again; it is this reader's to close."""
        self.store = store
        self.cid = parse_cid(dataset)
        if self.cid.version == 0:
            self.cid = self.cid.to_v1()  # a Qm… root from IPFS tools
        if self.cid.codec != DAG_CBOR and (gateways is None or self.cid.codec not in (DAG_PB, RAW)):
            raise BadCID(
                f"{cid_to_text(self.cid)} is not a dataset ID (dataset IDs are dag-cbor manifests, "
                "as printed by `dstore add`; with --gateways, a UnixFS root CID reads too)"
            )
        self._blocks: OrderedDict[bytes, bytes] = OrderedDict()
        self._dirs: OrderedDict[bytes, tuple[unixfs.Node, int]] = OrderedDict()  # CID -> (folder, block bytes)
        self._dirs_bytes = 0
        self._fetched: BlockTable | None = None  # verified metadata blocks from peers (on disk)
        self._remote: RemoteMetadata | None = None  # what they came with
        self.pointer: Pointer | None = None  # the peers' pointer that led to verified metadata, if read from peers
        #: Where blocks come from when the dataset is read from gateways (no locator, no packs); else None.
        self.gateway: GatewayBlocks | None = None
        #: Chunks of a dataset read from gateways that are no raw block: digest -> inline bytes or dag-pb node.
        self._homes: dict[bytes, bytes | CID] = {}
        if gateways is not None:
            from dstore.fetch.gateway import GatewayBlocks
        hints: dict[bytes, list[str | None]] = {}
        locator_cid: CID | None = None
        peers_failed: DstoreError | None = None
        locator = store.index.dataset_locator(self.cid.to_bytes()) if self.cid.codec == DAG_CBOR else None
        if locator is not None:
            locator_cid = CID.from_bytes(locator)
            if remote is not None:
                remote.blocks.close()  # the local store has it: not needed
        elif peers is not None and self.cid.codec == DAG_CBOR:
            try:
                remote = remote if remote is not None else load_from_peers(peers, self.cid)
            except DstoreError as e:
                if gateways is None:
                    raise
                peers_failed = e
                self.gateway = GatewayBlocks(gateways)  # no peer leads to verified metadata: the gateways may
            else:
                locator_cid, self._fetched, hints = remote.locator, remote.blocks, remote.hints
                self.pointer, self._remote = remote.pointer, remote
        elif gateways is not None:
            self.gateway = GatewayBlocks(gateways)
        else:
            raise NotFound(
                f"dataset {cid_to_text(self.cid)} is not in this store "
                "(to fetch it from storage peers, pass --peers or set DSTORE_PEERS)"
            )
        #: The manifest states the tree's totals exactly (a plain UnixFS root states only bounds).
        self.exact_totals = self.cid.codec == DAG_CBOR
        if self.exact_totals:
            try:
                self.manifest = Manifest.decode(self.block(self.cid, what="dataset"))
            except NotFound as e:
                if peers_failed is None:
                    raise
                raise type(peers_failed)(f"{peers_failed}; and {e}") from e  # say why the peers did not do
        else:
            from dstore.fetch.gateway import unixfs_manifest

            assert self.gateway is not None
            self.manifest = unixfs_manifest(self.cid, self.gateway)
        self.hash_name = self.manifest.hash_name
        self._locator = None if locator_cid is None else Locator(self.block, locator_cid)
        if self._locator is not None and self._locator.dataset != self.cid:
            raise IntegrityError(f"the locator found for {cid_to_text(self.cid)} belongs to another dataset")
        self.hints = hints  # pack ID -> peer holding each shard, from the dataset's placement block
        local = LocalShards(store, self.hash_name)
        source: PackSource = local if peers is None else LocalThenPeers(local, PeerShards(peers, hints))
        self.packs = PackReader(source, self.hash_name)
        self.root = self.manifest.root
        self._empty_digest = hash_digest(b"", self.hash_name)
        self._last_ref: tuple[bytes, tuple[bytes, PackRecord, ChunkEntry]] | None = None
        # Looked up ahead (see prime): chunk digest -> where it is; file CID -> its parsed node.
        self._primed: dict[bytes, tuple[bytes, PackRecord, ChunkEntry]] = {}
        self._primed_nodes: dict[bytes, unixfs.Node] = {}
        self._hash_code = HASH_CODES[self.hash_name]
        self._run_buffers: list[bytearray] = []  # made on first use, reused for every run

    def remote_view(self) -> RemoteMetadata | None:
        """The metadata this reader loaded from peers, over a read-only view of its blocks (None if it did
        not, or the file is gone: the parent closed it): what a forked child's reader takes instead of fetching
        and checking it all again."""
        if self._remote is None:
            return None
        try:
            return self._remote.view()
        except sqlite3.Error:
            return None

    def close(self) -> None:
        if self.gateway is not None:
            self.gateway.close()
        self.packs.close()
        if self._fetched is not None:
            self._fetched.close()

    @property
    def locator(self) -> Locator:
        """The dataset's locator; a dataset read from gateways has none (its chunks are fetched by CID)."""
        if self._locator is None:
            raise NotFound(
                f"dataset {cid_to_text(self.cid)} is read from gateways: it has no locator, packs or shards here"
            )
        return self._locator

    def __enter__(self) -> DatasetReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- blocks -------------------------------------------------------------

    def block(self, cid: CID, what: str = "block") -> bytes:
        """A metadata block from the store, checked against its CID."""
        inline = inline_block(cid)
        if inline is not None:
            return inline  # an identity CID is its own block
        if cid.version == 0:
            cid = cid.to_v1()  # blocks are stored under their CIDv1 (links of imported DAGs may be CIDv0)
        key = cid.to_bytes()
        cached = self._blocks.get(key)
        if cached is not None:
            return cached
        data = self._fetched.get(key) if self._fetched is not None else None
        if data is None:
            data = self.store.get_block(key)
        if data is None and self.gateway is not None:
            from dstore.fetch.gateway import metadata_bound

            data = self.gateway.get(cid, metadata_bound(cid))
        if data is None:
            raise NotFound(f"{what} {cid_to_text(cid)} is not in this store")
        if hash_digest(data, _hash_name_of(cid)) != cid.hash.digest:
            raise IntegrityError(f"{what} {cid_to_text(cid)} in the store index does not match its ID")
        self._blocks[key] = data
        if len(self._blocks) > _BLOCK_CACHE:
            self._blocks.popitem(last=False)
        return data

    def release_index_pages(self) -> None:
        """Unmap the store index's pages read so far (they stay in the page cache): a long read's RSS stays flat."""
        release = getattr(self.store.index, "release_pages", None)  # a peer's in-memory store view has none
        if release is not None:
            release()

    def placement(self, pack_id: bytes) -> list[str | None] | None:
        """Which peer holds each shard of a pack: the dataset's hints, else this store's record."""
        return self.hints.get(pack_id) or self.store.index.placement(pack_id)

    def metadata_blocks(self) -> list[tuple[bytes, bytes]]:
        """Every metadata block of the dataset once: manifest, UnixFS nodes, locator root and pages."""
        out = [(self.cid.to_bytes(), self.block(self.cid))]
        for cid, node in self.dag_blocks():
            if node is not None:
                out.append((cid.to_bytes(), self.block(cid)))
        loc = self.locator
        for cid in [loc.root_cid, *loc.chunk_page_cids, *loc.pack_page_cids]:
            out.append((cid.to_bytes(), self.block(cid)))
        return out

    def dag_blocks(self) -> Iterator[tuple[CID, unixfs.Node | None]]:
        """Every block of the UnixFS DAG once, depth first, parents first: (CID, node; None for raw leaves).

        Shared nodes are visited once, so the work is that of the distinct
        blocks; the distinct files and folders (and their bytes) cannot
        outnumber what the tree yields, so they are checked against the manifest.
        """
        seen: set[bytes] = set()
        entries = 0
        entry_bytes = 0
        stack: list[tuple[CID, bool]] = [(self.root, True)]  # (block, is it a file or folder entry)
        while stack:
            cid, is_entry = stack.pop()
            key = cid.to_bytes()
            if key in seen:
                continue
            seen.add(key)
            node = self.node(cid) if is_entry or cid.codec != RAW else None
            if is_entry:
                assert node is not None
                entries += 1
                entry_bytes += 0 if node.is_dir else node.filesize or 0
                if entries > self.manifest.entries or entry_bytes > self.manifest.size:
                    raise FormatError(
                        f"the dataset's tree holds more than the {self.manifest.entries} files and folders "
                        f"or {self.manifest.size} bytes its manifest declares"
                    )
            if cid.codec == RAW:
                if inline_block(cid) is None:  # an identity CID is its own block: nothing to fetch
                    yield cid, None
                continue
            assert node is not None
            yield cid, node
            pad = len(f"{node.fanout - 1:X}") if node.kind == "hamt" and node.fanout else 0
            for ln in reversed(node.links):
                child_is_entry = node.kind == "dir" or (node.kind == "hamt" and len(ln.name) > pad)
                stack.append((ln.cid, child_is_entry))

    def check_totals(self) -> None:
        """FormatError unless the tree yields exactly the files, folders and bytes its manifest declares.

        What a full walk would count, without walking shared nodes again: each distinct file or
        folder is counted once and its totals reused wherever the DAG links it (so 10^9 files
        described by a few folder nodes cost a few nodes' work, and are then refused).
        """
        totals: dict[bytes, tuple[int, int]] = {}  # entry CID -> (files and folders, file bytes) under it
        stack: list[tuple[CID, bool]] = [(self.root, False)]  # (entry, are its children counted yet)
        while stack:
            cid, children_done = stack.pop()
            key = cid.to_bytes()
            if key in totals:
                continue
            node = self.node(cid)
            if not node.is_dir:
                totals[key] = (1, node.filesize or 0)
                continue
            children = [child for _, child in self.entries(node)]
            if not children_done:
                stack.append((cid, True))
                stack.extend((child, False) for child in children if child.to_bytes() not in totals)
                continue
            entries, size = 1, 0
            for child in children:
                e, b = totals[child.to_bytes()]
                entries, size = entries + e, size + b
            totals[key] = (entries, size)
        entries, size = totals[self.root.to_bytes()]
        if (entries, size) != (self.manifest.entries, self.manifest.size):
            raise FormatError(
                f"the dataset's tree yields {entries} files and folders and {size} bytes, "
                f"its manifest declares {self.manifest.entries} and {self.manifest.size}"
            )

    def node(self, cid: CID) -> unixfs.Node:
        if cid.codec == RAW:
            digest = self.chunk_digest(cid)
            if digest == self._empty_digest:
                return unixfs.Node(kind="raw", filesize=0)  # the empty file: no chunk, no pack
            if self.gateway is not None:  # no locator: the size is the verified block's own
                inline = inline_block(cid)
                size = len(inline) if inline is not None else self.gateway.size(cid, self.manifest.chunker.max)
                return unixfs.Node(kind="raw", filesize=size)
            # A one-chunk file: its size comes from the locator, its bytes from a pack.
            return unixfs.Node(kind="raw", filesize=self._ref(digest)[2].size)
        key = cid.to_bytes()
        cached = self._dirs.get(key)
        if cached is not None:
            self._dirs.move_to_end(key)
            return cached[0]
        primed = self._primed_nodes.pop(key, None)
        if primed is not None:
            return primed
        data = self.block(cid)
        node = self._parse(cid, data)
        if node.is_dir and len(data) <= _DIR_CACHE_BYTES:
            self._dirs[key] = (node, len(data))
            self._dirs_bytes += len(data)
            while self._dirs_bytes > _DIR_CACHE_BYTES:
                _, (_, size) = self._dirs.popitem(last=False)
                self._dirs_bytes -= size
        return node

    def _parse(self, cid: CID, data: bytes) -> unixfs.Node:
        """``unixfs.parse_node``: a File node of the shape dstore writes natively, anything else in Python."""
        flat = _native.unixfs_file_nodes([data], self._hash_code)[0] if cid.codec == DAG_PB else None
        return unixfs.parse_node(cid, data) if flat is None else _file_node(flat)

    def chunk_digest(self, cid: CID) -> bytes:
        """The chunk ID (digest under the dataset's hash) of a raw leaf.

        A raw leaf hashed with the dataset's hash is its own chunk. An identity
        CID carries its bytes, which an imported dataset stores as the chunk
        of their digest (docs/format.md, "Imported datasets").
        """
        if cid.hash.code == self._hash_code:  # the common case, first: a chunk of this dataset
            return bytes(cid.hash.digest)
        inline = inline_block(cid)
        if inline is not None:
            return hash_digest(inline, self.hash_name)
        if _hash_name_of(cid) != self.hash_name:
            raise FormatError(f"raw leaf {cid_to_text(cid)} is not hashed with the dataset's {self.hash_name}")
        return bytes(cid.hash.digest)

    # -- paths --------------------------------------------------------------

    def resolve(self, path: str) -> tuple[CID, unixfs.Node]:
        """CID and node at ``path`` (``a/b/c``; empty = the root)."""
        cid = self.root
        node = self.node(cid)
        walked: list[str] = []
        for part in (p for p in path.split("/") if p):
            if not node.is_dir:
                raise NotFound(f"{'/'.join(walked)} is a file, not a folder")
            link = unixfs.lookup(self.block, node, part)
            walked.append(part)
            if link is None:
                raise NotFound(f"no such file or folder in the dataset: {'/'.join(walked)}")
            cid = link.cid
            node = self.node(cid)
        return cid, node

    def entries(self, node: unixfs.Node) -> list[tuple[str, CID]]:
        """A folder's entries, sorted by name bytes (whatever the folder's layout).

        A folder cannot hold more entries than the dataset minus its root.
        """
        limit = self.manifest.entries - 1
        out = []
        for ln in unixfs.directory_entries(self.block, node):
            out.append((ln.name, ln.cid))
            if len(out) > limit:
                raise FormatError(f"a folder lists more than the {limit} entries the dataset's manifest allows")
        return sorted(out, key=lambda e: e[0].encode("utf-8"))

    def ls(self, path: str = "") -> list[Entry]:
        cid, node = self.resolve(path)
        if not node.is_dir:
            return [Entry(path.rstrip("/").rsplit("/", 1)[-1], "file", node.filesize, cid)]
        out = []
        for name, child_cid in self.entries(node):
            child = self.node(child_cid)
            out.append(
                Entry(name, "dir" if child.is_dir else "file", None if child.is_dir else child.filesize, child_cid)
            )
        return out

    def walk(self, path: str = "") -> Iterator[tuple[str, CID, unixfs.Node]]:
        """Every file and folder under ``path`` (itself first, as ""), depth first, as (relative path, CID, node).

        Bounded by the manifest (see TreeBudget); a walk of the whole dataset
        also checks, once done, that it yielded exactly what the manifest declares.
        """
        cid, node = self.resolve(path)
        budget = TreeBudget(self.manifest)
        budget.take(node)
        yield "", cid, node
        if node.is_dir:
            yield from self._walk_under(node, budget)
        if not any(path.split("/")) and self.exact_totals:
            budget.finish()

    def _walk_under(self, node: unixfs.Node, budget: TreeBudget) -> Iterator[tuple[str, CID, unixfs.Node]]:
        # One frame per open folder: (its path prefix, its entries still to visit). No recursion.
        stack = [("", self._ahead(self.entries(node)))]
        while stack:
            prefix, pending = stack[-1]
            item = next(pending, None)
            if item is None:
                stack.pop()
                continue
            name, child_cid = item
            child = self.node(child_cid)
            budget.take(child)
            rel = f"{prefix}{name}"
            yield rel, child_cid, child
            if child.is_dir:
                if len(stack) >= unixfs.MAX_TREE_DEPTH:
                    raise FormatError(f"the dataset's folders nest deeper than {unixfs.MAX_TREE_DEPTH} levels")
                stack.append((rel + "/", self._ahead(self.entries(child))))

    def _ahead(self, entries: list[tuple[str, CID]]) -> Iterator[tuple[str, CID]]:
        """A folder's entries; their chunks looked up ahead (read from gateways: their blocks fetched ahead)."""
        if self.gateway is None:
            return self._primed_ahead(entries)
        return self._gateway_ahead(entries)

    def _primed_ahead(self, entries: list[tuple[str, CID]]) -> Iterator[tuple[str, CID]]:
        for start in range(0, len(entries), PRIME_FILES):
            window = entries[start : start + PRIME_FILES]
            self._prime_files([cid for _, cid in window])
            yield from window

    def _prime_files(self, cids: list[CID]) -> None:
        """Parse the file nodes among ``cids`` and look up their chunks (a one-chunk file's own), ahead.

        Nothing is refused here: a node or chunk that does not read is left for the walk to reach,
        which then fails on it in its turn, as it would have without this.
        """
        if len(self._primed_nodes) > 4 * PRIME_FILES:
            self._primed_nodes.clear()  # left over from folders the walk did not finish
        digests: list[bytes] = []
        nodes: list[tuple[bytes, CID, bytes]] = []  # the dag-pb children: key, CID, block
        for cid in cids:
            if cid.codec == RAW:
                if cid.hash.code == self._hash_code:
                    digests.append(bytes(cid.hash.digest))
                continue
            key = cid.to_bytes()
            if cid.codec != DAG_PB or key in self._dirs or key in self._primed_nodes:
                continue
            try:
                nodes.append((key, cid, self.block(cid)))
            except DstoreError:
                continue
        flats = _native.unixfs_file_nodes([data for _, _, data in nodes], self._hash_code) if nodes else []
        for (key, cid, _data), flat in zip(nodes, flats, strict=True):
            if flat is not None:
                node = _file_node(flat)
            else:
                try:
                    node = self.node(cid)  # folders (then cached), foreign DAGs, anything malformed
                except DstoreError:
                    continue
                if node.kind != "file":
                    continue
            self._primed_nodes[key] = node
            code = self._hash_code
            leaves = [ln.cid for ln in node.links]
            digests.extend(bytes(c.hash.digest) for c in leaves if c.codec == RAW and c.hash.code == code)
        self.prime(digests)

    def prime(self, digests: list[bytes]) -> None:
        """Look these chunks up now, in one pass: the next ``chunk_ref`` of each is a dictionary hit.

        Only entries ``chunk_ref`` would return are kept; a missing chunk or a bad entry is
        looked up again, and refused, when it is asked for.
        """
        if self._locator is None or not digests:
            return
        if len(self._primed) + len(digests) > PRIME_CHUNKS:
            self._primed.clear()  # not used after all (e.g. the walk failed): forget them, keep RSS bounded
            self._primed_nodes.clear()
            digests = digests[:PRIME_CHUNKS]
        locator, max_size, primed = self._locator, self.manifest.chunker.max, self._primed
        digests = [d for d in digests if d not in primed]
        packs: dict[int, tuple[bytes, PackRecord]] = {}
        try:
            found = locator.find_many(digests)
        except DstoreError:
            return
        for digest, entry in zip(digests, found, strict=True):
            if (
                entry is None
                or not 0 < entry.size <= max_size
                or entry.stored_len > entry.size
                or (entry.codec == 0 and entry.stored_len != entry.size)
            ):
                continue
            pack = packs.get(entry.pack_index)
            if pack is None:
                try:
                    pack_id, record = locator.pack(entry.pack_index)
                except (DstoreError, IndexError):
                    continue
                pack = packs[entry.pack_index] = (pack_id.to_bytes(), record)
            primed[digest] = (pack[0], pack[1], entry)

    def _gateway_ahead(self, entries: list[tuple[str, CID]]) -> Iterator[tuple[str, CID]]:
        assert self.gateway is not None
        from dstore.fetch.gateway import READ_AHEAD_BLOCKS, metadata_bound

        for i, item in enumerate(entries):
            for _, cid in entries[i : i + READ_AHEAD_BLOCKS]:
                self.gateway.ahead(cid, self.manifest.chunker.max if cid.codec == RAW else metadata_bound(cid))
            yield item

    # -- file bytes ---------------------------------------------------------

    def leaves(self, cid: CID, node: unixfs.Node | None = None) -> Iterator[tuple[bytes, int]]:
        """(digest, size) of every chunk of a file, in order.

        Checks as it goes that every child node holds exactly the bytes its
        parent's blocksizes say, so the chunks add up to the file's declared
        size, which cannot exceed the dataset's.
        """
        node = node or self.node(cid)
        if node.kind not in ("raw", "file"):
            raise FormatError(f"{cid_to_text(cid)} is a {node.kind}, not a file")
        if (node.filesize or 0) > self.manifest.size:
            raise FormatError(
                f"a file of the dataset claims {node.filesize} bytes, more than the {self.manifest.size} of the dataset"
            )
        if cid.codec == RAW:
            if node.filesize:
                yield self._home(self.chunk_digest(cid), inline_block(cid)), node.filesize
            return
        # A File node's bytes are its inline Data, then its children's. dstore writes no Data;
        # an imported DAG's (dag-pb leaves) is stored as the chunk of its digest.
        if node.data:
            yield self._home(hash_digest(node.data, self.hash_name), cid), len(node.data)
        stack = [iter(zip(node.links, node.blocksizes, strict=True))]
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                continue
            link, size = item
            if size == 0:
                raise FormatError("UnixFS file: a link to no bytes")
            if link.cid.codec == RAW:
                inline = inline_block(link.cid)
                if inline is not None and len(inline) != size:
                    raise FormatError(f"UnixFS file: a link of {size} bytes to an inline block of {len(inline)}")
                yield self._home(self.chunk_digest(link.cid), inline), size
                continue
            child = self.node(link.cid)
            if child.kind != "file" or child.filesize != size:
                raise FormatError(
                    f"UnixFS file: a link of {size} bytes leads to a {child.kind} of {child.filesize} bytes"
                )
            if child.data:
                yield self._home(hash_digest(child.data, self.hash_name), link.cid), len(child.data)
            if len(stack) >= unixfs.MAX_FILE_DEPTH:
                raise FormatError(f"a file's DAG is deeper than {unixfs.MAX_FILE_DEPTH} levels")
            stack.append(iter(zip(child.links, child.blocksizes, strict=True)))

    def _home(self, digest: bytes, home: bytes | CID | None) -> bytes:
        """Read from gateways, remember where a chunk that is no raw block of its own is (``home``)."""
        if self.gateway is not None and home is not None:
            self._homes[digest] = home
        return digest

    def gateway_chunk(self, digest: bytes, size: int | None) -> bytes | CID:
        """Read from gateways: a chunk's bytes when they are at hand (inline, or a dag-pb node's Data),
        else the raw CID to fetch. ``size``, from a verified parent, is checked when known."""
        home = self._homes.get(digest)
        if home is None:
            return cid_from_digest(RAW, digest, self.hash_name)
        data = home if isinstance(home, bytes) else unixfs.parse_node(home, self.block(home)).data
        if size is not None and len(data) != size:
            raise FormatError(f"chunk {digest.hex()[:16]}… holds {len(data)} bytes, its file says {size}")
        return data

    def gateway_chunks(self, leaves: Iterable[tuple[bytes, int]], stream: FileStream | None = None) -> Iterator[bytes]:
        """Read from gateways: the chunks of ``leaves`` in order, each of exactly its size: from ``stream``
        (the file's CAR) while it delivers them, else fetched one by one, ahead."""
        from dstore.fetch.gateway import chunks_ahead

        assert self.gateway is not None
        gateway = self.gateway

        def fetch(digest: bytes, size: int) -> Future[bytes] | bytes:
            where = self.gateway_chunk(digest, size)
            if isinstance(where, bytes):
                return where
            streamed = stream.take(where) if stream is not None else None
            return streamed if streamed is not None else gateway.start(where, size)

        for digest, size, data in chunks_ahead(fetch, leaves):
            if len(data) != size:
                raise FormatError(f"chunk {digest.hex()[:16]}… holds {len(data)} bytes, its file says {size}")
            yield data

    def chunk_ref(self, digest: bytes) -> tuple[bytes, PackRecord, ChunkEntry]:
        """Where a chunk is: (pack ID, pack record, locator entry), its sizes bounded; NotFound if nowhere."""
        return self._ref(digest)

    def _ref(self, digest: bytes) -> tuple[bytes, PackRecord, ChunkEntry]:
        # A walk asks for a one-chunk file's size, then the writer for its place: the same chunk twice.
        if self._last_ref is not None and self._last_ref[0] == digest:
            return self._last_ref[1]
        found = self._primed.pop(digest, None) or self._find_ref(digest)
        self._last_ref = (digest, found)
        return found

    def _find_ref(self, digest: bytes) -> tuple[bytes, PackRecord, ChunkEntry]:
        entry = self.locator.find(digest)
        if entry is None:
            raise NotFound(f"chunk {digest.hex()[:16]}… is not in the dataset's locator")
        # Sizes are claims: bound them before anything is allocated for them.
        if not 0 < entry.size <= self.manifest.chunker.max:
            raise FormatError(
                f"the locator says chunk {digest.hex()[:16]}… holds {entry.size} bytes; "
                f"chunks hold 1 to {self.manifest.chunker.max} (the chunker's max)"
            )
        if entry.stored_len > entry.size or (entry.codec == 0 and entry.stored_len != entry.size):
            raise FormatError(
                f"the locator says chunk {digest.hex()[:16]}… is stored in {entry.stored_len} bytes "
                f"for {entry.size} (dstore stores a chunk compressed only when that makes it smaller)"
            )
        pack_id, record = self.locator.pack(entry.pack_index)
        return pack_id.to_bytes(), record, entry

    def runs(self, cid: CID, node: unixfs.Node | None = None) -> Iterator[tuple[bytes, PackRecord, list[ChunkEntry]]]:
        """A file's chunks grouped into runs that share one pack (at most RUN_BYTES each)."""
        run: list[ChunkEntry] = []
        run_pack: tuple[bytes, PackRecord] | None = None
        run_bytes = 0
        for digest, size in self.leaves(cid, node):
            pack_id, record, ref = self._ref(digest)
            if ref.size != size:
                raise IntegrityError(
                    f"chunk {digest.hex()[:16]}… has size {ref.size} in the locator, {size} in the file"
                )
            if run_pack is not None and (run_pack[0] != pack_id or run_bytes + size > RUN_BYTES):
                yield (*run_pack, run)
                run, run_bytes = [], 0
            run_pack = (pack_id, record)
            run.append(ref)
            run_bytes += size
        if run_pack is not None:
            yield (*run_pack, run)

    def iter_file_cid(self, cid: CID, node: unixfs.Node | None = None) -> Iterator[memoryview]:
        """A file's bytes in runs of verified chunks; the next run's pack loads in the background.

        Runs are views of two reused buffers, alternately: a view stays valid
        until the generator has been advanced twice more.
        """
        if self.gateway is not None:
            node = node or self.node(cid)
            stream = self.gateway.file_stream(cid, node, self.manifest.chunker.max)
            for data in self.gateway_chunks(self.leaves(cid, node), stream):
                yield memoryview(data)
            return
        if not self._run_buffers:
            # A run never passes RUN_BYTES unless it is one chunk larger than that.
            size = max(RUN_BYTES, self.manifest.chunker.max)
            self._run_buffers = [bytearray(size), bytearray(size)]
        runs = self.runs(cid, node)
        current = next(runs, None)
        turn = 0
        while current is not None:
            upcoming = next(runs, None)
            if upcoming is not None:
                self.packs.prefetch(upcoming[0], upcoming[1])
            yield self.packs.read_run(*current, out=self._run_buffers[turn])
            turn ^= 1
            current = upcoming

    def iter_file(self, path: str) -> Iterator[memoryview]:
        cid, node = self.resolve(path)
        if node.is_dir:
            raise NotFound(f"{path or '/'} is a folder, not a file")
        return self.iter_file_cid(cid, node)

    def read_chunk(self, digest: bytes, *, sequential: bool = False) -> bytes:
        """One chunk's verified bytes, reading only the shard bytes that cover it; ``sequential``
        (the next chunks are likely in the same pack) maps the whole pack, as file reads do."""
        if digest == self._empty_digest:
            return b""  # the empty file's raw block is in no pack
        if self.gateway is not None:
            where = self.gateway_chunk(digest, None)
            return where if isinstance(where, bytes) else self.gateway.get(where, self.manifest.chunker.max)
        pack_id, record, ref = self._ref(digest)
        if sequential:
            return bytes(self.packs.read_run(pack_id, record, [ref], bytearray(ref.size)))
        return self.packs.read_one(pack_id, record, ref)


def _file_node(flat: tuple[int, list[bytes], list[int], list[int]]) -> unixfs.Node:
    """The node ``_native.unixfs_file_nodes`` read: what ``unixfs.parse_node`` makes of the same block."""
    filesize, cids, tsizes, sizes = flat
    links = tuple(unixfs.Link("", CID.from_bytes(c), t) for c, t in zip(cids, tsizes, strict=True))
    return unixfs.Node(kind="file", links=links, data=b"", filesize=filesize, blocksizes=tuple(sizes))


def _hash_name_of(cid: CID) -> str:
    from dstore.format.cid import HASH_NAMES

    try:
        return HASH_NAMES[cid.hash.code]
    except KeyError:
        raise BadCID(f"{cid_to_text(cid)} uses an unsupported hash (0x{cid.hash.code:x})") from None


def store_stat(store: Store) -> dict[str, object]:
    """What the local store holds."""
    counts = store.index.counts()
    shard_bytes = 0
    shard_files = 0
    for p in store.shards:
        shard_files += 1
        shard_bytes += p.stat().st_size
    return {
        "home": str(store.home),
        "datasets": counts["datasets"],
        "chunks": counts["chunks"],
        "shards": shard_files,
        "shard_bytes": shard_bytes,
        "metadata_blocks": counts["blocks"],
        "datasets_list": [cid_to_text(k) for k, _ in store.index.datasets_list()],
    }
