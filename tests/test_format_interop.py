"""Interop with a real IPFS implementation: ipfs-car (pinned in tests/interop/package.json).

- Trees built by dstore's format layer, written as CAR v1, are unpacked by
  ipfs-car (js-ipfs's UnixFS exporter) and compared byte for byte: with BLAKE3
  (``--no-verify``: ipfs-car cannot hash BLAKE3) and with sha2-256 (verified).
- ipfs-car ``pack`` (sha2-256, raw leaves, 1 MiB chunks, CIDv1) of a folder
  gives the same root CID as dstore's builders: a known-answer test of
  dag-pb, UnixFS files, directories and HAMT sharding (ipfs-car shards a
  directory of more than 1000 entries).
- ipfs-unixfs-importer with the IPIP-0499 ``unixfs-v1-2025`` profile
  (``tests/interop/import-unixfs.mjs``) shards exactly where dstore does:
  directories whose plain node encodes to 262144 and 262145 bytes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dstore.format.car import CarReader, CarWriter, encode_car
from dstore.format.cid import RAW, cid_bytes_from_digest, hash_digest, parse_cid
from dstore.format.unixfs import build_file

from test_format_tree import Tree, build_tree, getter, read_tree

INTEROP = Path(__file__).parent / "interop"
IPFS_CAR = INTEROP / "node_modules" / ".bin" / "ipfs-car"
IMPORTER = INTEROP / "node_modules" / "ipfs-unixfs-importer"

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        not IPFS_CAR.exists(),
        reason="ipfs-car not installed: run `cd tests/interop && npm ci` (make install does)",
    ),
]


def ipfs_car(*args: str | Path, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        [str(IPFS_CAR), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"ipfs-car {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def write_tree(path: Path, tree: Tree) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name, value in tree.items():
        if isinstance(value, dict):
            write_tree(path / name, value)
        else:
            (path / name).write_bytes(value)


def load_tree(path: Path) -> Tree:
    out: Tree = {}
    for p in path.iterdir():
        out[p.name] = load_tree(p) if p.is_dir() else p.read_bytes()
    return out


def interop_tree() -> Tree:
    """Nested dirs, an empty file, a one-chunk file, a >174-leaf file, unicode, a HAMT dir."""
    return {
        "empty.txt": b"",
        "one-chunk.bin": b"small",
        # 4-byte chunks: 700 leaves -> 5 File nodes under a root (two levels).
        "multi.bin": bytes((i * 31 + 7) % 256 for i in range(2800)),
        "ünïcødé ✓ 日本": b"unicode name\n",
        "a": {"b": {"c": {"deep.txt": b"deep\n"}, "empty-dir": {}}, "z.txt": b"z" * 13},
        "shard": {f"entry-{i:03d}-é": f"value {i}\n".encode() for i in range(400)},
    }


def _pack_to_car(tmp_path: Path, hash_name: str) -> tuple[Path, Tree]:
    tree = interop_tree()
    root, store, _, order = build_tree(
        tree,
        hash_name=hash_name,
        chunk_size=4,
        shard=lambda p: 1 if p == "/shard" else 1 << 20,
    )
    # The HAMT really is there.
    assert read_tree(getter(store), root) == tree
    car = tmp_path / "tree.car"
    with car.open("wb") as f:
        w = CarWriter(f.write, [root])
        for cid, block in order:
            w.put(cid, block)
    return car, tree


@pytest.mark.parametrize("hash_name", ["blake3", "sha2-256"])
def test_ipfs_car_unpacks_our_tree(tmp_path: Path, hash_name: str) -> None:
    car, tree = _pack_to_car(tmp_path, hash_name)
    out = tmp_path / "out"
    args = ["unpack", car, "--output", out]
    if hash_name == "blake3":
        args.append("--no-verify")  # ipfs-car's block validator has no BLAKE3
    ipfs_car(*args)
    assert load_tree(out) == tree


def test_ipfs_car_lists_our_blocks_with_verification(tmp_path: Path) -> None:
    car, _ = _pack_to_car(tmp_path, "sha2-256")
    listed = {parse_cid(line) for line in ipfs_car("blocks", car).split()}
    ours = {cid for cid, _ in CarReader(car.read_bytes())}
    assert listed == ours


def test_ipfs_car_pack_gives_our_root_cid(tmp_path: Path) -> None:
    """Known answer: ipfs-car's own encoder must agree with ours, CID for CID."""
    tree: Tree = {
        "a.txt": b"hello\n",
        "ü 日本.bin": bytes(range(256)),
        "sub": {"deeper": {"x": b"x" * 1000}, "y": b"why"},
        # Two 1 MiB-chunk leaves under one File node (same under width 174 or 1024).
        "big.bin": bytes((i * 7) % 251 for i in range(3 * (1 << 19))),
        # More than 1000 entries: ipfs-car writes a HAMT shard (fanout 256, murmur3).
        "many": {f"f{i:04d}-é.txt": f"content {i}\n".encode() for i in range(1001)},
    }
    src = tmp_path / "src"
    write_tree(src, tree)
    car = tmp_path / "packed.car"
    printed = ipfs_car("pack", "src", "--output", car, cwd=tmp_path).strip()
    root, store, _, _ = build_tree(tree, hash_name="sha2-256", shard=lambda p: 1 if p == "/many" else 1 << 20)
    assert parse_cid(printed) == root
    # Every block ipfs-car wrote is one of ours, byte for byte.
    reader = CarReader(car.read_bytes())
    assert reader.roots == [root]
    for cid, block in reader:
        assert store[cid.to_bytes()] == block


