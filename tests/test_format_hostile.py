"""Hostile datasets, forged straight into a real store, read with the real CLI.

Every one must end with exit 5 (FormatError) and one line on stderr, and
leave nothing under the output name; reuse of nodes that the manifest
declares honestly must stay cheap (export writes each block once).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dstore.errors import FormatError
from dstore.fetch.reader import DatasetReader
from dstore.format.car import CarReader
from dstore.format.cid import CID, RAW, make_cid
from dstore.format.unixfs import MAX_TREE_DEPTH, T_HAMT_SHARD, UnixFSData, encode_data, hamt_hash
from dstore.store import Store

from treeutil import dir_node, file_node, forge_dataset, pb_node, seed_chunks, snapshot


def assert_format_error(result, out: Path | None = None) -> None:  # noqa: ANN001
    assert result.code == 5, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    if out is not None:
        assert not out.exists()
        assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []


@pytest.fixture
def chunk(home: Path, dstore, tmp_path: Path) -> bytes:  # noqa: ANN001
    """One compressible 10,000-byte chunk stored by a real add (zstd-stored: its size can be forged)."""
    return seed_chunks(home, dstore, tmp_path, [b"a" * 10_000])[0]


def _bytes(cid: object) -> bytes:
    assert isinstance(cid, CID)
    return cid.to_bytes()


def test_reused_file_nodes_cannot_expand_past_the_manifest_size(home: Path, dstore, tmp_path: Path, chunk: bytes):  # noqa: ANN001
    # Three levels of 174 links reuse one 10 KB chunk: 303 GB described in three small nodes.
    f1 = file_node([(chunk, 10_000)] * 174)
    f2 = file_node([(_bytes(f1[0]), 1_740_000)] * 174)
    f3 = file_node([(_bytes(f2[0]), 174 * 1_740_000)] * 174)
    ds = forge_dataset(home, f3[0], [f1, f2, f3], size=3, entries=1)
    out = tmp_path / "out"
    assert_format_error(dstore("get", ds, "-o", out, "-q", check=False), out)
    assert_format_error(dstore("cat", ds, check=False))
    assert_format_error(dstore("export", ds, "-o", tmp_path / "x.car", check=False), tmp_path / "x.car")


def test_a_file_node_must_hold_what_its_parent_says(home: Path, dstore, tmp_path: Path, chunk: bytes):  # noqa: ANN001
    inner = file_node([(chunk, 10_000)] * 3)  # 30,000 bytes
    # The parent claims the child holds 10,000 bytes.
    outer = file_node([(_bytes(inner[0]), 10_000)])
    root = dir_node([("f.bin", _bytes(outer[0]))])
    ds = forge_dataset(home, root[0], [inner, outer, root], size=10_000, entries=2)
    out = tmp_path / "out"
    assert_format_error(dstore("get", ds, "-o", out, "-q", check=False), out)


def test_reused_folders_cannot_expand_past_the_manifest_entries(home: Path, dstore, tmp_path: Path, chunk: bytes):  # noqa: ANN001
    d1 = dir_node([(f"f{i:03d}", chunk) for i in range(100)])
    d2 = dir_node([(f"d{i:03d}", _bytes(d1[0])) for i in range(100)])
    d3 = dir_node([(f"d{i:03d}", _bytes(d2[0])) for i in range(100)])  # 10^6 files of 10 KB
    ds = forge_dataset(home, d3[0], [d1, d2, d3], size=30_000, entries=5)
    out = tmp_path / "out"
    assert_format_error(dstore("get", ds, "-o", out, "-q", check=False), out)
    assert_format_error(dstore("ls", ds, check=False))


def test_export_of_honest_reuse_writes_each_block_once(home: Path, dstore, tmp_path: Path, chunk: bytes):  # noqa: ANN001
    d1 = dir_node([(f"f{i:03d}", chunk) for i in range(100)])
    d2 = dir_node([(f"d{i:03d}", _bytes(d1[0])) for i in range(100)])
    d3 = dir_node([(f"d{i:03d}", _bytes(d2[0])) for i in range(100)])
    files = 100**3
    ds = forge_dataset(home, d3[0], [d1, d2, d3], size=files * 10_000, entries=1 + 100 + 100**2 + files)
    car = tmp_path / "x.car"
    dstore("export", ds, "-o", car)
    blocks = [cid for cid, _ in CarReader(car.read_bytes())]
    assert sorted(c.to_bytes() for c in blocks) == sorted(
        [_bytes(d1[0]), _bytes(d2[0]), _bytes(d3[0]), chunk, _bytes(CID.decode(ds))]
    )


def test_export_refuses_more_distinct_entries_than_declared(home: Path, dstore, tmp_path: Path, chunk: bytes):  # noqa: ANN001
    d1 = dir_node([(f"f{i:03d}", chunk) for i in range(3)])
    d2 = dir_node([("a", _bytes(d1[0]))])
    ds = forge_dataset(home, d2[0], [d1, d2], size=30_000, entries=2)
    car = tmp_path / "x.car"
    assert_format_error(dstore("export", ds, "-o", car, check=False), car)


@pytest.mark.parametrize(("size", "entries"), [(30_000, 6), (40_000, 5), (20_000, 5)], ids=["entries", "size", "less"])
def test_export_refuses_a_manifest_that_disagrees_with_its_tree(  # noqa: ANN201
    home: Path,
    dstore,  # noqa: ANN001
    tmp_path: Path,
    chunk: bytes,
    size: int,
    entries: int,
):
    """The tree yields 1 + 1 + 3 entries and 30,000 bytes; reuse counted, each block written once."""
    d1 = dir_node([(f"f{i:03d}", chunk) for i in range(3)])
    d2 = dir_node([("a", _bytes(d1[0]))])
    ds = forge_dataset(home, d2[0], [d1, d2], size=size, entries=entries)
    car = tmp_path / "x.car"
    assert_format_error(dstore("export", ds, "-o", car, check=False), car)
    honest = forge_dataset(home, d2[0], [d1, d2], size=30_000, entries=5)
    dstore("export", honest, "-o", car)


def test_tree_yielding_less_than_declared_is_refused(home: Path, dstore, tmp_path: Path, chunk: bytes):  # noqa: ANN001
    root = dir_node([("a.bin", chunk)])
    ds = forge_dataset(home, root[0], [root], size=10_000, entries=3)
    out = tmp_path / "out"
    assert_format_error(dstore("get", ds, "-o", out, "-q", check=False), out)
    honest = forge_dataset(home, root[0], [root], size=10_000, entries=2)
    dstore("get", honest, "-o", out, "-q")
    assert snapshot(out) == {"a.bin": b"a" * 10_000}


@pytest.mark.parametrize("bad", ["zz/evil.csv", "..", ".", "a\x00b", ""])
def test_unsafe_names_are_refused_by_every_reader(home: Path, dstore, tmp_path: Path, chunk: bytes, bad: str):  # noqa: ANN001
    zz = dir_node([("ok.csv", chunk)])
    root = dir_node([("zz", _bytes(zz[0])), (bad, chunk)])
    ds = forge_dataset(home, root[0], [zz, root], size=20_000, entries=4)
    out = tmp_path / "out"
    assert_format_error(dstore("get", ds, "-o", out, "-q", check=False), out)
    assert_format_error(dstore("ls", ds, check=False))
    assert_format_error(dstore("export", ds, "-o", tmp_path / "x.car", check=False), tmp_path / "x.car")


def test_duplicate_names_in_a_folder_are_refused(home: Path, dstore, tmp_path: Path, chunk: bytes):  # noqa: ANN001
    root = dir_node([("a", chunk), ("a", chunk)])
    ds = forge_dataset(home, root[0], [root], size=20_000, entries=3)
    out = tmp_path / "out"
    assert_format_error(dstore("get", ds, "-o", out, "-q", check=False), out)


def _shard(links: list[tuple[bytes, str]]) -> tuple[object, bytes]:
    bitfield = 0
    for _, name in links:
        bitfield |= 1 << int(name[:2], 16)
    data = encode_data(
        UnixFSData(
            type=T_HAMT_SHARD,
            data=bitfield.to_bytes((bitfield.bit_length() + 7) // 8, "big"),
            hash_type=0x22,
            fanout=256,
        )
    )
    return pb_node([(c, n, 1) for c, n in sorted(links, key=lambda x: x[1])], data)


def test_a_crafted_hamt_cannot_list_a_name_twice(home: Path, dstore, tmp_path: Path, chunk: bytes):  # noqa: ANN001
    key = hamt_hash(b"data.csv")
    sub = _shard([(chunk, f"{key[1]:02X}data.csv")])
    other = (key[0] + 1) % 256
    root = _shard([(_bytes(sub[0]), f"{key[0]:02X}"), (_bytes(sub[0]), f"{other:02X}")])
    ds = forge_dataset(home, root[0], [sub, root], size=20_000, entries=3)
    out = tmp_path / "out"
    assert_format_error(dstore("get", ds, "-o", out, "-q", check=False), out)


def test_a_chunk_claiming_100_mib_is_a_format_error(home: Path, dstore, tmp_path: Path, chunk: bytes):  # noqa: ANN001
    size = 100 << 20
    root = dir_node([("big.bin", chunk)])
    ds = forge_dataset(home, root[0], [root], size=size, entries=2, chunk_sizes={chunk: size})
    out = tmp_path / "out"
    assert_format_error(dstore("get", ds, "-o", out, "-q", check=False), out)
    assert_format_error(dstore("cat", f"{ds}/big.bin", check=False))


def _chain(depth: int, chunk: bytes) -> tuple[object, list[tuple[object, bytes]]]:
    """Folders ``d/d/…/d/f.bin``, ``depth`` folders below the root."""
    node = dir_node([("f.bin", chunk)])
    blocks = [node]
    for _ in range(depth):
        node = dir_node([("d", _bytes(node[0]))])
        blocks.append(node)
    return node[0], blocks


def _remove_deep(*paths: Path) -> None:
    """Remove trees deeper than Python's recursion limit (pytest's own cleanup of tmp_path recurses)."""
    subprocess.run(["rm", "-rf", *map(str, paths)], check=True)


def test_a_1200_deep_dataset_is_read(home: Path, dstore, tmp_path: Path, chunk: bytes):  # noqa: ANN001
    root, blocks = _chain(1200, chunk)
    ds = forge_dataset(home, root, blocks, size=10_000, entries=1202)
    out = tmp_path / "o"
    try:
        dstore("get", ds, "-o", out, "-q")
        assert (out / ("d/" * 1200) / "f.bin").read_bytes() == b"a" * 10_000
    finally:
        _remove_deep(out)


def test_a_dataset_deeper_than_the_limit_is_a_format_error(home: Path, dstore, tmp_path: Path, chunk: bytes):  # noqa: ANN001
    root, blocks = _chain(MAX_TREE_DEPTH + 1, chunk)
    ds = forge_dataset(home, root, blocks, size=10_000, entries=MAX_TREE_DEPTH + 3)
    with Store(home) as store, DatasetReader(store, ds) as reader:
        with pytest.raises(FormatError, match="deeper than 4096"):
            for _ in reader.walk():
                pass


def test_add_and_get_of_a_700_deep_folder(home: Path, dstore, tmp_path: Path) -> None:  # noqa: ANN001
    src = tmp_path / "src"
    deep = src.joinpath(*["d"] * 700)
    deep.mkdir(parents=True)
    (deep / "f.txt").write_bytes(b"bottom\n")
    out = tmp_path / "out"
    try:
        ds = dstore("add", src, "-q").out.strip().split()[-1]
        dstore("get", ds, "-o", out, "-q")
        assert snapshot(out) == snapshot(src)
    finally:
        _remove_deep(src, out)


def test_empty_file_is_the_empty_raw_block_end_to_end(home: Path, dstore, tmp_path: Path) -> None:  # noqa: ANN001
    src = tmp_path / "src"
    src.mkdir()
    (src / "empty").write_bytes(b"")
    (src / "x").write_bytes(b"x")
    out = tmp_path / "out"
    try:
        ds = dstore("add", src, "-q").out.strip().split()[-1]
        dstore("get", ds, "-o", out, "-q")
        assert snapshot(out) == snapshot(src)
    finally:
        _remove_deep(src, out)
    assert dstore("cat", f"{ds}/empty").out == ""
    car = tmp_path / "x.car"
    dstore("export", ds, "-o", car)
    got = dict(CarReader(car.read_bytes()))
    assert got[make_cid(RAW, b"")] == b""
    dstore("verify", ds)
