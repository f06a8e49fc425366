"""Import profiles of ``dstore add`` (docs/format.md, "Profiles"; docs/ipfs.md, "Import profiles").

- ``--profile unixfs-v1-2025`` (IPIP-0499: CIDv1, raw leaves, sha2-256, fixed
  1 MiB chunks, 1024 links per file node, HAMT by block bytes) gives the root
  CIDs ipfs-unixfs-importer 17.1.1 gives with ``profile: "unixfs-v1-2025"``:
  known answers in tests/vectors/profiles.json, made by
  tests/interop/import-profile.mjs, and checked against the importer itself
  in the ``interop`` tests below. A file of more than 1024 chunks (over 1 GiB
  at 1 MiB) is too big for a test: the 1024-wide layout is checked on
  64-byte chunks (the importer takes another chunk size and keeps the
  profile's width), through the native fixed-size chunker and
  ``unixfs.build_file``, and on 1024 x 1024 + 1 one-byte chunks for a third
  level (``build_file`` alone: the chunker's smallest size is 64 bytes).
- ``--hash sha2-256`` keeps dstore's chunker and hashes every CID with sha2-256.
- Both round-trip through ``dstore get``; chunks are hashed and verified with
  SHA-256 in Rust, equal to hashlib's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from peerutil import running_peers

from dstore import _native
from dstore.fetch.reader import DatasetReader
from dstore.format.cid import CID, HASH_CODES, parse_cid, raw_cid_bytes
from dstore.format.manifest import FIXED_CHUNKER_NAME, PROFILE_UNIXFS_V1_2025, ChunkerParams, Manifest
from dstore.format.unixfs import UNIXFS_V1_2025_LINKS_PER_NODE, build_file
from dstore.store import Store
from dstore.store.metadata import read_pointer

MIB = 1 << 20
SHA2_256 = HASH_CODES["sha2-256"]
VECTORS = json.loads(Path(__file__).with_name("vectors").joinpath("profiles.json").read_text())
INTEROP = Path(__file__).parent / "interop"
IMPORT_PROFILE = INTEROP / "import-profile.mjs"
NODE = shutil.which("node")
HAS_IMPORTER = NODE is not None and (INTEROP / "node_modules" / "ipfs-unixfs-importer").exists()
needs_importer = pytest.mark.skipif(
    not HAS_IMPORTER, reason="ipfs-unixfs-importer not installed: run `cd tests/interop && npm ci`"
)

#: The files of the known answers: name -> size (around the 1 MiB chunk boundary).
FILE_SIZES = {"empty": 0, "one": 1, "mib-1": MIB - 1, "mib": MIB, "mib+1": MIB + 1}
#: Layout vectors: file sizes cut into 64-byte chunks (1024 leaves fill one node; 1025 need a second level).
LAYOUT_CHUNK_BYTES = 64
LAYOUT_SIZES = [64 * 1024, 64 * 1024 + 1, 64 * 3000 + 5]


def content(name: str, size: int) -> bytes:
    """The deterministic bytes of a vector file."""
    return hashlib.shake_256(b"dstore-profiles/" + name.encode()).digest(size)


def write_tree(root: Path) -> Path:
    """The known-answer folder: every FILE_SIZES file, a subfolder, and a folder big enough to be a HAMT."""
    tree = root / "tree"
    (tree / "sub").mkdir(parents=True)
    for name, size in FILE_SIZES.items():
        (tree / name).write_bytes(content(name, size))
    (tree / "sub" / "small").write_bytes(content("small", 1000))
    wide = tree / "wide"  # 2000 entries of 100-byte names: the plain node is over 256 KiB
    wide.mkdir()
    for i in range(2000):
        (wide / f"{i:04d}-{'x' * 95}").write_bytes(str(i % 7).encode())
    return tree


def importer(path: Path, chunk_bytes: int | None = None) -> dict[str, object]:
    args = [str(NODE), str(IMPORT_PROFILE), str(path), PROFILE_UNIXFS_V1_2025]
    if chunk_bytes is not None:
        args.append(str(chunk_bytes))
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def add_json(dstore, path: Path, *options: str) -> dict[str, object]:
    return json.loads(dstore("add", "-q", "--json", *options, path).out)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tree(tmp_path_factory.mktemp("profiles"))


# --------------------------------------------------------------------------- known answers


def test_unixfs_profile_root_of_a_tree_is_the_known_answer(dstore, tree: Path) -> None:
    got = add_json(dstore, tree, "--profile", "unixfs-v1-2025", "--shards", "3+1")
    assert got["root"] == VECTORS["tree"]
    assert got["cid"].startswith("bafyrei")  # the dataset ID is sha2-256 too


@pytest.mark.parametrize("name", list(FILE_SIZES))
def test_unixfs_profile_root_of_each_file_is_the_known_answer(dstore, tree: Path, name: str) -> None:
    got = add_json(dstore, tree / name, "--profile", "unixfs-v1-2025")
    assert got["root"] == VECTORS["files"][name]


def test_the_empty_file_is_the_empty_raw_block() -> None:
    assert VECTORS["files"]["empty"] == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def layout_root(size: int) -> str:
    """The root CID of a LAYOUT_SIZES file: native fixed-size chunks and SHA-256, the 1024-wide layout."""
    data = content(f"layout-{size}", size)
    c = LAYOUT_CHUNK_BYTES
    seg = _native.process_segment(data, True, c, c, c, 0, SHA2_256)
    digests = seg.digests
    leaves = [(raw_cid_bytes(digests[32 * i : 32 * i + 32], "sha2-256"), n) for i, n in enumerate(seg.lengths)]
    assert len(leaves) == -(-size // c)
    return str(build_file(leaves, "sha2-256", UNIXFS_V1_2025_LINKS_PER_NODE)[0])


@pytest.mark.parametrize("size", LAYOUT_SIZES)
def test_1024_links_layout_is_the_known_answer(size: int) -> None:
    assert layout_root(size) == VECTORS["layout_64"][str(size)]


#: One-byte chunks (the importer takes any size; dstore's chunker stops at 64 bytes, so leaves are built here):
#: 1024 x 1024 + 1 leaves need a third level of 1024-wide nodes.
DEEP_LAYOUT_BYTES = 1024 * 1024 + 1


@pytest.mark.slow
def test_three_levels_of_1024_links_is_the_known_answer() -> None:
    data = content(f"layout-1-{DEEP_LAYOUT_BYTES}", DEEP_LAYOUT_BYTES)
    ids = [raw_cid_bytes(hashlib.sha256(bytes([b])).digest(), "sha2-256") for b in range(256)]
    root, blocks, _ = build_file([(ids[b], 1) for b in data], "sha2-256", UNIXFS_V1_2025_LINKS_PER_NODE)
    assert len(blocks) == 1025 + 2 + 1  # 1025 nodes over leaves, 2 over those, the root
    assert str(root) == VECTORS["layout_1"][str(DEEP_LAYOUT_BYTES)]


@pytest.mark.slow
@pytest.mark.interop
@needs_importer
def test_three_level_vector_is_what_the_importer_makes(tmp_path: Path) -> None:
    path = tmp_path / "deep"
    path.write_bytes(content(f"layout-1-{DEEP_LAYOUT_BYTES}", DEEP_LAYOUT_BYTES))
    assert importer(path, 1)["root"] == VECTORS["layout_1"][str(DEEP_LAYOUT_BYTES)]


def test_a_1025_leaf_file_has_two_levels() -> None:
    """1024 leaves are one node; the 1025th makes a root over a full node and a node of one."""
    size = 64 * 1024 + 1
    data = content(f"layout-{size}", size)
    leaves = [
        (raw_cid_bytes(hashlib.sha256(data[i : i + 64]).digest(), "sha2-256"), len(data[i : i + 64]))
        for i in range(0, size, 64)
    ]
    root, blocks, _ = build_file(leaves, "sha2-256", 1024)
    assert len(blocks) == 3 and blocks[-1][0] == root
    root_174 = build_file(leaves, "sha2-256")[0]
    assert root_174 != root  # the width is part of the CID


@pytest.mark.interop
@needs_importer
def test_vectors_are_what_the_importer_makes(tree: Path, tmp_path: Path) -> None:
    """Every committed known answer, made again by ipfs-unixfs-importer (profile unixfs-v1-2025) in this test."""
    assert importer(tree)["root"] == VECTORS["tree"]
    for name in FILE_SIZES:
        assert importer(tree / name)["root"] == VECTORS["files"][name], name
    for size in LAYOUT_SIZES:
        path = tmp_path / f"layout-{size}"
        path.write_bytes(content(f"layout-{size}", size))
        assert importer(path, LAYOUT_CHUNK_BYTES)["root"] == VECTORS["layout_64"][str(size)], size


@pytest.mark.interop
@needs_importer
def test_add_matches_the_importer_on_every_entry(dstore, tmp_path: Path) -> None:
    """A fresh tree (not the vectors' bytes): every file's and folder's CID equals the importer's."""
    tree = tmp_path / "fresh"
    (tree / "a" / "b").mkdir(parents=True)
    for i, size in enumerate([0, 5, 3 * MIB + 7, 2 * MIB]):
        (tree / "a" / f"f{i}").write_bytes(content(f"fresh-{i}", size))
    (tree / "a" / "b" / "same").write_bytes(content("fresh-1", 5))
    want = importer(tree)
    got = add_json(dstore, tree, "--profile", "unixfs-v1-2025")
    assert got["root"] == want["root"]
    # Each file alone is a single-file dataset whose root is that file's CID.
    for path in ["fresh/a/f2", "fresh/a/f3"]:
        assert add_json(dstore, tmp_path / path, "--profile", "unixfs-v1-2025")["root"] == want["entries"][path]


# --------------------------------------------------------------------------- round trips


def test_unixfs_profile_round_trip(dstore, home: Path, tree: Path, tmp_path: Path) -> None:
    got = add_json(dstore, tree, "--profile", "unixfs-v1-2025", "--shards", "4+2")
    dstore("get", "-q", got["cid"], "-o", tmp_path / "out")
    assert_same_tree(tree, tmp_path / "out")
    dstore("get", "-q", f"{got['cid']}/mib+1", "-o", tmp_path / "one-file")  # a file by path
    assert (tmp_path / "one-file").read_bytes() == (tree / "mib+1").read_bytes()
    manifest, shard_hashes = dataset_facts(home, got["cid"])
    assert manifest.profile == PROFILE_UNIXFS_V1_2025
    assert manifest.hash_name == "sha2-256"
    assert manifest.chunker.name == FIXED_CHUNKER_NAME and manifest.chunker.max == MIB
    assert shard_hashes == {SHA2_256}  # shard CIDs use the dataset's hash


def test_sha2_256_with_the_dstore_chunker_round_trip(dstore, home: Path, tree: Path, tmp_path: Path) -> None:
    got = add_json(dstore, tree, "--hash", "sha2-256", "--shards", "4+2")
    default = add_json(dstore, tree, "--shards", "4+2")
    assert got["chunks"] == default["chunks"]  # the same FastCDC cuts
    assert got["root"] != default["root"] and got["root"] != VECTORS["tree"]
    dstore("get", "-q", got["cid"], "-o", tmp_path / "out")
    assert_same_tree(tree, tmp_path / "out")
    manifest, shard_hashes = dataset_facts(home, got["cid"])
    assert (manifest.profile, manifest.hash_name, manifest.chunker.name) == ("dstore", "sha2-256", "fastcdc-gear-v1")
    assert shard_hashes == {SHA2_256}


def test_a_big_file_streams_through_segments(dstore, tmp_path: Path) -> None:
    """A file over one 16 MiB segment: fixed chunks across segments, the same CID as cut in one piece."""
    path = tmp_path / "big"
    data = content("big", 17 * MIB + 3)
    path.write_bytes(data)
    got = add_json(dstore, path, "--profile", "unixfs-v1-2025", "--shards", "2+1")
    assert got["chunks"] == 18
    seg = _native.process_segment(data, True, MIB, MIB, MIB, 0, SHA2_256)
    leaves = [(raw_cid_bytes(seg.digests[32 * i : 32 * i + 32], "sha2-256"), n) for i, n in enumerate(seg.lengths)]
    assert got["root"] == str(build_file(leaves, "sha2-256", 1024)[0])
    dstore("get", "-q", got["cid"], "-o", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data


def assert_same_tree(a: Path, b: Path) -> None:
    names_a = sorted(p.relative_to(a) for p in a.rglob("*"))
    assert names_a == sorted(p.relative_to(b) for p in b.rglob("*"))
    for rel in names_a:
        if (a / rel).is_file():
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def dataset_facts(home: Path, dataset: str) -> tuple[Manifest, set[int]]:
    """The manifest and the multihash codes of every pack shard, read from the store by the test's own process."""
    with Store(home) as store, DatasetReader(store, parse_cid(dataset)) as reader:
        records = [reader.locator.pack(i)[1] for i in range(reader.locator.num_packs)]
        return reader.manifest, {shard.hash.code for record in records for shard in record.shards}


# --------------------------------------------------------------------------- bad input


def test_unixfs_profile_refuses_another_hash(dstore, tree: Path) -> None:
    r = dstore("add", "--profile", "unixfs-v1-2025", "--hash", "blake3", tree / "one", check=False)
    assert r.code == 2
    assert r.err.strip().splitlines() == ["dstore: error: --hash blake3: profile unixfs-v1-2025 hashes with sha2-256"]


def test_unknown_and_reserved_profiles_are_refused(dstore, tree: Path) -> None:
    for name in ("kubo", "car-import"):
        r = dstore("add", "--profile", name, tree / "one", check=False)
        assert r.code == 2 and "--profile" in r.err


def test_manifest_of_the_profile_pins_its_chunker_and_hash() -> None:
    root = CID.from_bytes(raw_cid_bytes(hashlib.sha256(b"x").digest(), "sha2-256"))
    good = Manifest(
        root=root,
        size=1,
        entries=1,
        hash_name="sha2-256",
        chunker=ChunkerParams.fixed(MIB),
        profile=PROFILE_UNIXFS_V1_2025,
    )
    assert Manifest.decode(good.encode()) == good
    for chunker in (ChunkerParams(), ChunkerParams.fixed(256 * 1024)):
        bad = Manifest(
            root=root, size=1, entries=1, hash_name="sha2-256", chunker=chunker, profile=PROFILE_UNIXFS_V1_2025
        )
        with pytest.raises(ValueError, match="needs the chunker"):
            bad.encode()
    with pytest.raises(ValueError, match="needs the fastcdc-gear-v1 chunker"):
        Manifest(root=root, size=1, entries=1, hash_name="sha2-256", chunker=ChunkerParams.fixed(MIB)).encode()
    with pytest.raises(ValueError, match="min == avg == max"):
        ChunkerParams(min=64, avg=128, max=128, name=FIXED_CHUNKER_NAME).validate()


# --------------------------------------------------------------------------- native SHA-256


@given(
    data=st.binary(max_size=20_000),
    fixed=st.sampled_from([None, 64, 1000, 4096]),
)
def test_native_sha256_chunk_digests_equal_hashlib(data: bytes, fixed: int | None) -> None:
    sizes = (fixed, fixed, fixed) if fixed else (64, 256, 1024)
    seg = _native.process_segment(data, True, *sizes, 1, SHA2_256)
    assert sum(seg.lengths) == len(data)
    at = 0
    for i, n in enumerate(seg.lengths):
        assert seg.digests[32 * i : 32 * i + 32] == hashlib.sha256(data[at : at + n]).digest()
        if fixed:
            assert n == fixed or at + n == len(data)
        at += n


@given(chunks=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=8), flip=st.integers(min_value=0))
def test_native_decode_verifies_sha256(chunks: list[bytes], flip: int) -> None:
    pack = b"".join(chunks)
    offsets = [sum(len(c) for c in chunks[:i]) for i in range(len(chunks))]
    lengths = [len(c) for c in chunks]
    sha = b"".join(hashlib.sha256(c).digest() for c in chunks)
    args = (offsets, lengths, lengths, [0] * len(chunks))
    assert _native.decode_chunks(pack, *args, sha, SHA2_256) == pack
    out = bytearray(len(pack))
    assert _native.decode_chunks_into(out, [pack], *args, sha, SHA2_256) == len(pack)
    assert bytes(out) == pack
    with pytest.raises(_native.IntegrityError):  # SHA-256 digests are not BLAKE3 ones
        _native.decode_chunks(pack, *args, sha)
    bad = bytearray(pack)
    bad[flip % len(pack)] ^= 1
    with pytest.raises(_native.IntegrityError):
        _native.decode_chunks(bytes(bad), *args, sha, SHA2_256)


