"""The IPFS gateway of every peer (docs/ipfs.md), judged by what a client verifies itself.

Real peer processes hold a dataset added by the real CLI; every answer is
read over HTTP with urllib, every block checked against its CID here, and
the trees re-assembled from the blocks and compared with the source files.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path

import pytest
from peerutil import PeerProcess, running_peers

from dstore.format import cbor, unixfs
from dstore.format.car import CarReader
from dstore.format.cid import CID, DAG_CBOR, DAG_PB, HASH_NAMES, RAW, cid_to_text, hash_digest, make_cid, parse_cid

from treeutil import csv_like, random_bytes

TOKEN = "gateway-token"
IPFS_CAR = Path(__file__).parent / "interop" / "node_modules" / ".bin" / "ipfs-car"
CAR_TYPE = "application/vnd.ipld.car; version=1; order=dfs; dups=n"

Answer = tuple[int, Message, bytes]  # headers: case-insensitive


def fetch(url: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None) -> Answer:
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def check_block(cid: CID, data: bytes) -> bytes:
    assert hash_digest(data, HASH_NAMES[cid.hash.code]) == bytes(cid.hash.digest), cid_to_text(cid)
    return data


def read_tree(get: Callable[[CID], bytes], root: CID) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, assembled from verified blocks only."""

    def file_bytes(cid: CID) -> bytes:
        if cid.codec == RAW:
            return get(cid)
        node = unixfs.parse_node(cid, get(cid))
        return node.data + b"".join(file_bytes(ln.cid) for ln in node.links)

    out: dict[str, bytes] = {}
    stack: list[tuple[str, CID]] = [("", root)]
    while stack:
        prefix, cid = stack.pop()
        node = unixfs.parse_node(cid, get(cid)) if cid.codec != RAW else None
        if node is not None and node.is_dir:
            for ln in unixfs.directory_entries(get, node):
                stack.append((f"{prefix}{ln.name}/", ln.cid))
        else:
            out[prefix.rstrip("/")] = file_bytes(cid)
    return out


def car_blocks(data: bytes) -> tuple[list[CID], dict[bytes, bytes], list[CID]]:
    """Roots, blocks (each verified by CarReader) and their order."""
    reader = CarReader(data, verify=True)
    blocks: dict[bytes, bytes] = {}
    order = []
    for cid, block in reader:
        assert cid.to_bytes() not in blocks, "dups=n: a block sent twice"
        blocks[cid.to_bytes()] = block
        order.append(cid)
    return reader.roots, blocks, order


HAMT_FILES = 2000


def _long_name(i: int) -> str:
    return f"{i:05d}-" + "n" * 120 + ".txt"


