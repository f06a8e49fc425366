"""The storage peer (docs/http-api.md) tested through real `python -m dstore.peer serve` processes."""

from __future__ import annotations

import http.client
import json
import os
import signal
import stat
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from peerutil import PeerProcess, running_peers
from prometheus_client.parser import text_string_to_metric_families

from dstore.format.cid import DAG_CBOR, RAW, cid_to_text, make_cid


def request(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request on its own connection: (status, headers with lower-case names, body)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def block(data: bytes, hash_name: str = "blake3", codec: int = RAW) -> str:
    return cid_to_text(make_cid(codec, data, hash_name))


def shard_files(home: Path) -> list[Path]:
    return [p for p in (home / "shards").rglob("*") if p.is_file()]


def error_of(status_body: tuple[int, dict[str, str], bytes]) -> tuple[int, str]:
    status, headers, body = status_body
    assert headers["content-type"].startswith("application/json"), headers
    answer = json.loads(body)
    assert set(answer) == {"error", "code"} and answer["error"], answer
    return status, answer["code"]


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory):
    """One peer shared by the tests that do not need a fresh one."""
    with running_peers(tmp_path_factory.mktemp("shared"), 1) as peers:
        yield peers[0]


def test_identity_and_start_line(peer: PeerProcess) -> None:
    assert peer.peer_id.startswith("12D3KooW")
    assert peer.token_source == "--token"
    key = peer.home / "identity.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    status, _, body = request(peer.url + "/health")
    assert status == 200
    health = json.loads(body)
    assert health["peer_id"] == peer.peer_id
    assert set(health) == {
        "peer_id",
        "version",
        "bytes_stored",
        "bytes_reserved",
        "shards",
        "capacity",
        "last_scrub",
        "pins",
    }


def test_put_get_head_round_trip(peer: PeerProcess) -> None:
    data = os.urandom(100_000)
    cid = block(data)
    url = f"{peer.url}/shards/{cid}"
    assert request(url, "HEAD")[0] == 404
    assert request(url, "PUT", data, peer.auth)[0] == 201
    assert request(url, "PUT", data, peer.auth)[0] == 200  # idempotent
    status, headers, body = request(url)
    assert (status, body) == (200, data)
    assert headers["content-type"] == "application/octet-stream"
    assert headers["etag"] == f'"{cid}"'
    assert headers["accept-ranges"] == "bytes"
    status, headers, body = request(url, "HEAD")
    assert (status, body, headers["content-length"]) == (200, b"", str(len(data)))


def test_sha256_and_dag_cbor_blocks(peer: PeerProcess) -> None:
    data = b"\xa1ahb"
    cid = block(data, "sha2-256", DAG_CBOR)
    assert request(f"{peer.url}/shards/{cid}", "PUT", data, peer.auth)[0] == 201
    assert request(f"{peer.url}/shards/{cid}")[2] == data


def test_range(peer: PeerProcess) -> None:
    data = bytes(range(256)) * 40
    cid = block(data)
    url = f"{peer.url}/shards/{cid}"
    assert request(url, "PUT", data, peer.auth)[0] == 201
    status, headers, body = request(url, headers={"Range": "bytes=100-299"})
    assert (status, body) == (206, data[100:300])
    assert headers["content-range"] == f"bytes 100-299/{len(data)}"
    status, _, body = request(url, headers={"Range": "bytes=-10"})
    assert (status, body) == (206, data[-10:])
    status, _, body = request(url, headers={"Range": f"bytes={len(data) - 5}-"})
    assert (status, body) == (206, data[-5:])
    answer = request(url, headers={"Range": f"bytes={len(data)}-"})
    assert error_of(answer) == (416, "range_not_satisfiable")
    assert answer[1]["content-range"] == f"bytes */{len(data)}"
    assert error_of(request(url, headers={"Range": "bytes=0-1,5-6"}))[0] == 416
    # ranges that select no byte, or are not ranges at all
    for bad in ("bytes=-0", "bytes=5-3", "bytes=-", "bytes=abc", "items=0-1"):
        answer = request(url, headers={"Range": bad})
        assert error_of(answer) == (416, "range_not_satisfiable"), bad
        assert answer[1]["content-range"] == f"bytes */{len(data)}"


