"""The store's LMDB index.

Tables carry a version in their name, so a change of layout is a migration:

- ``blocks-0``: CID bytes -> block bytes (UnixFS nodes, manifests, locator
  pages, pack records: the small metadata blocks).
- ``chunks-0``: chunk CID bytes -> where the chunk is stored (``ChunkLoc``);
  this is what makes dedup work across datasets.
- ``shards-0``: shard CID bytes -> pack ID bytes + shard index.
- ``datasets-0``: dataset ID bytes -> locator root CID bytes.
- ``placed-0``: pack ID bytes -> which storage peer took each shard (DAG-CBOR
  list of peer IDs or null), for packs that live on peers rather than in
  ``shards/``. Dedup only reuses a chunk whose pack lives where the new
  dataset goes.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import lmdb

from dstore.errors import StoreError
from dstore.format import cbor
from dstore.store.mapping import release_ranges, shared_file_ranges

# Virtual size only: LMDB grows its file as needed on Linux.
MAP_SIZE_BYTES = 1 << 40
# Index pages a process may touch (lookups and writes, one page each, and the kernel maps up to 15
# neighbours of a page on each fault) before it drops them from its resident set again: about 512 x
# 64 KiB = 32 MiB of RSS at most, whatever the size of the index (dstore.store.mapping).
RELEASE_TOUCHES = 512
_LOC = struct.Struct("<QIIB")
_SHARD = struct.Struct("<H")
FSCK_HINT = "run `dstore fsck --rebuild`"
# LMDB 0.9 meta pages (pages 0 and 1): a 16-byte page header, then magic,
# version, address, map size, two 48-byte database records (the first one's
# pad holds the page size), the last used page number and the transaction ID.
_LMDB_MAGIC = 0xBEEFC0DE
_META = struct.Struct("<II8x8xI44x48xQQ")
_META_OFFSET = 16


def check_data_file(data_mdb: Path) -> None:
    """StoreError unless ``data.mdb`` is as long as its newest meta page says.

    LMDB maps the file; reading a page past a truncated end kills the process
    with SIGBUS, so the length is checked before LMDB ever opens it.
    """
    try:
        with open(data_mdb, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            head = f.read(2 * 65536)
    except FileNotFoundError:
        return
    except OSError as e:
        raise StoreError(f"cannot read the store index {data_mdb}: {e.strerror or e}") from e
    if size == 0:
        return  # LMDB starts an empty file afresh; Store refuses that when shards exist
    metas = [_META.unpack_from(head, _META_OFFSET)] if len(head) >= _META_OFFSET + _META.size else []
    if metas:
        page_bytes = metas[0][2]
        if 512 <= page_bytes <= 65536 and len(head) >= page_bytes + _META_OFFSET + _META.size:
            metas.append(_META.unpack_from(head, page_bytes + _META_OFFSET))
    best: tuple[int, int] | None = None  # (txn ID, bytes the file needs)
    for magic, _version, psize, last_pg, txnid in metas:
        if magic == _LMDB_MAGIC and 512 <= psize <= 65536 and (best is None or txnid > best[0]):
            best = (txnid, (last_pg + 1) * psize)
    if best is None:
        raise StoreError(f"the store index {data_mdb} is not an LMDB file; {FSCK_HINT}")
    if size < best[1]:
        raise StoreError(f"the store index {data_mdb} is truncated ({size} of {best[1]} bytes); {FSCK_HINT}")


@contextmanager
def _reading() -> Iterator[None]:
    """LMDB errors while reading mean a damaged index: one line naming fsck."""
    try:
        yield
    except lmdb.Error as e:
        raise StoreError(f"the store index is damaged ({e}); {FSCK_HINT}") from e


class ChunkLoc(NamedTuple):
    """Where one chunk's stored bytes are: inside pack ``pack_id`` (CID bytes)."""

    pack_id: bytes
    offset: int
    stored_len: int
    size: int
    codec: int

    def encode(self) -> bytes:
        return _LOC.pack(self.offset, self.stored_len, self.size, self.codec) + self.pack_id

    @classmethod
    def decode(cls, raw: bytes) -> ChunkLoc:
        offset, stored_len, size, codec = _LOC.unpack_from(raw)
        return cls(bytes(raw[_LOC.size :]), offset, stored_len, size, codec)


# LMDB refuses to open one environment twice in a process, so every Index of one folder in this
# process (a Dataset, an fsspec filesystem and a CLI command, say) shares one environment, closed with
# the last of them. Keyed by pid too: a forked child must open its own, never use its parent's.
_ENVS: dict[tuple[int, str], tuple[lmdb.Environment, int]] = {}
_ENVS_LOCK = threading.Lock()