def _start_all(peers: list[PeerProcess], peer_urls: Callable[[PeerProcess], list[str]]) -> None:
    for p in peers:
        p.stop()
        urls = peer_urls(p)
        p.options["peers"] = ",".join(urls) if urls else None
        p.start()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Three peers holding a dataset (2+1 shards), and a fourth that holds only its pointer."""
    tmp = tmp_path_factory.mktemp("gateway")
    src = tmp / "src"
    (src / "sub").mkdir(parents=True)
    files = {
        "a.bin": random_bytes(1_500_000, 7),
        "b.csv": csv_like(300_000),
        "notes": b"plain words, no extension\n" * 50,
        "sub/c.txt": b"hello from a sub folder\n",
        "sub/empty.dat": b"",
        "site/index.html": b"<!DOCTYPE html><title>a dataset's page</title><a href='data.txt'>data</a>\n",
        "site/data.txt": b"linked from the page\n",
    }
    (src / "site").mkdir()
    # Long names: the folder's estimated block passes 256 KiB, so it is a HAMT (IPIP-0499).
    (src / "many").mkdir()
    for i in range(HAMT_FILES):
        files[f"many/{_long_name(i)}"] = f"file {i}\n".encode()
    for name, data in files.items():
        (src / name).write_bytes(data)
    with running_peers(tmp, 4, token=TOKEN) as peers:
        holders, bare = peers[:3], peers[3]
        _start_all(peers, lambda p: [q.url for q in holders if q is not p])
        env = {
            **os.environ,
            "DSTORE_HOME": str(tmp / "store"),
            "DSTORE_PEERS": ",".join(p.url for p in holders),
            "DSTORE_TOKEN": TOKEN,
        }
        add = subprocess.run(
            [sys.executable, "-m", "dstore", "add", str(src), "--shards", "2+1", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert add.returncode == 0, add.stderr
        dataset = json.loads(add.stdout)["cid"]
        status, _, pointer = fetch(f"{holders[0].url}/datasets/{dataset}")
        assert status == 200
        auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        assert fetch(f"{bare.url}/datasets/{dataset}", "PUT", auth, pointer)[0] == 200
        yield {"peers": peers, "holders": holders, "bare": bare, "dataset": dataset, "files": files}


def _raw(url: str) -> bytes:
    status, headers, body = fetch(url, headers={"Accept": "application/vnd.ipld.raw"})
    assert status == 200, body
    assert headers["Content-Type"] == "application/vnd.ipld.raw"
    return body


def _listing(base: str, path: str = "") -> dict:
    status, headers, body = fetch(f"{base}{path}", headers={"Accept": "application/json"})
    assert status == 200, body
    return json.loads(body)


def _first_chunk(base: str, dataset: str) -> CID:
    entries = {e["name"]: e for e in _listing(f"{base}/ipfs/{dataset}")["entries"]}
    file_cid = parse_cid(entries["a.bin"]["cid"])
    node = unixfs.parse_node(file_cid, check_block(file_cid, _raw(f"{base}/ipfs/{cid_to_text(file_cid)}")))
    return node.links[0].cid


def test_raw_blocks_verify_manifest_node_and_chunk(cluster) -> None:
    base, dataset = cluster["holders"][0].url, cluster["dataset"]
    ds = parse_cid(dataset)
    status, headers, manifest = fetch(f"{base}/ipfs/{dataset}?format=raw")
    assert status == 200
    check_block(ds, manifest)
    assert headers["Cache-Control"] == "public, max-age=29030400, immutable"
    assert headers["ETag"] == f'"{dataset}.raw"'
    assert headers["Content-Disposition"].startswith("attachment")
    assert headers["X-Ipfs-Path"] == f"/ipfs/{dataset}"
    assert headers["X-Ipfs-Roots"] == dataset
    assert headers["Access-Control-Allow-Origin"] == "*"
    root = cbor.decode(manifest)["root"]
    assert isinstance(root, CID) and root.codec == DAG_PB
    node = unixfs.parse_node(root, check_block(root, _raw(f"{base}/ipfs/{cid_to_text(root)}")))
    assert node.is_dir
    chunk = _first_chunk(base, dataset)
    assert chunk.codec == RAW
    data = check_block(chunk, _raw(f"{base}/ipfs/{cid_to_text(chunk)}"))
    assert cluster["files"]["a.bin"].startswith(data)
    # 304 on the ETag a client already has.
    assert fetch(f"{base}/ipfs/{dataset}?format=raw", headers={"If-None-Match": f'"{dataset}.raw"'})[0] == 304


def test_car_of_the_dataset_rebuilds_the_tree(cluster) -> None:
    base, dataset = cluster["holders"][1].url, cluster["dataset"]
    status, headers, body = fetch(f"{base}/ipfs/{dataset}?format=car")
    assert status == 200
    assert headers["Content-Type"] == CAR_TYPE
    assert headers["Content-Disposition"] == f'attachment; filename="{dataset}.car"'
    roots, blocks, order = car_blocks(body)
    assert roots == [parse_cid(dataset)] and order[0] == parse_cid(dataset)
    root = cbor.decode(blocks[order[0].to_bytes()])["root"]
    assert order[1] == root  # depth first, parents first
    tree = read_tree(lambda c: blocks[c.to_bytes()], root)
    assert tree == cluster["files"]
    # Accept works as ?format= does.
    status, headers, again = fetch(f"{base}/ipfs/{dataset}", headers={"Accept": "application/vnd.ipld.car"})
    assert status == 200 and again == body


def test_car_scopes_and_entity_bytes(cluster) -> None:
    base, dataset, src = cluster["holders"][0].url, cluster["dataset"], cluster["files"]["a.bin"]
    url = f"{base}/ipfs/{dataset}/a.bin?format=car"
    status, headers, body = fetch(url + "&dag-scope=block")
    assert status == 200
    roots, blocks, order = car_blocks(body)
    file_cid = parse_cid(headers["X-Ipfs-Roots"].split(",")[-1])
    assert order[-1] == file_cid and all(c.codec != RAW for c in order)  # path blocks + the file's root only
    assert order[0] == parse_cid(dataset)

    _, _, whole = fetch(url + "&dag-scope=entity")
    _, all_blocks, _ = car_blocks(whole)
    assert read_tree(lambda c: all_blocks[c.to_bytes()], file_cid) == {"": src}

    first, last = 300_000, 700_000
    status, _, part = fetch(url + f"&dag-scope=entity&entity-bytes={first}:{last}")
    assert status == 200
    _, some, order = car_blocks(part)
    assert len(some) < len(all_blocks)
    # The leaves sent, placed by the file node's blocksizes, cover the range exactly as the source says.
    node = unixfs.parse_node(file_cid, some[file_cid.to_bytes()])
    pos, covered = 0, bytearray()
    start = None
    for ln, size in zip(node.links, node.blocksizes, strict=True):
        if ln.cid.to_bytes() in some:
            start = pos if start is None else start
            covered += some[ln.cid.to_bytes()]
        pos += size
    assert start is not None and start <= first
    assert bytes(covered) == src[start : start + len(covered)] and start + len(covered) > last
    # Negative from counts from the end.
    _, _, tail = fetch(url + "&dag-scope=entity&entity-bytes=-10:*")
    _, tail_blocks, tail_order = car_blocks(tail)
    assert tail_order[-1].codec == RAW and src.endswith(tail_blocks[tail_order[-1].to_bytes()][-10:])


def test_deserialized_file_whole_and_ranges(cluster) -> None:
    base, dataset, files = cluster["holders"][2].url, cluster["dataset"], cluster["files"]
    status, headers, body = fetch(f"{base}/ipfs/{dataset}/b.csv")
    assert status == 200 and body == files["b.csv"]
    assert headers["Content-Type"].startswith("text/csv")
    assert headers["Content-Length"] == str(len(files["b.csv"]))
    assert headers["Accept-Ranges"] == "bytes"
    status, headers, body = fetch(f"{base}/ipfs/{dataset}/a.bin", headers={"Range": "bytes=1000-299999"})
    assert status == 206 and body == files["a.bin"][1000:300000]
    assert headers["Content-Range"] == f"bytes 1000-299999/{len(files['a.bin'])}"
    status, _, body = fetch(f"{base}/ipfs/{dataset}/a.bin", headers={"Range": "bytes=-5"})
    assert status == 206 and body == files["a.bin"][-5:]
    status, headers, _ = fetch(f"{base}/ipfs/{dataset}/a.bin", headers={"Range": "bytes=99999999-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(files['a.bin'])}"
    # A file root CID works like the path to it; a file without extension is sniffed.
    file_cid = next(e["cid"] for e in _listing(f"{base}/ipfs/{dataset}")["entries"] if e["name"] == "notes")
    status, headers, body = fetch(f"{base}/ipfs/{file_cid}")
    assert status == 200 and body == files["notes"] and headers["Content-Type"].startswith("text/plain")
    status, _, body = fetch(f"{base}/ipfs/{dataset}/sub/empty.dat")
    assert status == 200 and body == b""
    # HEAD: the headers, no body.
    status, headers, body = fetch(f"{base}/ipfs/{dataset}/a.bin", "HEAD")
    assert status == 200 and body == b"" and headers["Content-Length"] == str(len(files["a.bin"]))


def test_folder_listing_json_and_html(cluster) -> None:
    base, dataset, files = cluster["holders"][0].url, cluster["dataset"], cluster["files"]
    listing = _listing(f"{base}/ipfs/{dataset}")
    assert [(e["name"], e["type"], e["size"]) for e in listing["entries"]] == [
        ("a.bin", "file", len(files["a.bin"])),
        ("b.csv", "file", len(files["b.csv"])),
        ("many", "dir", None),
        ("notes", "file", len(files["notes"])),
        ("site", "dir", None),
        ("sub", "dir", None),
    ]
    sub = _listing(f"{base}/ipfs/{dataset}", "/sub")
    assert [e["name"] for e in sub["entries"]] == ["c.txt", "empty.dat"]
    status, headers, body = fetch(f"{base}/ipfs/{dataset}/sub/", headers={"Accept": "text/html"})
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'href="/ipfs/' in body and b"c.txt" in body


def test_errors_probe_and_cors(cluster) -> None:
    base, dataset = cluster["holders"][0].url, cluster["dataset"]
    status, headers, body = fetch(f"{base}/ipfs/not-a-cid?format=raw")
    assert status == 400 and json.loads(body)["code"] == "bad_cid" and headers["Access-Control-Allow-Origin"] == "*"
    unknown = cid_to_text(make_cid(RAW, b"never added anywhere"))
    for fmt in ("raw", "car"):
        status, _, body = fetch(f"{base}/ipfs/{unknown}?format={fmt}")
        assert status == 404 and json.loads(body)["code"] == "not_found"
    assert fetch(f"{base}/ipfs/{dataset}/no/such/file")[0] == 404
    assert fetch(f"{base}/ipfs/{dataset}?format=dag-json")[0] == 406
    assert fetch(f"{base}/ipfs/{dataset}", headers={"Accept": "application/vnd.ipld.dag-json"})[0] == 406
    assert fetch(f"{base}/ipfs/{dataset}", headers={"Accept": "application/vnd.ipld.car; version=2"})[0] == 406
    assert fetch(f"{base}/ipfs/{dataset}?format=car&dag-scope=everything")[0] == 400
    assert fetch(f"{base}/ipfs/{dataset}?format=car&entity-bytes=9:3")[0] == 400
    assert fetch(f"{base}/ipfs/{dataset}?format=car&entity-bytes=nope")[0] == 400
    status, headers, body = fetch(f"{base}/ipfs/bafkqaaa", headers={"Accept": "application/vnd.ipld.raw"})
    assert (status, body) == (200, b"")
    assert fetch(f"{base}/ipfs/bafkqaaa", "HEAD", {"Accept": "application/vnd.ipld.raw"})[0] == 200
    status, headers, _ = fetch(f"{base}/ipfs/{dataset}", "OPTIONS")
    assert status == 200 and "GET" in headers["Access-Control-Allow-Methods"]


def test_chunk_from_a_peer_that_holds_no_shard(cluster) -> None:
    bare, dataset = cluster["bare"], cluster["dataset"]
    held = lambda: [f for f in (bare.home / "shards").rglob("*") if f.is_file()]  # noqa: E731
    assert held() == [], "the bare peer must hold no shard"
    chunk = _first_chunk(bare.url, dataset)
    # A HEAD learns the size from the metadata: nothing is fetched for it.
    status, headers, _ = fetch(f"{bare.url}/ipfs/{cid_to_text(chunk)}?format=raw", "HEAD")
    assert status == 200 and int(headers["Content-Length"]) > 0
    data = check_block(chunk, _raw(f"{bare.url}/ipfs/{cid_to_text(chunk)}"))
    assert int(headers["Content-Length"]) == len(data)
    assert cluster["files"]["a.bin"].startswith(data)
    status, _, body = fetch(f"{bare.url}/ipfs/{dataset}/a.bin", headers={"Range": "bytes=5-20"})
    assert status == 206 and body == cluster["files"]["a.bin"][5:21]
    assert held() == [], "serving stored nothing"


def test_providers_json_and_ndjson(cluster) -> None:
    dataset = cluster["dataset"]
    # The peers that can serve the dataset are those holding its pointer (add put it on some of them).
    serving = [q for q in cluster["holders"] if fetch(f"{q.url}/datasets/{dataset}")[0] == 200]
    p = serving[0]
    chunk = cid_to_text(_first_chunk(p.url, dataset))
    status, headers, body = fetch(f"{p.url}/routing/v1/providers/{chunk}")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert headers["Access-Control-Allow-Origin"] == "*" and "max-age" in headers["Cache-Control"]
    providers = json.loads(body)["Providers"]
    ids = {x["ID"] for x in providers}
    assert ids == {q.peer_id for q in serving}  # the holders know each other, not the bare peer
    mine = next(x for x in providers if x["ID"] == p.peer_id)
    port = p.url.rsplit(":", 1)[1]
    assert mine == {
        "Schema": "peer",
        "ID": p.peer_id,
        "Addrs": [f"/ip4/127.0.0.1/tcp/{port}/http"],
        "Protocols": ["transport-ipfs-gateway-http"],
    }
    status, headers, body = fetch(f"{p.url}/routing/v1/providers/{chunk}", headers={"Accept": "application/x-ndjson"})
    assert status == 200 and headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert {x["ID"] for x in lines} == ids
    unknown = cid_to_text(make_cid(RAW, b"nobody has this"))
    status, _, body = fetch(f"{p.url}/routing/v1/providers/{unknown}")
    assert status == 404 and json.loads(body)["Providers"] == []
    assert fetch(f"{p.url}/routing/v1/providers/not-a-cid")[0] == 400


def test_raw_of_a_path_is_its_terminal_block(cluster) -> None:
    base, dataset = cluster["holders"][0].url, cluster["dataset"]
    status, headers, body = fetch(f"{base}/ipfs/{dataset}/sub/c.txt?format=raw")
    assert status == 200
    terminal = parse_cid(headers["X-Ipfs-Roots"].split(",")[-1])
    check_block(terminal, body)
    assert len(headers["X-Ipfs-Roots"].split(",")) == 4  # dataset, root folder, sub, c.txt


@pytest.mark.interop
@pytest.mark.skipif(not IPFS_CAR.exists(), reason="ipfs-car not installed: run `cd tests/interop && npm ci`")
def test_ipfs_car_unpacks_a_car_fetched_from_a_peer(cluster, tmp_path: Path) -> None:
    """ipfs-car (js UnixFS exporter) rebuilds the tree from a peer's CAR of the dataset's root folder.

    dstore datasets are BLAKE3, which ipfs-car's block validator cannot hash, so it runs with
    --no-verify; the same bytes are verified block by block by CarReader here.
    """
    base, dataset = cluster["bare"].url, cluster["dataset"]
    root = _listing(f"{base}/ipfs/{dataset}")["cid"]
    status, _, body = fetch(f"{base}/ipfs/{root}?format=car")
    assert status == 200
    car_blocks(body)  # every block verified
    car = tmp_path / "root.car"
    car.write_bytes(body)
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(IPFS_CAR), "unpack", str(car), "--output", str(out), "--no-verify"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    got = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert got == cluster["files"]


def test_hamt_folder_paths_and_proofs(cluster) -> None:
    base, dataset, files = cluster["holders"][1].url, cluster["dataset"], cluster["files"]
    many = next(e["cid"] for e in _listing(f"{base}/ipfs/{dataset}")["entries"] if e["name"] == "many")
    many_cid = parse_cid(many)
    node = unixfs.parse_node(many_cid, check_block(many_cid, _raw(f"{base}/ipfs/{many}")))
    assert node.kind == "hamt"
    name = _long_name(1234)
    status, _, body = fetch(f"{base}/ipfs/{dataset}/many/{name}")
    assert status == 200 and body == files[f"many/{name}"]
    assert fetch(f"{base}/ipfs/{dataset}/many/{_long_name(HAMT_FILES)}")[0] == 404
    listing = _listing(f"{base}/ipfs/{many}")
    assert len(listing["entries"]) == HAMT_FILES
    # The CAR of a path through the HAMT carries the shards the lookup read: a client can follow it.
    status, _, car = fetch(f"{base}/ipfs/{many}/{name}?format=car")
    assert status == 200
    roots, blocks, _ = car_blocks(car)
    assert roots == [many_cid]
    link = unixfs.lookup(lambda c: blocks[c.to_bytes()], many_cid, name)
    assert link is not None and blocks[link.cid.to_bytes()] == files[f"many/{name}"]
    # dag-scope=entity of the folder: the HAMT's own shards, none of its entries.
    _, _, shards = fetch(f"{base}/ipfs/{many}?format=car&dag-scope=entity")
    _, shard_blocks, order = car_blocks(shards)
    assert all(c.codec == DAG_PB for c in order)
    assert sum(1 for _ in unixfs.directory_entries(lambda c: shard_blocks[c.to_bytes()], many_cid)) == HAMT_FILES


def test_a_pointer_whose_metadata_does_not_verify_serves_nothing(cluster) -> None:
    """A pointer stored under another dataset's ID leads to metadata rooted elsewhere: that ID stays 404."""
    p, dataset = cluster["holders"][2], cluster["dataset"]
    _, _, pointer = fetch(f"{p.url}/datasets/{dataset}")
    fake = cid_to_text(make_cid(DAG_CBOR, b"a manifest nobody wrote"))
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    assert fetch(f"{p.url}/datasets/{fake}", "PUT", auth, pointer)[0] == 200
    for fmt in ("raw", "car"):
        status, _, body = fetch(f"{p.url}/ipfs/{fake}?format={fmt}")
        assert status == 404, body
    assert fetch(f"{p.url}/ipfs/{fake}/b.csv")[0] == 404
    status, _, body = fetch(f"{p.url}/ipfs/{dataset}/b.csv")
    assert status == 200 and body == cluster["files"]["b.csv"]