def test_block_answers_keep_the_connection_alive(tmp_path: Path) -> None:
    with running_peers(tmp_path, 1) as (p,):
        data = os.urandom(50_000)
        cid = block(data)
        assert request(f"{p.url}/shards/{cid}", "PUT", data, p.auth)[0] == 201
        parts = urlsplit(p.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            answers = []
            for headers in ({}, {"Range": "bytes=10-19"}, {}, {"Range": "bytes=-5"}):
                conn.request("GET", f"/shards/{cid}", headers=headers)
                resp = conn.getresponse()
                answers.append((resp.status, resp.read()))
        finally:
            conn.close()
        assert answers == [(200, data), (206, data[10:20]), (200, data), (206, data[-5:])]
        assert "Traceback" not in p.stderr_text()


def test_unauthenticated_put(peer: PeerProcess) -> None:
    data = b"secret-less"
    url = f"{peer.url}/shards/{block(data)}"
    assert error_of(request(url, "PUT", data)) == (401, "unauthorized")
    assert error_of(request(url, "PUT", data, {"Authorization": "Bearer wrong"})) == (401, "unauthorized")
    assert request(url, "HEAD")[0] == 404


def test_hash_mismatch_stores_nothing(tmp_path: Path) -> None:
    with running_peers(tmp_path, 1) as (p,):
        cid = block(b"the real bytes")
        answer = request(f"{p.url}/shards/{cid}", "PUT", b"other bytes!!!", p.auth)
        assert error_of(answer) == (400, "hash_mismatch")
        assert request(f"{p.url}/shards/{cid}")[0] == 404
        assert shard_files(p.home) == []
        assert list((p.home / "tmp").iterdir()) == []
        assert json.loads(request(p.url + "/health")[2])["bytes_stored"] == 0


@pytest.mark.parametrize(
    "path",
    [
        "/shards/not-a-cid",
        "/shards/bafkreiZZZ",
        "/shards/" + "b" * 600,
        "/datasets/nope",
    ],
)
def test_bad_cid_is_400_json(peer: PeerProcess, path: str) -> None:
    assert error_of(request(peer.url + path)) == (400, "bad_cid")
    assert error_of(request(peer.url + path, "PUT", b"x", peer.auth)) == (400, "bad_cid")


def test_unsupported_hash_is_400(peer: PeerProcess) -> None:
    # CIDv1 raw with an identity multihash: parses, but a peer only keeps blake3/sha2-256 blocks.
    cid = cid_to_text(bytes([1, RAW, 0x00, 3]) + b"abc")
    assert error_of(request(f"{peer.url}/shards/{cid}", "PUT", b"abc", peer.auth)) == (400, "bad_cid")


def test_unknown_route_and_method_are_json(peer: PeerProcess) -> None:
    assert error_of(request(peer.url + "/nope")) == (404, "not_found")
    assert error_of(request(peer.url + "/health", "POST", b"")) == (405, "method_not_allowed")
    assert error_of(request(peer.url + "/shards/x", "PATCH", b"")) == (405, "method_not_allowed")
    # a method aiohttp's parser does not know is refused before routing: JSON all the same
    assert error_of(request(peer.url + "/health", "BREW")) == (400, "bad_request")


def test_length_required_and_too_large(tmp_path: Path) -> None:
    with running_peers(tmp_path, 1, max_body="1K") as (p,):
        data = os.urandom(2000)
        url = urlsplit(f"{p.url}/shards/{block(data)}")
        # chunked upload: no Content-Length
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            conn.putrequest("PUT", url.path)
            conn.putheader("Authorization", f"Bearer {p.token}")
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            conn.send(b"3\r\nabc\r\n0\r\n\r\n")
            resp = conn.getresponse()
            assert (resp.status, json.loads(resp.read())["code"]) == (411, "length_required")
        finally:
            conn.close()
        answer = request(f"{p.url}/shards/{block(data)}", "PUT", data, p.auth)
        assert error_of(answer) == (413, "too_large")
        assert shard_files(p.home) == []


def test_dataset_pointer(peer: PeerProcess) -> None:
    dataset = block(b"manifest", codec=DAG_CBOR)
    locator = block(b"locator", codec=DAG_CBOR)
    url = f"{peer.url}/datasets/{dataset}"
    assert error_of(request(url)) == (404, "not_found")
    pointer = {"seq": 1, "locator": locator, "metadata": {"k": 10, "m": 2}}
    body = json.dumps(pointer).encode()
    assert error_of(request(url, "PUT", body)) == (401, "unauthorized")
    status, _, answer = request(url, "PUT", body, peer.auth)
    assert (status, json.loads(answer)) == (200, pointer)
    status, headers, answer = request(url)
    assert (status, json.loads(answer)) == (200, pointer)
    assert headers["content-type"].startswith("application/json")
    # replace
    pointer2 = {"seq": 2, "locator": block(b"locator v2", codec=DAG_CBOR), "metadata": {}}
    assert request(url, "PUT", json.dumps(pointer2).encode(), peer.auth)[0] == 200
    assert json.loads(request(url)[2]) == pointer2


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1,2]",
        b'{"metadata": {}}',
        b'{"locator": "zzz"}',
        b'{"locator": 5}',
        b'{"locator": "%s", "metadata": 3}',
    ],
)
def test_dataset_pointer_is_validated(peer: PeerProcess, body: bytes) -> None:
    body = body.replace(b"%s", block(b"x").encode())
    url = f"{peer.url}/datasets/{block(b'some dataset', codec=DAG_CBOR)}"
    assert error_of(request(url, "PUT", body, peer.auth)) == (400, "bad_pointer")
    assert request(url)[0] == 404


