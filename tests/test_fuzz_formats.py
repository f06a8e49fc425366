"""Fuzzing every decoder of bytes from outside: CAR, DAG-CBOR, locator pages, pack records, CIDs.

Property: valid encodings mutated (bytes flipped, inserted, deleted, cut, repeated) and random
bytes make each decoder answer or raise only its documented errors (FormatError, IntegrityError,
BadCID), within bounded memory (tests/fuzzutil.py). Tiny inputs that claim huge sizes fail at once.
"""

from __future__ import annotations

import io
import re
import tracemalloc

import pytest
from fuzzutil import decode_bounded, mutated
from hypothesis import example, given
from hypothesis import strategies as st

from dstore.errors import BadCID, FormatError, IntegrityError, NotFound
from dstore.format import cbor
from dstore.format.car import CarReader, encode_car
from dstore.format.cid import CID, DAG_PB, RAW, make_cid, parse_cid
from dstore.format.dagpb import PBLink, decode_node, encode_node, encode_varint
from dstore.format.locator import Locator, build_locator
from dstore.format.pack import PackRecord, shard_size

CAR_ERRORS = (FormatError, IntegrityError)

# -- valid encodings to mutate ---------------------------------------------------------------------

RAW_BLOCK = b"some file bytes " * 8
RAW_CID = make_cid(RAW, RAW_BLOCK)
SHA_CID = make_cid(RAW, RAW_BLOCK, "sha2-256")
PB_BLOCK = encode_node([PBLink(RAW_CID.to_bytes(), "a.txt", len(RAW_BLOCK))], b"\x08\x01")
PB_CID = make_cid(DAG_PB, PB_BLOCK)
CBOR_VALUE = {
    "type": "dstore/x",
    "n": [0, 23, 24, 255, 256, 65536, 2**32, 2**64 - 1, -1, -(2**64)],
    "b": b"\x00\xff" * 20,
    "cid": RAW_CID,
    "t": True,
    "f": False,
    "z": None,
    "nested": [[{"k": "v"}], []],
}
CBOR_BLOCK = cbor.encode(CBOR_VALUE)
CBOR_CID = cbor.block_cid(CBOR_BLOCK)


def _pack(i: int, size: int = 100_000, k: int = 3, m: int = 2) -> PackRecord:
    return PackRecord(k, m, size, shard_size(size, k), tuple(make_cid(RAW, b"s%d-%d" % (i, j)) for j in range(k + m)))


PACK = _pack(0)
PACK_BLOCK = PACK.encode()


def _car_v1() -> bytes:
    blocks = [(RAW_CID, RAW_BLOCK), (SHA_CID, RAW_BLOCK), (PB_CID, PB_BLOCK), (CBOR_CID, CBOR_BLOCK)]
    car = encode_car([PB_CID, CBOR_CID], blocks)
    # An IPFS-style CIDv0 section (bare sha2-256 multihash) at the end.
    v0 = make_cid(DAG_PB, PB_BLOCK, "sha2-256").to_bytes()[2:]
    return car + encode_varint(len(v0) + len(PB_BLOCK)) + v0 + PB_BLOCK


VALID_CAR = _car_v1()


# -- CAR -------------------------------------------------------------------------------------------


def _read_car(data: bytes, *, as_file: bool = False) -> list[tuple[CID, bytes]]:
    reader = CarReader(io.BytesIO(data) if as_file else data)
    assert all(isinstance(r, CID) for r in reader.roots)
    return list(reader)


def test_the_valid_car_reads() -> None:
    assert len(_read_car(VALID_CAR)) == 5


@given(mutated(VALID_CAR), st.booleans())
def test_mutated_car_raises_only_format_or_integrity_errors(data: bytes, as_file: bool) -> None:
    result = decode_bounded(lambda b: _read_car(b, as_file=as_file), data, CAR_ERRORS)
    if not isinstance(result, BaseException):
        for cid, block in result:  # whatever reads was verified
            assert make_cid(cid.codec, block, "blake3" if cid.hash.code == 0x1E else "sha2-256") == cid


@given(st.binary(max_size=200))
@example(b"\x01\xa0")
def test_random_bytes_as_car(data: bytes) -> None:
    decode_bounded(_read_car, data, CAR_ERRORS)


@given(st.binary(max_size=200))
def test_random_sections_after_a_valid_header(tail: bytes) -> None:
    header_len = VALID_CAR[0] + 1
    decode_bounded(_read_car, VALID_CAR[:header_len] + tail, CAR_ERRORS)


