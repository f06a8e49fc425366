"""The blocks of a gateway request, in the order a CAR stream sends them (depth first, parents first).

``resolve`` walks ``/ipfs/{cid}/path`` through a dataset (a dataset ID resolves
through its manifest's ``root``) and keeps every block the walk read, so a
client can verify the path itself. ``entity_blocks`` then yields the blocks of
what the path names for ``dag-scope`` ``block``, ``entity`` or ``all``, and for
``entity-bytes`` only the file blocks that cover that byte range.

Every block is checked against its CID right before it is yielded. The work
is bounded by what verified nodes declare: a file's children must hold
exactly the bytes of its blocksizes (so a file yields no more than its
filesize, itself no more than the manifest's size), and a walk of folders
counts files and folders against the manifest's ``entries`` and ``size``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from dstore.errors import DstoreError, FormatError, IntegrityError, NotFound
from dstore.fetch.reader import TreeBudget
from dstore.format import unixfs
from dstore.format.cid import (
    CID,
    DAG_PB,
    DIGEST_BYTES,
    HASH_CODES,
    HASH_NAMES,
    RAW,
    cid_bytes_from_digest,
    cid_to_text,
    hash_digest,
)
from dstore.peer import gateway_ipld as ipld
from dstore.peer.blockindex import GatewayReader as DatasetReader
from dstore.peer.gateway_runs import Leaf

__all__ = [
    "Item",
    "PathRemainder",
    "chunk_cid_prefix",
    "Resolved",
    "tree_budget",
    "block_bytes",
    "entity_blocks",
    "file_bytes",
    "resolve",
    "verified",
]

Block = tuple[CID, bytes]
#: What a walk yields: a block read and verified, or a chunk of the dataset's packs still to read.
Item = Block | Leaf


class PathRemainder(DstoreError):
    """A path that ends inside an IPLD block, not at a link (reading other IPLD kinds is not served: 501)."""


def verified(cid: CID, data: bytes) -> bytes:
    """``data`` if it hashes to ``cid``; IntegrityError otherwise (nothing unverified is sent)."""
    hash_name = HASH_NAMES.get(cid.hash.code)
    if hash_name is None or hash_digest(data, hash_name) != bytes(cid.hash.digest):
        raise IntegrityError(f"block {cid_to_text(cid)} read here does not match its CID")
    return data


def block_bytes(reader: DatasetReader, cid: CID, *, sequential: bool = False) -> bytes:
    """One block of the dataset (metadata from memory, a chunk out of its pack), verified.

    ``sequential``: more chunks of the same pack are coming (a CAR stream of a file).
    """
    held = reader.held(cid)
    if held is not None:
        return verified(cid, held)
    if cid.codec == RAW and cid.hash.code == reader.manifest.root.hash.code:
        return verified(cid, reader.read_chunk(bytes(cid.hash.digest), sequential=sequential))
    return verified(cid, reader.block(cid))


@dataclass
class Resolved:
    """Where a path led: the terminal CID and node (None: not UnixFS), and the blocks walked to get there."""

    cid: CID
    node: unixfs.Node | None
    path_blocks: list[Block] = field(default_factory=list)
    roots: list[CID] = field(default_factory=list)  # every CID along the path, for X-Ipfs-Roots
    name: str = ""  # the last path segment (file name), "" when the path is only a CID


def _node(reader: DatasetReader, cid: CID) -> unixfs.Node | None:
    return reader.node(cid) if cid.codec in (RAW, DAG_PB) else None


def _terminal_node(reader: DatasetReader, cid: CID) -> unixfs.Node | None:
    """The node at the end of a path; None for a block that is not UnixFS (a dag-pb node without
    UnixFS Data is still a block: served as one, never walked)."""
    if cid.codec == DAG_PB:
        try:
            return unixfs.parse_node(cid, reader.block(cid))
        except FormatError:
            return None
    return _node(reader, cid)


def resolve(reader: DatasetReader, cid: CID, segments: list[str], *, through_manifest: bool) -> Resolved:
    """Walk ``segments`` from ``cid``; ``through_manifest``: a bare dataset ID names its root folder."""
    out = Resolved(cid, None, roots=[cid])
    if cid == reader.cid and (segments or through_manifest):
        out.path_blocks.append((cid, verified(cid, reader.block(cid))))
        cid = reader.manifest.root
        out.roots.append(cid)
    elif cid.codec in ipld.IPLD_CODECS and segments:
        cid, segments = _ipld_walk(reader, cid, segments, out)
    node = _node(reader, cid) if segments else _terminal_node(reader, cid)

    def recording(c: CID) -> bytes:  # HAMT shards read by a lookup are part of the path's proof
        data = verified(c, reader.block(c))
        if c != cid:
            out.path_blocks.append((c, data))
        return data

    for i, seg in enumerate(segments):
        if node is None or not node.is_dir:
            raise NotFound(f"/{'/'.join(segments[:i])} is not a folder")
        out.path_blocks.append((cid, verified(cid, reader.block(cid))))
        link = unixfs.lookup(recording, node, seg)
        if link is None:
            raise NotFound(f"no such file or folder: /{'/'.join(segments[: i + 1])}")
        cid = link.cid
        node = _node(reader, cid) if i + 1 < len(segments) else _terminal_node(reader, cid)
        out.roots.append(cid)
        out.name = seg
    out.cid, out.node = cid, node
    return out


def _ipld_walk(reader: DatasetReader, cid: CID, segments: list[str], out: Resolved) -> tuple[CID, list[str]]:
    """Follow ``segments`` through DAG-CBOR / DAG-JSON blocks and their links, until a block of
    another codec (its own path goes on, UnixFS) or the path's end, which must be a link."""
    consumed = 0
    while cid.codec in ipld.IPLD_CODECS and consumed < len(segments):
        data = verified(cid, reader.block(cid))
        out.path_blocks.append((cid, data))
        value: object = ipld.decode_ipld(cid.codec, data)
        while consumed < len(segments):
            seg = segments[consumed]
            if isinstance(value, dict) and seg in value:
                value = value[seg]
            elif isinstance(value, list) and seg.isdigit() and int(seg) < len(value):
                value = value[int(seg)]
            else:
                raise NotFound(f"no such field or link: /{'/'.join(segments[: consumed + 1])}")
            consumed += 1
            out.name = seg
            if isinstance(value, CID):
                break
        if not isinstance(value, CID):
            raise PathRemainder(f"/{'/'.join(segments)} ends inside block {cid_to_text(cid)}, not at a link")
        cid = value.to_v1() if value.version == 0 else value
        out.roots.append(cid)
    return cid, segments[consumed:]


