"""dstore.format.manifest and dstore.format.pack: the dataset ID and the pack ID."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dstore.errors import FormatError
from dstore.format import cbor
from dstore.format.cid import DAG_CBOR, DAG_PB, RAW, cid_from_digest, make_cid
from dstore.format.manifest import ChunkerParams, Manifest
from dstore.format.pack import MAX_SHARDS, PACK_UNIT_BYTES, PackRecord, shard_size
from dstore.limits import MAX_CHUNK_BYTES

ROOT = make_cid(DAG_PB, b"root")
ROOT_SHA = make_cid(DAG_PB, b"root", "sha2-256")
PARENT = make_cid(DAG_CBOR, b"parent")


def test_manifest_round_trip_and_layout() -> None:
    m = Manifest(root=ROOT, size=123, entries=7)
    block = m.encode()
    obj = cbor.decode(block)
    assert obj == {
        "type": "dstore/dataset",
        "version": 2,
        "profile": "dstore",
        "root": ROOT,
        "hash": "blake3",
        "chunker": {
            "name": "fastcdc-gear-v1",
            "min": 16384,
            "avg": 65536,
            "max": 262144,
        },
        "size": 123,
        "entries": 7,
    }
    assert "meta" not in obj and "parent" not in obj  # optional keys omitted, never null
    assert Manifest.decode(block) == m
    assert str(m.cid).startswith("bafyr4")
    assert m.cid == cbor.block_cid(block)


def test_manifest_is_deterministic_and_sensitive() -> None:
    a = Manifest(root=ROOT, size=1, entries=1, meta={"name": "x", "license": "MIT"}, parent=PARENT)
    b = Manifest(root=ROOT, size=1, entries=1, meta={"license": "MIT", "name": "x"}, parent=PARENT)
    assert a.encode() == b.encode() and a.cid == b.cid
    assert Manifest.decode(a.encode()) == a
    assert Manifest(root=ROOT, size=2, entries=1).cid != Manifest(root=ROOT, size=1, entries=1).cid
    assert Manifest(root=ROOT, size=1, entries=2).cid != Manifest(root=ROOT, size=1, entries=1).cid
    sha = Manifest(root=ROOT_SHA, size=1, entries=1, hash_name="sha2-256")
    assert sha.cid.hash.code == 0x12
    assert Manifest.decode(sha.encode()) == sha


@given(
    size=st.integers(0, 2**64 - 1),
    entries=st.integers(1, 2**64 - 1),
    meta=st.dictionaries(st.sampled_from(["name", "license", "description"]), st.text(max_size=30)),
    avg_bits=st.integers(7, 20),
    parent=st.booleans(),
    digest=st.binary(min_size=32, max_size=32),
    raw_root=st.booleans(),
)
def test_manifest_random_round_trip(
    size: int,
    entries: int,
    meta: dict[str, str],
    avg_bits: int,
    parent: bool,
    digest: bytes,
    raw_root: bool,
) -> None:
    avg = 1 << avg_bits
    m = Manifest(
        root=cid_from_digest(RAW if raw_root else DAG_PB, digest),
        size=size,
        entries=entries,
        chunker=ChunkerParams(min=avg // 2, avg=avg, max=avg * 4),
        meta=meta,
        parent=PARENT if parent else None,
    )
    assert Manifest.decode(m.encode()) == m


def _mutated(**changes: Any) -> bytes:
    obj = Manifest(root=ROOT, size=5, entries=3, meta={"name": "n"}, parent=PARENT).to_cbor()
    for k, v in changes.items():
        if v is _DROP:
            del obj[k]
        else:
            obj[k] = v
    return cbor.encode(obj)


_DROP = object()


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"type": "other"}, "not a dstore manifest"),
        ({"version": 1}, "version 1 are not readable"),
        ({"version": 3}, "version"),
        ({"version": True}, "version"),
        ({"root": _DROP}, "lacks 'root'"),
        ({"size": _DROP}, "lacks 'size'"),
        ({"entries": _DROP}, "lacks 'entries'"),
        ({"profile": _DROP}, "lacks 'profile'"),
        ({"entries": 0}, "entries"),
        ({"entries": -1}, "entries"),
        ({"entries": True}, "entries"),
        ({"profile": 1}, "profile must be text"),
        ({"profile": "unixfs-v1-2025"}, "allows hashes .* not blake3"),
        ({"profile": "car-import"}, "does not go with chunker"),
        ({"profile": "kubo"}, "profile 'kubo' is not one of"),
        ({"extra": 1}, "unknown manifest keys"),
        ({"root": "bafy"}, "root must be a CID"),
        ({"root": PARENT}, "dag-pb or raw"),
        ({"root": ROOT_SHA}, "hashed with sha2-256"),
        ({"hash": "md5"}, "hash"),
        ({"hash": 1}, "hash must be text"),
        ({"size": -1}, "size"),
        ({"size": "1"}, "size"),
        ({"size": True}, "size"),
        (
            {"chunker": {"name": "fastcdc-gear-v1", "min": 1, "avg": 2, "max": 3}},
            "64 <= min",
        ),
        (
            {
                "chunker": {
                    "name": "fastcdc-gear-v1",
                    "min": 100,
                    "avg": 1000,
                    "max": 3000,
                }
            },
            "power of two",
        ),
        (
            {"chunker": {"name": "rabin", "min": 64, "avg": 128, "max": 256}},
            "unknown chunker",
        ),
        (
            {"chunker": {"name": "fastcdc-gear-v1", "min": 64, "avg": 128}},
            "chunker must be a map",
        ),
        (
            {
                "chunker": {
                    "name": "fastcdc-gear-v1",
                    "min": 64,
                    "avg": 128,
                    "max": 2**25,
                }
            },
            "16 MiB",
        ),
        ({"meta": {"owner": "x"}}, "meta key"),
        ({"meta": {"name": 1}}, "must be text"),
        ({"meta": {}}, "non-empty"),
        ({"meta": None}, "meta"),
        ({"meta": {"description": "x" * 70000}}, "longer than"),
        ({"parent": None}, "parent must be a CID"),
        ({"parent": ROOT}, "dag-cbor"),
    ],
)
def test_manifest_rejects(changes: dict[str, Any], why: str) -> None:
    with pytest.raises(FormatError, match=why):
        Manifest.decode(_mutated(**changes))


def test_manifest_rejects_non_maps_and_garbage() -> None:
    for block in [cbor.encode([1]), b"\xff", b"", cbor.encode("dstore/dataset")]:
        with pytest.raises(FormatError):
            Manifest.decode(block)
    with pytest.raises(FormatError, match="exceeds"):
        Manifest.decode(b"\x00" * 300_000)


def test_manifest_encode_validates() -> None:
    with pytest.raises(ValueError):
        Manifest(root=ROOT, size=-1, entries=1).encode()
    with pytest.raises(ValueError):
        Manifest(root=ROOT, size=1, entries=1, hash_name="sha2-256").encode()
    with pytest.raises(ValueError, match="entries"):
        Manifest(root=ROOT, size=1, entries=0).encode()


@given(block=st.binary(max_size=512))
def test_manifest_decode_of_any_bytes_raises_only_format_error(block: bytes) -> None:
    try:
        Manifest.decode(block)
    except FormatError:
        pass


_VALID = Manifest(root=ROOT, size=5, entries=3, meta={"name": "n"}, parent=PARENT).encode()


@given(
    pos=st.integers(0, len(_VALID) - 1),
    value=st.integers(0, 255),
    cut=st.integers(0, len(_VALID)),
)
def test_manifest_decode_of_mutated_block_raises_only_format_error(pos: int, value: int, cut: int) -> None:
    block = bytearray(_VALID)
    block[pos] = value
    try:
        m = Manifest.decode(bytes(block[:cut]) if cut < len(block) else bytes(block))
    except FormatError:
        return
    assert m.encode() == (bytes(block[:cut]) if cut < len(block) else bytes(block))


# ----------------------------------------------------------------------- packs


@pytest.mark.parametrize(
    ("pack_len", "k", "expected"),
    [
        (0, 1, 64),
        (1, 1, 64),
        (64, 1, 64),
        (65, 1, 128),
        (1000, 10, 128),
        (640, 10, 64),
        (641, 10, 128),
        (10 << 20, 10, 1 << 20),
        ((10 << 20) + 1, 10, (1 << 20) + 64),
    ],
)
def test_shard_size(pack_len: int, k: int, expected: int) -> None:
    assert shard_size(pack_len, k) == expected


@given(st.integers(0, 1 << 30), st.integers(1, 256))
def test_shard_size_properties(pack_len: int, k: int) -> None:
    s = shard_size(pack_len, k)
    assert s % 64 == 0 and s >= 64 and s * k >= pack_len
    assert s == 64 or (s - 64) * k < pack_len


def test_shard_size_rejects() -> None:
    with pytest.raises(ValueError):
        shard_size(10, 0)
    with pytest.raises(ValueError):
        shard_size(-1, 1)


def _record(k: int = 4, m: int = 2, size: int = 1000) -> PackRecord:
    shards = tuple(make_cid(RAW, bytes([i])) for i in range(k + m))
    return PackRecord(k=k, m=m, size=size, shard_size=shard_size(size, k), shards=shards)


@given(st.integers(1, 20), st.integers(0, 20), st.integers(0, 20 * PACK_UNIT_BYTES))
def test_pack_record_round_trip(k: int, m: int, size: int) -> None:
    # A pack holds at most k pack units, or one chunk bigger than that: its shards stay within
    # MAX_SHARD_BYTES (PackRecord refuses more).
    size = min(size, max(k * PACK_UNIT_BYTES, MAX_CHUNK_BYTES))
    rec = _record(k, m, size)
    block = rec.encode()
    assert PackRecord.decode(block) == rec
    assert str(rec.cid()).startswith("bafyr4")
    assert set(cbor.decode(block)) == {"k", "m", "size", "shard_size", "shards"}


def test_pack_record_shard_range() -> None:
    rec = _record(4, 2, 1000)
    assert rec.shard_size == 256
    assert rec.shard_range(0) == (0, 256) and rec.shard_range(3) == (768, 1024)
    with pytest.raises(IndexError):
        rec.shard_range(4)


@pytest.mark.parametrize(
    ("obj", "why"),
    [
        ({"k": 0, "m": 1, "size": 0, "shard_size": 64, "shards": []}, "k="),
        ({"k": 200, "m": 57, "size": 0, "shard_size": 64, "shards": []}, "k \\+ m"),
        (
            {
                "k": 1,
                "m": 0,
                "size": 10,
                "shard_size": 128,
                "shards": [make_cid(RAW, b"a")],
            },
            "shard_size",
        ),
        (
            {
                "k": 1,
                "m": 1,
                "size": 10,
                "shard_size": 64,
                "shards": [make_cid(RAW, b"a")],
            },
            "shard CIDs",
        ),
        (
            {
                "k": 1,
                "m": 0,
                "size": 10,
                "shard_size": 64,
                "shards": [make_cid(DAG_CBOR, b"a")],
            },
            "raw",
        ),
        ({"k": 1, "m": 0, "size": 10, "shard_size": 64, "shards": "x"}, "list"),
        (
            {
                "k": 1,
                "m": 0,
                "size": -1,
                "shard_size": 64,
                "shards": [make_cid(RAW, b"a")],
            },
            "non-negative",
        ),
        (
            {
                "k": 1,
                "m": 0,
                "size": 1 << 40,
                "shard_size": 1 << 40,
                "shards": [make_cid(RAW, b"a")],
            },
            "exceeds",
        ),
        ({"k": 1, "m": 0, "size": 10, "shard_size": 64}, "must be a map"),
        (
            {
                "k": "1",
                "m": 0,
                "size": 10,
                "shard_size": 64,
                "shards": [make_cid(RAW, b"a")],
            },
            "integer",
        ),
    ],
)
def test_pack_record_rejects(obj: dict[str, Any], why: str) -> None:
    with pytest.raises(FormatError, match=why):
        PackRecord.decode(cbor.encode(obj))


def test_max_shards_constant() -> None:
    assert MAX_SHARDS == 256
    _record(200, 56).validate()


@given(
    claim=st.integers(1 << 10, (1 << 64) - 1),
    body=st.binary(max_size=64),
    major=st.sampled_from([0x40, 0x60, 0x80, 0xA0]),
)
def test_manifest_decode_allocates_a_bounded_multiple_of_its_input(claim: int, body: bytes, major: int) -> None:
    """A CBOR length head claiming far more than the block holds is never allocated."""
    import tracemalloc

    block = bytes([major | 27]) + claim.to_bytes(8, "big") + body
    tracemalloc.start()
    try:
        Manifest.decode(block)
    except FormatError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 64 * 1024 + 64 * len(block)
