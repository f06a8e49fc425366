"""Datasets read from trustless gateways: every block by its CID, no locator, no packs.

When neither the local store nor a storage peer knows a dataset, the reader
asks the gateways (``--gateways`` / ``$DSTORE_GATEWAYS``, dstore/net/gateways.py)
for its blocks one by one: the manifest, the UnixFS nodes, then each raw leaf
as the chunk it is. A plain UnixFS root (what ``ipfs add`` prints, or the
``root`` of a dataset) reads the same way, as a dataset of its own whose
bounds are what its verified root node declares (:func:`unixfs_manifest`).

Every block is checked against its CID by the gateway client before it gets
here; sizes come from verified nodes (a file's blocksizes), a raw block's own
length once verified, or the manifest's chunker bound; never from a gateway.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dstore.errors import BadCID, DstoreError, FormatError
from dstore.format import unixfs
from dstore.format.cid import CID, DAG_CBOR, HASH_NAMES, RAW, cid_to_text, inline_block
from dstore.format.manifest import IMPORTED_CHUNKER, PROFILE_CAR_IMPORT, ChunkerParams, Manifest
from dstore.limits import MAX_BLOCK_BYTES, MAX_MANIFEST_BYTES
from dstore.net.gateways import GATEWAY_CONCURRENCY, GatewayClient

if TYPE_CHECKING:
    from dstore.fetch.reader import DatasetReader

__all__ = ["GATEWAY_CACHE_BYTES", "GatewayBlocks", "GatewayWriter", "unixfs_manifest", "verify_gateway"]

#: Verified raw blocks kept in memory, so that the size a walk learned is not fetched again to be written.
GATEWAY_CACHE_BYTES = 64 << 20
#: Blocks fetched ahead of a walk or a file's reader.
READ_AHEAD_BLOCKS = 4 * GATEWAY_CONCURRENCY
#: Raw blocks whose verified length is remembered (a few dozen bytes each).
MAX_KNOWN_SIZES = 1 << 20
#: Files at least this large are asked for as one CAR stream (``dag-scope=entity``) before block by block:
#: a request per chunk costs a gateway more than the chunk.
STREAM_FILE_BYTES = 1 << 20
#: Blocks of a file's stream read before they are needed (out of order) at most; past that it is dropped.
STREAM_AHEAD_BYTES = 64 << 20


class GatewayBlocks:
    """Verified blocks from gateways, with a bounded cache and read-ahead; thread-safe."""

    def __init__(self, client: GatewayClient) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._cache_bytes = 0
        self._sizes: dict[bytes, int] = {}
        self._inflight: dict[bytes, Future[bytes]] = {}

    def get(self, cid: CID, max_bytes: int) -> bytes:
        """The verified block ``cid``, at most ``max_bytes`` long (NotFound, IntegrityError, PeerError)."""
        inline = inline_block(cid)
        if inline is not None:
            return inline
        key = cid.to_bytes()
        with self._lock:
            data = self._cache.get(key)
            future = self._inflight.pop(key, None) if data is None else None
        if data is None:
            data = future.result() if future is not None else self.client.get_block(cid, max_bytes)
            self.keep(key, data)
        if len(data) > max_bytes:  # fetched ahead under a looser bound
            raise FormatError(f"block {cid_to_text(cid)} holds {len(data)} bytes, more than the {max_bytes} expected")
        return data

    def size(self, cid: CID, max_bytes: int) -> int:
        """A raw block's length, from its verified bytes (kept in the cache for the read that follows)."""
        key = cid.to_bytes()
        known = self._sizes.get(key)
        return known if known is not None else len(self.get(cid, max_bytes))

    def start(self, cid: CID, max_bytes: int) -> Future[bytes] | bytes:
        """The block if it is here, else a future of it (its fetch started, or joined if under way)."""
        inline = inline_block(cid)
        if inline is not None:
            return inline
        key = cid.to_bytes()
        with self._lock:
            data = self._cache.get(key)
            future = self._inflight.pop(key, None) if data is None else None
        if data is not None:
            return data
        return future if future is not None else self.client.submit(cid, max_bytes)

    def ahead(self, cid: CID, max_bytes: int) -> None:
        """Start fetching ``cid`` in the background, unless it is here or on its way."""
        if inline_block(cid) is not None:
            return
        key = cid.to_bytes()
        with self._lock:
            if key in self._cache or key in self._inflight or len(self._inflight) >= READ_AHEAD_BLOCKS:
                return
            self._inflight[key] = self.client.submit(cid, max_bytes)

    def keep(self, key: bytes, data: bytes) -> None:
        with self._lock:
            if len(self._sizes) < MAX_KNOWN_SIZES:
                self._sizes[key] = len(data)
            if key in self._cache or len(data) > GATEWAY_CACHE_BYTES // 4:
                return
            self._cache[key] = data
            self._cache_bytes += len(data)
            while self._cache_bytes > GATEWAY_CACHE_BYTES:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= len(old)

    def file_stream(self, cid: CID, node: unixfs.Node, max_block_bytes: int) -> FileStream | None:
        """A CAR stream of a large file's blocks, or None for a small one (its chunks come block by block)."""
        if node.kind != "file" or (node.filesize or 0) < STREAM_FILE_BYTES:
            return None
        return FileStream(self.client.entity_blocks(cid, max_block_bytes), self)

    def close(self) -> None:
        with self._lock:
            pending, self._inflight = list(self._inflight.values()), {}
        for future in pending:
            future.cancel()