HEADER = VALID_CAR[: VALID_CAR[0] + 1]


@pytest.mark.parametrize(
    "claim",
    [
        encode_varint(2**60),  # a 2^60-byte section
        encode_varint(2**64 - 1),
        b"\xff" * 10 + b"\x01",  # a varint past 64 bits
        encode_varint(2 * 1024 * 1024 + 100),  # just within the section bound, nothing behind it
        encode_varint(40) + b"\x01\x55\x1e" + encode_varint(2**40),  # a CID claiming a 2^40-byte digest
        encode_varint(40) + b"\x01" + b"\xff" * 9 + b"\x01",  # a codec varint past 64 bits
    ],
)
@pytest.mark.parametrize("as_file", [False, True])
def test_car_claiming_huge_sizes_fails_without_allocating(claim: bytes, as_file: bool) -> None:
    data = HEADER + claim
    tracemalloc.start()
    try:
        with pytest.raises(FormatError):
            _read_car(data, as_file=as_file)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, peak  # was 2 MiB for a file claiming a 2 MiB section (read(n) allocates n)


def test_car_header_claiming_huge_length_fails() -> None:
    for n in (2**60, 2**64 - 1, 64 * 1024 + 1):
        with pytest.raises(FormatError, match="header length"):
            CarReader(encode_varint(n) + b"\xa0")


def test_car_refuses_cids_that_parse_cid_refuses() -> None:
    # A sha2-256 CID with a 1-byte digest: used to be accepted unverified, and failed later elsewhere.
    section = b"\x01\x55\x12\x01a" + b"x"
    with pytest.raises(FormatError, match="bad CID"):
        list(CarReader(HEADER + encode_varint(len(section)) + section, verify=False))


# -- DAG-CBOR --------------------------------------------------------------------------------------

cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20)
    | st.just(RAW_CID),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


@given(cbor_values.flatmap(lambda v: mutated(cbor.encode(v))))
def test_mutated_dag_cbor_decodes_canonically_or_raises_format_error(data: bytes) -> None:
    result = decode_bounded(cbor.decode, data, (FormatError,))
    if not isinstance(result, BaseException):
        assert cbor.encode(result) == data  # accepted means canonical


@given(st.binary(max_size=300))
@example(b"\xf9\x00\x00")  # a float
@example(b"\xd8\x23\x61a")  # tag 35: a regular expression
def test_random_bytes_as_dag_cbor(data: bytes) -> None:
    result = decode_bounded(cbor.decode, data, (FormatError,))
    if not isinstance(result, BaseException):
        assert cbor.encode(result) == data


@pytest.mark.parametrize(
    "data",
    [
        b"\x5b" + (2**40).to_bytes(8, "big"),  # a 2^40-byte byte string
        b"\x7b" + (2**63).to_bytes(8, "big"),  # a 2^63-byte text string
        b"\x9b" + (2**32).to_bytes(8, "big"),  # a list of 2^32 items
        b"\x9a\xff\xff\xff\xff" + b"\xf6" * 100,  # a list of 2^32-1 items, 100 there
        b"\xbb" + (2**32).to_bytes(8, "big") + b"\x61a",  # a map of 2^32 entries
        b"\x81" * 30 + b"\x9a\x7f\xff\xff\xff",  # deep inside
        b"\xd8\x2a\x5b" + (2**40).to_bytes(8, "big"),  # a CID of 2^40 bytes
    ],
)
def test_dag_cbor_claiming_huge_sizes_fails_without_allocating(data: bytes) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(FormatError):
            cbor.decode(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, peak


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x81" * 40 + b"\x00", "nested deeper than MAX_DEPTH"),
        (b"\xa1\x61a" * 40 + b"\x00", "maps nested deeper than MAX_DEPTH"),
        (b"\x9f\xff", "indefinite list"),
        (b"\x5f\x41a\xff", "indefinite bytes"),
        (b"\xa2\x61a\x00\x61a\x00", "duplicate map key"),
        (b"\xa2\x62aa\x00\x61b\x00", "unsorted map keys (length first)"),
        (b"\xa1\x41a\x00", "bytes map key"),
        (b"\xa1\x00\x00", "int map key"),
        (b"\xa1\x80\x00", "list map key"),
        (b"\xf9\x3c\x00", "half float"),
        (b"\xfb\x3f\xf0\x00\x00\x00\x00\x00\x00", "double"),
        (b"\xf7", "undefined"),
        (b"\xe0", "simple value"),
        (b"\xc2\x41\x01", "tag 2 bignum"),
        (b"\xd8\x1c\x81\xd8\x1d\x00", "tags 28/29: a list holding itself"),
        (b"\xd8\x2b\x41\x00", "tag 43"),
        (b"\xd8\x2a\x41\x01", "tag 42 without its 0x00 prefix"),
        (b"\xd8\x2a\x60", "tag 42 over text"),
        (b"\x18\x01", "non-minimal integer"),
        (b"\x61\xff", "text that is not UTF-8"),
        (b"\x00\x00", "trailing bytes"),
    ],
)
def test_dag_cbor_refuses_what_dag_cbor_forbids(data: bytes, why: str) -> None:
    with pytest.raises(FormatError):
        cbor.decode(data)


