"""Datasets on peers: the metadata pack, the pointer and the placement block."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dstore.errors import FormatError
from dstore.format.cbor import block_cid
from dstore.format.cid import RAW, cid_from_digest, make_cid
from dstore.format.pack import PackRecord, shard_size
from dstore.format.pointer import (
    Pointer,
    decode_placement,
    encode_placement,
    metadata_car,
    next_seq,
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
        lambda o: o.pop("seq"),
        lambda o: o.update(seq=-1),
        lambda o: o.update(seq=True),
        lambda o: o.update(seq=1.5),
        lambda o: o.update(hints=["12D3KooWa"] * 6),  # more hints than k + m shards
        lambda o: o.update(hints="12D3KooWa"),
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


def test_pointer_seq_orders_publications() -> None:
    first = Pointer(block_cid(b"\xa0"), record())
    assert Pointer.from_json(first.to_json()).seq == first.seq > 0
    assert next_seq(first.seq + 10_000_000) == first.seq + 10_000_001  # always past the one it replaces
    assert next_seq(0) >= first.seq


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)


@given(_json)
def test_pointer_from_json_of_anything_is_a_format_error_or_a_pointer(obj) -> None:
    try:
        Pointer.from_json(obj)
    except FormatError:
        pass


@given(st.data())
def test_pointer_from_mangled_json_is_a_format_error_or_a_pointer(data) -> None:
    obj = Pointer(block_cid(b"\xa0"), record(), ("12D3KooWa",), block_cid(b"\x80")).to_json()
    key = data.draw(st.sampled_from(sorted(obj)))
    obj[key] = data.draw(_json)
    sub = obj["metadata"]
    if isinstance(sub, dict):
        sub[data.draw(st.sampled_from(["k", "m", "size", "shard_size", "shards"]))] = data.draw(_json)
    try:
        p = Pointer.from_json(json.loads(json.dumps(obj)))
    except FormatError:
        return
    p.metadata.validate()
