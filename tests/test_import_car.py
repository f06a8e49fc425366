"""``dstore import``: CARs from IPFS tools (and hand-built ones) become datasets; bad CARs store nothing.

Real parts only: the CLI in a subprocess, the real npm ``ipfs-car`` (pinned in
tests/interop/package.json) for CARs "whatever made them", and CARs built
with dstore's own dag-pb/UnixFS encoders for the shapes ipfs-car does not
write (CIDv0 roots, dag-pb leaves with inline Data, identity CIDs, CAR v2).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from multiformats.multihash import Multihash

from dstore.format.car import car_block, car_header, encode_car
from dstore.format.cid import CID, IDENTITY, RAW, make_cid
from dstore.format.dagpb import PBLink, encode_node, encode_varint
from dstore.format.unixfs import T_DIRECTORY, T_FILE, UnixFSData, encode_data

INTEROP = Path(__file__).parent / "interop"
IPFS_CAR = INTEROP / "node_modules" / ".bin" / "ipfs-car"
needs_ipfs_car = pytest.mark.skipif(not IPFS_CAR.exists(), reason="ipfs-car not installed: run `make install`")


def ipfs_car(*args: str | Path) -> str:
    proc = subprocess.run([str(IPFS_CAR), *map(str, args)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"ipfs-car {args} failed:\n{proc.stderr}"
    return proc.stdout.strip()


def same_tree(a: Path, b: Path) -> None:
    names_a = sorted(p.relative_to(a) for p in a.rglob("*"))
    names_b = sorted(p.relative_to(b) for p in b.rglob("*"))
    assert names_a == names_b
    for rel in names_a:
        if (a / rel).is_file():
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def shard_files(home: Path) -> list[Path]:
    return [p for p in (home / "shards").rglob("*") if p.is_file()] if (home / "shards").exists() else []


# --------------------------------------------------------------------------- hand-built DAGs


def v0(block: bytes) -> bytes:
    """Binary CIDv0 (a bare sha2-256 multihash) of a dag-pb block."""
    return b"\x12\x20" + hashlib.sha256(block).digest()


def identity_raw(data: bytes) -> CID:
    return CID(1, RAW, Multihash.wrap(IDENTITY, data))


def dagpb_leaf(data: bytes) -> bytes:
    return encode_node([], encode_data(UnixFSData(type=T_FILE, data=data, filesize=len(data))))


def cidv0_car(tmp_path: Path) -> tuple[Path, dict[str, bytes], str]:
    """A Kubo-style CIDv0 DAG: dag-pb leaves with inline Data, CIDv0 links, an identity raw leaf and file.

    Returns (CAR path, expected files, root CIDv0 text).
    """
    part1, part2, tail = os.urandom(3000), os.urandom(2000), b"tail!"
    leaf1, leaf2 = dagpb_leaf(part1), dagpb_leaf(part2)
    tail_cid = identity_raw(tail)
    # A file node with inline Data of its own, then two dag-pb leaves and an identity raw leaf.
    head = b"head-"
    sizes = (len(part1), len(part2), len(tail))
    file_node = encode_node(
        [PBLink(v0(leaf1), "", len(leaf1)), PBLink(v0(leaf2), "", len(leaf2)), PBLink(tail_cid.to_bytes(), "", 5)],
        encode_data(UnixFSData(type=T_FILE, data=head, filesize=len(head) + sum(sizes), blocksizes=sizes)),
    )
    small = b"inline file"
    single = dagpb_leaf(b"one dag-pb block")
    folder = encode_node(
        [
            PBLink(v0(file_node), "big", len(file_node)),
            PBLink(identity_raw(small).to_bytes(), "small", len(small)),
            PBLink(v0(single), "single", len(single)),
        ],
        encode_data(UnixFSData(type=T_DIRECTORY)),
    )
    root = CID.from_bytes(v0(folder))
    blocks = [(v0(b), b) for b in (folder, file_node, leaf1, leaf2, single)]
    path = tmp_path / "v0.car"
    path.write_bytes(encode_car([root], blocks))
    files = {"big": head + part1 + part2 + tail, "small": small, "single": b"one dag-pb block"}
    return path, files, str(root)


def car_v2(v1: bytes, padding: int = 7) -> bytes:
    """CAR v2 around a CAR v1 payload, with padding before it and a junk "index" after (readers ignore it)."""
    pragma = bytes.fromhex("0aa16776657273696f6e02")
    data_offset = len(pragma) + 40 + padding
    header = bytes(16) + data_offset.to_bytes(8, "little") + len(v1).to_bytes(8, "little")
    header += (data_offset + len(v1)).to_bytes(8, "little")
    return pragma + header + bytes(padding) + v1 + b"\x80\x04junk-index"


# --------------------------------------------------------------------------- round trips


@needs_ipfs_car
def test_ipfs_car_pack_imports_and_gets_back(dstore, tmp_path: Path) -> None:
    src = tmp_path / "data"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "big.bin").write_bytes(os.urandom(2_600_000))  # three 1 MiB chunks under one File node
    (src / "a.txt").write_text("hello\n")
    (src / "empty").write_bytes(b"")
    (src / "sub" / "deeper" / "b.csv").write_text("x,y\n1,2\n" * 1000)
    car = tmp_path / "data.car"
    ipfs_car("pack", src, "--no-wrap", "--output", car)
    root = ipfs_car("roots", car)

    out = json.loads(dstore("import", car, "--json", "--shards", "3+2").out)
    assert out["root"] == root  # IPFS readers see the same root
    assert out["profile"] == "car-import"
    assert (out["files"], out["entries"], out["bytes_in"]) == (4, 7, 2_600_000 + 6 + 8000)
    dstore("get", out["cid"], "-o", tmp_path / "back")
    same_tree(src, tmp_path / "back")
    # The manifest keeps the CAR's root; `ls` resolves through the imported nodes.
    listing = dstore("ls", out["cid"]).out
    assert dstore("cat", f"{out['cid']}/a.txt").out == "hello\n"  # sha2-256 chunks, verified in Python
    assert "big.bin" in listing and "sub" in listing
    # Importing the same CAR again stores no new chunk (dedup as add does) and names the same dataset.
    again = json.loads(dstore("import", car, "--json", "--shards", "3+2").out)
    assert again["cid"] == out["cid"] and again["new_chunks"] == 0


def test_dstore_export_blake3_imports(dstore, tmp_path: Path, home: Path) -> None:
    src = tmp_path / "data"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(300_000))
    (src / "g").write_text("g" * 100)
    dataset = dstore("add", src, "-q").out.strip()
    dstore("export", dataset, "-o", tmp_path / "x.car")
    root = json.loads(dstore("add", src, "-q", "--json").out)["root"]
    other = tmp_path / "other"
    env = {"DSTORE_HOME": str(other)}
    out = json.loads(dstore("import", tmp_path / "x.car", "--json", env=env).out)
    assert out["root"] == root
    dstore("get", out["cid"], "-o", tmp_path / "back", env=env)
    same_tree(src, tmp_path / "back")


def test_cidv0_root_dagpb_leaves_and_identity_blocks(dstore, tmp_path: Path) -> None:
    car, files, root = cidv0_car(tmp_path)
    out = json.loads(dstore("import", car, "--json").out)
    assert out["root"] == root and root.startswith("Qm")
    assert out["files"] == 3 and out["bytes_in"] == sum(map(len, files.values()))
    dstore("get", out["cid"], "-o", tmp_path / "back")
    for name, data in files.items():
        assert (tmp_path / "back" / name).read_bytes() == data
    # The store's gc can still read what the dataset needs (CIDv0 links, identity CIDs): it deletes nothing.
    before = json.loads(dstore("stat", "--json").out)
    dstore("gc")
    assert json.loads(dstore("stat", "--json").out)["shards"] == before["shards"]
    dstore("get", out["cid"], "-o", tmp_path / "again")


def test_car_v2_imports_like_its_payload(dstore, tmp_path: Path) -> None:
    car, files, _ = cidv0_car(tmp_path)
    v2 = tmp_path / "v2.car"
    v2.write_bytes(car_v2(car.read_bytes()))
    first = dstore("import", car).out.strip()
    assert dstore("import", v2).out.strip() == first
    dstore("get", first, "-o", tmp_path / "back")
    assert (tmp_path / "back" / "big").read_bytes() == files["big"]


def test_multi_root_car_gives_a_dataset_per_root(dstore, tmp_path: Path) -> None:
    a, b = b"first file", b"second file" * 50
    ca, cb = make_cid(RAW, a, "sha2-256"), make_cid(RAW, b, "sha2-256")
    loose = make_cid(0x71, b"\xa0", "sha2-256")  # a dag-cbor block no root reaches: kept, servable
    car = tmp_path / "two.car"
    car.write_bytes(encode_car([ca, cb], [(ca, a), (cb, b), (loose, b"\xa0")]))
    lines = [json.loads(line) for line in dstore("import", car, "--json").out.splitlines()]
    assert [x["bytes_in"] for x in lines] == [len(a), len(b)]
    assert [x["extra_blocks"] for x in lines] == [1, 0]
    assert dstore("cat", lines[1]["cid"]).out.encode() == b


# --------------------------------------------------------------------------- bad CARs: nothing stored


def _bad_cars(tmp_path: Path) -> dict[str, tuple[bytes, int]]:
    good, _, _ = cidv0_car(tmp_path)
    data = good.read_bytes()
    leaf = dagpb_leaf(b"z" * 100)
    root = CID.from_bytes(v0(leaf))
    flipped = bytearray(encode_car([root], [(v0(leaf), leaf)]))
    flipped[-1] ^= 1
    folder = encode_node([PBLink(v0(leaf), "f", len(leaf))], encode_data(UnixFSData(type=T_DIRECTORY)))
    lying = encode_node(
        [PBLink(v0(leaf), "", len(leaf))],
        encode_data(UnixFSData(type=T_FILE, filesize=1 << 40, blocksizes=(1 << 40,))),
    )
    return {
        "truncated": (data[:-10], 5),
        "mismatch": (bytes(flipped), 6),
        # A section that claims 1 GiB: refused before anything is allocated for it.
        "oversized": (car_header([root]) + encode_varint(1 << 30) + v0(leaf), 5),
        "missing block": (encode_car([CID.from_bytes(v0(folder))], [(v0(folder), folder)]), 5),
        "lying blocksizes": (encode_car([CID.from_bytes(v0(lying))], [(v0(lying), lying), (v0(leaf), leaf)]), 5),
        "bad v2 offset": (bytes.fromhex("0aa16776657273696f6e02") + bytes(16) + (1 << 62).to_bytes(8, "little"), 5),
        "no root": (car_header([]) + car_block(v0(leaf), leaf), 5),
    }


@pytest.mark.parametrize(
    "case",
    ["truncated", "mismatch", "oversized", "missing block", "lying blocksizes", "bad v2 offset", "no root"],
)
def test_bad_car_is_one_line_and_stores_nothing(dstore, tmp_path: Path, home: Path, case: str) -> None:
    data, code = _bad_cars(tmp_path)[case]
    # One good dataset first, so "nothing stored" is checked against a store that holds something.
    good = dstore("import", tmp_path / "v0.car").out.strip()
    before = json.loads(dstore("stat", "--json").out)
    files_before = sorted(shard_files(home))
    bad = tmp_path / "bad.car"
    bad.write_bytes(data)
    r = dstore("import", bad, check=False)
    assert r.code == code, r.err
    assert r.out == "" and len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert json.loads(dstore("stat", "--json").out) == before
    assert sorted(shard_files(home)) == files_before
    assert before["datasets_list"] == [good]


def test_missing_car_file_is_an_input_error(dstore, tmp_path: Path) -> None:
    r = dstore("import", tmp_path / "nope.car", check=False)
    assert r.code == 4 and len(r.err.strip().splitlines()) == 1
