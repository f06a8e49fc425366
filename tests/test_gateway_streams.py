"""Gateway streams of a file spread over many packs (dstore/peer/gateway_runs.py): read in runs of chunks,
the next packs fetched from the peers the placement names, every block verified.

Real peer processes hold a 12 MiB file added by the real CLI with ``--shards 2+2`` (packs of 2 MiB, so
the file spans several packs and runs, and its repeated half reads packs already left behind); the
serving peer holds one shard of each pack and reads the rest from the others. Answers are read over
HTTP and checked here against the source bytes and against the blocks' own DAG.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from peerutil import PeerProcess, running_peers
from test_gateway import check_block, fetch

from dstore.format import unixfs
from dstore.format.car import CarReader
from dstore.format.cid import CID, RAW, cid_to_text, parse_cid

from treeutil import random_bytes

TOKEN = "streams-token"
MIB = 1 << 20


def _source() -> bytes:
    repeated = random_bytes(5 * MIB, 11)
    return repeated + random_bytes(2 * MIB, 12) + repeated  # the second copy cuts into the same chunks


@pytest.fixture(scope="module")
def spread(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Four peers, each holding one shard of every pack (2 data + 2 parity); one of them serves."""
    tmp = tmp_path_factory.mktemp("streams")
    data = _source()
    (tmp / "big.bin").write_bytes(data)
    with running_peers(tmp, 4, token=TOKEN) as peers:
        for p in peers:  # each knows the others: the gateway reads the shards it lacks from them
            p.stop()
            p.options["peers"] = ",".join(q.url for q in peers if q is not p)
            p.start()
        env = {
            **os.environ,
            "DSTORE_HOME": str(tmp / "store"),
            "DSTORE_PEERS": ",".join(p.url for p in peers),
            "DSTORE_TOKEN": TOKEN,
        }
        add = subprocess.run(
            [sys.executable, "-m", "dstore", "add", str(tmp / "big.bin"), "--shards", "2+2", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert add.returncode == 0, add.stderr
        dataset = json.loads(add.stdout)["cid"]
        server = next(p for p in peers if fetch(f"{p.url}/datasets/{dataset}")[0] == 200)
        yield {"peers": peers, "server": server, "dataset": dataset, "data": data, "tmp": tmp}


def _car(body: bytes) -> tuple[list[CID], dict[bytes, bytes], list[CID]]:
    """Roots, blocks and the order they came in (duplicates included), each checked against its CID."""
    reader = CarReader(body, verify=True)
    blocks: dict[bytes, bytes] = {}
    order = []
    for cid, block in reader:
        blocks[cid.to_bytes()] = check_block(cid, block)
        order.append(cid)
    return reader.roots, blocks, order


def _file(spread: dict) -> tuple[CID, dict[bytes, bytes]]:
    """The file's root CID (the dataset's root: a single-file add) and every block of its DAG."""
    status, headers, _ = fetch(f"{spread['server'].url}/ipfs/{spread['dataset']}", "HEAD")
    assert status == 200
    file_cid = parse_cid(headers["X-Ipfs-Roots"].split(",")[1])
    status, _, body = fetch(f"{spread['server'].url}/ipfs/{cid_to_text(file_cid)}?format=car")
    assert status == 200, body
    _, blocks, _ = _car(body)
    return file_cid, blocks


def _walk(blocks: dict[bytes, bytes], cid: CID, first: int = 0, last: int | None = None) -> list[CID]:
    """The file's blocks depth first, parents first, every occurrence (dups=y), only those meeting the range."""
    out: list[CID] = []

    def visit(c: CID, start: int) -> None:
        out.append(c)
        if c.codec == RAW:
            return
        node = unixfs.parse_node(c, blocks[c.to_bytes()])
        pos = start
        for link, size in zip(node.links, node.blocksizes, strict=True):
            if last is None or (pos <= last and pos + size - 1 >= first):
                visit(link.cid, pos)
            pos += size

    visit(cid, 0)
    return out


def _car_order(body: bytes, root: CID) -> list[CID]:
    roots, _, order = _car(body)
    assert [r.to_bytes() for r in roots] == [root.to_bytes()]
    return order


def test_car_of_a_file_over_many_packs_is_its_dag_in_order(spread) -> None:
    file_cid, blocks = _file(spread)
    walk = _walk(blocks, file_cid)
    leaves = [c for c in walk if c.codec == RAW]
    assert len(leaves) > len({c.to_bytes() for c in leaves}), "the file must repeat chunks"
    url = f"{spread['server'].url}/ipfs/{cid_to_text(file_cid)}?format=car"
    for dups, expected in (("n", list({c.to_bytes(): c for c in walk}.values())), ("y", walk)):
        status, headers, body = fetch(url + f"&car-dups={dups}")
        assert status == 200 and headers["Content-Type"].endswith(f"dups={dups}")
        order = _car_order(body, file_cid)
        assert [c.to_bytes() for c in order] == [c.to_bytes() for c in expected]
    got = b"".join(blocks[c.to_bytes()] for c in leaves)
    assert got == spread["data"]


def test_entity_bytes_of_a_middle_range_sends_only_the_blocks_covering_it(spread) -> None:
    file_cid, blocks = _file(spread)
    first, last = 3 * MIB + 12345, 9 * MIB + 777  # across several packs and runs, starting inside a chunk
    status, _, body = fetch(
        f"{spread['server'].url}/ipfs/{cid_to_text(file_cid)}?format=car&dag-scope=entity&entity-bytes={first}:{last}"
    )
    assert status == 200
    order = _car_order(body, file_cid)
    expected = list({c.to_bytes(): c for c in _walk(blocks, file_cid, first, last)}.values())
    assert [c.to_bytes() for c in order] == [c.to_bytes() for c in expected]


@pytest.mark.parametrize(
    "first, last",
    [(0, None), (3 * MIB + 5, 9 * MIB + 3), (6 * MIB - 100, 6 * MIB + 200), (12 * MIB - 10, None)],
)
def test_file_bytes_and_ranges_across_packs(spread, first: int, last: int | None) -> None:
    data = spread["data"]
    url = f"{spread['server'].url}/ipfs/{spread['dataset']}"
    if first == 0 and last is None:
        status, headers, body = fetch(url)
        assert status == 200 and int(headers["Content-Length"]) == len(data)
        assert body == data
        return
    status, headers, body = fetch(url, headers={"Range": f"bytes={first}-{'' if last is None else last}"})
    end = len(data) - 1 if last is None else last
    assert status == 206 and headers["Content-Range"] == f"bytes {first}-{end}/{len(data)}"
    assert body == data[first : end + 1]


def _shard_heads(peer: PeerProcess) -> float:
    """How many ``HEAD /shards/{cid}`` (who holds this shard?) the peer has answered."""
    with urllib.request.urlopen(f"{peer.url}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("dstore_peer_requests_total{") and 'method="HEAD"' in line and "/shards/" in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_shards_are_asked_of_the_peers_the_placement_names(spread) -> None:
    """The serving peer asks each shard of the peer that took it (the dataset's placement block), as
    ``dstore get`` does: nobody is asked who holds a shard."""
    others = [p for p in spread["peers"] if p is not spread["server"]]
    before = [_shard_heads(p) for p in others]
    status, _, body = fetch(f"{spread['server'].url}/ipfs/{spread['dataset']}")
    assert status == 200 and body == spread["data"]
    assert [_shard_heads(p) for p in others] == before


def test_a_data_shard_held_here_is_used_not_rebuilt(spread, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read in this process from the serving peer's shard files and the other peers: the data shards
    this peer holds complete the packs, so no pack is rebuilt from parity."""
    from dstore.fetch import packs
    from dstore.peer import gateway_files
    from dstore.peer.blockindex import BlockIndex
    from dstore.peer.storage import PeerStore

    def no_rebuild(*args: object) -> list[bytes]:
        raise AssertionError("a pack was rebuilt from parity although its data shards were at hand")

    server = spread["server"]
    held = {p.name for p in (server.home / "shards").rglob("*") if p.is_file()}
    assert held, "the serving peer must hold shards"
    monkeypatch.setattr(packs._native, "reconstruct", no_rebuild)
    index = BlockIndex(PeerStore(Path(server.home)), [p.url for p in spread["peers"] if p is not server])
    try:
        dataset = parse_cid(spread["dataset"])
        (meta,) = index.find(dataset)
        reader = index.reader(meta)
        try:
            node = reader.node(reader.root)
            pieces = gateway_files.iter_range(reader, reader.root, node, 0, (node.filesize or 0) - 1)
            got = b"".join(bytes(p) for p in pieces)  # a piece is valid until the next but one is read
        finally:
            reader.close()
    finally:
        index.close()
    assert got == spread["data"]


def test_a_client_leaving_mid_stream_leaves_the_peer_serving(spread) -> None:
    """A client that hangs up inside a stream ends it (the worker reading ahead is waited for before the
    dataset's reader closes); the next requests are answered whole."""
    server, dataset = spread["server"], spread["dataset"]
    port = int(server.url.rsplit(":", 1)[1])
    for query in ("?format=car", ""):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(f"GET /ipfs/{dataset}{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            got = b""
            while len(got) < 3 * MIB:
                got += sock.recv(1 << 16)
            assert got.startswith(b"HTTP/1.1 200")
    status, _, body = fetch(f"{server.url}/ipfs/{dataset}")
    assert status == 200 and body == spread["data"]
    assert server.running
    assert "Traceback" not in server.stderr_text()


@pytest.mark.parametrize(
    "query",
    [
        "format=car",
        "format=car&car-dups=y",
        "format=car&dag-scope=block",
        "format=car&dag-scope=entity&entity-bytes=3145733:9437187",
        "format=car&dag-scope=entity&entity-bytes=-1000:*",
    ],
)
def test_a_car_is_sent_with_its_exact_content_length(spread, query: str) -> None:
    """A CAR measured from its verified nodes before its first byte: its Content-Length is the body's
    length (no chunked framing), the body the same CAR, for the dataset and for the file it holds."""
    file_cid, blocks = _file(spread)
    for cid_text in (spread["dataset"], cid_to_text(file_cid)):
        url = f"{spread['server'].url}/ipfs/{cid_text}?{query}"
        status, headers, body = fetch(url)
        assert status == 200, body
        assert "chunked" not in headers.get("Transfer-Encoding", "")
        assert int(headers["Content-Length"]) == len(body)
        _, got, _ = _car(body)
        assert set(got) <= {*blocks, parse_cid(spread["dataset"]).to_bytes()}
        status, head_headers, _ = fetch(url, "HEAD")
        assert status == 200 and head_headers["Content-Length"] == headers["Content-Length"]


@pytest.mark.parametrize("bound", ["MAX_SIZED_CAR_BLOCKS", "MAX_SIZED_CAR_NODE_BYTES"])
def test_a_car_past_the_measuring_bounds_is_the_same_car_unmeasured(
    spread, monkeypatch: pytest.MonkeyPatch, bound: str
) -> None:
    """In this process from the serving peer's store: a CAR whose measuring walk passes a bound is sent
    without a length, the items walked so far and then the rest of the same walk: the same bytes."""
    from dstore.peer import gateway
    from dstore.peer.blockindex import BlockIndex
    from dstore.peer.storage import PeerStore

    server = spread["server"]
    index = BlockIndex(PeerStore(Path(server.home)), [p.url for p in spread["peers"] if p is not server])
    want = gateway.Want("car")

    def car() -> tuple[int | None, bytes]:
        target = gateway._open_target(index, parse_cid(spread["dataset"]), [], want)
        try:
            plan = gateway._car_plan(target, want)
            return plan.length, b"".join(bytes(p) for p in gateway._car_pieces(target, plan.items))
        finally:
            target.close()

    try:
        length, sized = car()
        assert length == len(sized)
        monkeypatch.setattr(gateway, bound, 3 if bound == "MAX_SIZED_CAR_BLOCKS" else 0)
        length, unsized = car()
    finally:
        index.close()
    assert length is None and unsized == sized
    _, blocks, _ = _car(sized)
    assert len(blocks) > 3
