"""dstore.format.unixfs: Data messages, file and directory builders, readers, HAMT."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dstore.errors import FormatError
from dstore.format import unixfs
from dstore.format.cid import CID, DAG_CBOR, DAG_PB, RAW, make_cid, raw_cid_bytes
from dstore.format.dagpb import PBLink, decode_node, encode_node
from dstore.format.unixfs import (
    MAX_LINKS_PER_NODE,
    T_DIRECTORY,
    T_FILE,
    T_HAMT_SHARD,
    UnixFSData,
    build_directory,
    build_file,
    decode_data,
    directory_entries,
    encode_data,
    hamt_entries,
    hamt_hash,
    hamt_lookup,
    lookup,
    parse_node,
)


def fake_leaves(n: int, size: int = 7) -> list[tuple[bytes, int]]:
    return [(raw_cid_bytes(hashlib.sha256(i.to_bytes(8, "big")).digest()), size + i % 3) for i in range(n)]


data_msgs = st.builds(
    UnixFSData,
    type=st.sampled_from([0, 1, 2, 4, 5]),
    data=st.none() | st.binary(max_size=20),
    filesize=st.none() | st.integers(0, 2**64 - 1),
    blocksizes=st.lists(st.integers(0, 2**64 - 1), max_size=5).map(tuple),
    hash_type=st.none() | st.integers(0, 2**64 - 1),
    fanout=st.none() | st.integers(0, 2**64 - 1),
)


@given(data_msgs)
def test_data_round_trip(d: UnixFSData) -> None:
    assert decode_data(encode_data(d)) == d


def test_data_decoder_accepts_packed_blocksizes_and_rejects_garbage() -> None:
    packed = b"\x08\x02\x18\x03\x22\x02\x01\x02"
    assert decode_data(packed).blocksizes == (1, 2)
    for bad, why in [
        (b"", "without Type"),
        (b"\x18\x01", "without Type"),
        (b"\x08\x09", "unknown UnixFS type"),
        (b"\x08\x02\x08\x02", "repeated"),
        (b"\x08\x02\x12\x05ab", "truncated"),
        (b"\x08\x02\x4a\x00", "unexpected field"),
        (b"\x08\x02\x22\x05\x01", "truncated"),
    ]:
        with pytest.raises(FormatError, match=why):
            decode_data(bad)


# ----------------------------------------------------------------------- files


def test_empty_file_is_a_dag_pb_file_node_with_filesize_0() -> None:
    cid, blocks, tsize = build_file([], "sha2-256")
    assert str(cid) == str(make_cid(DAG_PB, bytes.fromhex("0a0408021800"), "sha2-256"))
    assert blocks == [(cid, bytes.fromhex("0a0408021800"))]
    assert tsize == 6
    node = parse_node(cid, blocks[0][1])
    assert (node.kind, node.filesize, node.links) == ("file", 0, ())


def test_single_chunk_file_is_its_leaf() -> None:
    leaf = raw_cid_bytes(bytes(32))
    cid, blocks, tsize = build_file([(leaf, 1234)])
    assert cid.to_bytes() == leaf and blocks == [] and tsize == 1234
    as_obj = CID.from_bytes(leaf)
    assert build_file([(as_obj, 5)])[0] == as_obj


def _shape(root: CID, blocks: list[tuple[CID, bytes]]) -> list[int]:
    """Links per node, level by level from the root."""
    by_cid = {c.to_bytes(): b for c, b in blocks}
    level = [root]
    shape = []
    while level and level[0].codec == DAG_PB:
        nxt = []
        for c in level:
            node = parse_node(c, by_cid[c.to_bytes()])
            shape.append(len(node.links))
            nxt.extend(link.cid for link in node.links)
        level = nxt
    return shape


@pytest.mark.parametrize(
    ("n", "shape"),
    [
        (2, [2]),
        (174, [174]),
        (175, [2, 174, 1]),
        (348, [2, 174, 174]),
        (349, [3, 174, 174, 1]),
    ],
)
def test_balanced_layout(n: int, shape: list[int]) -> None:
    leaves = fake_leaves(n)
    root, blocks, tsize = build_file(leaves)
    assert _shape(root, blocks) == shape
    total = sum(s for _, s in leaves)
    node = parse_node(root, {c.to_bytes(): b for c, b in blocks}[root.to_bytes()])
    assert node.filesize == total
    assert sum(node.blocksizes) == total
    assert tsize == total + sum(len(b) for _, b in blocks)
    assert blocks[-1][0] == root


def test_three_levels_and_leaf_order() -> None:
    n = MAX_LINKS_PER_NODE * MAX_LINKS_PER_NODE + 1
    leaves = fake_leaves(n, size=1)
    root, blocks, _ = build_file(leaves)
    by_cid = {c.to_bytes(): b for c, b in blocks}
    out: list[bytes] = []

    def walk(c: CID) -> None:
        if c.codec == RAW:
            out.append(c.to_bytes())
            return
        node = parse_node(c, by_cid[c.to_bytes()])
        assert len(node.links) <= MAX_LINKS_PER_NODE
        assert all(link.name == "" for link in node.links)
        for link in node.links:
            walk(link.cid)

    walk(root)
    assert out == [c for c, _ in leaves]
    assert parse_node(root, by_cid[root.to_bytes()]).links.__len__() == 2
    assert max(len(b) for _, b in blocks) < 1 << 20


def test_file_node_link_has_empty_name_and_tsize() -> None:
    _root, blocks, _ = build_file([(raw_cid_bytes(bytes(32)), 10), (raw_cid_bytes(b"\1" * 32), 20)])
    pb = decode_node(blocks[0][1])
    assert [(ln.name, ln.tsize) for ln in pb.links] == [("", 10), ("", 20)]
    assert decode_data(pb.data) == UnixFSData(type=T_FILE, filesize=30, blocksizes=(10, 20))


def test_build_file_is_fast_enough() -> None:
    import time

    leaves = fake_leaves(50_000)  # about 3 GiB of 64 KiB chunks
    t = time.perf_counter()
    build_file(leaves)
    assert time.perf_counter() - t < 5


# ----------------------------------------------------------------------- directories


def test_empty_directory_is_the_ipfs_empty_directory() -> None:
    cid, blocks, tsize = build_directory([], "sha2-256")
    assert str(cid) == "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"
    assert blocks[0][1] == bytes.fromhex("0a020801") and tsize == 4


def test_directory_sorts_by_utf8_bytes_and_sums_tsize() -> None:
    c = CID.from_bytes(raw_cid_bytes(bytes(32)))
    names = ["é", "a", "Z", "aa", "ab", "\U0001f600", "ÿ"]
    cid, blocks, tsize = build_directory([(n, c, 3) for n in names])
    node = parse_node(cid, blocks[0][1])
    assert [ln.name for ln in node.links] == sorted(names, key=lambda s: s.encode())
    assert tsize == len(blocks[0][1]) + 3 * len(names)
    assert lookup(lambda _: b"", node, "ab") == unixfs.Link("ab", c, 3)
    assert lookup(lambda _: b"", node, "nope") is None


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/", "nul\x00", "\udc80"])
def test_directory_rejects_bad_names(name: str) -> None:
    c = raw_cid_bytes(bytes(32))
    with pytest.raises(ValueError):
        build_directory([(name, c, 1)])


def test_directory_rejects_duplicates() -> None:
    c = raw_cid_bytes(bytes(32))
    with pytest.raises(ValueError, match="duplicate"):
        build_directory([("x", c, 1), ("x", c, 2)])


def _dir_entries(n: int) -> list[tuple[str, bytes, int]]:
    return [(f"file-{i}-ü.bin", raw_cid_bytes(hashlib.sha256(b"%d" % i).digest()), i) for i in range(n)]


def test_hamt_sharding_by_threshold() -> None:
    entries = _dir_entries(600)
    plain_cid, plain_blocks, _ = build_directory(entries)
    assert len(plain_blocks) == 1
    limit = len(plain_blocks[0][1])
    same, _, _ = build_directory(entries, hamt_threshold_bytes=limit)
    assert same == plain_cid
    root, blocks, tsize = build_directory(entries, hamt_threshold_bytes=limit - 1)
    store = {c.to_bytes(): b for c, b in blocks}
    get = lambda c: store[c.to_bytes()]
    node = parse_node(root, get(root))
    assert node.kind == "hamt" and node.fanout == 256
    pb = decode_node(store[root.to_bytes()])
    d = decode_data(pb.data)
    assert (d.type, d.hash_type, d.fanout) == (T_HAMT_SHARD, 0x22, 256)
    assert len(blocks) > 1  # 600 names in 256 slots: some slots hold child shards
    assert tsize == sum(len(b) for b in store.values()) + sum(t for _, _, t in entries)
    got = {ln.name: (ln.cid.to_bytes(), ln.tsize) for ln in hamt_entries(get, root)}
    assert got == {n: (c, t) for n, c, t in entries}
    assert {ln.name for ln in directory_entries(get, root)} == set(got)
    for name, c, t in entries:
        assert hamt_lookup(get, root, name) == unixfs.Link(name, CID.from_bytes(c), t)
        assert lookup(get, root, name) == unixfs.Link(name, CID.from_bytes(c), t)
    for absent in ["nope", "file-600-ü.bin", "file-1-u.bin"]:
        assert hamt_lookup(get, root, absent) is None


def test_hamt_link_names_and_bitfield() -> None:
    entries = _dir_entries(40)
    _root, blocks, _ = build_directory(entries, hamt_threshold_bytes=1)
    pb = decode_node(blocks[-1][1])
    slots = sorted({hamt_hash(n.encode())[0] for n, _, _ in entries})
    bitfield = sum(1 << s for s in slots)
    assert decode_data(pb.data).data == bitfield.to_bytes((bitfield.bit_length() + 7) // 8, "big")
    assert [ln.name[:2] for ln in pb.links] == [f"{s:02X}" for s in slots]


def test_hamt_hash_is_first_64_bits_of_murmur3_x64_128_big_endian() -> None:
    import mmh3

    h = mmh3.hash_bytes(b"abc")  # C++ reference byte order: h1 little-endian, then h2
    assert hamt_hash(b"abc") == h[:8][::-1]
    assert hamt_hash(b"abc").hex() == "b4963f3f3fad7867"


def test_hamt_full_collision_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unixfs, "hamt_hash", lambda name: b"\x00" * 8)
    with pytest.raises(ValueError, match="same 64-bit"):
        build_directory(_dir_entries(3), hamt_threshold_bytes=1)


@settings(max_examples=40)
@given(
    st.sets(
        st.text(min_size=1, max_size=6).filter(lambda s: s not in (".", "..") and "/" not in s and "\0" not in s),
        max_size=120,
    )
)
def test_hamt_random_names(names: set[str]) -> None:
    try:
        entries = [(n, raw_cid_bytes(hashlib.sha256(n.encode("utf-8")).digest()), len(n)) for n in names]
    except UnicodeEncodeError:
        return
    root, blocks, _ = build_directory(entries, hamt_threshold_bytes=1)
    store = {c.to_bytes(): b for c, b in blocks}
    get = lambda c: store[c.to_bytes()]
    assert {ln.name for ln in directory_entries(get, root)} == names
    for n in list(names)[:10]:
        assert lookup(get, root, n) is not None
    assert lookup(get, root, "\x01absent") is None


# ----------------------------------------------------------------------- readers reject


def _pb(links: list[PBLink], d: UnixFSData) -> tuple[CID, bytes]:
    block = encode_node(links, encode_data(d))
    return make_cid(DAG_PB, block), block


L = raw_cid_bytes(bytes(32))


@pytest.mark.parametrize(
    ("links", "data", "why"),
    [
        ([PBLink(L, "", 1)], UnixFSData(type=T_FILE, filesize=1), "blocksizes"),
        (
            [PBLink(L, "", 1)],
            UnixFSData(type=T_FILE, filesize=2, blocksizes=(1,)),
            "filesize",
        ),
        ([], UnixFSData(type=T_FILE, data=b"abc", filesize=4), "filesize"),
        ([PBLink(L, None, 1)], UnixFSData(type=T_DIRECTORY), "without a name"),
        ([PBLink(L, "a", 1), PBLink(L, "a", 1)], UnixFSData(type=T_DIRECTORY), "twice"),
        ([], UnixFSData(type=T_HAMT_SHARD, hash_type=0x22, fanout=300), "fanout"),
        ([], UnixFSData(type=T_HAMT_SHARD, hash_type=0x22), "fanout"),
        ([], UnixFSData(type=T_HAMT_SHARD, hash_type=0x12, fanout=256), "hashType"),
        (
            [],
            UnixFSData(type=T_HAMT_SHARD, data=b"\x01", hash_type=0x22, fanout=256),
            "bits set",
        ),
        (
            [PBLink(L, "05x", 1)],
            UnixFSData(type=T_HAMT_SHARD, data=b"\x01", hash_type=0x22, fanout=256),
            "slot",
        ),
        (
            [],
            UnixFSData(type=T_HAMT_SHARD, data=b"\x01" + bytes(32), hash_type=0x22, fanout=256),
            "wider",
        ),
        ([], UnixFSData(type=3), "unsupported"),
    ],
)
def test_parse_node_rejects_inconsistent_nodes(links: list[PBLink], data: UnixFSData, why: str) -> None:
    cid, block = _pb(links, data)
    with pytest.raises(FormatError, match=why):
        parse_node(cid, block)


def test_parse_node_other_cases() -> None:
    assert parse_node(make_cid(RAW, b"xy"), b"xy") == unixfs.Node(kind="raw", data=b"xy", filesize=2)
    with pytest.raises(FormatError, match="codec"):
        parse_node(make_cid(DAG_CBOR, b"\xa0"), b"\xa0")
    with pytest.raises(FormatError, match="without UnixFS Data"):
        parse_node(make_cid(DAG_PB, b""), b"")
    cid, block = _pb([], UnixFSData(type=4, data=b"target"))
    assert parse_node(cid, block).kind == "symlink"
    cid, block = _pb([], UnixFSData(type=T_FILE, data=b"inline"))
    node = parse_node(cid, block)
    assert (node.kind, node.data, node.filesize) == ("file", b"inline", 6)
    with pytest.raises(FormatError, match="not a directory"):
        list(directory_entries(lambda c: block, cid))
    with pytest.raises(FormatError, match="not a HAMT"):
        hamt_lookup(lambda c: block, cid, "x")
