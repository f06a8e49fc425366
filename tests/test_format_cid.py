"""dstore.format.cid: CID helpers and the strict parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dstore.errors import BadCID
from dstore.format.cid import (
    CID,
    DAG_CBOR,
    DAG_PB,
    RAW,
    cid_bytes_from_digest,
    cid_from_digest,
    cid_to_text,
    hash_code,
    hash_digest,
    make_cid,
    parse_cid,
    raw_cid_bytes,
)


def test_text_prefixes_match_the_spec() -> None:
    assert str(make_cid(RAW, b"x")).startswith("bafkr4")
    assert str(make_cid(DAG_CBOR, b"x")).startswith("bafyr4")
    assert str(make_cid(DAG_PB, b"x")).startswith("bafyb4")
    assert str(make_cid(RAW, b"x", "sha2-256")).startswith("bafkrei")


def test_known_blake3_and_sha256_digests() -> None:
    assert hash_digest(b"", "sha2-256").hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert hash_digest(b"", "blake3").hex() == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    # The empty raw block with sha2-256, as every IPFS implementation names it.
    assert str(make_cid(RAW, b"", "sha2-256")) == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


@given(
    st.binary(min_size=32, max_size=32),
    st.sampled_from([RAW, DAG_PB, DAG_CBOR]),
    st.sampled_from(["blake3", "sha2-256"]),
)
def test_fast_path_bytes_equal_cid_objects(digest: bytes, codec: int, hash_name: str) -> None:
    cid = cid_from_digest(codec, digest, hash_name)
    assert cid_bytes_from_digest(codec, digest, hash_name) == cid.to_bytes()
    if codec == RAW:
        assert raw_cid_bytes(digest, hash_name) == cid.to_bytes()
    assert cid.hash.code == hash_code(hash_name)
    assert cid.hash.digest == digest
    text = cid_to_text(cid)
    assert text.startswith("b") and text == text.lower()
    assert parse_cid(text) == cid
    assert parse_cid(cid.to_bytes()) == cid
    assert cid_to_text(cid.to_bytes()) == text


def test_parse_cid_accepts_v0_as_v1() -> None:
    v1 = parse_cid("QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn")
    assert v1.version == 1
    assert str(v1) == "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"
    assert parse_cid(" " + str(v1) + "\n") == v1
    assert parse_cid(v1) is v1


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "hello",
        "bafy",
        "bafkr4" + "a" * 10,
        "zzzzzzzzzzzz",
        "b" + "a" * 1000,
        b"",
        b"\x01",
        b"\x01\x55\x1e\x20" + b"\x00" * 31,  # truncated digest
        b"\x01\x55\x1e\x20" + b"\x00" * 33,  # trailing byte
        b"\x02\x55\x1e\x20" + b"\x00" * 32,  # version 2
        b"\x01" * 200,
        12345,
        None,
    ],
)
def test_parse_cid_rejects(bad: object) -> None:
    with pytest.raises(BadCID) as e:
        parse_cid(bad)  # type: ignore[arg-type]
    assert isinstance(e.value, ValueError)
    assert "CID" in str(e.value)


def test_unknown_hash_and_bad_digest() -> None:
    with pytest.raises(ValueError, match="unsupported hash"):
        make_cid(RAW, b"x", "md5")
    with pytest.raises(ValueError, match="32 bytes"):
        cid_from_digest(RAW, b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        raw_cid_bytes(b"short")
    with pytest.raises(ValueError, match="codec"):
        cid_bytes_from_digest(0x99, b"\0" * 32)


def test_cid_type_is_py_multiformats() -> None:
    assert isinstance(make_cid(RAW, b"x"), CID)
