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

import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import lmdb

from dstore.errors import StoreError
from dstore.format import cbor

# Virtual size only: LMDB grows its file as needed on Linux.
MAP_SIZE_BYTES = 1 << 40
_LOC = struct.Struct("<QIIB")
_SHARD = struct.Struct("<H")


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


class Index:
    """LMDB environment with the four tables above."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
            self.env = lmdb.open(str(path), max_dbs=8, map_size=MAP_SIZE_BYTES, readonly=readonly, lock=True)
            self.blocks = self.env.open_db(b"blocks-0")
            self.chunks = self.env.open_db(b"chunks-0")
            self.shards = self.env.open_db(b"shards-0")
            self.datasets = self.env.open_db(b"datasets-0")
            self.placed = self.env.open_db(b"placed-0")
        except lmdb.Error as e:
            raise StoreError(f"cannot open the store index at {path}: {e}") from e

    def close(self) -> None:
        self.env.close()

    # -- reads --------------------------------------------------------------

    def get_block(self, cid: bytes) -> bytes | None:
        with self.env.begin(db=self.blocks, buffers=False) as txn:
            return txn.get(cid)

    def lookup_chunks(self, cids: Sequence[bytes]) -> list[ChunkLoc | None]:
        """Locations of many chunks in one read transaction (None = not stored)."""
        out: list[ChunkLoc | None] = []
        with self.env.begin(db=self.chunks) as txn:
            for cid in cids:
                raw = txn.get(cid)
                out.append(ChunkLoc.decode(raw) if raw is not None else None)
        return out

    def placement(self, pack_id: bytes) -> list[str | None] | None:
        """Peer ID holding each shard of a pack placed on peers; None for a pack of local shards."""
        with self.env.begin(db=self.placed) as txn:
            raw = txn.get(pack_id)
        return None if raw is None else cbor.decode(raw)

    def dataset_locator(self, dataset: bytes) -> bytes | None:
        with self.env.begin(db=self.datasets) as txn:
            return txn.get(dataset)

    def shard_owner(self, shard: bytes) -> tuple[bytes, int] | None:
        with self.env.begin(db=self.shards) as txn:
            raw = txn.get(shard)
        if raw is None:
            return None
        return bytes(raw[_SHARD.size :]), _SHARD.unpack_from(raw)[0]

    def datasets_list(self) -> list[tuple[bytes, bytes]]:
        with self.env.begin(db=self.datasets) as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor()]

    def counts(self) -> dict[str, int]:
        with self.env.begin() as txn:
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
                txn.put(dataset, locator, db=self.datasets)
        except lmdb.Error as e:
            raise StoreError(f"cannot write the store index: {e}") from e
        return new_bytes
