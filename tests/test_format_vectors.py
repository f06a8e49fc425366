"""Known-answer vectors of the format layer: tests/vectors/format_vectors.json.

Two kinds, read by any implementation of docs/format.md:

- ``ipfs``: sha2-256 CIDs produced by real IPFS tools (go-ipfs's well-known
  empty directory and empty file; ipfs-car 3.1.0 ``pack``). They are facts
  about IPFS and are never regenerated.
- ``dstore``: BLAKE3 pins of dstore's own structures (UnixFS tree, manifest,
  pack record, locator, HAMT keys). Changing one is a format version bump.
  ``DSTORE_REGEN_VECTORS=1 pytest tests/test_format_vectors.py`` rewrites
  only this section.

Trees are described in JSON: a file is ``{"utf8": text}``, ``{"hex": hex}``
or ``{"pattern": {"mul": a, "add": b, "mod": m, "len": n}}`` (byte i is
``(a*i + b) % m``); a directory is ``{"dir": {name: node}}`` or
``{"generate": {"count": n, "name": fmt, "utf8": fmt, "pad": w}}`` (``{i}`` is
replaced by i, zero-padded to w digits in names; an optional ``"rename"``
maps generated names to others),
either with an optional ``"hamt_threshold"``. ``chunk_size`` cuts files into
fixed-size chunks (the chunker is not under test here).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from dstore.format import cbor
from dstore.format.cid import DAG_CBOR, DAG_PB, RAW, hash_digest, make_cid, parse_cid
from dstore.format.locator import Locator, build_locator
from dstore.format.manifest import ChunkerParams, Manifest
from dstore.format.pack import PackRecord, shard_size
from dstore.format.unixfs import DEFAULT_HAMT_THRESHOLD_BYTES, build_file, hamt_hash

from test_format_tree import build_tree, getter, read_tree

PATH = Path(__file__).parent / "vectors" / "format_vectors.json"
VECTORS = json.loads(PATH.read_text(encoding="utf-8"))


def realize(spec: dict[str, Any], path: str = "/", thresholds: dict[str, int] | None = None) -> Any:
    """Turn a JSON tree description into the nested dict/bytes test_format_tree builds."""
    if thresholds is None:
        thresholds = {}
    if "utf8" in spec:
        return spec["utf8"].encode("utf-8")
    if "hex" in spec:
        return bytes.fromhex(spec["hex"])
    if "pattern" in spec:
        p = spec["pattern"]
        return bytes((p["mul"] * i + p["add"]) % p["mod"] for i in range(p["len"]))
    if "hamt_threshold" in spec:
        thresholds[path] = spec["hamt_threshold"]
    if "dir" in spec:
        return {name: realize(sub, f"{path.rstrip('/')}/{name}", thresholds) for name, sub in spec["dir"].items()}
    if "generate" in spec:
        g = spec["generate"]
        out = {
            g["name"].replace("{i}", str(i).zfill(g.get("pad", 0))): g["utf8"].replace("{i}", str(i)).encode("utf-8")
            for i in range(g["count"])
        }
        for old, new in g.get("rename", {}).items():
            out[new] = out.pop(old)
        return out
    raise AssertionError(f"bad tree spec {spec}")


def build_case(case: dict[str, Any]) -> tuple[Any, Any, dict[bytes, bytes]]:
    thresholds: dict[str, int] = {}
    tree = realize(case["tree"], "/", thresholds)
    h = case["hash"]
    if not isinstance(tree, dict):  # a lone file: its own DAG
        size = case.get("chunk_size", 1 << 20)
        pieces = [tree[i : i + size] for i in range(0, len(tree), size)]
        leaves = [(make_cid(RAW, p, h), len(p)) for p in pieces]
        root, blocks, _ = build_file(leaves, h)
        store = {c.to_bytes(): b for c, b in blocks}
        store.update({c.to_bytes(): p for (c, _), p in zip(leaves, pieces, strict=True)})
        if not pieces:  # the empty raw block
            store[root.to_bytes()] = b""
        return tree, root, store
    root, store, _, _ = build_tree(
        tree,
        hash_name=h,
        chunk_size=case.get("chunk_size", 1 << 20),
        shard=lambda p: thresholds.get(p, DEFAULT_HAMT_THRESHOLD_BYTES),
    )
    return tree, root, store


@pytest.mark.parametrize("case", VECTORS["ipfs"]["unixfs"], ids=lambda c: c["name"])
def test_ipfs_known_answers(case: dict[str, Any]) -> None:
    tree, root, store = build_case(case)
    assert str(root) == case["cid"], case.get("source")
    assert parse_cid(case["cid"]) == root
    if "cidv0" in case:
        assert parse_cid(case["cidv0"]) == root
    if "block_hex" in case:
        assert store[root.to_bytes()].hex() == case["block_hex"]
    assert read_tree(getter(store), root) == tree


@pytest.mark.parametrize("case", VECTORS["ipfs"]["read_only"], ids=lambda c: c["name"])
def test_ipfs_blocks_we_read_but_no_longer_write(case: dict[str, Any]) -> None:
    """Other writers' forms (the dag-pb empty file) stay readable though version 2 writes another."""
    block = bytes.fromhex(case["block_hex"])
    cid = make_cid(DAG_PB, block, case["hash"])
    assert str(cid) == case["cid"] and parse_cid(case["cidv0"]) == cid
    assert read_tree(getter({cid.to_bytes(): block}), cid) == realize(case["tree"])


