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


@pytest.mark.parametrize("hash_name", ["blake3", "sha2-256"])
def test_empty_file_is_the_empty_raw_block(hash_name: str) -> None:
    cid, blocks, tsize = build_file([], hash_name)
    assert cid == make_cid(RAW, b"", hash_name)
    assert (blocks, tsize) == ([], 0)
    if hash_name == "sha2-256":  # what Kubo names an empty file with raw leaves
        assert str(cid) == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    assert parse_node(cid, b"") == unixfs.Node(kind="raw", data=b"", filesize=0)


def test_readers_accept_the_dag_pb_empty_file_of_other_writers() -> None:
    block = unixfs.EMPTY_FILE_DATA_BLOCK
    assert block == bytes.fromhex("0a0408021800")
    node = parse_node(make_cid(DAG_PB, block, "sha2-256"), block)
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
        ([PBLink(L, None, 1)], UnixFSData(type=T_DIRECTORY), "unsafe name ''"),
        ([PBLink(L, "zz/evil.csv", 1)], UnixFSData(type=T_DIRECTORY), "unsafe name"),
        ([PBLink(L, "..", 1)], UnixFSData(type=T_DIRECTORY), "unsafe name"),
        ([PBLink(L, ".", 1)], UnixFSData(type=T_DIRECTORY), "unsafe name"),
        ([PBLink(L, "a\x00b", 1)], UnixFSData(type=T_DIRECTORY), "unsafe name"),
        (
            [PBLink(L, "00../x", 1)],
            UnixFSData(type=T_HAMT_SHARD, data=b"\x01", hash_type=0x22, fanout=256),
            "unsafe name",
        ),
        (
            [PBLink(L, "00..", 1)],
            UnixFSData(type=T_HAMT_SHARD, data=b"\x01", hash_type=0x22, fanout=256),
            "unsafe name",
        ),
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


# ----------------------------------------------------------------------- IPIP-0499 threshold


def _entries_of_block_size(target: int) -> list[tuple[str, bytes, int]]:
    """Directory entries whose plain node encodes to exactly ``target`` bytes (sha2-256 leaves)."""
    leaf = raw_cid_bytes(hashlib.sha256(b"leaf").digest(), "sha2-256")
    entries = []
    size = 4  # the Data field: 0a 02 08 01
    while True:
        name = f"f{len(entries):07d}"
        link = len(encode_node([PBLink(leaf, name, 100)])) - 4 + 4  # field header included, no Data
        if size + link > target:
            break
        entries.append((name, leaf, 100))
        size += link
    gap = target - size
    name, c, t = entries[0]
    entries[0] = (name + "x" * gap, c, t)
    return entries


def test_default_threshold_is_ipip_0499_block_bytes_strictly_greater() -> None:
    at = _entries_of_block_size(262144)
    cid, blocks, _ = build_directory(at, "sha2-256")
    assert len(blocks) == 1 and len(blocks[0][1]) == 262144  # exactly at the threshold: plain
    assert parse_node(cid, blocks[0][1]).kind == "dir"
    over = [(at[0][0] + "y", at[0][1], at[0][2]), *at[1:]]
    plain_size = len(build_directory(over, "sha2-256", hamt_threshold_bytes=1 << 30)[1][0][1])
    assert plain_size == 262145
    cid, blocks, _ = build_directory(over, "sha2-256")
    assert parse_node(cid, dict((c, b) for c, b in blocks)[cid]).kind == "hamt"


# ----------------------------------------------------------------------- HAMT slot rules


