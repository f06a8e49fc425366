"""Readers survive lying pointers: every distinct pointer is tried, newest first, and none can make a reader
allocate what it claims (issue "Hardening", items 3 and 4).

The lies are planted on real peers with the write token, as a peer that turned hostile would serve them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from peerutil import running_peers

from dstore._native import blake3
from dstore.format.cid import RAW, cid_from_digest, cid_to_text
from dstore.format.pack import shard_size

from treeutil import random_bytes, snapshot

TOKEN = "pointer-token"
MIB = 1 << 20


@pytest.fixture(scope="module")
def six(tmp_path_factory):
    with running_peers(tmp_path_factory.mktemp("peers"), 6, token=TOKEN) as peers:
        yield peers


def _env(peers, home) -> dict[str, str]:
    return {"DSTORE_PEERS": ",".join(p.url for p in peers), "DSTORE_TOKEN": TOKEN, "DSTORE_HOME": str(home)}


def _request(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _pointers(peers, cid: str) -> dict[int, dict]:
    """Peer index -> the pointer it holds for ``cid``."""
    out = {}
    for i, p in enumerate(peers):
        status, body = _request("GET", f"{p.url}/datasets/{cid}")
        if status == 200:
            out[i] = json.loads(body)
    return out


def _plant(peer, cid: str, pointer: dict) -> None:
    status, body = _request("PUT", f"{peer.url}/datasets/{cid}", json.dumps(pointer).encode())
    assert status in (200, 201), body


def _upload(peer, data: bytes) -> str:
    text = cid_to_text(cid_from_digest(RAW, blake3(data)))
    status, body = _request("PUT", f"{peer.url}/shards/{text}", data)
    assert status in (200, 201, 204), body
    return text


# The get's own peak RSS, read from /proc at exit: rusage would count the forked test process too
# (ru_maxrss survives execve).
_PEAK_RSS = (
    "import atexit, sys\n"
    "out = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(out, 'w').write(open('/proc/self/status').read()))\n"
    "from dstore.cli import main\n"
    "sys.argv[0] = 'dstore'\n"
    "main()\n"
)


def _get(args: list[str], env: dict[str, str], tmp_path) -> tuple[int, str, int]:
    """Run ``dstore get``; returns (exit code, stderr, peak RSS in KiB of that process)."""
    status_file = tmp_path / "get.status"
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, str(status_file), "get", *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = next(int(line.split()[1]) for line in status_file.read_text().splitlines() if line.startswith("VmHWM:"))
    return proc.returncode, proc.stderr, peak


@pytest.fixture(scope="module")
def dataset(six, tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    (src / "a.bin").write_bytes(random_bytes(300_000, 61))
    (src / "sub").mkdir()
    (src / "sub" / "b.txt").write_bytes(b"hello\n" * 1000)
    home = tmp_path_factory.mktemp("writer")
    out = subprocess.run(
        [sys.executable, "-m", "dstore", "add", str(src), "--shards", "2+1", "-q"],
        env={**os.environ, **_env(six, home)},
        capture_output=True,
        text=True,
        check=True,
    )
    cid = out.stdout.strip()
    honest = _pointers(six, cid)
    assert len(honest) == 3  # k + m copies
    return src, cid, honest


def _restore(six, cid: str, honest: dict[int, dict]) -> None:
    # On disk: a peer refuses (409) a PUT of a pointer older than the one it holds.
    for i, pointer in honest.items():
        (six[i].home / "datasets" / f"{cid}.json").write_text(json.dumps(pointer))


def test_a_poisoned_newer_pointer_on_one_peer_does_not_fail_gets(six, dataset, tmp_path):
    src, cid, honest = dataset
    holder, good = next(iter(honest.items()))
    poisoned = json.loads(json.dumps(good))
    poisoned["seq"] = good["seq"] + 1000  # newest: tried first
    # Metadata shards nobody holds.
    poisoned["metadata"]["shards"] = [
        cid_to_text(cid_from_digest(RAW, bytes([i]) * 32)) for i in range(len(good["metadata"]["shards"]))
    ]
    _plant(six[holder], cid, poisoned)
    try:
        for n in range(8):
            code, err, _ = _get([cid, "-o", str(tmp_path / f"out{n}")], _env(six, tmp_path / f"reader{n}"), tmp_path)
            assert code == 0, err
            assert snapshot(tmp_path / f"out{n}") == snapshot(src)
    finally:
        _restore(six, cid, honest)


def test_a_pointer_to_another_datasets_metadata_is_skipped(six, dataset, tmp_path):
    src, cid, honest = dataset
    other_src = tmp_path / "other.bin"
    other_src.write_bytes(random_bytes(50_000, 62))
    other = subprocess.run(
        [sys.executable, "-m", "dstore", "add", str(other_src), "--shards", "2+1", "-q"],
        env={**os.environ, **_env(six, tmp_path / "w2")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    foreign = next(iter(_pointers(six, other).values()))
    foreign["seq"] = max(p["seq"] for p in honest.values()) + 1
    holder = next(iter(honest))
    _plant(six[holder], cid, foreign)
    try:
        code, err, _ = _get([cid, "-o", str(tmp_path / "out")], _env(six, tmp_path / "reader"), tmp_path)
        assert code == 0, err
        assert snapshot(tmp_path / "out") == snapshot(src)
    finally:
        _restore(six, cid, honest)


def test_shards_of_the_wrong_length_give_one_line_not_a_crash(six, dataset, tmp_path):
    _src, cid, honest = dataset
    good = next(iter(honest.values()))
    short = _upload(six[0], b"too short for its pack")
    lying = json.loads(json.dumps(good))
    lying["seq"] = good["seq"] + 1
    lying["metadata"]["shards"] = [short] * len(good["metadata"]["shards"])
    for i in honest:
        _plant(six[i], cid, lying)  # no honest pointer left
    try:
        code, err, _ = _get([cid, "-o", str(tmp_path / "out")], _env(six, tmp_path / "reader"), tmp_path)
        assert code in (5, 6, 7), err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "out").exists()
    finally:
        _restore(six, cid, honest)


@pytest.mark.slow
def test_a_memory_bomb_pointer_is_bounded_and_the_honest_pointer_wins(six, dataset, tmp_path):
    """k shards of 17 MiB that all have one CID: fetched once, spooled to disk, never held k times."""
    src, cid, honest = dataset
    shard_bytes = 17 * MIB
    k = 10
    bomb_shard = _upload(six[0], random_bytes(shard_bytes, 63))
    assert shard_size(k * shard_bytes, k) == shard_bytes
    good = next(iter(honest.values()))
    bomb = {**good, "seq": good["seq"] + 1, "hints": []}
    bomb["metadata"] = {"k": k, "m": 0, "size": k * shard_bytes, "shard_size": shard_bytes, "shards": [bomb_shard] * k}
    holders = list(honest)
    _plant(six[holders[0]], cid, bomb)
    try:
        code, err, rss_kib = _get([cid, "-o", str(tmp_path / "out")], _env(six, tmp_path / "reader"), tmp_path)
        assert code == 0, err
        assert snapshot(tmp_path / "out") == snapshot(src)
        # Holding the claim would take k x 17 MiB = 170 MiB on top of the interpreter.
        assert rss_kib < 150 * 1024, f"peak RSS {rss_kib // 1024} MiB"

        # With no honest pointer left the get fails in one line, still bounded.
        for i in holders:
            _plant(six[i], cid, bomb)
        code, err, rss_kib = _get([cid, "-o", str(tmp_path / "out2")], _env(six, tmp_path / "reader2"), tmp_path)
        assert code in (5, 6), err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert rss_kib < 150 * 1024, f"peak RSS {rss_kib // 1024} MiB"
        assert not (tmp_path / "out2").exists()
    finally:
        _restore(six, cid, honest)


def test_a_claim_past_the_metadata_limit_is_refused_before_fetching(six, dataset, tmp_path):
    _src, cid, honest = dataset
    good = next(iter(honest.values()))
    k = 40
    claim = 17 * MIB
    fake = cid_to_text(cid_from_digest(RAW, b"\x07" * 32))
    bomb = {**good, "seq": good["seq"] + 1, "hints": []}
    bomb["metadata"] = {"k": k, "m": 0, "size": k * claim, "shard_size": claim, "shards": [fake] * k}
    for i in honest:
        _plant(six[i], cid, bomb)
    try:
        code, err, rss_kib = _get([cid, "-o", str(tmp_path / "out")], _env(six, tmp_path / "reader"), tmp_path)
        assert code == 5, err
        assert "limit" in err and len(err.strip().splitlines()) == 1, err
        assert rss_kib < 150 * 1024
    finally:
        _restore(six, cid, honest)