@pytest.mark.parametrize("item", [b"\x80", b"\xa0", b"\xf6", b"\x41a", b"\x19\x01\x00"])
def test_a_full_block_of_small_items_decodes_within_the_memory_bound(item: bytes) -> None:
    # Each decode re-encodes its result: that once made one new bytes object per item (and a list
    # of them), about 200 bytes of memory per input byte for a block of empty lists.
    n = (256 * 1024) // len(item)  # the ratio is that of a full 2 MiB block, at an eighth of the time
    data = b"\x9a" + n.to_bytes(4, "big") + item * n
    assert len(decode_bounded(cbor.decode, data, ())) == n


# -- locator pages and root ------------------------------------------------------------------------


def _locator_blocks() -> tuple[CID, list[tuple[CID, bytes]]]:
    dataset = cbor.block_cid(b"\xa0")
    packs = [(p.cid(), p) for p in (_pack(0), _pack(1, 5000, 1, 0))]
    chunks = [
        (make_cid(RAW, b"%d" % i).hash.digest, i % 2, 0, 1000, 4000 if i % 3 else 1000, 1 if i % 3 else 0)
        for i in range(5)
    ]
    return build_locator(dataset, chunks, packs)


LOCATOR_ROOT, LOCATOR_BLOCKS = _locator_blocks()


def _getter(blocks: dict[bytes, bytes]):  # noqa: ANN202
    def get(cid: CID) -> bytes:
        try:
            return blocks[cid.to_bytes()]
        except KeyError:
            raise NotFound(f"no block {cid}") from None

    return get


def _use_locator(blocks: dict[bytes, bytes], root: CID) -> None:
    loc = Locator(_getter(blocks), root)
    for e in loc.chunks():
        assert loc.find(e.digest) == e
        try:
            loc.pack(e.pack_index)
        except IndexError:  # documented: no such pack
            pass
    for i in range(loc.num_packs):
        loc.pack(i)


@given(st.integers(0, len(LOCATOR_BLOCKS) - 1).flatmap(lambda i: st.tuples(st.just(i), mutated(LOCATOR_BLOCKS[i][1]))))
def test_mutated_locator_blocks_raise_only_format_errors(case: tuple[int, bytes]) -> None:
    # The getter hands back the mutated bytes as if they were the block (a getter that forgot to verify,
    # or a hostile dataset that re-hashed them): the locator must still refuse them cleanly.
    i, bad = case
    blocks = {cid.to_bytes(): block for cid, block in LOCATOR_BLOCKS}
    blocks[LOCATOR_BLOCKS[i][0].to_bytes()] = bad
    decode_bounded(lambda _: _use_locator(blocks, LOCATOR_ROOT), bad, (FormatError, NotFound))


@given(st.sampled_from([c for c, _ in LOCATOR_BLOCKS[:-1]]), st.binary(max_size=200))
def test_random_locator_pages_raise_only_format_errors(cid: CID, page: bytes) -> None:
    blocks = {c.to_bytes(): b for c, b in LOCATOR_BLOCKS}
    blocks[cid.to_bytes()] = page
    decode_bounded(lambda _: _use_locator(blocks, LOCATOR_ROOT), page, (FormatError, NotFound))


def _tstr(text: str) -> bytes:
    b = text.encode()
    return b"\x7a" + len(b).to_bytes(4, "big") + b


@pytest.mark.parametrize(
    "tagged",
    [
        b"\xd8\x23" + _tstr("a|" * 20_000 + "b"),  # tag 35: cbor2 compiled it (88 s for 1 MB)
        b"\xd8\x24" + _tstr("a: b\n" * 20_000),  # tag 36: cbor2 parsed it as a MIME message
    ],
    ids=["regex", "mime"],
)
def test_locator_chunk_page_tags_are_refused_before_cbor2_builds_them(tagged: bytes) -> None:
    chunk_page = LOCATOR_BLOCKS[0]
    blocks = {c.to_bytes(): b for c, b in LOCATOR_BLOCKS}
    blocks[chunk_page[0].to_bytes()] = b"\x81" + tagged
    loc = Locator(lambda cid: blocks[cid.to_bytes()], LOCATOR_ROOT)
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="tag"):
            list(loc.chunks())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(tagged) + (1 << 20), peak