def _open_env(path: Path, readonly: bool) -> lmdb.Environment:
    key = (os.getpid(), os.path.realpath(path))
    with _ENVS_LOCK:
        held = _ENVS.get(key)
        if held is not None:
            _ENVS[key] = (held[0], held[1] + 1)
            return held[0]
        env = lmdb.open(str(path), max_dbs=8, map_size=MAP_SIZE_BYTES, readonly=readonly, lock=True)
        _ENVS[key] = (env, 1)
        return env


def _close_env(path: Path, env: lmdb.Environment) -> None:
    key = (os.getpid(), os.path.realpath(path))
    with _ENVS_LOCK:
        held = _ENVS.get(key)
        if held is None or held[0] is not env:
            env.close()  # not shared (opened before a rename of the folder, or in another process)
        elif held[1] > 1:
            _ENVS[key] = (env, held[1] - 1)
        else:
            del _ENVS[key]
            env.close()


class Index:
    """LMDB environment with the four tables above."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self._closed = False
        check_data_file(path / "data.mdb")
        try:
            path.mkdir(parents=True, exist_ok=True)
            self.env = _open_env(path, readonly)
            self.blocks = self.env.open_db(b"blocks-0")
            self.chunks = self.env.open_db(b"chunks-0")
            self.shards = self.env.open_db(b"shards-0")
            self.datasets = self.env.open_db(b"datasets-0")
            self.placed = self.env.open_db(b"placed-0")
        except lmdb.Error as e:
            raise StoreError(f"cannot open the store index at {path}: {e}; {FSCK_HINT}") from e
        # The map's address range, found once: it stays mapped while this Index holds the environment.
        self._map = (os.getpid(), shared_file_ranges(path / "data.mdb"))
        self._touches = 0

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _close_env(self.path, self.env)

    def _touched(self, pages: int) -> None:
        self._touches += pages
        if self._touches >= RELEASE_TOUCHES:
            self.release_pages()

    def release_pages(self) -> None:
        """Drop the index pages this process has touched from its RSS (they stay in the page cache)."""
        self._touches = 0
        pid, ranges = self._map
        if pid == os.getpid() and not self._closed:  # a forked child's copy of the map is not its own
            release_ranges(ranges)

    # -- reads --------------------------------------------------------------

    def get_block(self, cid: bytes) -> bytes | None:
        with _reading(), self.env.begin(db=self.blocks, buffers=False) as txn:
            return txn.get(cid)

    def lookup_chunks(self, cids: Sequence[bytes]) -> list[ChunkLoc | None]:
        """Locations of many chunks in one read transaction (None = not stored)."""
        out: list[ChunkLoc | None] = []
        with _reading(), self.env.begin(db=self.chunks) as txn:
            for cid in cids:
                raw = txn.get(cid)
                out.append(ChunkLoc.decode(raw) if raw is not None else None)
                self._touched(1)
        return out

    def placement(self, pack_id: bytes) -> list[str | None] | None:
        """Peer ID holding each shard of a pack placed on peers; None for a pack of local shards."""
        with _reading(), self.env.begin(db=self.placed) as txn:
            raw = txn.get(pack_id)
        return None if raw is None else cbor.decode(raw)

    def dataset_locator(self, dataset: bytes) -> bytes | None:
        with _reading(), self.env.begin(db=self.datasets) as txn:
            return txn.get(dataset)

    def shard_owner(self, shard: bytes) -> tuple[bytes, int] | None:
        with _reading(), self.env.begin(db=self.shards) as txn:
            raw = txn.get(shard)
        if raw is None:
            return None
        return bytes(raw[_SHARD.size :]), _SHARD.unpack_from(raw)[0]

    def datasets_list(self) -> list[tuple[bytes, bytes]]:
        with _reading(), self.env.begin(db=self.datasets) as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor()]

    def counts(self) -> dict[str, int]:
        with _reading(), self.env.begin() as txn:
            return {
                "blocks": txn.stat(self.blocks)["entries"],
                "chunks": txn.stat(self.chunks)["entries"],
                "shards": txn.stat(self.shards)["entries"],
                "datasets": txn.stat(self.datasets)["entries"],
            }

    # -- writes (each call is one transaction: all or nothing) ---------------

    def commit_packs(
        self,
        packs: Iterable[tuple[bytes, bytes, Sequence[bytes], Sequence[str | None] | None]],
        chunks: Iterable[tuple[bytes, ChunkLoc]],
    ) -> None:
        """Record packs (ID, record block, shard CIDs, peer placement or None) and their chunks.

        Call only once the packs' shards are durable where they went.
        """
        try:
            with self.env.begin(write=True) as txn:
                for pack_id, record, shard_cids, placement in packs:
                    txn.put(pack_id, record, db=self.blocks)
                    for i, shard in enumerate(shard_cids):
                        txn.put(shard, _SHARD.pack(i) + pack_id, db=self.shards)
                    if placement is None:
                        txn.delete(pack_id, db=self.placed)
                    else:
                        txn.put(pack_id, cbor.encode(list(placement)), db=self.placed)
                for cid, loc in chunks:
                    txn.put(cid, loc.encode(), db=self.chunks)
                    self._touched(1)  # clean map pages: safe to drop inside a write transaction
        except lmdb.Error as e:
            raise StoreError(f"cannot write the store index: {e}") from e

    def commit_dataset(self, blocks: Iterable[tuple[bytes, bytes]], dataset: bytes, locator: bytes) -> int:
        """Write metadata blocks and, last in the same transaction, the dataset pointer.

        Returns the bytes of the blocks that were not already stored.
        """
        new_bytes = 0
        try:
            with self.env.begin(write=True) as txn:
                for cid, block in blocks:
                    if txn.put(cid, block, db=self.blocks, overwrite=False):
                        new_bytes += len(block)
                    self._touched(1)
                txn.put(dataset, locator, db=self.datasets)
        except lmdb.Error as e:
            raise StoreError(f"cannot write the store index: {e}") from e
        return new_bytes

    def put_blocks(self, blocks: Iterable[tuple[bytes, bytes]]) -> int:
        """Write metadata blocks ahead of :meth:`commit_dataset` (one transaction); returns the new bytes."""
        new_bytes = 0
        try:
            with self.env.begin(write=True, db=self.blocks) as txn:
                for cid, block in blocks:
                    if txn.put(cid, block, overwrite=False):
                        new_bytes += len(block)
                    self._touched(1)
        except lmdb.Error as e:
            raise StoreError(f"cannot write the store index: {e}") from e
        return new_bytes

    def heal_blocks(self, blocks: Iterable[tuple[bytes, bytes]]) -> None:
        """Overwrite blocks with copies already checked against their CIDs (from a metadata pack)."""
        try:
            with self.env.begin(write=True, db=self.blocks) as txn:
                for cid, block in blocks:
                    txn.put(cid, block)
        except lmdb.Error as e:
            raise StoreError(f"cannot write the store index: {e}") from e

    def forget_dataset(self, dataset: bytes) -> bool:
        """Drop a dataset's entry (its blocks stay until gc); whether it was there."""
        try:
            with self.env.begin(write=True, db=self.datasets) as txn:
                return bool(txn.delete(dataset))
        except lmdb.Error as e:
            raise StoreError(f"cannot write the store index: {e}") from e

    # -- whole tables (gc and fsck) ------------------------------------------

    def block_keys(self) -> list[bytes]:
        with _reading(), self.env.begin(db=self.blocks) as txn:
            return [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]

    def chunk_packs(self) -> Iterator[tuple[bytes, bytes]]:
        """(chunk CID, pack ID) of every chunk entry, in one read transaction."""
        with _reading(), self.env.begin(db=self.chunks) as txn:
            for k, v in txn.cursor():
                yield bytes(k), bytes(v[_LOC.size :])

    def shard_packs(self) -> list[tuple[bytes, bytes]]:
        """(shard CID, pack ID) of every shard entry."""
        with _reading(), self.env.begin(db=self.shards) as txn:
            return [(bytes(k), bytes(v[_SHARD.size :])) for k, v in txn.cursor()]

    def placed_packs(self) -> list[bytes]:
        with _reading(), self.env.begin(db=self.placed) as txn:
            return [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]

    def placements(self) -> dict[bytes, list[str | None]]:
        with _reading(), self.env.begin(db=self.placed) as txn:
            return {bytes(k): cbor.decode(v) for k, v in txn.cursor()}

    def sweep(
        self, blocks: Iterable[bytes], chunks: Iterable[bytes], shards: Iterable[bytes], placed: Iterable[bytes]
    ) -> None:
        """Delete entries no dataset needs, in one transaction (gc: before their files go)."""
        try:
            with self.env.begin(write=True) as txn:
                for db, keys in ((self.blocks, blocks), (self.chunks, chunks), (self.shards, shards)):
                    for key in keys:
                        txn.delete(key, db=db)
                for key in placed:
                    txn.delete(key, db=self.placed)
        except lmdb.Error as e:
            raise StoreError(f"cannot write the store index: {e}") from e