def test_manifest_vector_counts_its_tree() -> None:
    """The manifest pin's size and entries are what its tree yields (files + folders, root included)."""
    spec = VECTORS["dstore"]
    m_in = spec["manifest"]["input"]
    tree = realize(next(c for c in spec["unixfs"] if c["name"] == m_in["root_of"])["tree"])

    def count(t: Any) -> tuple[int, int]:
        if not isinstance(t, dict):
            return 1, len(t)
        sub = [count(v) for v in t.values()]
        return 1 + sum(e for e, _ in sub), sum(b for _, b in sub)

    assert count(tree) == (m_in["entries"], m_in["size"])


def test_ipfs_raw_blocks() -> None:
    for case in VECTORS["ipfs"]["raw"]:
        assert str(make_cid(RAW, bytes.fromhex(case["hex"]), "sha2-256")) == case["cid"]


# ----------------------------------------------------------------------- dstore pins


def dstore_values() -> dict[str, Any]:
    """Compute every dstore pin from the inputs described in the vectors file."""
    spec = VECTORS["dstore"]
    out: dict[str, Any] = {"unixfs": {}}
    for case in spec["unixfs"]:
        _, root, _ = build_case(case)
        out["unixfs"][case["name"]] = str(root)
    m_in = spec["manifest"]["input"]
    tree_root = parse_cid(out["unixfs"][m_in["root_of"]])
    m = Manifest(
        root=tree_root,
        size=m_in["size"],
        entries=m_in["entries"],
        chunker=ChunkerParams(**m_in["chunker"]),
        meta=m_in["meta"],
        parent=parse_cid(m_in["parent"]),
    )
    out["manifest"] = {"cid": str(m.cid), "block_hex": m.encode().hex()}
    p_in = spec["pack"]["input"]
    rec = PackRecord(
        k=p_in["k"],
        m=p_in["m"],
        size=p_in["size"],
        shard_size=shard_size(p_in["size"], p_in["k"]),
        shards=tuple(make_cid(RAW, bytes([i])) for i in range(p_in["k"] + p_in["m"])),
    )
    out["pack"] = {
        "cid": str(rec.cid()),
        "block_hex": rec.encode().hex(),
        "shard_size": rec.shard_size,
    }
    loc_root, _ = _locator(spec["locator"]["input"], m.cid, rec)
    out["locator"] = {"root": str(loc_root)}
    out["hamt_hash"] = {name: hamt_hash(name.encode("utf-8")).hex() for name in spec["hamt_hash"]}
    return out


def _locator(inp: dict[str, Any], dataset: Any, rec: PackRecord) -> tuple[Any, list]:
    """``count`` chunks: digest = BLAKE3("chunk {i}"), all in pack i % packs, raw, 100 bytes at 100*i."""
    packs = []
    for j in range(inp["packs"]):
        r = PackRecord(
            rec.k,
            rec.m,
            100 * inp["count"],
            shard_size(100 * inp["count"], rec.k),
            rec.shards,
        )
        packs.append((cbor.block_cid(r.encode()), r))
    entries = [
        (hash_digest(f"chunk {i}".encode()), i % inp["packs"], 100 * i, 100, 100, 0) for i in range(inp["count"])
    ]
    return build_locator(dataset, entries, packs)


def test_dstore_pins() -> None:
    got = dstore_values()
    spec = VECTORS["dstore"]
    if os.environ.get("DSTORE_REGEN_VECTORS"):
        for case in spec["unixfs"]:
            case["cid"] = got["unixfs"][case["name"]]
        spec["manifest"].update(got["manifest"])
        spec["pack"].update(got["pack"])
        spec["locator"].update(got["locator"])
        spec["hamt_hash"] = got["hamt_hash"]
        PATH.write_text(json.dumps(VECTORS, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        pytest.skip("vectors regenerated")
    for case in spec["unixfs"]:
        assert got["unixfs"][case["name"]] == case["cid"], case["name"]
    assert got["manifest"]["cid"] == spec["manifest"]["cid"]
    assert got["manifest"]["block_hex"] == spec["manifest"]["block_hex"]
    assert Manifest.decode(bytes.fromhex(spec["manifest"]["block_hex"])).cid == parse_cid(spec["manifest"]["cid"])
    assert got["pack"] == {k: spec["pack"][k] for k in ("cid", "block_hex", "shard_size")}
    assert got["locator"]["root"] == spec["locator"]["root"]
    assert got["hamt_hash"] == spec["hamt_hash"]


def test_dstore_locator_vector_reads_back() -> None:
    spec = VECTORS["dstore"]
    rec = PackRecord.decode(bytes.fromhex(spec["pack"]["block_hex"]))
    dataset = parse_cid(spec["manifest"]["cid"])
    assert dataset.codec == DAG_CBOR
    root, blocks = _locator(spec["locator"]["input"], dataset, rec)
    store = {c.to_bytes(): b for c, b in blocks}
    loc = Locator(lambda c: store[c.to_bytes()], root)
    e = loc.find(hash_digest(b"chunk 5000"))
    assert e is not None and (e.offset, e.stored_len) == (500000, 100)
    assert loc.pack(e.pack_index)[1].k == rec.k
