"""The client side of placement and fetching over storage peers (docs/architecture.md, ``dstore/net``).

Knows CIDs and pack records, nothing of files: :class:`PeerSet` (async) and
:class:`SyncPeerSet` (blocking; a :class:`PeerClient`) place shards and blocks
on peers by rendezvous hashing and fetch them back verified and hedged;
:func:`peers_from_env` and :func:`token_from_env` read the configuration.

Names are loaded on first use, so that importing :mod:`dstore.net.protocol`
(as ingest and fetch do, for the type) does not load aiohttp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dstore.limits import MAX_SHARD_BYTES
    from dstore.net.client import PeerSet
    from dstore.net.config import normalize_url, peers_from_env, token_from_env
    from dstore.net.peers import Peer, hrw_rank, hrw_weight
    from dstore.net.protocol import PeerClient
    from dstore.net.reads import verify_block
    from dstore.net.sync import SyncPeerSet

_HOME = {
    "MAX_SHARD_BYTES": "dstore.limits",
    "Peer": "dstore.net.peers",
    "PeerClient": "dstore.net.protocol",
    "PeerSet": "dstore.net.client",
    "SyncPeerSet": "dstore.net.sync",
    "hrw_rank": "dstore.net.peers",
    "hrw_weight": "dstore.net.peers",
    "normalize_url": "dstore.net.config",
    "peers_from_env": "dstore.net.config",
    "token_from_env": "dstore.net.config",
    "verify_block": "dstore.net.reads",
}

__all__ = [
    "MAX_SHARD_BYTES",
    "Peer",
    "PeerClient",
    "PeerSet",
    "SyncPeerSet",
    "hrw_rank",
    "hrw_weight",
    "normalize_url",
    "peers_from_env",
    "token_from_env",
    "verify_block",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'dstore.net' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
