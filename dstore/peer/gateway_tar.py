"""``?format=tar``: a UnixFS file or folder as a TAR stream (IPFS path gateway), made while it is sent.

The archive's top entry is named by the requested CID; folders are walked
depth first, entries in name order. Headers are PAX (UTF-8 names of any
length), written one entry at a time: memory holds one chunk run, never the
archive. The tree is walked once before anything is sent (nodes only, no file
bytes), so a tree that does not read or verify — a name that would climb out
of the root is refused when its node is decoded — is an error status, not a
truncated archive; file bytes are then verified as they are read, like every
gateway answer. Work is bounded like every walk: by what the dataset declares
(:class:`dstore.peer.gateway_car` budgets).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator

from dstore.errors import FormatError
from dstore.format import unixfs
from dstore.format.cid import CID
from dstore.peer import gateway_files as files
from dstore.peer.blockindex import GatewayReader
from dstore.peer.gateway_car import tree_budget

__all__ = ["check_tree", "tar_pieces"]

BLOCK = 512
#: File bytes are handed to the socket in pieces of at most this size.
PIECE_BYTES = 1 << 20

Entry = tuple[str, CID, unixfs.Node]


def _walk(reader: GatewayReader, name: str, cid: CID, node: unixfs.Node) -> Iterator[Entry]:
    """(archive path, CID, node) of the tree under ``cid``, parents first, names sorted; no recursion."""
    budget = tree_budget(reader)
    budget.take(node)
    stack: list[Entry] = [(name, cid, node)]
    while stack:
        path, c, n = stack.pop()
        yield path, c, n
        if not n.is_dir:
            continue
        if path.count("/") >= unixfs.MAX_TREE_DEPTH:
            raise FormatError(f"folders nest deeper than {unixfs.MAX_TREE_DEPTH} levels")
        children = []
        for child_name, child_cid in reader.entries(n):
            child = reader.node(child_cid)
            budget.take(child)
            children.append((f"{path}/{child_name}", child_cid, child))
        stack.extend(reversed(children))


def check_tree(reader: GatewayReader, name: str, cid: CID, node: unixfs.Node) -> None:
    """Walk the whole tree (nodes only) before a byte is sent: a bad tree becomes an error status."""
    for _ in _walk(reader, name, cid, node):
        pass


def _header(path: str, node: unixfs.Node) -> bytes:
    info = tarfile.TarInfo(path)
    info.mtime = 0  # UnixFS stores none (dstore datasets never do)
    if node.is_dir:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    elif node.kind == "symlink":
        info.type, info.mode = tarfile.SYMTYPE, 0o777
        info.linkname = node.data.decode("utf-8", "replace")
    else:
        info.type, info.mode, info.size = tarfile.REGTYPE, 0o644, node.filesize or 0
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8")


def tar_pieces(reader: GatewayReader, name: str, cid: CID, node: unixfs.Node) -> Iterator[bytes]:
    """The TAR stream of the tree under ``cid``, its top entry called ``name``."""
    for path, c, n in _walk(reader, name, cid, node):
        yield _header(path, n)
        if n.is_dir or n.kind == "symlink":
            continue
        size = n.filesize or 0
        sent = 0
        pending: list[bytes] = []
        pending_bytes = 0
        for piece in files.iter_range(reader, c, n, 0, size - 1) if size else ():
            pending.append(bytes(piece))  # a view of a run is valid only until the next runs are read
            pending_bytes += len(piece)
            if pending_bytes >= PIECE_BYTES:
                yield b"".join(pending)
                sent += pending_bytes
                pending, pending_bytes = [], 0
        sent += pending_bytes
        if sent != size:
            raise FormatError(f"a file of {size} bytes gave {sent}")
        yield b"".join(pending) + bytes(-size % BLOCK)
    yield bytes(2 * BLOCK)  # the end-of-archive marker
