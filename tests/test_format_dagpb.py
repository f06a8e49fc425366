"""dstore.format.dagpb: canonical encoding and strict decoding of untrusted bytes."""

from __future__ import annotations

import pytest
from fuzzutil import mutated
from hypothesis import given
from hypothesis import strategies as st

from dstore.errors import FormatError
from dstore.format.cid import DAG_PB, RAW, cid_bytes_from_digest
from dstore.format.dagpb import (
    MAX_BLOCK_BYTES,
    PBLink,
    PBNode,
    decode_node,
    decode_node_python,
    decode_varint,
    encode_node,
    encode_node_python,
    encode_varint,
)

cids = st.builds(
    cid_bytes_from_digest,
    st.sampled_from([RAW, DAG_PB]),
    st.binary(min_size=32, max_size=32),
    st.sampled_from(["blake3", "sha2-256"]),
)
links = st.builds(
    PBLink,
    cids,
    st.none() | st.text(max_size=20),
    st.none() | st.integers(0, 2**64 - 1),
)
nodes = st.builds(PBNode, st.lists(links, max_size=8), st.none() | st.binary(max_size=64))

CID1 = cid_bytes_from_digest(RAW, bytes(range(32)))


@given(nodes)
def test_round_trip(node: PBNode) -> None:
    block = encode_node(node.links, node.data)
    assert decode_node(block) == node
    assert encode_node(*decode_node(block)) == block


@given(st.integers(0, 2**64 - 1))
def test_varint_round_trip(n: int) -> None:
    b = encode_varint(n)
    assert decode_varint(b, 0) == (n, len(b))


def test_varint_limits() -> None:
    with pytest.raises(ValueError):
        encode_varint(-1)
    with pytest.raises(ValueError):
        encode_varint(2**64)
    with pytest.raises(FormatError, match="non-minimal"):
        decode_varint(b"\x80\x00", 0)
    with pytest.raises(FormatError, match="truncated"):
        decode_varint(b"\x80", 0)
    with pytest.raises(FormatError):
        decode_varint(b"\xff" * 10 + b"\x01", 0)
    with pytest.raises(FormatError, match="64 bits"):
        decode_varint(b"\xff" * 9 + b"\x7f", 0)


def test_canonical_layout_links_before_data() -> None:
    block = encode_node([PBLink(CID1, "a", 5)], b"\x08\x01")
    assert block[0] == 0x12  # Links (field 2) first
    assert block.endswith(b"\x0a\x02\x08\x01")  # then Data (field 1)
    # The empty UnixFS directory, as IPFS writes it.
    assert encode_node([], b"\x08\x01") == bytes.fromhex("0a020801")
    # An empty name is written (IPFS file nodes carry Name ""), an absent one is not.
    assert b"\x12\x00" in encode_node([PBLink(CID1, "", 1)])
    assert b"\x12\x00" not in encode_node([PBLink(CID1, None, 1)])


def _link_bytes(body: bytes) -> bytes:
    return b"\x12" + encode_varint(len(body)) + body


GOOD_LINK = b"\x0a" + encode_varint(len(CID1)) + CID1


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        (b"\x0a\x02\x08\x01" + _link_bytes(GOOD_LINK), "Links after Data"),
        (b"\x0a\x00\x0a\x00", "repeated"),
        (b"\x1a\x00", "unexpected field"),
        (b"\x08\x01", "unexpected field"),
        (_link_bytes(b"\x12\x01a"), "without Hash"),
        (_link_bytes(b"\x12\x01a" + GOOD_LINK), "out of order"),
        (_link_bytes(GOOD_LINK + b"\x18\x01\x18\x02"), "out of order"),
        (_link_bytes(GOOD_LINK + b"\x22\x00"), "unexpected field"),
        (_link_bytes(b"\x0a\x03abc"), "not a"),
        (_link_bytes(b"\x0a" + encode_varint(len(CID1) + 1) + CID1 + b"\x00"), "CID"),
        (_link_bytes(GOOD_LINK + b"\x12\x02\xff\xfe"), "UTF-8"),
        (b"\x0a\x05abc", "truncated"),
        (b"\x12\x10" + GOOD_LINK[:5], "truncated"),
        (_link_bytes(GOOD_LINK + b"\x12\x7f"), "truncated"),
        (b"\x0a\x80\x00", "non-minimal"),
        (b"\x0a", "truncated"),
    ],
)
def test_rejects_malformed(block: bytes, reason: str) -> None:
    with pytest.raises(FormatError, match=reason):
        decode_node(block)


def test_rejects_oversized_block() -> None:
    with pytest.raises(FormatError, match="exceeds"):
        decode_node(b"\x0a" + encode_varint(MAX_BLOCK_BYTES) + bytes(MAX_BLOCK_BYTES))


@given(nodes, st.data())
def test_truncations_never_misparse(node: PBNode, data: st.DataObject) -> None:
    block = encode_node(node.links, node.data)
    if not block:
        return
    cut = data.draw(st.integers(0, len(block) - 1))
    prefix = block[:cut]
    try:
        got = decode_node(prefix)
    except FormatError:
        return
    # A prefix that parses must be a canonical node in its own right.
    assert encode_node(*got) == prefix


@given(st.binary(max_size=200))
def test_random_bytes_are_rejected_or_canonical(block: bytes) -> None:
    try:
        got = decode_node(block)
    except FormatError:
        return
    assert encode_node(*got) == block


def _outcome(decode, block: bytes) -> object:
    try:
        return decode(block)
    except FormatError as e:
        return ("FormatError", str(e))


def _mutations(node: PBNode, data: st.DataObject) -> bytes:
    """A canonical block, or one with a few bytes changed, cut or inserted: near misses of every kind."""
    block = encode_node(node.links, node.data)
    return data.draw(st.one_of(st.just(block), mutated(block, 3)))


@given(nodes, st.data())
def test_native_decoder_agrees_with_the_python_one(node: PBNode, data: st.DataObject) -> None:
    """decode_node (native) accepts, returns and refuses exactly as decode_node_python, with its messages."""
    block = _mutations(node, data)
    assert _outcome(decode_node, block) == _outcome(decode_node_python, block)
    no_cid_check = lambda b: decode_node(b, check_cids=False)  # noqa: E731
    python_no_cid_check = lambda b: decode_node_python(b, check_cids=False)  # noqa: E731
    assert _outcome(no_cid_check, block) == _outcome(python_no_cid_check, block)


@given(st.binary(max_size=200))
def test_native_decoder_agrees_on_random_bytes(block: bytes) -> None:
    assert _outcome(decode_node, block) == _outcome(decode_node_python, block)


@given(nodes)
def test_native_encoder_agrees_with_the_python_one(node: PBNode) -> None:
    assert encode_node(node.links, node.data) == encode_node_python(node.links, node.data)


@pytest.mark.parametrize("tsize", [-1, 2**64])
def test_a_tsize_out_of_range_is_a_value_error(tsize: int) -> None:
    with pytest.raises(ValueError, match="varint"):
        encode_node([PBLink(CID1, "a", tsize)])
