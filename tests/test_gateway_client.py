"""The client reads from trustless gateways (``--gateways`` / ``$DSTORE_GATEWAYS``): real peers act as gateways.

The readers here have an empty store and no storage peers: every block of the dataset comes from
a dstore peer's gateway (``GET /ipfs/{cid}?format=raw``), as it would from any IPFS gateway, and is
verified against its CID. Hostile gateways (tests/hostile_gateway.py, a real process in front of a
real peer) serve wrong bytes, too many bytes or nothing: their bytes are never stored nor returned,
and a read still succeeds when another gateway has the blocks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_gateway import hostile_gateway
from hypothesis import given, settings
from hypothesis import strategies as st
from peerutil import running_peers

from dstore.errors import IntegrityError, NotFound
from dstore.format.cid import parse_cid
from dstore.net.config import gateways_from_env
from dstore.net.gateways import GatewayClient

from treeutil import csv_like, random_bytes

TOKEN = "gateway-client-token"

FILES = {
    "big.bin": random_bytes(1_200_000, 3),  # about 18 chunks under one File node
    "table.csv": csv_like(200_000),
    "sub/small.txt": b"a small file, one chunk\n",
    "sub/deeper/empty": b"",
}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Two peers holding a default (BLAKE3) dataset, and its dataset ID and UnixFS root."""
    tmp = tmp_path_factory.mktemp("gwclient")
    src = tmp / "src"
    for name, data in FILES.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    with running_peers(tmp, 2, token=TOKEN) as peers:
        env = {
            **os.environ,
            "DSTORE_HOME": str(tmp / "writer"),
            "DSTORE_PEERS": ",".join(p.url for p in peers),
            "DSTORE_TOKEN": TOKEN,
        }
        add = subprocess.run(
            [sys.executable, "-m", "dstore", "add", str(src), "--shards", "1+1", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert add.returncode == 0, add.stderr
        out = json.loads(add.stdout)
        yield {"peers": peers, "dataset": out["cid"], "root": out["root"], "tmp": tmp}


def _reader_env(gateways: list[str]) -> dict[str, str]:
    """No storage peers: only gateways."""
    return {"DSTORE_PEERS": "", "DSTORE_GATEWAYS": ",".join(gateways)}


def _stored(dstore) -> dict:
    return json.loads(dstore("stat", "--json").out)


def test_get_of_a_dataset_only_a_gateway_serves(served, dstore, tmp_path: Path) -> None:
    gateway = served["peers"][0].url
    out = tmp_path / "out"
    summary = json.loads(
        dstore("get", served["dataset"], "-o", out, "--json", "--gateways", gateway, env={"DSTORE_PEERS": ""}).out
    )
    assert _tree(out) == FILES
    assert (summary["files"], summary["bytes"]) == (len(FILES), sum(map(len, FILES.values())))
    assert (out / "sub" / "deeper").is_dir()
    # Nothing was needed from the local store, and nothing of the gateway's was put in it.
    stat = _stored(dstore)
    assert (stat["datasets"], stat["chunks"], stat["metadata_blocks"]) == (0, 0, 0)
    # Without gateways the same read has nowhere to go.
    missing = dstore("get", served["dataset"], "-o", tmp_path / "none", check=False, env={"DSTORE_PEERS": ""})
    assert missing.code == 3 and "--peers" in missing.err


def test_ls_cat_export_verify_from_gateways(served, dstore, tmp_path: Path) -> None:
    env = _reader_env([served["peers"][1].url])
    dataset = served["dataset"]
    listing = [json.loads(line) for line in dstore("ls", dataset, "--json", env=env).out.splitlines()]
    assert [(e["name"], e["type"], e["size"]) for e in listing] == [
        ("big.bin", "file", len(FILES["big.bin"])),
        ("sub", "dir", None),
        ("table.csv", "file", len(FILES["table.csv"])),
    ]
    assert dstore("ls", f"{dataset}/sub", env=env).out.split() == ["deeper/", "small.txt"]
    cat = subprocess.run(
        [sys.executable, "-m", "dstore", "cat", f"{dataset}/big.bin"],
        capture_output=True,
        env={**os.environ, "DSTORE_HOME": str(tmp_path / "h"), **env},
        timeout=300,
    )
    assert cat.returncode == 0, cat.stderr
    assert cat.stdout == FILES["big.bin"]
    verified = json.loads(dstore("verify", dataset, "--json", env=env).out)
    assert verified["blocks"] >= 20 and verified["bytes"] >= sum(map(len, FILES.values()))
    # The CAR of a dataset read from gateways imports back into a store as the same dataset.
    car = tmp_path / "d.car"
    dstore("export", dataset, "-o", car, env=env)
    imported = json.loads(dstore("import", car, "--json", env={"DSTORE_PEERS": "", "DSTORE_GATEWAYS": ""}).out)
    assert imported["root"] == served["root"]
    dstore("get", imported["cid"], "-o", tmp_path / "back", env={"DSTORE_PEERS": "", "DSTORE_GATEWAYS": ""})
    assert _tree(tmp_path / "back") == FILES


def test_a_plain_unixfs_root_reads_like_ipfs_get(served, dstore, tmp_path: Path) -> None:
    """The UnixFS root CID (what IPFS tools know, not a dstore manifest) reads from gateways too."""
    env = _reader_env([served["peers"][0].url])
    root = served["root"]
    dstore("get", root, "-o", tmp_path / "tree", env=env)
    assert _tree(tmp_path / "tree") == FILES
    dstore("get", f"{root}/sub/small.txt", "-o", tmp_path / "one.txt", env=env)
    assert (tmp_path / "one.txt").read_bytes() == FILES["sub/small.txt"]
    assert dstore("cat", f"{root}/table.csv", env=env).out.encode() == FILES["table.csv"]
    # Its CID as a file root works the same: a file is a tree of one entry.
    entries = {e["name"]: e for e in map(json.loads, dstore("ls", root, "--json", env=env).out.splitlines())}
    dstore("get", entries["big.bin"]["cid"], "-o", tmp_path / "big", env=env)
    assert (tmp_path / "big").read_bytes() == FILES["big.bin"]
    # Without gateways, a UnixFS root is no dataset ID.
    refused = dstore("ls", root, check=False, env={"DSTORE_PEERS": "", "DSTORE_GATEWAYS": ""})
    assert refused.code == 2 and "dataset ID" in refused.err


def test_dstore_open_and_fsspec_read_from_gateways(served, tmp_path: Path, monkeypatch) -> None:
    import fsspec

    import dstore

    monkeypatch.setenv("DSTORE_PEERS", "")
    gateway = served["peers"][0].url
    with dstore.open(served["dataset"], gateways=[gateway], home=tmp_path / "h", cache=False) as ds:
        assert sorted(ds.listdir()) == ["big.bin", "sub", "table.csv"]
        with ds.open("big.bin") as f:
            f.seek(500_000)
            assert f.read(100_000) == FILES["big.bin"][500_000:600_000]
        assert ds.read_bytes("sub/small.txt") == FILES["sub/small.txt"]
        assert ds.chunks.stats["gateway"] > 0
    monkeypatch.setenv("DSTORE_GATEWAYS", gateway)
    monkeypatch.setenv("DSTORE_HOME", str(tmp_path / "h2"))
    fs = fsspec.filesystem("dstore", cache=False, skip_instance_cache=True)
    try:
        assert fs.cat(f"dstore://{served['dataset']}/table.csv") == FILES["table.csv"]
    finally:
        fs.close()


def test_a_lying_gateway_is_passed_over_for_an_honest_one(served, dstore, tmp_path: Path) -> None:
    honest = served["peers"][1].url
    with hostile_gateway(tmp_path, upstream=served["peers"][0].url, mode="wrong-bytes") as liar:
        out = tmp_path / "out"
        dstore("get", served["dataset"], "-o", out, env=_reader_env([liar.url, honest]))
        assert _tree(out) == FILES
        assert liar.stats()["lies"] >= 1  # it was asked, and lied
    stat = _stored(dstore)
    assert (stat["chunks"], stat["metadata_blocks"]) == (0, 0)


@pytest.mark.parametrize("mode", ["wrong-bytes", "extra-bytes", "huge", "endless"])
def test_a_lying_gateway_alone_fails_the_read_with_one_line(served, dstore, tmp_path: Path, mode: str) -> None:
    with hostile_gateway(tmp_path, upstream=served["peers"][0].url, mode=mode) as liar:
        out = tmp_path / "out"
        result = dstore("get", served["dataset"], "-o", out, check=False, env=_reader_env([liar.url]))
        assert liar.stats()["lies"] >= 1
    assert result.code == 6, result.err
    assert result.err.count("\n") == 1 and "no gateway gave a verified copy" in result.err
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())
    stat = _stored(dstore)
    assert (stat["chunks"], stat["metadata_blocks"]) == (0, 0)


def test_a_gateway_lying_about_chunks_only_fails_the_file_read(served, dstore, tmp_path: Path) -> None:
    """Honest metadata, lying chunks: listing works, reading a file fails, and never gives the lies."""
    import dstore as dstore_module

    with hostile_gateway(tmp_path, upstream=served["peers"][0].url, mode="wrong-raw") as liar:
        with dstore_module.open(
            served["dataset"], peers=[], gateways=[liar.url], home=tmp_path / "h", cache=False
        ) as ds:
            assert sorted(ds.listdir("sub")) == ["deeper", "small.txt"]
            with pytest.raises(IntegrityError, match="do not match the CID"), ds.open("big.bin") as f:
                f.read()
        result = dstore("cat", f"{served['dataset']}/table.csv", check=False, env=_reader_env([liar.url]))
        assert liar.stats()["lies"] >= 2
    assert result.code == 6 and result.out == "" and result.err.count("\n") == 1


def test_a_block_no_gateway_has_is_not_found(served, dstore, tmp_path: Path) -> None:
    with hostile_gateway(tmp_path, upstream=served["peers"][0].url, mode="missing") as empty:
        result = dstore("ls", served["dataset"], check=False, env=_reader_env([empty.url]))
    assert result.code == 3 and "on none of the 1 gateways" in result.err


def test_gateway_client_bounds_and_verifies(served, tmp_path: Path) -> None:
    """The client alone: a block over the bound the caller gives is refused, whatever the gateway claims."""
    gateway = served["peers"][0].url
    dataset = parse_cid(served["dataset"])
    with GatewayClient([gateway]) as client:
        manifest = client.get_block(dataset, 64 << 10)
        with pytest.raises(IntegrityError, match="over the"):
            client.get_block(dataset, len(manifest) - 1)
        unknown = parse_cid("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku")  # sha256("hello world")
        with pytest.raises(NotFound):
            client.get_block(unknown, 1 << 20)
    with hostile_gateway(tmp_path, upstream=gateway, mode="endless") as liar, GatewayClient([liar.url]) as client:
        with pytest.raises(IntegrityError, match="more than the"):
            client.get_block(dataset, 1 << 20)


def test_gateway_addresses_from_option_and_environment(monkeypatch) -> None:
    monkeypatch.setenv("DSTORE_GATEWAYS", "https://gw.example, 127.0.0.1:8080,https://gw.example/")
    assert gateways_from_env(None) == ["https://gw.example", "http://127.0.0.1:8080"]
    assert gateways_from_env("http://a:1") == ["http://a:1"]
    from dstore.errors import UsageError

    with pytest.raises(UsageError, match="not a gateway address"):
        gateways_from_env("ftp://x")


def test_a_bad_gateway_address_is_one_line(dstore, served) -> None:
    result = dstore("ls", served["dataset"], "--gateways", "ftp://nope", check=False, env={"DSTORE_PEERS": ""})
    assert result.code == 2 and result.err.count("\n") == 1 and "not a gateway address" in result.err


def test_peers_that_lack_the_dataset_leave_it_to_the_gateways(served, dstore, tmp_path: Path) -> None:
    """With storage peers configured that know nothing of the dataset, the gateways are asked next."""
    with running_peers(tmp_path, 1, token=TOKEN) as (empty,):
        env = {"DSTORE_PEERS": empty.url, "DSTORE_GATEWAYS": served["peers"][0].url}
        dstore("get", served["dataset"], "-o", tmp_path / "out", env=env)
        assert _tree(tmp_path / "out") == FILES
        alone = dstore("ls", served["dataset"], check=False, env={"DSTORE_PEERS": empty.url, "DSTORE_GATEWAYS": ""})
        # The empty peer as a gateway too: the error says what both said.
        both = dstore(
            "ls", served["dataset"], check=False, env={"DSTORE_PEERS": empty.url, "DSTORE_GATEWAYS": empty.url}
        )
    assert alone.code == 3 and "no storage peer knows" in alone.err
    assert both.code == 3 and "no storage peer knows" in both.err and "on none of the 1 gateways" in both.err


def test_a_large_file_comes_as_one_car_stream(served, dstore, tmp_path: Path) -> None:
    """big.bin (about 18 chunks) is one CAR request (dag-scope=entity), not a request per chunk."""
    with hostile_gateway(tmp_path, upstream=served["peers"][0].url, mode="honest") as proxy:
        got = subprocess.run(
            [sys.executable, "-m", "dstore", "cat", f"{served['dataset']}/big.bin"],
            capture_output=True,
            env={**os.environ, "DSTORE_HOME": str(tmp_path / "h"), **_reader_env([proxy.url])},
            timeout=300,
        )
        stats = proxy.stats()
    assert got.returncode == 0, got.stderr
    assert got.stdout == FILES["big.bin"]
    assert stats["car_requests"] == 1
    assert stats["requests"] < 10  # manifest, folder, file nodes and the CAR: far fewer than the chunks


def test_a_lying_car_stream_falls_back_to_single_blocks(served, dstore, tmp_path: Path) -> None:
    with hostile_gateway(tmp_path, upstream=served["peers"][0].url, mode="wrong-car") as liar:
        out = tmp_path / "out"
        dstore("get", served["dataset"], "-o", out, env=_reader_env([liar.url]))
        stats = liar.stats()
    assert _tree(out) == FILES
    assert stats["car_requests"] >= 1 and stats["lies"] == stats["car_requests"]
    assert stats["requests"] > 20  # the chunks of big.bin, one by one after the CAR failed


@settings(max_examples=200, deadline=None)
@given(
    blobs=st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=12, unique=True),
    order=st.randoms(use_true_random=False),
    cut=st.integers(min_value=0, max_value=12),
)
def test_a_file_stream_hands_out_each_block_under_its_own_cid(blobs, order, cut) -> None:
    """Whatever order a CAR stream sends blocks in, and wherever it stops, take(cid) gives cid's block or None."""
    from dstore.fetch.gateway import FileStream, GatewayBlocks
    from dstore.format.cid import RAW, make_cid

    blocks = [(make_cid(RAW, b, "sha2-256"), b) for b in blobs]
    sent = list(blocks)
    order.shuffle(sent)
    with GatewayClient(["http://127.0.0.1:9"]) as client:
        stream = FileStream(iter(sent[:cut]), GatewayBlocks(client))
        for cid, block in blocks:
            got = stream.take(cid)
            assert got is None or got == block
        assert all(stream.take(cid) is None for cid, _ in blocks)  # each handed out once, then the stream is done