def test_native_shard_digests_use_the_hash_asked_for() -> None:
    padded = content("pack", 4 * 1000)
    parity, digests = _native.encode_pack(padded, 4, 2, SHA2_256)
    shards = [padded[i * 1000 : (i + 1) * 1000] for i in range(4)] + [parity[:1000], parity[1000:]]
    assert digests == b"".join(hashlib.sha256(s).digest() for s in shards)
    assert _native.encode_pack(padded, 4, 2)[1] == b"".join(_native.blake3(s) for s in shards)
    with pytest.raises(ValueError, match="unsupported hash 0x13"):
        _native.encode_pack(padded, 4, 2, 0x13)


def test_native_process_files_hashes_with_sha256(tmp_path: Path) -> None:
    paths, datas = [], []
    for i, size in enumerate([0, 1, MIB - 1, MIB, 2 * MIB + 1]):
        datas.append(content(f"pf-{i}", size))
        paths.append(tmp_path / f"f{i}")
        paths[-1].write_bytes(datas[-1])
    batch = _native.process_files([str(p) for p in paths], [len(d) for d in datas], MIB, MIB, MIB, 1, SHA2_256)
    assert batch.chunk_counts == [0, 1, 1, 1, 3]
    want = [d[i : i + MIB] for d in datas for i in range(0, len(d), MIB)]
    assert batch.lengths == [len(c) for c in want]
    assert batch.digests == b"".join(hashlib.sha256(c).digest() for c in want)