class _Budget(TreeBudget):
    """The tree budget of the gateway's reader: the manifest's, plus what the metadata holds beyond it."""

    def __init__(self, reader: DatasetReader) -> None:
        self.max_entries, self.max_bytes = reader.max_entries, reader.max_bytes
        self.entries = self.bytes = 0


def tree_budget(reader: DatasetReader) -> TreeBudget:
    """A budget for a walk of a tree of ``reader``'s dataset (its manifest's, plus its held blocks)."""
    return _Budget(reader)


def file_bytes(reader: DatasetReader, cid: CID, node: unixfs.Node, first: int, last: int) -> Iterator[bytes]:
    """Bytes ``first..last`` (inclusive) of a file read block by block (its raw leaves, its nodes' Data).

    For files whose leaves are blocks the dataset's metadata holds, not chunks of its locator.
    """
    for item in _file_items(reader, cid, node, first, last, None):
        assert not isinstance(item, Leaf)  # no chunk code: every block is read here
        block_cid, data, start = item
        if block_cid.codec != RAW:
            data = unixfs.parse_node(block_cid, data).data
        end = start + len(data)
        if data and end > first and start <= last:
            yield data[max(0, first - start) : min(len(data), last + 1 - start)]


def _hamt_pad(node: unixfs.Node) -> int:
    return len(f"{node.fanout - 1:X}") if node.kind == "hamt" and node.fanout else 0


def _file_blocks(reader: DatasetReader, cid: CID, node: unixfs.Node, first: int, last: int) -> Iterator[Item]:
    """A file's blocks depth first, only those whose bytes meet ``[first, last]`` (inclusive).

    Raw leaves that are chunks of the dataset's packs come as :class:`Leaf` (tagged with their CID
    and their offset in the file), for :func:`gateway_runs.chunk_runs` to read and verify in runs;
    every other block is read and verified here.
    """
    chunk_code = None if reader.holds_raw else HASH_CODES[reader.hash_name]
    for item in _file_items(reader, cid, node, first, last, chunk_code):
        yield item if isinstance(item, Leaf) else item[:2]


def chunk_cid_prefix(reader: DatasetReader) -> bytes:
    """The bytes of a chunk's CID before its digest (every :class:`Leaf` of the dataset has this prefix)."""
    return cid_bytes_from_digest(RAW, bytes(DIGEST_BYTES), reader.hash_name)[:-DIGEST_BYTES]


_FileItem = tuple[CID, bytes, int] | Leaf


