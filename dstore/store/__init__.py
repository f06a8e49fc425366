"""The embedded local store: an LMDB index plus one file per shard under ``$DSTORE_HOME``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dstore.errors import DstoreError, StoreError
from dstore.format.cid import CID, HASH_NAMES, cid_to_text, hash_digest
from dstore.store.index import FSCK_HINT, ChunkLoc, Index
from dstore.store.locks import GcLock
from dstore.store.metadata import (
    METADATA_DIR,
    pointer_datasets,
    read_metadata_pack,
    read_pointer,
)
from dstore.store.shards import ShardFiles
from dstore.store.swap import INDEX_DIR, finish_swap

__all__ = ["ChunkLoc", "Store", "default_home"]


def default_home() -> Path:
    """``$DSTORE_HOME``, else ``$XDG_DATA_HOME/dstore``, else ``~/.local/share/dstore``."""
    if env := os.environ.get("DSTORE_HOME"):
        return Path(env)
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "dstore"


class Store:
    """A local store: ``index-0/`` (LMDB), ``shards/``, ``metadata/``, ``pointers/``, ``tmp/`` under one home folder."""

    def __init__(self, home: Path | str | None = None) -> None:
        self.home = Path(home) if home is not None else default_home()
        finish_swap(self.home)
        self.shards = ShardFiles(self.home)
        self.metadata_shards = ShardFiles(self.home, METADATA_DIR)
        data_mdb = self.home / INDEX_DIR / "data.mdb"
        if not _nonempty(data_mdb) and (
            _any_shard(self.shards) or _any_shard(self.metadata_shards) or pointer_datasets(self.home)
        ):
            raise StoreError(f"the store index {data_mdb} is missing but {self.home} holds shards; {FSCK_HINT}")
        self.index = Index(self.home / INDEX_DIR)
        self.shards.clean_tmp()
        self.lock = GcLock(self.home)
        self._recovered: set[bytes] = set()  # datasets whose metadata was taken back from their pack

    def get_block(self, cid: bytes) -> bytes | None:
        """A metadata block checked against its CID; a damaged one is taken back from its metadata pack.

        StoreError naming fsck when a block is damaged and no metadata pack holds a good copy.
        """
        data = self.index.get_block(cid)
        if data is None:
            return None
        parsed = CID.from_bytes(cid)
        name = HASH_NAMES.get(parsed.hash.code)
        if name is None or hash_digest(data, name) == parsed.hash.digest:
            return data  # an unknown hash is the caller's to report
        good = self._recover(cid)
        if good is None:
            raise StoreError(f"block {cid_to_text(parsed)} in the store index does not match its ID; {FSCK_HINT}")
        return good

    def _recover(self, cid: bytes) -> bytes | None:
        """Rewrite, from their metadata packs, the blocks of every dataset that holds ``cid``."""
        for dataset in pointer_datasets(self.home):
            key = dataset.to_bytes()
            if key in self._recovered:
                continue
            pointer = read_pointer(self.home, dataset)
            if pointer is None:
                continue
            try:
                blocks = read_metadata_pack(self.metadata_shards, dataset, pointer)
            except DstoreError:
                continue
            if cid in blocks:
                self._recovered.add(key)
                self.index.heal_blocks(blocks.items())
                return blocks[cid]
        return None

    def lock_for_add(self) -> None:
        """Hold the gc lock shared until :meth:`close` (gc never runs in the middle of an add)."""
        self.lock.shared()

    @contextmanager
    def adding(self) -> Iterator[None]:
        """The gc lock held shared for a block of writes."""
        self.lock.shared()
        try:
            yield
        finally:
            self.lock.release()

    def close(self) -> None:
        self.lock.release()
        self.index.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _nonempty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def _any_shard(shards: ShardFiles) -> bool:
    return next(iter(shards), None) is not None
