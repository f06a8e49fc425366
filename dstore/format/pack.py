"""Pack layout and the pack record (DAG-CBOR) whose CID is the pack ID.

A pack is its chunks' stored bytes end to end, padded with zeros to
``k × shard_size`` and cut into k data shards; m parity shards follow
(docs/format.md, "Packs and shards"). The record::

    {"k": int, "m": int, "size": int, "shard_size": int, "shards": [CID, … k+m]}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dstore.errors import FormatError
from dstore.format import cbor
from dstore.format.cid import CID, RAW
from dstore.limits import MAX_SHARD_BYTES, MAX_SHARDS, PACK_UNIT_BYTES

__all__ = [
    "MAX_SHARDS",
    "MAX_SHARD_BYTES",
    "PACK_UNIT_BYTES",
    "SHARD_ALIGN_BYTES",
    "PackRecord",
    "shard_size",
]

SHARD_ALIGN_BYTES = 64


def shard_size(pack_len: int, k: int) -> int:
    """Bytes per shard: ``max(64, ceil(pack_len / k))`` rounded up to a multiple of 64."""
    if k < 1:
        raise ValueError("k must be at least 1")
    if pack_len < 0:
        raise ValueError("pack length must be non-negative")
    per = -(-pack_len // k)
    per = -(-per // SHARD_ALIGN_BYTES) * SHARD_ALIGN_BYTES
    return max(SHARD_ALIGN_BYTES, per)


@dataclass(frozen=True)
class PackRecord:
    """One pack: k data + m parity shards of ``shard_size`` bytes, ``size`` bytes of real data."""

    k: int
    m: int
    size: int
    shard_size: int
    shards: tuple[CID, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shards", tuple(self.shards))

    def validate(self) -> None:
        """Raise ValueError unless the record is consistent (docs/format.md)."""
        for name in ("k", "m", "size", "shard_size"):
            if type(getattr(self, name)) is not int:
                raise ValueError(f"pack {name} must be an integer")
        if not (1 <= self.k and 0 <= self.m and self.k + self.m <= MAX_SHARDS):
            raise ValueError(f"pack needs 1 <= k, 0 <= m, k + m <= {MAX_SHARDS}; got k={self.k} m={self.m}")
        if self.size < 0:
            raise ValueError("pack size must be non-negative")
        if self.shard_size > MAX_SHARD_BYTES:
            raise ValueError(f"pack shard_size {self.shard_size} exceeds {MAX_SHARD_BYTES}")
        if self.shard_size != shard_size(self.size, self.k):
            raise ValueError(
                f"pack shard_size {self.shard_size} != {shard_size(self.size, self.k)} for size {self.size}, k {self.k}"
            )
        if len(self.shards) != self.k + self.m:
            raise ValueError(f"pack has {len(self.shards)} shard CIDs, expected k + m = {self.k + self.m}")
        for s in self.shards:
            if not isinstance(s, CID) or s.version != 1 or s.codec != RAW:
                raise ValueError("pack shards must be raw CIDv1")

    def to_cbor(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "m": self.m,
            "size": self.size,
            "shard_size": self.shard_size,
            "shards": list(self.shards),
        }

    def encode(self) -> bytes:
        """Canonical DAG-CBOR bytes (validated first)."""
        self.validate()
        return cbor.encode(self.to_cbor())

    def cid(self, hash_name: str = "blake3") -> CID:
        """The pack ID: CIDv1 dag-cbor of :meth:`encode` with the dataset's hash."""
        return cbor.block_cid(self.encode(), hash_name)

    def shard_range(self, i: int) -> tuple[int, int]:
        """Byte range ``[start, end)`` of the padded pack that data shard ``i`` holds."""
        if not 0 <= i < self.k:
            raise IndexError(f"data shard {i} out of range 0..{self.k - 1}")
        return i * self.shard_size, (i + 1) * self.shard_size

    @classmethod
    def from_cbor(cls, obj: Any) -> PackRecord:
        """Build and validate a record from a decoded DAG-CBOR value; FormatError on any fault."""
        if not isinstance(obj, dict) or set(obj) != {
            "k",
            "m",
            "size",
            "shard_size",
            "shards",
        }:
            raise FormatError("pack record must be a map of k, m, size, shard_size, shards")
        shards = obj["shards"]
        if not isinstance(shards, list):
            raise FormatError("pack shards must be a list")
        try:
            rec = cls(obj["k"], obj["m"], obj["size"], obj["shard_size"], tuple(shards))
            rec.validate()
        except ValueError as e:
            raise FormatError(f"bad pack record: {e}") from e
        return rec

    @classmethod
    def decode(cls, block: bytes) -> PackRecord:
        """Parse and validate an untrusted pack record block."""
        return cls.from_cbor(cbor.decode(block))