def test_dataset_pointer_size_limit(peer: PeerProcess) -> None:
    body = json.dumps({"locator": block(b"x"), "metadata": {"pad": "x" * 70_000}}).encode()
    url = f"{peer.url}/datasets/{block(b'big pointer', codec=DAG_CBOR)}"
    assert error_of(request(url, "PUT", body, peer.auth)) == (413, "too_large")


def test_capacity_507(tmp_path: Path) -> None:
    with running_peers(tmp_path, 1, capacity="10K") as (p,):
        first = os.urandom(6000)
        assert request(f"{p.url}/shards/{block(first)}", "PUT", first, p.auth)[0] == 201
        second = os.urandom(6000)
        assert error_of(request(f"{p.url}/shards/{block(second)}", "PUT", second, p.auth)) == (507, "full")
        assert request(f"{p.url}/shards/{block(first)}", "PUT", first, p.auth)[0] == 200  # held: no new bytes
        small = os.urandom(4000)
        assert request(f"{p.url}/shards/{block(small)}", "PUT", small, p.auth)[0] == 201
        health = json.loads(request(p.url + "/health")[2])
        assert (health["bytes_stored"], health["shards"], health["capacity"]) == (10000, 2, 10240)
        # the count survives a restart (walk of shards/)
        p.stop()
        p.start()
        health = json.loads(request(p.url + "/health")[2])
        assert (health["bytes_stored"], health["shards"]) == (10000, 2)
        assert error_of(request(f"{p.url}/shards/{block(second)}", "PUT", second, p.auth)) == (507, "full")


