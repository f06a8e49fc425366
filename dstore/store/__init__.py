"""The embedded local store: an LMDB index plus one file per shard under ``$DSTORE_HOME``."""

from __future__ import annotations

import os
from pathlib import Path

from dstore.store.index import ChunkLoc, Index
from dstore.store.shards import ShardFiles

__all__ = ["ChunkLoc", "Store", "default_home"]


def default_home() -> Path:
    """``$DSTORE_HOME``, else ``$XDG_DATA_HOME/dstore``, else ``~/.local/share/dstore``."""
    if env := os.environ.get("DSTORE_HOME"):
        return Path(env)
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "dstore"


class Store:
    """A local store: ``index-0/`` (LMDB), ``shards/`` and ``tmp/`` under one home folder."""

    def __init__(self, home: Path | str | None = None) -> None:
        self.home = Path(home) if home is not None else default_home()
        self.index = Index(self.home / "index-0")
        self.shards = ShardFiles(self.home)
        self.shards.clean_tmp()

    def get_block(self, cid: bytes) -> bytes | None:
        return self.index.get_block(cid)

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
