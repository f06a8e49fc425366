"""Whole trees through the format layer: build with the builders, read back with the readers.

``build_tree`` and ``read_tree`` are also used by test_format_vectors and
test_format_interop (fixed-size chunking stands in for the real chunker:
the UnixFS layout does not depend on how chunks were cut).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dstore.format.car import CarReader, encode_car
from dstore.format.cid import CID, RAW, cid_bytes_from_digest, hash_digest
from dstore.format.unixfs import (
    build_directory,
    build_file,
    directory_entries,
    parse_node,
)

Tree = dict  # name -> bytes (a file) or Tree (a directory)


def build_tree(
    tree: Tree,
    *,
    hash_name: str = "blake3",
    chunk_size: int = 1 << 20,
    shard: Callable[[str], int] | None = None,
    path: str = "",
) -> tuple[CID, dict[bytes, bytes], int, list[tuple[CID, bytes]]]:
    """Build ``tree``; return (root, {cid bytes: block}, root tsize, blocks in depth-first order).

    ``shard(path)`` gives the HAMT threshold for the directory at ``path``
    (default: the format's 256 KiB).
    """
    store: dict[bytes, bytes] = {}
    order: list[tuple[CID, bytes]] = []

    def put(cid: CID, block: bytes) -> None:
        cb = cid.to_bytes()
        if cb not in store:
            store[cb] = block
            order.append((cid, block))

    entries = []
    for name, value in tree.items():
        sub = f"{path}/{name}"
        if isinstance(value, dict):
            cid, _sub_store, tsize, sub_order = build_tree(
                value, hash_name=hash_name, chunk_size=chunk_size, shard=shard, path=sub
            )
            for c, b in sub_order:
                put(c, b)
        else:
            pieces = [value[i : i + chunk_size] for i in range(0, len(value), chunk_size)]
            leaves = []
            for p in pieces:
                cb = cid_bytes_from_digest(RAW, hash_digest(p, hash_name), hash_name)
                leaves.append((cb, len(p)))
                put(CID.from_bytes(cb), p)
            cid, blocks, tsize = build_file(leaves, hash_name)
            if not pieces:  # an empty file is the empty raw block
                put(cid, b"")
            for c, b in blocks:
                put(c, b)
        entries.append((name, cid, tsize))
    kwargs = {} if shard is None else {"hamt_threshold_bytes": shard(path or "/")}
    root, blocks, tsize = build_directory(entries, hash_name, **kwargs)
    for c, b in blocks:
        put(c, b)
    return root, store, tsize, order


def read_tree(get: Callable[[CID], bytes], root: CID) -> Tree | bytes:
    """Read a file or directory back with the format readers only."""
    node = parse_node(root, get(root))
    if node.is_dir:
        out: Tree = {}
        for link in directory_entries(get, node):
            assert link.name not in out
            out[link.name] = read_tree(get, link.cid)
        return out
    if node.kind in ("raw", "file"):
        parts = [node.data]
        for link in node.links:
            sub = read_tree(get, link.cid)
            assert isinstance(sub, bytes)
            parts.append(sub)
        data = b"".join(parts)
        assert len(data) == node.filesize
        return data
    raise AssertionError(node.kind)


def dag_size(get: Callable[[CID], bytes], root: CID) -> int:
    """Bytes of every block under ``root``, counted once per path (what Tsize means)."""
    block = get(root)
    if root.codec == RAW:
        return len(block)
    node = parse_node(root, block)
    total = len(block)
    for link in node.links:
        sub = dag_size(get, link.cid)
        assert link.tsize == sub
        total += sub
    return total


def getter(store: dict[bytes, bytes]) -> Callable[[CID], bytes]:
    return lambda cid: store[cid.to_bytes()]


def sample_tree() -> Tree:
    many = {f"n{i:03d}-ü": bytes([i % 256]) * (i % 7) for i in range(300)}
    return {
        "empty": b"",
        "one": b"one chunk",
        "multi": bytes(range(256)) * 8,  # 2048 bytes, 4-byte chunks -> 512 leaves, two levels
        "日本語 ✓": b"unicode name",
        "nested": {"deeper": {"x": b"x" * 10, "emptydir": {}}, "y": b"y"},
        "sharded": many,
    }


@pytest.mark.parametrize("hash_name", ["blake3", "sha2-256"])
def test_tree_round_trip_with_hamt(hash_name: str) -> None:
    tree = sample_tree()
    root, store, tsize, _order = build_tree(
        tree,
        hash_name=hash_name,
        chunk_size=4,
        shard=lambda p: 1 if p == "/sharded" else 1 << 20,
    )
    assert read_tree(getter(store), root) == tree
    assert tsize == dag_size(getter(store), root)
    root_node = parse_node(root, store[root.to_bytes()])
    assert root_node.kind == "dir"
    sharded = next(ln for ln in root_node.links if ln.name == "sharded")
    assert parse_node(sharded.cid, store[sharded.cid.to_bytes()]).kind == "hamt"


def test_car_round_trip_of_tree() -> None:
    tree = sample_tree()
    root, store, _, order = build_tree(tree, chunk_size=4, shard=lambda p: 1)
    car = encode_car([root], order)
    reader = CarReader(car)
    assert reader.roots == [root]
    got = {cid.to_bytes(): block for cid, block in reader}
    assert got == store
    assert read_tree(getter(got), root) == tree


names = st.text(
    alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))
trees = st.recursive(
    st.dictionaries(names, st.binary(max_size=40), max_size=5),
    lambda children: st.dictionaries(names, st.one_of(st.binary(max_size=40), children), max_size=5),
    max_leaves=25,
)


@settings(max_examples=60)
@given(tree=trees, chunk=st.integers(1, 9), threshold=st.sampled_from([1, 200, 1 << 20]))
def test_random_trees_round_trip(tree: Tree, chunk: int, threshold: int) -> None:
    root, store, _, _ = build_tree(tree, chunk_size=chunk, shard=lambda p: threshold)
    assert read_tree(getter(store), root) == tree
