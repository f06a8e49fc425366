"""Datasets on peers: the metadata pack and the pointer (docs/format.md, "Datasets on peers").

A dataset's metadata blocks (UnixFS nodes, locator blocks, placement hints,
manifest) travel as one CAR v1 whose root is the manifest. That CAR is
erasure-coded like any pack, so metadata survives the same peer losses as
data. The pointer — the only mutable record — says where that metadata pack
is: ``{"seq": int, "locator": CID, "metadata": pack record, "hints": [peer ID
or null …], "placement": CID or null}``; ``seq`` orders the pointers of one
dataset (repair publishes a higher one), so readers try the newest first; the placement block (inside the metadata pack)
says which peer took each shard of each data pack.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from dstore.errors import FormatError
from dstore.format import cbor
from dstore.format.car import encode_car, read_car
from dstore.format.cid import CID, cid_to_text, parse_cid
from dstore.format.pack import PackRecord
from dstore.limits import MAX_POINTER_BYTES


def metadata_car(dataset: CID, blocks: list[tuple[CID | bytes, bytes]]) -> bytes:
    """The metadata pack's bytes: a CAR v1 rooted at the manifest."""
    return encode_car([dataset], blocks)


def read_metadata_car(data: bytes, dataset: CID) -> dict[bytes, bytes]:
    """Blocks of a metadata pack by CID bytes, each checked against its CID.

    FormatError if it is not a CAR rooted at ``dataset`` or lacks the manifest.
    """
    roots, blocks = read_car(data, verify=True)
    if [r.to_bytes() for r in roots] != [dataset.to_bytes()]:
        raise FormatError("metadata pack is not rooted at the dataset ID")
    out = {cid.to_bytes(): block for cid, block in blocks}
    if dataset.to_bytes() not in out:
        raise FormatError("metadata pack lacks the manifest")
    return out


@dataclass(frozen=True)
class Pointer:
    """Where a dataset's metadata is: the locator root and the metadata pack."""

    locator: CID
    metadata: PackRecord
    hints: tuple[str | None, ...] = ()  # peer ID holding each metadata shard, if known
    placement: CID | None = None  # the placement block, inside the metadata pack
    # Higher is newer: milliseconds since the epoch when published (repair: past the pointer it replaces).
    seq: int = field(default_factory=lambda: next_seq())

    def to_json(self) -> dict[str, Any]:
        m = self.metadata
        return {
            "seq": self.seq,
            "locator": cid_to_text(self.locator),
            "metadata": {
                "k": m.k,
                "m": m.m,
                "size": m.size,
                "shard_size": m.shard_size,
                "shards": [cid_to_text(s) for s in m.shards],
            },
            "hints": list(self.hints),
            "placement": cid_to_text(self.placement) if self.placement else None,
        }

    @classmethod
    def from_json(cls, obj: Any) -> Pointer:
        """Validate an untrusted pointer (from a peer); FormatError on any fault."""
        try:
            if len(json.dumps(obj)) > MAX_POINTER_BYTES:
                raise FormatError("pointer too large")
            meta = obj["metadata"]
            record = PackRecord(
                k=meta["k"],
                m=meta["m"],
                size=meta["size"],
                shard_size=meta["shard_size"],
                shards=tuple(parse_cid(s) for s in meta["shards"]),
            )
            record.validate()
            placement = parse_cid(obj["placement"]) if obj.get("placement") else None
            seq = obj["seq"]
            if type(seq) is not int or not 0 <= seq < 1 << 63:
                raise FormatError("pointer seq must be a non-negative 63-bit integer")
            hints_raw = obj.get("hints", [])
            if not isinstance(hints_raw, list) or len(hints_raw) > record.k + record.m:
                raise FormatError("pointer hints must be a list of at most k + m peer IDs")
            hints = tuple(h if isinstance(h, str) and len(h) <= 128 else None for h in hints_raw)
            return cls(parse_cid(obj["locator"]), record, hints, placement, seq)
        except FormatError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"malformed dataset pointer: {e}") from e


def next_seq(previous: int | None = None) -> int:
    """A pointer sequence number for now: the clock in milliseconds, but always past ``previous``."""
    now = time.time_ns() // 1_000_000
    return now if previous is None else max(now, previous + 1)


def encode_placement(packs: dict[bytes, list[str | None]], hash_name: str = "blake3") -> tuple[CID, bytes]:
    """The placement block: ``{"peers": [peer ID …], "packs": [[pack ID, [peer index or null …]] …]}``."""
    peers: dict[str, int] = {}
    rows = []
    for pack_id, holders in sorted(packs.items()):
        rows.append(
            [CID.from_bytes(pack_id), [None if h is None else peers.setdefault(h, len(peers)) for h in holders]]
        )
    block = cbor.encode({"peers": list(peers), "packs": rows})
    return cbor.block_cid(block, hash_name), block


def decode_placement(block: bytes) -> dict[bytes, list[str | None]]:
    """Pack ID bytes -> peer ID holding each shard (None where unknown); FormatError on any fault."""
    try:
        obj = cbor.decode(block)
        peers = [str(p) for p in obj["peers"]]
        return {row[0].to_bytes(): [None if i is None else peers[i] for i in row[1]] for row in obj["packs"]}
    except FormatError:
        raise
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise FormatError(f"malformed placement block: {e}") from e
