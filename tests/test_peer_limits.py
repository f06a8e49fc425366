"""A peer under hostile clients: slow-loris sockets, stalled and dribbled uploads, a file-descriptor
limit (`prlimit --nofile`), malformed requests. Real peer processes over real sockets; every check
is about behaviour (who closed what, which status came back), never about how long it took."""

from __future__ import annotations

import http.client
import json
import os
import select
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from peerutil import PeerProcess, running_peers
from prometheus_client.parser import text_string_to_metric_families
from test_peer import block, error_of, request


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory):
    with running_peers(tmp_path_factory.mktemp("limits"), 1) as peers:
        yield peers[0]


#: Generous bound for waiting on the peer: a safety net against hanging, not a speed requirement.
WAIT_S = 60.0


class LimitedPeer(PeerProcess):
    """A peer run under ``prlimit --nofile=N`` (soft and hard limit of open files)."""

    def __init__(self, home: Path, nofile: int, **options: object) -> None:
        super().__init__(home, **options)
        self.nofile = nofile

    def command(self) -> list[str]:
        return ["prlimit", f"--nofile={self.nofile}", "--", *super().command()]


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def _closed_by_peer(sock: socket.socket) -> bool:
    """Read until the peer closes the socket (EOF or reset); False if it is still open after WAIT_S."""
    sock.settimeout(WAIT_S)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


def _slow_loris(url: str, n: int) -> list[socket.socket]:
    """``n`` connections that each send half of a request's headers and then nothing."""
    socks = []
    for i in range(n):
        s = socket.create_connection(_address(url), timeout=WAIT_S)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Part: " + str(i).encode())
        socks.append(s)
    return socks


def _metric(url: str, name: str, **labels: str) -> float:
    body = request(url + "/metrics")[2].decode()
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


def _start_put(url: str, token: str, cid: str, length: int, first: bytes) -> socket.socket:
    """An authenticated PUT whose headers claim ``length`` bytes; only ``first`` of them are sent."""
    s = socket.create_connection(_address(url), timeout=WAIT_S)
    head = f"PUT /shards/{cid} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {length}\r\n\r\n"
    s.sendall(head.encode() + first)
    return s


def _response_of(sock: socket.socket) -> tuple[int, dict]:
    """Read the answer on a raw socket: (status, JSON body)."""
    sock.settimeout(WAIT_S)
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return resp.status, json.loads(resp.read())


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux prlimit")
def test_slow_loris_under_a_descriptor_limit_leaves_health_answering(tmp_path: Path) -> None:
    # A long header timeout: what keeps /health answering here is the connection limit alone.
    p = LimitedPeer(tmp_path / "peer0", nofile=256, header_timeout=600)
    socks: list[socket.socket] = []
    try:
        p.start()
        socks = _slow_loris(p.url, 300)
        status, _, body = request(p.url + "/health")
        assert status == 200 and json.loads(body)["peer_id"] == p.peer_id
        data = os.urandom(10_000)
        assert request(f"{p.url}/shards/{block(data)}", "PUT", data, p.auth)[0] == 201
        # The oldest half-open sockets were closed to make room.
        assert _closed_by_peer(socks[0])
        default_limit = 256 - 64
        assert _metric(p.url, "dstore_peer_connections_closed_total", reason="evicted") >= 300 - default_limit
        assert "Too many open files" not in p.stderr_text()
        assert "Traceback" not in p.stderr_text()
    finally:
        for s in socks:
            s.close()
        p.kill()


def test_header_timeout_closes_half_open_connections(tmp_path: Path) -> None:
    with running_peers(tmp_path, 1, header_timeout=1) as (p,):
        socks = _slow_loris(p.url, 10)
        silent = [socket.create_connection(_address(p.url), timeout=WAIT_S) for _ in range(3)]
        try:
            # Dribbling more header bytes does not extend the time allowed for the headers.
            for s in socks[:3]:
                s.sendall(b"1")
            assert all(_closed_by_peer(s) for s in socks + silent)
        finally:
            for s in socks + silent:
                s.close()
        assert _metric(p.url, "dstore_peer_connections_closed_total", reason="header_timeout") == 13
        assert request(p.url + "/health")[0] == 200