def _shard(links: list[PBLink]) -> tuple[CID, bytes]:
    bitfield = 0
    for ln in links:
        bitfield |= 1 << int(ln.name[:2], 16)
    return _pb(
        links,
        UnixFSData(
            type=T_HAMT_SHARD,
            data=bitfield.to_bytes((bitfield.bit_length() + 7) // 8, "big"),
            hash_type=0x22,
            fanout=256,
        ),
    )


def test_hamt_entry_in_the_wrong_slot_is_refused() -> None:
    name = "data.csv"
    right = hamt_hash(name.encode())[0]
    wrong = (right + 1) % 256
    cid, block = _shard([PBLink(L, f"{wrong:02X}{name}", 1)])
    with pytest.raises(FormatError, match="slot its name hashes to"):
        list(hamt_entries(lambda c: block, cid))
    cid, block = _shard([PBLink(L, f"{right:02X}{name}", 1)])
    assert [ln.name for ln in hamt_entries(lambda c: block, cid)] == [name]


def test_hamt_sub_shard_reused_in_two_slots_cannot_list_a_name_twice() -> None:
    name = "data.csv"
    key = hamt_hash(name.encode())
    sub_cid, sub_block = _shard([PBLink(L, f"{key[1]:02X}{name}", 1)])
    other = (key[0] + 7) % 256
    root_cid, root_block = _shard(
        sorted(
            [PBLink(sub_cid.to_bytes(), f"{key[0]:02X}", 1), PBLink(sub_cid.to_bytes(), f"{other:02X}", 1)],
            key=lambda ln: ln.name,
        )
    )
    store = {sub_cid: sub_block, root_cid: root_block}
    with pytest.raises(FormatError, match="slot its name hashes to"):
        list(hamt_entries(store.__getitem__, root_cid))


def test_hamt_empty_sub_shard_is_refused() -> None:
    sub_cid, sub_block = _pb([], UnixFSData(type=T_HAMT_SHARD, data=b"", hash_type=0x22, fanout=256))
    root_cid, root_block = _shard([PBLink(sub_cid.to_bytes(), "00", 1)])
    store = {sub_cid: sub_block, root_cid: root_block}
    with pytest.raises(FormatError, match="empty sub-shard"):
        list(hamt_entries(store.__getitem__, root_cid))


# ----------------------------------------------------------------------- decoders on hostile bytes

_GOOD_BLOCKS = [
    build_file(fake_leaves(3))[1][0][1],
    build_directory(_dir_entries(5))[1][0][1],
    build_directory(_dir_entries(40), hamt_threshold_bytes=1)[1][-1][1],
]


def _peak_alloc(fn, *args) -> int:  # noqa: ANN001
    import tracemalloc

    tracemalloc.start()
    try:
        fn(*args)
    except FormatError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


@settings(max_examples=200)
@given(
    base=st.sampled_from(_GOOD_BLOCKS) | st.binary(max_size=300),
    edits=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 5000),
)
def test_parse_node_of_hostile_bytes_raises_only_format_error(base: bytes, edits: list, cut: int) -> None:
    block = bytearray(base)
    for pos, value in edits:
        if block:
            block[pos % len(block)] = value
    block = bytes(block[:cut])
    cid = make_cid(DAG_PB, block)
    try:
        node = parse_node(cid, block)
    except FormatError:
        return
    if node.kind == "hamt":
        try:
            list(hamt_entries(lambda c: block, node))
        except FormatError:
            pass


@settings(max_examples=30)
@given(
    varint_len=st.integers(1, 10),
    body=st.binary(max_size=64),
)
def test_decoders_allocate_a_bounded_multiple_of_their_input(varint_len: int, body: bytes) -> None:
    # A length prefix claiming far more than the block holds must not be allocated.
    claim = bytes([0xFF] * (varint_len - 1) + [0x7F]) if varint_len > 1 else b"\x7f"
    for block in (b"\x0a" + claim + body, b"\x12" + claim + body, b"\x08\x02\x12" + claim + body):
        assert _peak_alloc(decode_node, block) < 64 * 1024 + 64 * len(block)
        assert _peak_alloc(decode_data, block) < 64 * 1024 + 64 * len(block)
        assert _peak_alloc(parse_node, make_cid(DAG_PB, block), block) < 64 * 1024 + 64 * len(block)