def test_ipfs_car_pack_single_file_gives_our_file_cid(tmp_path: Path) -> None:
    data = bytes((i * 13) % 256 for i in range((1 << 20) + 12345))
    (tmp_path / "f.bin").write_bytes(data)
    printed = ipfs_car("pack", "f.bin", "--no-wrap", "--output", tmp_path / "f.car", cwd=tmp_path).strip()
    chunks = [data[: 1 << 20], data[1 << 20 :]]
    leaves = [(cid_bytes_from_digest(RAW, hash_digest(c, "sha2-256"), "sha2-256"), len(c)) for c in chunks]
    root, _, _ = build_file(leaves, "sha2-256")
    assert parse_cid(printed) == root


def test_ipfs_car_verification_catches_a_bad_block(tmp_path: Path) -> None:
    """Guards the verified interop run: ipfs-car really checks sha2-256 blocks."""
    car, _ = _pack_to_car(tmp_path, "sha2-256")
    reader = CarReader(car.read_bytes())
    blocks = list(reader)
    # Corrupt the last raw leaf (a chunk of a file in the HAMT directory).
    i = max(n for n, (cid, _) in enumerate(blocks) if cid.codec == RAW)
    cid, block = blocks[i]
    blocks[i] = (cid, bytes([block[0] ^ 1]) + block[1:])
    car.write_bytes(encode_car(reader.roots, blocks))
    proc = subprocess.run(
        [str(IPFS_CAR), "unpack", str(car), "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode != 0


def _folder_of_block_size(block_bytes: int) -> Tree:
    """Files ``0000000``… holding ``x``, one name padded so the plain directory node is ``block_bytes`` long.

    Each link is 51 bytes (field header 2, Hash 2 + 36, Name 2 + 7, Tsize 2),
    the Data field 4.
    """
    n, gap = divmod(block_bytes - 4, 51)
    tree: Tree = {f"{i:07d}": b"x" for i in range(n)}
    del tree["0000000"]
    tree["0000000" + "p" * gap] = b"x"
    return tree


@pytest.mark.skipif(not IMPORTER.exists(), reason="ipfs-unixfs-importer not installed: cd tests/interop && npm ci")
@pytest.mark.parametrize(("block_bytes", "kind"), [(262144, "dir"), (262145, "hamt")])
def test_unixfs_importer_profile_shards_where_we_do(tmp_path: Path, block_bytes: int, kind: str) -> None:
    """Known answer at the IPIP-0499 edge: a node of exactly 256 KiB stays plain, one byte more is a HAMT."""
    tree = _folder_of_block_size(block_bytes)
    plain, plain_store, _, _ = build_tree(tree, hash_name="sha2-256", shard=lambda p: 1 << 30)
    assert len(plain_store[plain.to_bytes()]) == block_bytes
    root, store, _, _ = build_tree(tree, hash_name="sha2-256")
    from dstore.format.unixfs import parse_node

    assert parse_node(root, store[root.to_bytes()]).kind == kind
    src = tmp_path / "src"
    write_tree(src, tree)
    proc = subprocess.run(
        ["node", str(INTEROP / "import-unixfs.mjs"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert parse_cid(proc.stdout.strip()) == root
