"""Datasets on peers: the metadata pack and the pointer (docs/format.md, "Datasets on peers").

A dataset's metadata blocks (UnixFS nodes, locator blocks, placement hints,
manifest) travel as CAR v1 files rooted at the manifest: one, or several of
bounded size for a big tree (the one holding the manifest first). Each CAR is
erasure-coded like any pack, so metadata survives the same peer losses as
data. The pointer — the only mutable record — says where those metadata packs
are: ``{"seq": int, "locator": CID, "metadata": pack record, "hints": [peer ID
or null …], "placement": CID or null, "more_metadata": [pack record with its
"hints" …] (only with several packs)}``; ``seq`` orders the pointers of one
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
from dstore.limits import MAX_METADATA_PACKS, MAX_POINTER_BYTES


def metadata_car(dataset: CID, blocks: list[tuple[CID | bytes, bytes]]) -> bytes:
    """The metadata pack's bytes: a CAR v1 rooted at the manifest."""
    return encode_car([dataset], blocks)


def read_metadata_car(data: bytes, dataset: CID, *, first: bool = True) -> dict[bytes, bytes]:
    """Blocks of a metadata pack by CID bytes, each checked against its CID.

    FormatError if it is not a CAR rooted at ``dataset``, or if it is the
    ``first`` pack (the pointer's ``metadata``) and lacks the manifest.
    """
    roots, blocks = read_car(data, verify=True)
    if [r.to_bytes() for r in roots] != [dataset.to_bytes()]:
        raise FormatError("metadata pack is not rooted at the dataset ID")
    out = {cid.to_bytes(): block for cid, block in blocks}
    if first and dataset.to_bytes() not in out:
        raise FormatError("metadata pack lacks the manifest")
    return out


def _record_json(m: PackRecord) -> dict[str, Any]:
    return {
        "k": m.k,
        "m": m.m,
        "size": m.size,
        "shard_size": m.shard_size,
        "shards": [cid_to_text(s) for s in m.shards],
    }


def _record_from_json(meta: Any) -> PackRecord:
    if not isinstance(meta, dict):
        raise FormatError("a pointer's metadata pack must be a JSON object")
    record = PackRecord(
        k=meta["k"],
        m=meta["m"],
        size=meta["size"],
        shard_size=meta["shard_size"],
        shards=tuple(parse_cid(s) for s in meta["shards"]),
    )
    record.validate()
    return record


def _hints_from_json(raw: Any, record: PackRecord) -> tuple[str | None, ...]:
    if not isinstance(raw, list) or len(raw) > record.k + record.m:
        raise FormatError("pointer hints must be a list of at most k + m peer IDs")
    return tuple(h if isinstance(h, str) and len(h) <= 128 else None for h in raw)


@dataclass(frozen=True)
class Pointer:
    """Where a dataset's metadata is: the locator root and the metadata pack(s).

    ``metadata`` is the pack that holds the manifest (read first); a dataset
    whose metadata is larger than one pack lists the others in ``more``,
    each with its hints (docs/format.md, "Metadata in several packs").
    """

    locator: CID
    metadata: PackRecord
    hints: tuple[str | None, ...] = ()  # peer ID holding each metadata shard, if known
    placement: CID | None = None  # the placement block, inside the metadata pack
    # Higher is newer: milliseconds since the epoch when published (repair: past the pointer it replaces).
    seq: int = field(default_factory=lambda: next_seq())
    more: tuple[tuple[PackRecord, tuple[str | None, ...]], ...] = ()  # further metadata packs, with hints

    @property
    def metadata_packs(self) -> list[tuple[PackRecord, tuple[str | None, ...]]]:
        """Every metadata pack with its hints, the manifest's first."""
        return [(self.metadata, self.hints), *self.more]

    def to_json(self) -> dict[str, Any]:
        out = {
            "seq": self.seq,
            "locator": cid_to_text(self.locator),
            "metadata": _record_json(self.metadata),
            "hints": list(self.hints),
            "placement": cid_to_text(self.placement) if self.placement else None,
        }
        if self.more:  # absent for one pack: such a pointer reads as before
            out["more_metadata"] = [_record_json(r) | {"hints": list(h)} for r, h in self.more]
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Pointer:
        """Validate an untrusted pointer (from a peer); FormatError on any fault."""
        try:
            if len(json.dumps(obj)) > MAX_POINTER_BYTES:
                raise FormatError("pointer too large")
            record = _record_from_json(obj["metadata"])
            placement = parse_cid(obj["placement"]) if obj.get("placement") else None
            seq = obj["seq"]
            if type(seq) is not int or not 0 <= seq < 1 << 63:
                raise FormatError("pointer seq must be a non-negative 63-bit integer")
            hints = _hints_from_json(obj.get("hints", []), record)
            more_raw = obj.get("more_metadata", [])
            if not isinstance(more_raw, list) or len(more_raw) + 1 > MAX_METADATA_PACKS:
                raise FormatError(f"a pointer lists at most {MAX_METADATA_PACKS} metadata packs")
            more = []
            for raw in more_raw:
                extra = _record_from_json(raw)
                more.append((extra, _hints_from_json(raw.get("hints", []), extra)))
            return cls(parse_cid(obj["locator"]), record, hints, placement, seq, tuple(more))
        except FormatError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
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