def test_fsspec_and_pandas_read_from_a_peer(cluster) -> None:
    fsspec = pytest.importorskip("fsspec")
    pd = pytest.importorskip("pandas")
    import io

    base, dataset, files = cluster["bare"].url, cluster["dataset"], cluster["files"]
    fs = fsspec.filesystem("http")
    url = f"{base}/ipfs/{dataset}/a.bin"
    assert fs.size(url) == len(files["a.bin"])
    with fs.open(url, "rb", block_size=64 * 1024) as f:  # ranged reads
        f.seek(777_777)
        assert f.read(100_000) == files["a.bin"][777_777:877_777]
    listed = {u.rstrip("/").rsplit("/", 1)[-1] for u in fs.ls(f"{base}/ipfs/{dataset}/sub/", detail=False)}
    assert {"c.txt", "empty.dat"} <= listed
    got = pd.read_csv(f"{base}/ipfs/{dataset}/b.csv")
    assert got.equals(pd.read_csv(io.BytesIO(files["b.csv"])))


def test_a_folder_with_index_html_is_served_as_its_page(cluster) -> None:
    base, dataset, files = cluster["holders"][0].url, cluster["dataset"], cluster["files"]
    status, headers, body = fetch(f"{base}/ipfs/{dataset}/site/")
    assert status == 200 and body == files["site/index.html"]
    assert headers["Content-Type"].startswith("text/html")
    # Without the slash, a redirect to it (the page's relative links need it); urllib follows it.
    req = urllib.request.Request(f"{base}/ipfs/{dataset}/site")
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.url.endswith("/site/") and resp.read() == files["site/index.html"]
    # JSON still lists the folder.
    assert [e["name"] for e in _listing(f"{base}/ipfs/{dataset}/site/")["entries"]] == ["data.txt", "index.html"]


def test_tar_of_a_dataset_folder_reads_its_chunks(cluster) -> None:
    base, dataset, files = cluster["bare"].url, cluster["dataset"], cluster["files"]
    status, headers, body = fetch(f"{base}/ipfs/{dataset}/sub?format=tar")  # chunks from the other peers
    assert status == 200 and headers["Content-Type"] == "application/x-tar"
    sub = headers["X-Ipfs-Roots"].split(",")[-1]
    with tarfile.open(fileobj=io.BytesIO(body)) as archive:
        got = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
    assert got == {f"{sub}/c.txt": files["sub/c.txt"], f"{sub}/empty.dat": b""}
    status, _, body = fetch(f"{base}/ipfs/{dataset}/a.bin?format=tar")
    with tarfile.open(fileobj=io.BytesIO(body)) as archive:
        (member,) = archive.getmembers()
        assert archive.extractfile(member).read() == files["a.bin"]
