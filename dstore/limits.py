"""Size limits, each defined once (docs/format.md, "Limits"): what a reader accepts from hostile bytes.

A claimed size is a hint to check against these, never a reason to allocate.
Every module that bounds a read or a write imports its limit from here.
"""

from __future__ import annotations

__all__ = [
    "MAX_BLOCK_BYTES",
    "MAX_CAR_HEADER_BYTES",
    "MAX_CHUNK_BYTES",
    "MAX_CID_BYTES",
    "MAX_ERROR_BODY_BYTES",
    "MAX_HEALTH_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_METADATA_PACKS",
    "MAX_META_VALUE_BYTES",
    "MAX_POINTER_BYTES",
    "MAX_SHARDS",
    "MAX_SHARD_BYTES",
    "PACK_UNIT_BYTES",
    "TYPICAL_BLOCK_BYTES",
]

KIB = 1024
MIB = 1024 * KIB

#: One metadata block (dag-pb UnixFS node, dag-cbor block, CAR entry): IPFS's own limit for a block on the
#: wire. dstore writes none above 1 MiB.
MAX_BLOCK_BYTES = 2 * MIB
#: A pack is closed before the next chunk would take it past ``k × PACK_UNIT_BYTES``.
PACK_UNIT_BYTES = 1 * MIB
#: The chunker's largest chunk (``ChunkParams.max`` may not exceed it).
MAX_CHUNK_BYTES = 16 * MIB
#: One shard, hence one ``PUT /shards`` body a peer takes: a pack unit plus one maximal chunk (17 MiB).
MAX_SHARD_BYTES = PACK_UNIT_BYTES + MAX_CHUNK_BYTES
#: Shards of one pack (k + m).
MAX_SHARDS = 256
#: A dataset pointer (``/datasets/{id}`` JSON), as sent and as read back.
MAX_POINTER_BYTES = 64 * KIB
#: One dataset's metadata pack (manifest, UnixFS nodes, locator, placement as a CAR), as written and as
#: read: a reader refuses a pointer claiming more before fetching anything (about 130 bytes per file).
MAX_METADATA_PACK_BYTES = 256 * MIB
#: Metadata packs one pointer may list (a big tree's metadata is written in packs of 16 MiB).
MAX_METADATA_PACKS = 64
#: A dataset manifest block.
MAX_MANIFEST_BYTES = 256 * KIB
#: One value of a manifest's ``meta`` map, UTF-8 (a description is prose, not a payload).
MAX_META_VALUE_BYTES = 64 * KIB
#: A CAR v1 header (a handful of root CIDs in practice).
MAX_CAR_HEADER_BYTES = 64 * KIB
#: A binary CID from outside: a CIDv1 with a 64-byte digest and multi-byte codec varints fits easily.
MAX_CID_BYTES = 128
#: A peer's ``/health`` answer.
MAX_HEALTH_BYTES = 64 * KIB
#: The part of a peer's JSON error answer read for the message.
MAX_ERROR_BODY_BYTES = 4 * KIB
#: Size assumed for a metadata block when guessing how long its fetch takes (hedging), not a bound.
TYPICAL_BLOCK_BYTES = 64 * KIB
