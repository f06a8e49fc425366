"""UnixFS over dag-pb: the file and directory nodes of a dataset, as IPFS defines them.

Builders (pure; they return blocks, they store nothing):

- :func:`build_file` — a balanced DAG of at most 174 links per node (1024 in
  the ``unixfs-v1-2025`` profile: ``max_links``) over raw leaves (a
  single-chunk file is its raw leaf; an empty file is the empty raw block, as
  Kubo writes it with raw leaves).
- :func:`build_directory` — a plain Directory node, or a UnixFS HAMT shard
  (fanout 256, murmur3-x64-64) when the plain node's encoded size exceeds
  ``hamt_threshold_bytes`` (IPIP-0499 "block-bytes", 256 KiB).

Readers: :func:`parse_node` turns a block into a :class:`Node` (kind, links,
filesize, blocksizes, …) and refuses entry names that could escape a folder
(``/``, NUL, ``.``, ``..``, empty) or repeat; :func:`hamt_lookup`,
:func:`hamt_entries` and :func:`directory_entries` walk directories through a
``get_block`` callable, checking every HAMT entry against the slot its name
hashes to.

The exact byte layout is fixed in docs/format.md, "UnixFS DAG". With
``hash_name="sha2-256"`` these builders give the same CIDs as IPFS tools with
CIDv1, raw leaves and the balanced layout of width 174, or of width 1024 as
IPIP-0499's ``unixfs-v1-2025`` profile lays files out (tests pin both).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import mmh3

from dstore.errors import FormatError
from dstore.format.cid import CID, DAG_PB, RAW, hash_code, hash_digest
from dstore.format.dagpb import (
    PBLink,
    decode_node,
    decode_varint,
    encode_node,
    encode_varint,
)

__all__ = [
    "DEFAULT_HAMT_THRESHOLD_BYTES",
    "EMPTY_FILE_DATA_BLOCK",
    "HAMT_FANOUT",
    "HAMT_HASH_MURMUR3",
    "MAX_FILE_DEPTH",
    "MAX_LINKS_PER_NODE",
    "UNIXFS_V1_2025_LINKS_PER_NODE",
    "MAX_TREE_DEPTH",
    "T_DIRECTORY",
    "T_FILE",
    "T_HAMT_SHARD",
    "T_METADATA",
    "T_RAW",
    "T_SYMLINK",
    "Link",
    "Node",
    "UnixFSData",
    "build_directory",
    "build_file",
    "decode_data",
    "directory_entries",
    "encode_data",
    "hamt_entries",
    "hamt_hash",
    "hamt_lookup",
    "lookup",
    "parse_node",
    "validate_name",
]

T_RAW = 0
T_DIRECTORY = 1
T_FILE = 2
T_METADATA = 3
T_SYMLINK = 4
T_HAMT_SHARD = 5
_TYPE_NAMES = {
    0: "Raw",
    1: "Directory",
    2: "File",
    3: "Metadata",
    4: "Symlink",
    5: "HAMTShard",
}

#: Links per File node: the width of go-ipfs/boxo's and js-ipfs's balanced layout.
MAX_LINKS_PER_NODE = 174
#: Links per File node in IPIP-0499's ``unixfs-v1-2025`` profile (Kubo, ipfs-unixfs-importer).
UNIXFS_V1_2025_LINKS_PER_NODE = 1024
HAMT_FANOUT = 256
#: Multihash code of murmur3-x64-64 as UnixFS uses it (the table says murmur3-x64-64 for 0x22).
HAMT_HASH_MURMUR3 = 0x22
#: IPIP-0499 (unixfs-v1-2025, "block-bytes"): a directory whose plain node would
#: encode to MORE than this many bytes is a HAMT; exactly this many stays plain.
DEFAULT_HAMT_THRESHOLD_BYTES = 256 * 1024

#: Folders nest at most this deep in a dataset (docs/format.md): add refuses
#: deeper input, readers refuse deeper trees. Generous; it only stops the absurd.
MAX_TREE_DEPTH = 4096
#: File DAGs are at most this many File nodes deep (174 links per level: far past 2**64 bytes).
MAX_FILE_DEPTH = 32

#: Bound on the fanout a reader accepts (IPFS uses 256; go-unixfs caps at 1024).
_MAX_FANOUT = 1024


# --------------------------------------------------------------------------- Data message


@dataclass(frozen=True)
class UnixFSData:
    """The UnixFS ``Data`` protobuf message.

    ``mode`` and ``mtime`` are decoded from foreign DAGs but never written by dstore
    (they would make IDs machine dependent); ``mtime`` is kept as its raw bytes.
    """

    type: int
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()
    hash_type: int | None = None
    fanout: int | None = None
    mode: int | None = None
    mtime: bytes | None = None


def encode_data(d: UnixFSData) -> bytes:
    """Protobuf bytes of a UnixFS Data message, fields in number order (as go and js write them)."""
    out = bytearray(b"\x08")
    out += encode_varint(d.type)
    if d.data is not None:
        out += b"\x12" + encode_varint(len(d.data)) + d.data
    if d.filesize is not None:
        out += b"\x18" + encode_varint(d.filesize)
    for bs in d.blocksizes:
        out += b"\x20" + encode_varint(bs)
    if d.hash_type is not None:
        out += b"\x28" + encode_varint(d.hash_type)
    if d.fanout is not None:
        out += b"\x30" + encode_varint(d.fanout)
    if d.mode is not None:
        out += b"\x38" + encode_varint(d.mode)
    if d.mtime is not None:
        out += b"\x42" + encode_varint(len(d.mtime)) + d.mtime
    return bytes(out)


def decode_data(buf: bytes) -> UnixFSData:
    """Decode a UnixFS Data message from untrusted bytes.

    Lenient where IPFS writers differ harmlessly (packed ``blocksizes``,
    ``mode``/``mtime``), strict on structure: Type required and known, no
    repeated singular field, no unknown field, no truncation.
    """
    mv = memoryview(buf)
    end = len(mv)
    pos = 0
    vals: dict[int, object] = {}
    blocksizes: list[int] = []
    while pos < end:
        key, pos = decode_varint(mv, pos, end)
        fnum, wire = key >> 3, key & 7
        if fnum == 4 and wire == 0:
            v, pos = decode_varint(mv, pos, end)
            blocksizes.append(v)
            continue
        if fnum == 4 and wire == 2:  # packed repeated uint64
            n, pos = decode_varint(mv, pos, end)
            if n > end - pos:
                raise FormatError("truncated UnixFS blocksizes")
            stop = pos + n
            while pos < stop:
                v, pos = decode_varint(mv, pos, stop)
                blocksizes.append(v)
            continue
        if fnum in vals:
            raise FormatError(f"UnixFS field {fnum} repeated")
        if fnum in (1, 3, 5, 6, 7) and wire == 0:
            vals[fnum], pos = decode_varint(mv, pos, end)
        elif fnum in (2, 8) and wire == 2:
            n, pos = decode_varint(mv, pos, end)
            if n > end - pos:
                raise FormatError("truncated UnixFS Data field")
            vals[fnum] = bytes(mv[pos : pos + n])
            pos += n
        else:
            raise FormatError(f"unexpected field {fnum} (wire type {wire}) in UnixFS Data")
    if 1 not in vals:
        raise FormatError("UnixFS Data without Type")
    t = vals[1]
    assert isinstance(t, int)
    if t not in _TYPE_NAMES:
        raise FormatError(f"unknown UnixFS type {t}")
    return UnixFSData(
        type=t,
        data=vals.get(2),  # type: ignore[arg-type]
        filesize=vals.get(3),  # type: ignore[arg-type]
        blocksizes=tuple(blocksizes),
        hash_type=vals.get(5),  # type: ignore[arg-type]
        fanout=vals.get(6),  # type: ignore[arg-type]
        mode=vals.get(7),  # type: ignore[arg-type]
        mtime=vals.get(8),  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- builders

Block = tuple[CID, bytes]
CidLike = CID | bytes


def _cid_bytes(c: CidLike) -> bytes:
    return c if isinstance(c, bytes) else c.to_bytes()


def _pb_block(block: bytes, hash_name: str, code: int) -> tuple[bytes, CID]:
    cb = bytes((1, DAG_PB, code, 32)) + hash_digest(block, hash_name)
    return cb, CID.from_bytes(cb)


#: The dag-pb empty file other writers (Kubo without raw leaves) produce; readers accept it.
EMPTY_FILE_DATA_BLOCK = encode_node([], encode_data(UnixFSData(type=T_FILE, filesize=0)))


def build_file(
    leaves: Sequence[tuple[CidLike, int]],
    hash_name: str = "blake3",
    max_links: int = MAX_LINKS_PER_NODE,
) -> tuple[CID, list[Block], int]:
    """Build the UnixFS DAG of one file over its chunks.

    ``leaves`` are ``(chunk CID, chunk size)`` in file order; the chunk CID may
    be a CID or its binary form (``b"\\x01\\x55\\x1e\\x20" + digest``, the fast path).
    Returns ``(root CID, [(cid, block), …] of the new dag-pb nodes, root tsize)``;
    the raw leaves themselves are not in the list. Linear in ``len(leaves)``.
    An empty file is the empty raw block (raw codec CID of ``b""``), no node.
    ``max_links`` is the layout's width: leaves, then nodes, are grouped that
    many at a time, level by level, until one node remains.
    """
    if max_links < 2:
        raise ValueError(f"a file node needs room for at least 2 links, not {max_links}")
    code = hash_code(hash_name)
    if not leaves:
        return CID.from_bytes(bytes((1, RAW, code, 32)) + hash_digest(b"", hash_name)), [], 0
    if len(leaves) == 1:
        c, size = leaves[0]
        if size < 0:
            raise ValueError("negative chunk size")
        cid = c if isinstance(c, CID) else CID.from_bytes(c)
        return cid, [], size
    blocks: list[Block] = []
    # Each level entry: (cid bytes, file bytes under it, tsize under it).
    level: list[tuple[bytes, int, int]] = []
    for c, size in leaves:
        if size < 0:
            raise ValueError("negative chunk size")
        level.append((_cid_bytes(c), size, size))
    root_cid: CID | None = None
    while len(level) > 1 or root_cid is None:
        nxt: list[tuple[bytes, int, int]] = []
        for i in range(0, len(level), max_links):
            group = level[i : i + max_links]
            filesize = 0
            tsize_sum = 0
            sizes = []
            links = []
            for cb, fsz, tsz in group:
                filesize += fsz
                tsize_sum += tsz
                sizes.append(fsz)
                links.append(PBLink(cb, "", tsz))
            data = encode_data(UnixFSData(type=T_FILE, filesize=filesize, blocksizes=tuple(sizes)))
            block = encode_node(links, data)
            cb, cid = _pb_block(block, hash_name, code)
            blocks.append((cid, block))
            nxt.append((cb, filesize, len(block) + tsize_sum))
            root_cid = cid
        level = nxt
    assert root_cid is not None
    return root_cid, blocks, level[0][2]


def validate_name(name: str) -> bytes:
    """Check a directory entry name (docs/format.md) and return its UTF-8 bytes."""
    if not isinstance(name, str):
        raise ValueError(f"entry name must be str, not {type(name).__name__}")  # noqa: TRY004
    if name in ("", ".", "..") or "/" in name or "\x00" in name:
        raise ValueError(f"invalid entry name {name!r}")
    try:
        return name.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates
        raise ValueError(f"entry name {name!r} is not valid Unicode") from e


def _check_entry_name(name: str) -> None:
    """FormatError unless ``name`` is a safe entry name (no path can be built from it)."""
    if name in ("", ".", "..") or "/" in name or "\x00" in name:
        raise FormatError(f"UnixFS directory entry with an unsafe name {name!r}")


def hamt_hash(name: bytes) -> bytes:
    """The 8-byte HAMT key of a name: murmur3-x64-128's first 64-bit word (h1), big-endian.

    This is what go-unixfs/boxo (``murmur3.New64().Sum``) and js-ipfs
    (first 8 bytes of murmur3-128 reversed) use for hashType 0x22.
    """
    # Mask rather than signed=False: some mmh3 versions ignore a positional ``signed``.
    return (mmh3.hash64(name, 0, True)[0] & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")


_DIR_DATA = encode_data(UnixFSData(type=T_DIRECTORY))


def build_directory(
    entries: Sequence[tuple[str, CidLike, int]],
    hash_name: str = "blake3",
    hamt_threshold_bytes: int = DEFAULT_HAMT_THRESHOLD_BYTES,
) -> tuple[CID, list[Block], int]:
    """Build one directory's node(s) from its entries ``(name, cid, tsize)``.

    Names are validated and must be unique; links are sorted by UTF-8 name bytes.
    If the plain Directory node would exceed ``hamt_threshold_bytes`` the
    directory becomes a HAMT (fanout 256, murmur3-x64-64) exactly as IPFS
    shards. Returns ``(root CID, [(cid, block), …], root tsize)``.
    """
    code = hash_code(hash_name)
    named: list[tuple[bytes, str, bytes, int]] = []
    for name, c, tsize in entries:
        if tsize < 0:
            raise ValueError("negative tsize")
        named.append((validate_name(name), name, _cid_bytes(c), tsize))
    named.sort(key=lambda e: e[0])
    for a, b in itertools.pairwise(named):
        if a[0] == b[0]:
            raise ValueError(f"duplicate entry name {a[1]!r}")
    links = [PBLink(cb, name, tsize) for _, name, cb, tsize in named]
    block = encode_node(links, _DIR_DATA)
    if len(block) <= hamt_threshold_bytes:
        _, cid = _pb_block(block, hash_name, code)
        return cid, [(cid, block)], len(block) + sum(e[3] for e in named)
    keyed = [(hamt_hash(nb), name, cb, tsize) for nb, name, cb, tsize in named]
    blocks: list[Block] = []
    cid, tsize = _build_shard(keyed, 0, hash_name, code, blocks)
    return cid, blocks, tsize


def _build_shard(
    entries: list[tuple[bytes, str, bytes, int]],
    depth: int,
    hash_name: str,
    code: int,
    blocks: list[Block],
) -> tuple[CID, int]:
    if depth >= 8:
        names = ", ".join(repr(e[1]) for e in entries[:4])
        raise ValueError(f"HAMT: names with the same 64-bit murmur3 hash cannot be stored: {names}")
    slots: dict[int, list[tuple[bytes, str, bytes, int]]] = {}
    for e in entries:
        slots.setdefault(e[0][depth], []).append(e)
    links = []
    bitfield = 0
    total = 0
    for idx in sorted(slots):
        bitfield |= 1 << idx
        group = slots[idx]
        if len(group) == 1:
            _, name, cb, tsize = group[0]
            links.append(PBLink(cb, f"{idx:02X}{name}", tsize))
        else:
            child, tsize = _build_shard(group, depth + 1, hash_name, code, blocks)
            links.append(PBLink(child.to_bytes(), f"{idx:02X}", tsize))
        total += tsize
    bits = bitfield.to_bytes((bitfield.bit_length() + 7) // 8, "big")
    data = encode_data(
        UnixFSData(
            type=T_HAMT_SHARD,
            data=bits,
            hash_type=HAMT_HASH_MURMUR3,
            fanout=HAMT_FANOUT,
        )
    )
    block = encode_node(links, data)
    _, cid = _pb_block(block, hash_name, code)
    blocks.append((cid, block))
    return cid, len(block) + total


# --------------------------------------------------------------------------- readers


@dataclass(frozen=True)
class Link:
    """A link as readers see it: entry or HAMT-slot name, target CID, Tsize (0 if absent)."""

    name: str
    cid: CID
    tsize: int


@dataclass(frozen=True)
class Node:
    """A parsed UnixFS block.

    ``kind`` is ``"raw"`` (a raw leaf: ``data`` is the bytes), ``"file"``
    (``data`` is inline file bytes, ``links``/``blocksizes`` the children),
    ``"dir"``, ``"hamt"`` (``bitfield``, ``fanout``) or ``"symlink"``
    (``data`` is the target). ``filesize`` is the file's length for
    raw/file nodes, else None.
    """

    kind: str
    links: tuple[Link, ...] = ()
    data: bytes = b""
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()
    fanout: int | None = None
    bitfield: int = 0

    @property
    def is_dir(self) -> bool:
        return self.kind in ("dir", "hamt")


def parse_node(cid: CID, block: bytes) -> Node:
    """Parse an untrusted block of a UnixFS DAG, checking its internal consistency.

    Does not check ``block`` against ``cid`` (the store/fetch layer verifies
    hashes); ``cid`` selects the codec. Raises FormatError on anything that is
    not a well-formed UnixFS node of a supported type.
    """
    if cid.codec == RAW:
        return Node(kind="raw", data=bytes(block), filesize=len(block))
    if cid.codec != DAG_PB:
        raise FormatError(f"not a UnixFS block: codec 0x{cid.codec:x}")
    pb = decode_node(block)
    if pb.data is None:
        raise FormatError("dag-pb node without UnixFS Data")
    d = decode_data(pb.data)
    links = tuple(Link(ln.name or "", CID.from_bytes(ln.hash), ln.tsize or 0) for ln in pb.links)
    if d.type in (T_FILE, T_RAW):
        if len(d.blocksizes) != len(links):
            raise FormatError(f"UnixFS file: {len(links)} links but {len(d.blocksizes)} blocksizes")
        inline = d.data or b""
        total = len(inline) + sum(d.blocksizes)
        filesize = d.filesize if d.filesize is not None else total
        if filesize != total:
            raise FormatError(f"UnixFS file: filesize {filesize} != data + blocksizes {total}")
        return Node(
            kind="file",
            links=links,
            data=inline,
            filesize=filesize,
            blocksizes=d.blocksizes,
        )
    if d.type == T_DIRECTORY:
        # IPFS readers accept links in any order, so do we; a name twice is refused.
        seen = set()
        for ln in links:
            _check_entry_name(ln.name)
            if ln.name in seen:
                raise FormatError(f"UnixFS directory has {ln.name!r} twice")
            seen.add(ln.name)
        return Node(kind="dir", links=links)
    if d.type == T_HAMT_SHARD:
        fanout = d.fanout
        if fanout is None or fanout < 2 or fanout > _MAX_FANOUT or fanout & (fanout - 1):
            raise FormatError(f"UnixFS HAMT: bad fanout {fanout}")
        if d.hash_type != HAMT_HASH_MURMUR3:
            raise FormatError(f"UnixFS HAMT: unsupported hashType {d.hash_type}")
        bitfield = int.from_bytes(d.data or b"", "big")
        if bitfield >> fanout:
            raise FormatError("UnixFS HAMT: bitfield wider than fanout")
        if bitfield.bit_count() != len(links):
            raise FormatError(f"UnixFS HAMT: {len(links)} links but {bitfield.bit_count()} bits set")
        pad = len(f"{fanout - 1:X}")
        slot_iter = (i for i in range(fanout) if bitfield >> i & 1)
        for ln, slot in zip(links, slot_iter, strict=True):
            if ln.name[:pad] != f"{slot:0{pad}X}":
                raise FormatError(f"UnixFS HAMT: link {ln.name!r} is not in slot {slot:0{pad}X}")
            if len(ln.name) > pad:
                _check_entry_name(ln.name[pad:])
        return Node(kind="hamt", links=links, fanout=fanout, bitfield=bitfield)
    if d.type == T_SYMLINK:
        return Node(kind="symlink", data=d.data or b"")
    raise FormatError(f"unsupported UnixFS type {_TYPE_NAMES[d.type]}")


GetBlock = Callable[[CID], bytes]


def _hamt_index(key: bytes, depth: int, bits: int) -> int:
    start = depth * bits
    if start + bits > 64:
        raise FormatError("UnixFS HAMT deeper than its 64-bit hash allows")
    return (int.from_bytes(key, "big") >> (64 - start - bits)) & ((1 << bits) - 1)


def hamt_lookup(get_block: GetBlock, root: CID | Node, name: str) -> Link | None:
    """Find entry ``name`` in the HAMT directory ``root``; None if absent.

    Reads one shard block per level (at most 8 with fanout 256).
    """
    node = root if isinstance(root, Node) else parse_node(root, get_block(root))
    if node.kind != "hamt":
        raise FormatError("not a HAMT directory")
    nb = name.encode("utf-8")
    key = hamt_hash(nb)
    depth = 0
    while True:
        assert node.fanout is not None
        bits = node.fanout.bit_length() - 1
        pad = len(f"{node.fanout - 1:X}")
        idx = _hamt_index(key, depth, bits)
        if not node.bitfield >> idx & 1:
            return None
        pos = (node.bitfield & ((1 << idx) - 1)).bit_count()
        ln = node.links[pos]
        if len(ln.name) == pad:
            child = parse_node(ln.cid, get_block(ln.cid))
            if child.kind != "hamt":
                raise FormatError("UnixFS HAMT: slot link to a non-shard")
            node = child
            depth += 1
            continue
        if ln.name[pad:] == name:
            return Link(name, ln.cid, ln.tsize)
        return None


def hamt_entries(get_block: GetBlock, root: CID | Node) -> Iterator[Link]:
    """Every entry of a HAMT directory, as Links with the entry's own name (HAMT order).

    Iterative. Each entry must sit in the slot its name hashes to at every
    level of its path (IPFS HAMT rules), so a crafted shard cannot list a name
    twice or put one where lookups never find it; sub-shards must be
    non-empty and use the root's fanout.
    """
    node = root if isinstance(root, Node) else parse_node(root, get_block(root))
    if node.kind != "hamt":
        raise FormatError("not a HAMT directory")
    assert node.fanout is not None
    fanout = node.fanout
    bits = fanout.bit_length() - 1
    pad = len(f"{fanout - 1:X}")
    # Stack of (links still to read, slot path from the root to this shard).
    stack: list[tuple[Iterator[Link], tuple[int, ...]]] = [(iter(node.links), ())]
    while stack:
        links, path = stack[-1]
        ln = next(links, None)
        if ln is None:
            stack.pop()
            continue
        slot = int(ln.name[:pad], 16)
        if len(ln.name) == pad:
            if (len(path) + 2) * bits > 64:
                raise FormatError("UnixFS HAMT deeper than its 64-bit hash allows")
            child = parse_node(ln.cid, get_block(ln.cid))
            if child.kind != "hamt" or child.fanout != fanout:
                raise FormatError("UnixFS HAMT: slot link to something other than a shard of the same fanout")
            if not child.links:
                raise FormatError("UnixFS HAMT: empty sub-shard")
            stack.append((iter(child.links), (*path, slot)))
            continue
        name = ln.name[pad:]
        key = hamt_hash(name.encode("utf-8"))
        for depth, want in enumerate((*path, slot)):
            if _hamt_index(key, depth, bits) != want:
                raise FormatError(f"UnixFS HAMT: entry {name!r} is not in the slot its name hashes to")
        yield Link(name, ln.cid, ln.tsize)


def directory_entries(get_block: GetBlock, root: CID | Node) -> Iterator[Link]:
    """Entries of a plain or HAMT directory (plain: sorted order; HAMT: hash order)."""
    node = root if isinstance(root, Node) else parse_node(root, get_block(root))
    if node.kind == "dir":
        yield from node.links
    elif node.kind == "hamt":
        yield from hamt_entries(get_block, node)
    else:
        raise FormatError(f"not a directory: {node.kind}")


def lookup(get_block: GetBlock, root: CID | Node, name: str) -> Link | None:
    """Entry ``name`` of a plain or HAMT directory, or None."""
    node = root if isinstance(root, Node) else parse_node(root, get_block(root))
    if node.kind == "dir":
        for ln in node.links:
            if ln.name == name:
                return ln
        return None
    if node.kind == "hamt":
        return hamt_lookup(get_block, node, name)
    raise FormatError(f"not a directory: {node.kind}")
