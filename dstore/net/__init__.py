"""The client side of placement and fetching over storage peers (DESIGN.md's ``dstore/net`` layer).

Knows CIDs and pack records, nothing of files: :class:`PeerSet` (async) and
:class:`SyncPeerSet` (blocking) place shards and blocks on peers by rendezvous
hashing and fetch them back verified and hedged; :func:`peers_from_env` and
:func:`token_from_env` read the configuration.
"""

from __future__ import annotations

from dstore.net.client import MAX_BLOCK_BYTES, PeerSet, verify_block
from dstore.net.config import normalize_url, peers_from_env, token_from_env
from dstore.net.peers import Peer, hrw_rank, hrw_weight
from dstore.net.sync import SyncPeerSet

__all__ = [
    "MAX_BLOCK_BYTES",
    "Peer",
    "PeerSet",
    "SyncPeerSet",
    "hrw_rank",
    "hrw_weight",
    "normalize_url",
    "peers_from_env",
    "token_from_env",
    "verify_block",
]