def test_concurrent_puts_do_not_overshoot_capacity(tmp_path: Path) -> None:
    with running_peers(tmp_path, 1, capacity="100K") as (p,):
        blocks = [os.urandom(30_000) for _ in range(8)]
        results: list[int] = []

        def put(data: bytes) -> None:
            results.append(request(f"{p.url}/shards/{block(data)}", "PUT", data, p.auth)[0])

        threads = [threading.Thread(target=put, args=(b,)) for b in blocks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [201] * 3 + [507] * 5
        assert sum(f.stat().st_size for f in shard_files(p.home)) == 90_000


def test_restart_keeps_identity_and_blocks(tmp_path: Path) -> None:
    with running_peers(tmp_path, 1, token=None) as (p,):
        assert p.token_source == str(p.home / "token")
        p.token = (p.home / "token").read_text().strip()
        assert stat.S_IMODE((p.home / "token").stat().st_mode) == 0o600
        data = os.urandom(50_000)
        cid = block(data)
        assert request(f"{p.url}/shards/{cid}", "PUT", data, p.auth)[0] == 201
        peer_id, url = p.peer_id, p.url
        assert p.stop() == 0
        p.start()
        assert (p.peer_id, p.url) == (peer_id, url)
        assert request(f"{p.url}/shards/{cid}")[2] == data
        assert request(f"{p.url}/shards/{cid}", "PUT", data, p.auth)[0] == 200  # same token from the file
        assert p.kill() != 0
        p.start()
        assert p.peer_id == peer_id
        assert request(f"{p.url}/shards/{cid}")[2] == data


def test_metrics(tmp_path: Path) -> None:
    with running_peers(tmp_path, 1) as (p,):
        data = os.urandom(1000)
        cid = block(data)
        request(f"{p.url}/shards/{cid}", "PUT", data, p.auth)
        request(f"{p.url}/shards/{cid}")
        request(f"{p.url}/shards/{cid}")
        request(f"{p.url}/shards/{cid}", headers={"Range": "bytes=0-9"})
        request(f"{p.url}/shards/nonsense")
        status, headers, body = request(p.url + "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }

        def requests(method: str, route: str, status: str) -> float:
            key = (("method", method), ("route", route), ("status", status))
            return samples.get(("dstore_peer_requests_total", key), 0)

        assert requests("PUT", "/shards/{cid}", "201") == 1
        assert requests("GET", "/shards/{cid}", "200") == 2
        assert requests("GET", "/shards/{cid}", "206") == 1
        assert requests("GET", "/shards/{cid}", "400") == 1
        get_count = (("method", "GET"), ("route", "/shards/{cid}"))
        assert samples[("dstore_peer_request_duration_seconds_count", get_count)] == 4
        assert samples[("dstore_peer_received_bytes_total", ())] == 1000
        assert samples[("dstore_peer_sent_bytes_total", ())] >= 2010
        assert samples[("dstore_peer_shards", ())] == 1
        assert samples[("dstore_peer_stored_bytes", ())] == 1000
        assert samples[("dstore_peer_scrub_bad_total", ())] == 0


def test_peers_list(tmp_path: Path) -> None:
    with running_peers(tmp_path, 2) as (a, b):
        c = PeerProcess(tmp_path / "peer2", token="t", peers=f"{a.url},{b.url}/", peer_poll_interval=0.2)
        try:
            c.start()
            deadline = time.monotonic() + 10
            while True:
                answer = json.loads(request(c.url + "/peers")[2])
                if all(p["peer_id"] for p in answer["peers"]) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert answer == {"peers": [{"url": a.url, "peer_id": a.peer_id}, {"url": b.url, "peer_id": b.peer_id}]}
        finally:
            c.kill()


@pytest.mark.slow
def test_scrub_drops_corrupted_block(tmp_path: Path) -> None:
    with running_peers(tmp_path, 1, scrub_interval=0.5) as (p,):
        good, bad = os.urandom(20_000), os.urandom(20_000)
        for data in (good, bad):
            assert request(f"{p.url}/shards/{block(data)}", "PUT", data, p.auth)[0] == 201
        path = next(f for f in shard_files(p.home) if f.name == block(bad))
        with open(path, "r+b") as f:  # flip one byte in place
            f.seek(1234)
            byte = f.read(1)
            f.seek(1234)
            f.write(bytes([byte[0] ^ 1]))
        deadline = time.monotonic() + 15
        while True:
            health = json.loads(request(p.url + "/health")[2])
            scrub = health["last_scrub"]
            if (scrub and scrub["bad"]) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert scrub["bad"] == 1 and scrub["checked"] == 2 and scrub["finished"] >= scrub["started"]
        assert (health["shards"], health["bytes_stored"]) == (1, 20_000)
        assert not path.exists()
        assert request(f"{p.url}/shards/{block(bad)}")[0] == 404
        assert request(f"{p.url}/shards/{block(good)}")[2] == good
        assert block(bad) in p.stderr_text()
        metrics = request(p.url + "/metrics")[2].decode()
        assert "dstore_peer_scrub_bad_total 1.0" in metrics
        # the block can be uploaded again
        assert request(f"{p.url}/shards/{block(bad)}", "PUT", bad, p.auth)[0] == 201


def _slow_put(p: PeerProcess, data: bytes, pieces: int, pause_s: float, after_first) -> tuple[int, bytes] | None:
    """PUT ``data`` in ``pieces`` with pauses; calls ``after_first()`` after the first piece.
    Returns (status, body), or None when the peer closed the connection."""
    url = urlsplit(f"{p.url}/shards/{block(data)}")
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.putrequest("PUT", url.path)
        conn.putheader("Authorization", f"Bearer {p.token}")
        conn.putheader("Content-Length", str(len(data)))
        conn.endheaders()
        step = len(data) // pieces
        for i in range(pieces):
            conn.send(data[i * step : len(data) if i == pieces - 1 else (i + 1) * step])
            if i == 0:
                after_first()
            time.sleep(pause_s)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (TimeoutError, ConnectionError, http.client.HTTPException):
        return None
    finally:
        conn.close()


@pytest.mark.slow
def test_sigterm_lets_a_slow_upload_finish(tmp_path: Path) -> None:
    with running_peers(tmp_path, 1, shutdown_timeout=10) as (p,):
        data = os.urandom(1_000_000)
        proc = p.proc
        assert proc is not None

        def terminate() -> None:
            time.sleep(0.1)  # the upload is in the peer's hands
            proc.terminate()

        answer = _slow_put(p, data, pieces=5, pause_s=0.2, after_first=terminate)
        assert answer is not None and answer[0] == 201
        assert proc.wait(10) == 0
        p.proc = None
        p.start()
        assert request(f"{p.url}/shards/{block(data)}")[2] == data


@pytest.mark.slow
def test_sigterm_with_a_stalled_upload_leaves_nothing(tmp_path: Path) -> None:
    with running_peers(tmp_path, 1, shutdown_timeout=0.5) as (p,):
        data = os.urandom(1_000_000)
        proc = p.proc
        assert proc is not None
        exit_codes: list[int] = []

        def terminate() -> None:  # and wait, while the client holds back the rest of the body
            time.sleep(0.1)
            proc.terminate()
            exit_codes.append(proc.wait(10))

        answer = _slow_put(p, data, pieces=2, pause_s=0, after_first=terminate)
        # The peer exited (0) while the client still held back the rest of the body.
        assert exit_codes == [0]
        assert answer is None or answer[0] >= 400
        assert shard_files(p.home) == []
        assert [f for f in (p.home / "tmp").iterdir()] == []
        p.proc = None
        p.start()
        assert request(f"{p.url}/shards/{block(data)}")[0] == 404
        assert json.loads(request(p.url + "/health")[2])["bytes_stored"] == 0


def test_if_none_match_and_missing_block(peer: PeerProcess) -> None:
    data = b"conditional"
    cid = block(data)
    url = f"{peer.url}/shards/{cid}"
    assert error_of(request(url)) == (404, "not_found")
    assert request(url, "PUT", data, peer.auth)[0] == 201
    status, headers, body = request(url, headers={"If-None-Match": f'"{cid}"'})
    assert (status, body, headers["etag"]) == (304, b"", f'"{cid}"')
    # any multibase spelling of the CID names the same block
    from dstore.format.cid import parse_cid

    base58 = parse_cid(cid).encode("base58btc")
    assert request(f"{peer.url}/shards/{base58}")[2] == data


def test_sigint_is_graceful_too(tmp_path: Path) -> None:
    with running_peers(tmp_path, 1) as (p,):
        data = os.urandom(10_000)
        assert request(f"{p.url}/shards/{block(data)}", "PUT", data, p.auth)[0] == 201
        assert p.proc is not None
        p.proc.send_signal(signal.SIGINT)
        assert p.proc.wait(10) == 0
        assert "Traceback" not in p.stderr_text()
        p.proc = None
        p.start()
        assert request(f"{p.url}/shards/{block(data)}")[2] == data


def test_put_replaces_a_rotten_copy(tmp_path):
    """A PUT of verified bytes heals a block that rotted on disk (how repair fixes a peer in place)."""
    import urllib.request

    from dstore.format.cid import RAW, make_cid

    data = b"healthy bytes " * 1000
    cid = make_cid(RAW, data).encode("base32")
    with running_peers(tmp_path, 1, token="t") as (peer,):

        def put() -> int:
            req = urllib.request.Request(f"{peer.url}/shards/{cid}", data=data, method="PUT", headers=peer.auth)
            with urllib.request.urlopen(req) as resp:
                return resp.status

        assert put() == 201
        (path,) = [p for p in (peer.home / "shards").glob("*/b*")]
        path.write_bytes(b"rotten" + data[6:])
        assert put() == 201  # replaced, not "already held"
        assert path.read_bytes() == data
        assert put() == 200