class FileStream:
    """A file's verified blocks from one CAR stream, handed out by CID in the order the reader wants them.

    Blocks read before they are wanted wait (up to :data:`STREAM_AHEAD_BYTES`); the file's nodes go to
    the block cache, where the reader's walk of the file finds them. When the stream ends, fails, or
    would need more waiting room, it is dropped: :meth:`take` then answers None and the reader
    fetches the remaining chunks block by block from every gateway.
    """

    def __init__(self, blocks: Iterator[tuple[CID, bytes]], cache: GatewayBlocks) -> None:
        self._blocks: Iterator[tuple[CID, bytes]] | None = blocks
        self._cache = cache
        self._ahead: dict[bytes, bytes] = {}
        self._ahead_bytes = 0

    def take(self, cid: CID) -> bytes | None:
        key = cid.to_bytes()
        data = self._ahead.pop(key, None)
        if data is not None:
            self._ahead_bytes -= len(data)
            return data
        while self._blocks is not None:
            try:
                got, block = next(self._blocks)
            except StopIteration:
                self._drop()
                break
            except DstoreError:
                self._drop()  # a gateway that lies or breaks: the rest block by block, from all of them
                break
            got_key = got.to_bytes()
            if got_key == key:
                return block
            if got.codec != RAW:
                self._cache.keep(got_key, block)
            elif self._ahead_bytes + len(block) > STREAM_AHEAD_BYTES:
                self._drop()
            else:
                self._ahead[got_key] = block
                self._ahead_bytes += len(block)
        return None

    def _drop(self) -> None:
        if self._blocks is not None:
            close = getattr(self._blocks, "close", None)
            if close is not None:
                close()
            self._blocks = None