def _file_items(
    reader: DatasetReader, cid: CID, node: unixfs.Node, first: int, last: int, chunk_code: int | None
) -> Iterator[_FileItem]:
    """The blocks of :func:`_file_blocks`: nodes (and leaves outside packs) read and verified, pack chunks as
    :class:`Leaf` (tagged with their CID and file offset) for :func:`chunk_runs` to read."""
    if node.data and node.links:
        raise FormatError("UnixFS file: inline data and links together are not written by dstore")
    if (node.filesize or 0) > reader.max_bytes:
        raise FormatError(f"a file claims {node.filesize} bytes, more than its dataset's {reader.max_bytes}")
    yield cid, block_bytes(reader, cid), 0
    if cid.codec == RAW:
        return
    # (iterator over (link, its size, its first byte)) per open node: no recursion.
    stack = [_children(node, 0)]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        link, size, start = item
        if start > last or start + size - 1 < first:
            continue  # outside the range: neither it nor its children are needed
        if link.cid.codec == RAW:
            if link.cid.hash.code == chunk_code:  # a chunk of the dataset's packs: read in a run
                yield Leaf(bytes(link.cid.hash.digest), size, (link.cid, start))
                continue
            data = block_bytes(reader, link.cid, sequential=True)
            if len(data) != size:
                raise FormatError(f"UnixFS file: a leaf of {len(data)} bytes where its parent says {size}")
            yield link.cid, data, start
            continue
        child = reader.node(link.cid)
        if child.kind != "file" or child.filesize != size:
            raise FormatError(f"UnixFS file: a link of {size} bytes leads to a {child.kind} of {child.filesize}")
        if child.data and child.links:
            raise FormatError("UnixFS file: inline data and links together are not written by dstore")
        if len(stack) >= unixfs.MAX_FILE_DEPTH:
            raise FormatError(f"a file's DAG is deeper than {unixfs.MAX_FILE_DEPTH} levels")
        yield link.cid, block_bytes(reader, link.cid), start
        stack.append(_children(child, start))


def _children(node: unixfs.Node, start: int) -> Iterator[tuple[unixfs.Link, int, int]]:
    pos = start
    for link, size in zip(node.links, node.blocksizes, strict=True):
        if size == 0:
            raise FormatError("UnixFS file: a link to no bytes")
        yield link, size, pos
        pos += size


def _folder_blocks(reader: DatasetReader, cid: CID, node: unixfs.Node, recurse: bool) -> Iterator[Item]:
    """A folder's own blocks (HAMT shards included); with ``recurse``, everything under it too."""
    budget = _Budget(reader)
    budget.take(node)
    stack: list[tuple[CID, unixfs.Node | None, bool]] = [(cid, node, True)]  # (block, node, is it an entry)
    depth_of: dict[bytes, int] = {cid.to_bytes(): 0}
    while stack:
        c, n, _ = stack.pop()
        depth = depth_of.pop(c.to_bytes(), 0)
        if n is None:
            n = _node(reader, c)
        if n is None or not n.is_dir:
            if n is not None and not n.is_dir and n.kind != "symlink":
                yield from _file_blocks(reader, c, n, 0, (n.filesize or 0) - 1)
            else:
                yield c, block_bytes(reader, c)
            continue
        yield c, block_bytes(reader, c)
        pad = _hamt_pad(n)
        children: list[tuple[CID, unixfs.Node | None, bool]] = []
        for ln in n.links:
            entry = n.kind == "dir" or len(ln.name) > pad
            if entry and not recurse:
                continue
            child = _node(reader, ln.cid) if entry else None
            if entry:
                if child is None:
                    raise FormatError(f"folder entry {ln.name!r} is not UnixFS")
                budget.take(child)
            if depth + 1 > unixfs.MAX_TREE_DEPTH:
                raise FormatError(f"folders nest deeper than {unixfs.MAX_TREE_DEPTH} levels")
            depth_of[ln.cid.to_bytes()] = depth + 1
            children.append((ln.cid, child, entry))
        stack.extend(reversed(children))


def entity_blocks(
    reader: DatasetReader, target: Resolved, scope: str, byte_range: tuple[int, int] | None
) -> Iterator[Item]:
    """The blocks ``scope`` (``block``, ``entity``, ``all``) asks of the terminal of ``target``.

    Chunks of the dataset's packs come as :class:`Leaf`: :func:`gateway_runs.chunk_runs` reads them.

    ``byte_range`` (inclusive, already resolved against the file's size) narrows a file to the
    blocks covering those bytes.
    """
    cid, node = target.cid, target.node
    if scope == "block" or node is None:
        if scope == "all" and cid == reader.cid:  # a manifest: it and its root's DAG
            yield cid, verified(cid, reader.block(cid))
            root = reader.manifest.root
            yield from entity_blocks(reader, Resolved(root, reader.node(root)), "all", None)
            return
        yield cid, block_bytes(reader, cid)
        return
    if node.is_dir:
        yield from _folder_blocks(reader, cid, node, recurse=scope == "all")
        return
    if node.kind == "symlink":
        yield cid, block_bytes(reader, cid)
        return
    size = node.filesize or 0
    first, last = byte_range if byte_range is not None else (0, size - 1)
    yield from _file_blocks(reader, cid, node, first, last)