def test_sha2_256_datasets_come_back_after_the_index_is_lost(dstore, home: Path, tree: Path, tmp_path: Path) -> None:
    """The local metadata packs of sha2-256 datasets are sha2-256 too, and rebuild the index."""
    unixfs = add_json(dstore, tree, "--profile", "unixfs-v1-2025", "--shards", "2+1")["cid"]
    fastcdc = add_json(dstore, tree / "sub", "--hash", "sha2-256", "--shards", "2+1")["cid"]
    for dataset in (unixfs, fastcdc):
        pointer = read_pointer(home, parse_cid(dataset))
        assert pointer is not None
        assert {c.hash.code for c in pointer.metadata.shards} == {SHA2_256}
        assert pointer.placement.hash.code == SHA2_256
    shutil.rmtree(home / "index-0")
    rebuilt = json.loads(dstore("fsck", "--rebuild", "--json").out)
    assert rebuilt["datasets"] == 2 and rebuilt["lost"] == []
    dstore("get", "-q", unixfs, "-o", tmp_path / "a")
    assert_same_tree(tree, tmp_path / "a")
    dstore("get", "-q", fastcdc, "-o", tmp_path / "b")
    assert_same_tree(tree / "sub", tmp_path / "b")


def test_both_options_round_trip_through_peers(dstore, tree: Path, tmp_path: Path) -> None:
    """Shards and metadata packs on three real peers; a reader with an empty store gets identical files."""
    (tmp_path / "peers").mkdir()
    with running_peers(tmp_path / "peers", 3, token="profiles-token") as peers:
        env = {"DSTORE_PEERS": ",".join(p.url for p in peers), "DSTORE_TOKEN": "profiles-token"}
        for options in (["--profile", "unixfs-v1-2025"], ["--hash", "sha2-256"]):
            added = json.loads(dstore("add", "-q", "--json", "--shards", "2+1", *options, tree, env=env).out)
            out = tmp_path / f"out{options[0]}"
            fresh = {**env, "DSTORE_HOME": str(tmp_path / f"fresh{options[0]}")}
            dstore("get", "-q", added["cid"], "-o", out, env=fresh)
            assert_same_tree(tree, out)
            shard_files = [f for p in peers for f in (p.home / "shards").rglob("b*") if f.is_file()]
            assert shard_files and all(f.name.startswith("bafkrei") for f in shard_files)  # raw sha2-256 CIDs


IPFS_CAR = INTEROP / "node_modules" / ".bin" / "ipfs-car"


def ipfs_car(*args: str | Path) -> str:
    proc = subprocess.run([str(IPFS_CAR), *map(str, args)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.interop
@pytest.mark.skipif(not IPFS_CAR.exists(), reason="ipfs-car not installed: run `cd tests/interop && npm ci`")
def test_ipfs_car_verifies_and_unpacks_an_exported_unixfs_profile_dataset(dstore, tree: Path, tmp_path: Path) -> None:
    """ipfs-car checks every sha2-256 block of `dstore export` and writes back the same tree."""
    added = add_json(dstore, tree, "--profile", "unixfs-v1-2025")
    dstore("export", added["cid"], "-o", tmp_path / "d.car")

    assert ipfs_car("roots", tmp_path / "d.car").split() == [VECTORS["tree"]]
    ipfs_car("unpack", tmp_path / "d.car", "--root", VECTORS["tree"], "--output", tmp_path / "out")
    assert_same_tree(tree, tmp_path / "out")
