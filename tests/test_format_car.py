"""dstore.format.car: CAR v1 writing and bounded, verifying reading."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dstore.errors import FormatError, IntegrityError
from dstore.format import cbor
from dstore.format.car import (
    CarReader,
    CarWriter,
    car_block,
    car_header,
    encode_car,
    iter_car,
    read_car,
)
from dstore.format.cid import DAG_CBOR, RAW, make_cid
from dstore.format.dagpb import encode_varint

blocks_st = st.lists(
    st.tuples(
        st.binary(max_size=300),
        st.sampled_from(["blake3", "sha2-256"]),
        st.sampled_from([RAW, DAG_CBOR]),
    ),
    max_size=10,
)


def _blocks(spec: list[tuple[bytes, str, int]]) -> list:
    return [(make_cid(codec, data, h), data) for data, h, codec in spec]


@given(blocks_st, st.integers(0, 3))
def test_round_trip(spec: list[tuple[bytes, str, int]], n_roots: int) -> None:
    blocks = _blocks(spec)
    roots = [c for c, _ in blocks[:n_roots]]
    car = encode_car(roots, blocks)
    assert read_car(car) == (roots, blocks)
    assert b"".join(iter_car(roots, blocks)) == car
    r = CarReader(io.BytesIO(car))
    assert r.roots == roots and list(r) == blocks


def test_layout() -> None:
    c = make_cid(RAW, b"hello")
    header = cbor.encode({"roots": [c], "version": 1})
    assert car_header([c]) == encode_varint(len(header)) + header
    assert car_block(c, b"hello") == encode_varint(len(c.to_bytes()) + 5) + c.to_bytes() + b"hello"
    assert car_block(c.to_bytes(), b"hello") == car_block(c, b"hello")


def test_writer_streams_and_dedupes() -> None:
    out = io.BytesIO()
    a, b = make_cid(RAW, b"a"), make_cid(RAW, b"b")
    w = CarWriter(out.write, [a])
    assert w.put(a, b"a") and w.put(b, b"b") and not w.put(a, b"a")
    assert w.bytes_written == len(out.getvalue())
    assert read_car(out.getvalue()) == ([a], [(a, b"a"), (b, b"b")])
    out2 = io.BytesIO()
    w2 = CarWriter(out2.write, [a], dedupe=False)
    w2.put(a, b"a")
    w2.put(a, b"a")
    assert len(read_car(out2.getvalue())[1]) == 2


def test_reads_ipfs_cidv0_blocks_as_v1() -> None:
    from dstore.format.cid import parse_cid

    v0 = parse_cid("QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn")
    raw_v0 = v0.hash.to_bytes()  # a CIDv0 is its bare sha2-256 multihash
    car = car_header([v0]) + encode_varint(len(raw_v0) + 4) + raw_v0 + bytes.fromhex("0a020801")
    _roots, blocks = read_car(car)
    assert blocks == [(v0, bytes.fromhex("0a020801"))]


def test_verification() -> None:
    c = make_cid(RAW, b"good")
    bad = car_header([c]) + car_block(c, b"evil")
    with pytest.raises(IntegrityError, match="does not match"):
        read_car(bad)
    assert read_car(bad, verify=False)[1] == [(c, b"evil")]
    from multiformats.multihash import Multihash

    from dstore.format.cid import CID

    odd = CID(1, RAW, Multihash.wrap(0x13, bytes(64)))  # sha2-512: not verifiable here
    with pytest.raises(FormatError, match="not supported"):
        read_car(car_header([]) + car_block(odd, b"x"))


def test_truncation_anywhere_is_an_error_or_a_block_boundary() -> None:
    blocks = _blocks([(b"x" * 50, "blake3", RAW), (b"y" * 3, "sha2-256", RAW)])
    car = encode_car([blocks[0][0]], blocks)
    header_len = len(car_header([blocks[0][0]]))
    first_end = header_len + len(car_block(*blocks[0]))
    for cut in range(len(car)):
        prefix = car[:cut]
        if cut in (header_len, first_end):
            _roots, got = read_car(prefix)
            assert got == blocks[: (cut == first_end)]
            continue
        with pytest.raises(FormatError):
            read_car(prefix)


def _with_header(header: bytes) -> bytes:
    return encode_varint(len(header)) + header


@pytest.mark.parametrize(
    ("car", "why"),
    [
        (b"", "truncated"),
        (b"\x00", "header length"),
        (encode_varint(100_000) + b"\x00" * 10, "header length"),
        (_with_header(cbor.encode([1])), "not a map"),
        (_with_header(cbor.encode({"version": 2})), "CAR v2"),
        (_with_header(cbor.encode({"roots": [], "version": 3})), "version: 1"),
        (_with_header(cbor.encode({"roots": [], "version": 1, "x": 1})), "version: 1"),
        (_with_header(cbor.encode({"roots": "x", "version": 1})), "list of CIDs"),
        (_with_header(b"\xff\xff"), "DAG-CBOR"),
        (car_header([]) + b"\x00", "out of range"),
        (car_header([]) + encode_varint(3 << 20), "out of range"),
        (car_header([]) + b"\xff" * 11, "longer than 10"),
        (car_header([]) + b"\x05\x02\x55\x1e\x00\x00", "CID version 2"),
        (car_header([]) + b"\x05\x01\x55\x1e\x41\x00", "digest"),
        (car_header([]) + b"\x05\x01\x55\x1e\x20\x00", "truncated"),
        (car_header([]) + b"\x03\x01\x55", "truncated"),
    ],
)
def test_rejects_malformed(car: bytes, why: str) -> None:
    with pytest.raises(FormatError, match=why):
        read_car(car)


def test_block_size_bound() -> None:
    big = b"z" * 2000
    c = make_cid(RAW, big)
    car = car_header([]) + car_block(c, big)
    assert read_car(car)[1] == [(c, big)]
    with pytest.raises(FormatError, match="out of range|exceeds"):
        list(CarReader(car, max_block_bytes=1000))


@given(st.binary(max_size=120))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        read_car(car_header([]) + data)
    except (FormatError, IntegrityError):
        pass
