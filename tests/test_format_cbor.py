"""dstore.format.cbor: canonical DAG-CBOR encoding and strict decoding."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dstore.errors import FormatError
from dstore.format.cbor import MAX_DEPTH, decode, encode
from dstore.format.cid import DAG_CBOR, RAW, cid_from_digest

cids = st.builds(
    cid_from_digest,
    st.sampled_from([RAW, DAG_CBOR]),
    st.binary(min_size=32, max_size=32),
    st.sampled_from(["blake3", "sha2-256"]),
)
scalars = st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.binary(max_size=40) | st.text(max_size=20)
plain_values = st.recursive(
    scalars,
    lambda c: (st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=8), c, max_size=5)),
    max_leaves=30,
)
values = st.recursive(
    scalars | cids,
    lambda c: (st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=8), c, max_size=5)),
    max_leaves=30,
)


@given(values)
def test_round_trip(v: object) -> None:
    b = encode(v)
    assert decode(b) == v
    assert encode(decode(b)) == b


@given(plain_values)
def test_matches_cbor2_canonical(v: object) -> None:
    # RFC 7049 canonical order (length first, then bytes) is what DAG-CBOR asks for.
    assert encode(v) == cbor2.dumps(v, canonical=True)


def test_map_key_order_is_length_first() -> None:
    b = encode({"b": 1, "aa": 2, "a": 3, "é": 4})
    assert b == bytes.fromhex("a4") + b"\x61a\x03" + b"\x61b\x01" + b"\x62aa\x02" + b"\x62\xc3\xa9\x04"


def test_cid_is_tag_42_over_zero_prefixed_bytes() -> None:
    c = cid_from_digest(RAW, bytes(32))
    b = encode(c)
    assert b[:2] == b"\xd8\x2a"
    assert b[2:4] == b"\x58\x25" and b[4] == 0 and b[5:] == c.to_bytes()


@pytest.mark.parametrize(
    "bad",
    [
        1.5,
        float("nan"),
        {1: 2},
        {b"k": 1},
        {("t",): 1},
        2**64,
        -(2**64) - 1,
        {1, 2},
        object(),
        cbor2.undefined,
    ],
)
def test_encode_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        encode(bad)


def test_encode_rejects_deep_nesting() -> None:
    v: list = []
    for _ in range(MAX_DEPTH + 1):
        v = [v]
    with pytest.raises(ValueError, match="deep"):
        encode(v)


@pytest.mark.parametrize(
    ("hexed", "why"),
    [
        ("", "empty"),
        ("f7", "Undefined"),
        ("fb3ff0000000000000", "float"),
        ("f93c00", "float"),
        ("f0", "Simple|simple"),
        ("a2616101616102", "Duplicate|duplicate"),
        ("a1010203", "key"),
        ("a1410102", "keys must be str"),
        ("a26162016161 02", "canonical"),  # keys out of order
        ("1801", "canonical"),  # non-minimal integer
        ("0000", "canonical"),  # trailing bytes
        ("7f6161ff", "indefinite"),
        ("9f00ff", "indefinite"),
        ("c249010000000000000000", "tag"),  # bignum
        ("c074323031332d30332d32315432303a30343a30305a", "tag"),  # datetime
        ("d81c81d81d00", "tag"),  # shared reference cycle
        ("d82b4100", "tag 43"),
        ("d82a4101", "0x00"),
        ("d82a4200ff", "CID"),
        ("d82a6100", "0x00"),
        ("a26161", "premature|end"),
        ("5affffffff", "premature|end"),
        ("62ff00", "utf|UTF|decode"),
        ("81" * 40, "depth"),
    ],
)
def test_decode_rejects(hexed: str, why: str) -> None:
    with pytest.raises(FormatError, match=why):
        decode(bytes.fromhex(hexed.replace(" ", "")))


def test_decode_bounds_size() -> None:
    with pytest.raises(FormatError, match="exceeds"):
        decode(b"\x40" * 10, max_bytes=5)


@given(st.binary(max_size=64))
def test_random_bytes_rejected_or_canonical(b: bytes) -> None:
    try:
        v = decode(b)
    except FormatError:
        return
    assert encode(v) == b
