"""Datasets on peers: the metadata pack, the pointer and the placement block."""

from __future__ import annotations

import pytest

from dstore.errors import FormatError
from dstore.format.cbor import block_cid
from dstore.format.cid import RAW, cid_from_digest, make_cid
from dstore.format.pack import PackRecord, shard_size
from dstore.format.pointer import (
    Pointer,
    decode_placement,
    encode_placement,
    metadata_car,
    read_metadata_car,
)


def record(k: int = 3, m: int = 2, size: int = 1000) -> PackRecord:
    shards = tuple(cid_from_digest(RAW, bytes([i]) * 32) for i in range(k + m))
    return PackRecord(k=k, m=m, size=size, shard_size=shard_size(size, k), shards=shards)


def test_metadata_car_roundtrip_and_checks() -> None:
    manifest = b"\xa1atx"
    dataset = block_cid(manifest)
    other = make_cid(RAW, b"other block")
    data = metadata_car(dataset, [(dataset, manifest), (other, b"other block")])
    blocks = read_metadata_car(data, dataset)
    assert blocks == {dataset.to_bytes(): manifest, other.to_bytes(): b"other block"}
    with pytest.raises(FormatError):
        read_metadata_car(data, other)  # wrong root
    with pytest.raises(FormatError):
        read_metadata_car(metadata_car(dataset, [(other, b"other block")]), dataset)  # no manifest


def test_pointer_json_roundtrip() -> None:
    locator = block_cid(b"\xa0")
    placement = block_cid(b"\x80")
    p = Pointer(locator, record(), ("12D3KooWa", None, "12D3KooWb", None, None), placement)
    assert Pointer.from_json(p.to_json()) == p
    assert Pointer.from_json(Pointer(locator, record()).to_json()).placement is None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda o: o.pop("locator"),
        lambda o: o.update(locator="not-a-cid"),
        lambda o: o["metadata"].update(k=0),
        lambda o: o["metadata"]["shards"].pop(),
        lambda o: o.update(metadata=[]),
        lambda o: o.update(placement="bafy-nope"),
    ],
)
def test_pointer_rejects_malformed(mangle) -> None:
    obj = Pointer(block_cid(b"\xa0"), record()).to_json()
    mangle(obj)
    with pytest.raises(FormatError):
        Pointer.from_json(obj)


def test_placement_roundtrip() -> None:
    a, b = block_cid(b"\x01").to_bytes(), block_cid(b"\x02").to_bytes()
    packs = {a: ["p1", "p2", None], b: ["p2", "p3", "p1"]}
    cid, block = encode_placement(packs)
    assert cid == block_cid(block)
    assert decode_placement(block) == packs
    with pytest.raises(FormatError):
        decode_placement(b"\xa0")