def test_idle_keepalive_connection_is_closed(tmp_path: Path) -> None:
    with running_peers(tmp_path, 1, keepalive_timeout=1) as (p,):
        conn = http.client.HTTPConnection(*_address(p.url), timeout=WAIT_S)
        conn.request("GET", "/health")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Connection", "keep-alive").lower() == "keep-alive"
        resp.read()
        assert conn.sock is not None
        assert _closed_by_peer(conn.sock)
        conn.close()
        assert _metric(p.url, "dstore_peer_connections_closed_total", reason="keepalive_timeout") == 1


def test_stalled_upload_books_no_capacity(tmp_path: Path) -> None:
    with running_peers(tmp_path, 1, capacity="100K", body_idle_timeout=1) as (p,):
        stalled_data = os.urandom(80_000)
        stalled = _start_put(p.url, p.token or "", block(stalled_data), len(stalled_data), stalled_data[:1000])
        try:
            time.sleep(0.2)  # let the peer take the stalled request's headers first
            other = os.urandom(50_000)
            # 80 000 claimed + 50 000 would not fit in 100 KiB: booking at the headers meant 507 here.
            assert request(f"{p.url}/shards/{block(other)}", "PUT", other, p.auth)[0] == 201
            status, answer = _response_of(stalled)
            assert (status, answer["code"]) == (408, "body_timeout")
            assert _closed_by_peer(stalled)
        finally:
            stalled.close()
        health = json.loads(request(p.url + "/health")[2])
        assert (health["bytes_stored"], health["bytes_reserved"], health["shards"]) == (50_000, 0, 1)
        assert request(f"{p.url}/shards/{block(stalled_data)}")[0] == 404
        assert list((p.home / "tmp").iterdir()) == []
        # what is left is free for others: 50 000 + 50 000 fit in 100 KiB, 80 000 more do not
        assert error_of(request(f"{p.url}/shards/{block(stalled_data)}", "PUT", stalled_data, p.auth)) == (507, "full")
        more = os.urandom(50_000)
        assert request(f"{p.url}/shards/{block(more)}", "PUT", more, p.auth)[0] == 201


def test_dribbled_upload_hits_the_request_timeout(tmp_path: Path) -> None:
    with running_peers(tmp_path, 1, request_timeout=1, body_idle_timeout=30) as (p,):
        data = os.urandom(10_000)
        sock = _start_put(p.url, p.token or "", block(data), len(data), data[:1])
        try:
            sent = 1
            # One byte at a time, never pausing long enough for the idle timeout.
            while sent < len(data) and not select.select([sock], [], [], 0.05)[0]:
                sock.sendall(data[sent : sent + 1])
                sent += 1
            assert sent < len(data)
            status, answer = _response_of(sock)
            assert (status, answer["code"]) == (408, "request_timeout")
        finally:
            sock.close()
        health = json.loads(request(p.url + "/health")[2])
        assert (health["bytes_stored"], health["bytes_reserved"]) == (0, 0)


@pytest.mark.parametrize(
    "raw",
    [
        b"BREW /health HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"not http at all\r\n\r\n",
        b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
def test_unparsable_requests_get_json_errors(peer: PeerProcess, raw: bytes) -> None:
    with socket.create_connection(_address(peer.url), timeout=WAIT_S) as s:
        s.sendall(raw)
        resp = http.client.HTTPResponse(s)
        resp.begin()
        assert resp.getheader("Content-Type", "").startswith("application/json")
        answer = json.loads(resp.read())
        assert resp.status == 400 and answer["code"] == "bad_request", answer
        assert set(answer) == {"error", "code"} and answer["error"]
    assert "Traceback" not in peer.stderr_text()