# -- dag-pb ----------------------------------------------------------------------------------------

PB_BIG = encode_node(
    [PBLink(RAW_CID.to_bytes(), f"f{i}", 10**i) for i in range(5)] + [PBLink(PB_CID.to_bytes())], b"\x08\x02\x18\x05"
)


@given(st.sampled_from([PB_BLOCK, PB_BIG]).flatmap(mutated))
def test_mutated_dag_pb_decodes_canonically_or_raises_format_error(data: bytes) -> None:
    result = decode_bounded(decode_node, data, (FormatError,))
    if not isinstance(result, BaseException):
        assert encode_node(result.links, result.data) == data


@given(st.binary(max_size=200))
def test_random_bytes_as_dag_pb(data: bytes) -> None:
    decode_bounded(decode_node, data, (FormatError,))


def test_dag_pb_claiming_huge_lengths_fails_without_allocating() -> None:
    for claim in (b"\x0a" + encode_varint(2**40), b"\x12" + encode_varint(2**63) + b"\x0a\x00", b"\x0a" + b"\xff" * 10):
        assert isinstance(decode_bounded(decode_node, claim, (FormatError,)), FormatError)


# -- pack records ----------------------------------------------------------------------------------


@given(mutated(PACK_BLOCK))
def test_mutated_pack_records_raise_only_format_errors(data: bytes) -> None:
    result = decode_bounded(PackRecord.decode, data, (FormatError,))
    if isinstance(result, PackRecord):
        assert result.encode() == data


@given(
    st.fixed_dictionaries(
        {
            "k": st.integers(-3, 300) | st.booleans() | st.none(),
            "m": st.integers(-3, 300),
            "size": st.integers(-(2**64), 2**64 - 1),
            "shard_size": st.integers(-(2**64), 2**64 - 1),
            "shards": st.lists(st.sampled_from([RAW_CID, PB_CID, CBOR_CID]), max_size=8) | st.integers(0, 10),
        }
    )
)
def test_pack_records_of_any_values_raise_only_format_errors(obj: dict) -> None:
    decode_bounded(PackRecord.decode, cbor.encode(obj), (FormatError,))


# -- CIDs ------------------------------------------------------------------------------------------

CID_TEXTS = [
    c.encode(base) for c in (RAW_CID, PB_CID, SHA_CID) for base in ("base32", "base58btc", "base16", "base64url")
]
CID_TEXTS.append(make_cid(DAG_PB, PB_BLOCK, "sha2-256").to_v0().encode() if hasattr(CID, "to_v0") else "")


@given(st.sampled_from(CID_TEXTS).flatmap(lambda t: mutated(t.encode("latin-1"))))
def test_mutated_cid_text_raises_only_bad_cid(raw: bytes) -> None:
    text = raw.decode("latin-1")
    result = decode_bounded(parse_cid, text, (BadCID,))  # type: ignore[arg-type]
    if isinstance(result, CID):
        assert result.version == 1


@given(st.text(max_size=120))
@example("Q" + "m" * 45)
@example("\x00")
@example("f" + "01" + "ff" * 9 + "01" + "1200")
def test_random_cid_text_raises_only_bad_cid(text: str) -> None:
    decode_bounded(parse_cid, text, (BadCID,))  # type: ignore[arg-type]


@given(st.sampled_from([RAW_CID, PB_CID, SHA_CID, CBOR_CID]).flatmap(lambda c: mutated(c.to_bytes())))
def test_mutated_binary_cids_raise_only_bad_cid(raw: bytes) -> None:
    result = decode_bounded(parse_cid, raw, (BadCID,))
    if isinstance(result, CID):
        assert result.to_bytes() == raw or raw[:2] == b"\x12\x20"  # a CIDv0 is returned as v1


@given(st.binary(max_size=80))
def test_random_binary_cids_raise_only_bad_cid(raw: bytes) -> None:
    decode_bounded(parse_cid, raw, (BadCID,))


def test_cid_text_of_huge_claims_is_refused_quickly() -> None:
    assert re.match("not a CID", str(pytest.raises(BadCID, parse_cid, "b" + "a" * 10**6).value))