def unixfs_manifest(root: CID, blocks: GatewayBlocks) -> Manifest:
    """What a plain UnixFS root (not a dstore manifest) may yield, from its verified root block.

    A file yields its declared ``filesize`` in one entry. A folder declares no totals, only the
    Tsize of each link (the bytes of the DAG under it): its files may hold at most the root block's
    length plus those, in at most as many entries plus one (a folder entry costs its parent bytes).
    A walk past that fails like one past a manifest's ``size`` and ``entries``.
    """
    hash_name = HASH_NAMES.get(root.hash.code)
    if hash_name is None:
        raise BadCID(f"{cid_to_text(root)} uses a hash dstore does not verify (0x{root.hash.code:x})")
    if root.codec == RAW:
        size, entries = blocks.size(root, MAX_BLOCK_BYTES), 1
    else:
        node = unixfs.parse_node(root, blocks.get(root, MAX_BLOCK_BYTES))
        if node.kind == "file":
            size, entries = node.filesize or 0, 1
        elif node.is_dir:
            size = len(blocks.get(root, MAX_BLOCK_BYTES)) + sum(ln.tsize for ln in node.links)
            entries = size + 1
        else:
            raise FormatError(f"{cid_to_text(root)} is a UnixFS {node.kind}, not a file or folder")
    chunker = ChunkerParams(min=0, avg=0, max=MAX_BLOCK_BYTES, name=IMPORTED_CHUNKER)
    return Manifest(
        root=root, size=size, entries=entries, hash_name=hash_name, chunker=chunker, profile=PROFILE_CAR_IMPORT
    )


def metadata_bound(cid: CID) -> int:
    """The most bytes a metadata block may hold: a manifest's limit for a dataset ID, a block's otherwise."""
    return MAX_MANIFEST_BYTES if cid.codec == DAG_CBOR else MAX_BLOCK_BYTES


class GatewayWriter:
    """``dstore get``'s file writer for a dataset read from gateways (BatchWriter's interface).

    Each file is written chunk after chunk as they arrive verified, the next ones fetched ahead
    in parallel; a file is reported done once it is complete and closed.
    """

    def __init__(
        self,
        reader: DatasetReader,
        folder: Path,
        progress: Callable[[int], None] | None = None,
        *,
        on_done: Callable[[Any], None] | None = None,
    ) -> None:
        self.reader = reader
        self.folder = folder
        self.progress = progress or (lambda n: None)
        self.on_done = on_done or (lambda done: None)

    def __enter__(self) -> GatewayWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add(self, path: str, cid: CID, node: unixfs.Node | None, name: str | None = None, *, done: Any = None) -> None:
        target = self.folder / path
        with open(target, "wb") as f:
            for piece in self.reader.iter_file_cid(cid, node):
                f.write(piece)
                self.progress(len(piece))
        self.on_done([done])


def chunks_ahead(
    fetch: Callable[[bytes, int], Future[bytes] | bytes], leaves: Iterable[tuple[bytes, int]]
) -> Iterator[tuple[bytes, int, bytes]]:
    """(digest, size, bytes) of each of ``leaves`` in order, :data:`READ_AHEAD_BLOCKS` of them on their way."""
    pending: deque[tuple[bytes, int, Future[bytes] | bytes]] = deque()
    try:
        for digest, size in leaves:
            pending.append((digest, size, fetch(digest, size)))
            if len(pending) >= READ_AHEAD_BLOCKS:
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())
    finally:
        for *_, item in pending:
            if isinstance(item, Future):
                item.cancel()


def _result(item: tuple[bytes, int, Future[bytes] | bytes]) -> tuple[bytes, int, bytes]:
    digest, size, data = item
    return digest, size, data if isinstance(data, bytes) else data.result()


def verify_gateway(reader: DatasetReader) -> tuple[int, int]:
    """Fetch and verify every block of a dataset read from gateways: (blocks, bytes); raises on the first bad one."""
    assert reader.gateway is not None
    gateway = reader.gateway
    bound = reader.manifest.chunker.max
    blocks = nbytes = 0
    raw: list[CID] = []
    for cid, node in reader.dag_blocks():
        if node is None:
            raw.append(cid)
        else:
            blocks += 1
            nbytes += len(reader.block(cid))
    pending: deque[Future[bytes]] = deque()
    for cid in raw:  # no cache: each raw block is counted once, and fetched once
        pending.append(gateway.client.submit(cid, bound))
        if len(pending) >= READ_AHEAD_BLOCKS:
            nbytes += len(pending.popleft().result())
            blocks += 1
    while pending:
        nbytes += len(pending.popleft().result())
        blocks += 1
    return blocks, nbytes
