"""A dataset's metadata from storage peers: pointers → metadata packs → verified blocks on disk.

Peers are untrusted (docs/format.md, "Datasets on peers"). A pointer is only a
hint: every distinct pointer the ranked peers hold is tried, newest (highest
``seq``) first, until one leads to a metadata pack whose every block verifies
and which holds the manifest and the locator of this dataset; a read fails
only when none does. A pointer's sizes are checked against each other and
against :data:`MAX_METADATA_PACK_BYTES` before anything is fetched, and the
pack is spooled to an unnamed temporary file and parsed block by block, so a
peer's claim never decides how much a reader allocates.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, BinaryIO, cast

from dstore import _native
from dstore.errors import DstoreError, FormatError, IntegrityError, NotFound
from dstore.format.car import CarReader
from dstore.format.cid import CID, cid_to_text
from dstore.format.locator import Locator
from dstore.format.pointer import Pointer, decode_placement
from dstore.limits import MAX_METADATA_PACK_BYTES, MAX_METADATA_PACKS
from dstore.net.protocol import PeerClient

__all__ = ["BlockTable", "RemoteMetadata", "check_pointer", "load_from_peers"]

# Blocks inserted per SQLite transaction while a metadata pack is parsed.
_INSERT_BYTES = 4 << 20


class BlockTable:
    """Verified metadata blocks by CID bytes, in a temporary SQLite file: memory stays flat in their number.

    A dataset's metadata from peers can be hundreds of megabytes; only
    SQLite's page cache of it is in memory. Safe to share between threads.
    """

    def __init__(self, path: str | None = None) -> None:
        """A new, empty table in a temporary folder of its own; or, with ``path``, a read-only view of the
        table in that file (another's, e.g. a forked parent's: the view never writes or removes it)."""
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        if path is None:
            self._dir = tempfile.TemporaryDirectory(prefix="dstore-metadata-")
            self.path = os.path.join(self._dir.name, "blocks.db")
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=OFF")
            self._db.execute("PRAGMA synchronous=OFF")
            self._db.execute("CREATE TABLE blocks (cid BLOB PRIMARY KEY, block BLOB NOT NULL) WITHOUT ROWID")
        else:
            self.path = path
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            self._db.execute("SELECT 1 FROM blocks LIMIT 1").fetchall()  # open now: the file may go later
        self._lock = threading.Lock()

    def view(self) -> BlockTable:
        """A read-only table over the same file, with a connection of its own (one made in this process)."""
        return BlockTable(self.path)

    def put_many(self, blocks: Iterable[tuple[bytes, bytes]]) -> None:
        with self._lock, self._db:
            self._db.executemany("INSERT OR IGNORE INTO blocks VALUES (?, ?)", blocks)

    def get(self, cid: bytes) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT block FROM blocks WHERE cid = ?", (cid,)).fetchone()
        return None if row is None else bytes(row[0])

    def __contains__(self, cid: bytes) -> bool:
        return self.get(cid) is not None

    def close(self) -> None:
        with self._lock:
            self._db.close()
        if self._dir is not None:
            self._dir.cleanup()


@dataclass
class RemoteMetadata:
    """What verified metadata packs gave: the locator root, every block by CID bytes, placement hints."""

    pointer: Pointer
    locator: CID
    blocks: BlockTable
    hints: dict[bytes, list[str | None]]

    def view(self) -> RemoteMetadata:
        """The same metadata over a read-only view of its blocks (for a forked child: no second fetch)."""
        return RemoteMetadata(self.pointer, self.locator, self.blocks.view(), self.hints)


def check_pointer(pointer: Pointer) -> None:
    """FormatError unless every metadata pack the pointer lists is within the documented bounds (before any fetch)."""
    packs = pointer.metadata_packs
    if len(packs) > MAX_METADATA_PACKS:
        raise FormatError(f"dataset pointer lists {len(packs)} metadata packs, over the limit of {MAX_METADATA_PACKS}")
    for record, hints in packs:
        if record.size == 0:
            raise FormatError("dataset pointer names an empty metadata pack")
        if record.size > MAX_METADATA_PACK_BYTES:
            raise FormatError(
                f"dataset pointer claims a metadata pack of {record.size} bytes, over the limit of "
                f"{MAX_METADATA_PACK_BYTES} (docs/format.md)"
            )
        if len(hints) > record.k + record.m:
            raise FormatError("dataset pointer has more hints than metadata shards")


def load_from_peers(peers: PeerClient, dataset: CID) -> RemoteMetadata:
    """The dataset's metadata from the first pointer (newest first) that leads to metadata that verifies.

    NotFound when no peer has a pointer; otherwise, when every pointer fails,
    the error of the newest one, with what went wrong with each.
    """
    found = peers.get_pointers(dataset, validate=Pointer.from_json)
    if not found:
        raise NotFound(f"no storage peer knows dataset {cid_to_text(dataset)}")
    failures: list[DstoreError] = []
    for obj in found:
        try:
            pointer = Pointer.from_json(obj)
            check_pointer(pointer)
            return _load(peers, dataset, pointer)
        except DstoreError as e:
            failures.append(e)
    first = failures[0]
    if len(failures) == 1:
        raise first
    detail = "; ".join(f"pointer {i + 1}: {e}" for i, e in enumerate(failures))
    raise type(first)(
        f"dataset {cid_to_text(dataset)}: none of the {len(failures)} pointers the peers gave led to "
        f"metadata that verifies — {detail}"
    ) from first


def _load(peers: PeerClient, dataset: CID, pointer: Pointer) -> RemoteMetadata:
    """Every metadata pack in turn (the manifest's first), spooled to disk and parsed block by block."""
    blocks = BlockTable()
    try:
        for i, (record, hints) in enumerate(pointer.metadata_packs):
            shards = peers.fetch_pack(record, dataset.to_bytes(), list(hints) or None)
            with tempfile.TemporaryFile(prefix="dstore-metadata-") as spool:
                _spool_data_region(spool, shards, record.k, record.m, record.shard_size, record.size)
                del shards  # the spool holds the pack now: memory is one block at a time from here
                spool.seek(0)
                _read_blocks(spool, dataset, blocks, first=i == 0)
        if pointer.locator.to_bytes() not in blocks:
            raise FormatError("the metadata packs lack the locator their pointer names")
        locator = Locator(lambda c: _block_of(blocks, c), pointer.locator)
        if locator.dataset != dataset:
            raise IntegrityError(f"the locator found for {cid_to_text(dataset)} belongs to another dataset")
        hints_by_pack: dict[bytes, list[str | None]] = {}
        if pointer.placement is not None:
            placement = blocks.get(pointer.placement.to_bytes())
            if placement is None:
                raise FormatError("the metadata packs lack the placement block their pointer names")
            hints_by_pack = decode_placement(placement)
    except BaseException:
        blocks.close()
        raise
    return RemoteMetadata(pointer, pointer.locator, blocks, hints_by_pack)


def _block_of(blocks: BlockTable, cid: CID) -> bytes:
    block = blocks.get(cid.to_bytes())
    if block is None:
        raise FormatError(f"the metadata packs lack block {cid_to_text(cid)}")
    return block


def _spool_data_region(
    spool: IO[bytes], shards: list[bytes | bytearray | None], k: int, m: int, shard_size: int, size: int
) -> None:
    """Write the first ``size`` bytes of the pack's data region, rebuilt from parity where shards are missing."""
    if any(s is not None and len(s) != shard_size for s in shards):
        raise IntegrityError("a metadata shard has the wrong length for its pack")
    data = shards[:k]
    if any(s is None for s in data):
        data = list(_native.reconstruct(shards, k, m))
    left = size
    for part in data:
        assert part is not None
        n = min(left, shard_size)
        spool.write(memoryview(part)[:n])
        left -= n
        if not left:
            break


def _read_blocks(spool: IO[bytes], dataset: CID, blocks: BlockTable, *, first: bool) -> None:
    """Every block of one metadata CAR into ``blocks``, each checked against its CID.

    FormatError unless rooted at the dataset, or if it is the ``first`` pack and lacks the manifest.
    """
    reader = CarReader(cast(BinaryIO, spool), verify=True)
    if [r.to_bytes() for r in reader.roots] != [dataset.to_bytes()]:
        raise FormatError("metadata pack is not rooted at the dataset ID")
    manifest = dataset.to_bytes()
    has_manifest = False
    batch: list[tuple[bytes, bytes]] = []
    batch_bytes = 0
    for cid, block in reader:
        key = cid.to_bytes()
        has_manifest = has_manifest or key == manifest
        batch.append((key, block))
        batch_bytes += len(block)
        if batch_bytes >= _INSERT_BYTES:
            blocks.put_many(batch)
            batch, batch_bytes = [], 0
    blocks.put_many(batch)
    if first and not has_manifest:
        raise FormatError("metadata pack lacks the manifest")
