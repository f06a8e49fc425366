"""The data-plane HTTP/1.1 client (dstore/net/h1.py) against real peers and a raw-socket server that lies.

Every hostile answer must end as a clean miss: an exception the transport
turns into a :class:`Miss`, within the timeouts, with no buffer larger than
the caller's limit, and a connection that is never reused after the fault.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
import threading
import time
import tracemalloc
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from peerutil import running_peers

from dstore import _native
from dstore.format.cid import RAW, cid_to_text, make_cid
from dstore.net import h1
from dstore.net.peers import Peer
from dstore.net.reads import get_verified
from dstore.net.transport import Miss, Transport

TOKEN = "h1-test-token"
LIMIT = 64 * 1024
BODY = bytes(range(256)) * (LIMIT // 256)


def client(read_timeout_s: float = 5.0) -> h1.H1Client:
    return h1.H1Client(connect_timeout_s=2.0, read_timeout_s=read_timeout_s, user_agent="dstore-test")


# -- a raw-socket server with a script ------------------------------------------------------------------------------

Respond = Callable[[int, bytes, socket.socket], bool]


class RawServer:
    """Accepts connections on 127.0.0.1; ``respond(request number, request head, socket)`` answers each request.

    ``respond`` returns whether to keep the connection for another request.
    ``requests`` records ``(connection number, request line)`` in order.
    """

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)  # so that the accept loop sees close() soon
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[tuple[int, bytes]] = []
        self.closed_by_client = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    def _accept(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self._lock:
                self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn, n), daemon=True)
            t.start()
            self._threads.append(t)
            n += 1

    def _serve(self, conn: socket.socket, conn_no: int) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    got = conn.recv(65536)
                    if not got:
                        with self._lock:
                            self.closed_by_client += 1
                        return
                    buf += got
                head, buf = buf.split(b"\r\n\r\n", 1)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    got = conn.recv(65536)
                    if not got:
                        return
                    buf += got
                buf = buf[length:]
                with self._lock:
                    number = len(self.requests)
                    self.requests.append((conn_no, head.split(b"\r\n")[0]))
                if not self.respond(number, head, conn):
                    return
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        with self._lock:
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for t in self._threads:
            t.join(10)


@contextmanager
def raw_server(respond: Respond) -> Iterator[RawServer]:
    server = RawServer(respond)
    try:
        yield server
    finally:
        server.close()


def ok_head(length: int, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n{extra}\r\n".encode()


def serve_body(n: int, head: bytes, conn: socket.socket) -> bool:
    conn.sendall(ok_head(len(BODY)) + BODY)
    return True


def run(coro_fn: Callable[[h1.H1Client], object], *, read_timeout_s: float = 5.0) -> object:
    """Run ``coro_fn(client)`` on a fresh loop, closing the client after."""

    async def main() -> object:
        c = client(read_timeout_s)
        try:
            return await coro_fn(c)  # type: ignore[misc]
        finally:
            await c.close()

    return asyncio.run(main())


def get(url: str, limit: int = LIMIT) -> Callable[[h1.H1Client], object]:
    async def go(c: h1.H1Client) -> h1.Response:
        return await c.request(url, "GET", "/shards/x", limit=limit)

    return go


# -- well-formed answers ---------------------------------------------------------------------------------------------


def test_a_body_lands_whole_and_the_connection_is_reused() -> None:
    with raw_server(serve_body) as srv:

        async def go(c: h1.H1Client) -> list[h1.Response]:
            return [await c.request(srv.url, "GET", f"/shards/{i}", limit=LIMIT) for i in range(3)]

        got = run(go)
        assert [bytes(r.body) for r in got] == [BODY] * 3  # type: ignore[union-attr]
        assert [conn for conn, _ in srv.requests] == [0, 0, 0]  # one connection, kept alive
        assert srv.requests[1][1] == b"GET /shards/1 HTTP/1.1"


def test_an_idle_connection_does_not_keep_its_last_body_alive() -> None:
    """A pooled connection waiting for its next request holds no answer: a long-lived client (a peer's
    gateway reading shards) would otherwise keep a shard's body alive per idle connection."""
    with raw_server(serve_body) as srv:

        async def go(c: h1.H1Client) -> bool:
            resp = await c.request(srv.url, "GET", "/shards/0", limit=LIMIT)
            assert bytes(resp.body) == BODY
            answer = weakref.ref(resp)
            del resp
            for _ in range(3):
                await asyncio.sleep(0)  # the loop's callbacks that carried the answer have run
            gc.collect()
            return answer() is None  # while the client and its idle connection live on

        assert run(go)
        assert len(srv.requests) == 1


def test_a_valid_chunked_body_is_decoded_within_the_limit() -> None:
    def chunked(n: int, head: bytes, conn: socket.socket) -> bool:
        parts = [BODY[i : i + 1000] for i in range(0, len(BODY), 1000)]
        wire = b"".join(f"{len(p):x};ext=1\r\n".encode() + p + b"\r\n" for p in parts)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + wire + b"0\r\nX-Trailer: y\r\n\r\n")
        return True

    with raw_server(chunked) as srv:

        async def go(c: h1.H1Client) -> list[bytes]:
            return [bytes((await c.request(srv.url, "GET", "/", limit=LIMIT)).body) for _ in range(2)]

        assert run(go) == [BODY, BODY]
        assert [conn for conn, _ in srv.requests] == [0, 0]


def test_an_error_answer_keeps_only_the_start_of_its_text() -> None:
    def not_found(n: int, head: bytes, conn: socket.socket) -> bool:
        text = b'{"error": "no such shard", "code": "not_found"}' + b" " * 100_000
        conn.sendall(f"HTTP/1.1 404 Not Found\r\nContent-Length: {len(text)}\r\n\r\n".encode() + text)
        return True

    with raw_server(not_found) as srv:
        resp = run(get(srv.url))
        assert resp.status == 404  # type: ignore[attr-defined]
        assert resp.body.startswith(b'{"error": "no such shard"')  # type: ignore[attr-defined]
        assert len(resp.body) == h1.MAX_ERROR_BODY_BYTES  # type: ignore[attr-defined]


# -- hostile answers: each a clean failure -------------------------------------------------------------------------


def send_then_close(wire: bytes, *, reset: bool = False) -> Respond:
    def respond(n: int, head: bytes, conn: socket.socket) -> bool:
        conn.sendall(wire)
        if reset:  # RST instead of FIN
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return False

    return respond


HOSTILE = {
    "short body": (send_then_close(ok_head(LIMIT) + BODY[:1000]), h1.ProtocolFault),
    "reset mid-body": (send_then_close(ok_head(LIMIT) + BODY[:1000], reset=True), h1.ProtocolFault),
    "claims more than the limit": (send_then_close(ok_head(2**40) + BODY), h1.BodyTooLarge),
    "one byte over the limit": (send_then_close(ok_head(LIMIT + 1) + BODY + b"x"), h1.BodyTooLarge),
    "no length, longer than the limit": (send_then_close(b"HTTP/1.1 200 OK\r\n\r\n" + BODY + BODY), h1.BodyTooLarge),
    "chunked, longer than the limit": (
        send_then_close(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % (LIMIT + 1)),
        h1.BodyTooLarge,
    ),
    "chunked, bad size": (
        send_then_close(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        h1.ProtocolFault,
    ),
    "chunked, data past its size": (
        send_then_close(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n"),
        h1.ProtocolFault,
    ),
    "gzip transfer coding": (
        send_then_close(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + BODY),
        h1.ProtocolFault,
    ),
    "bad status line": (send_then_close(b"HTTP/9 200 OK\r\nContent-Length: 1\r\n\r\nx"), h1.ProtocolFault),
    "not HTTP at all": (send_then_close(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"), h1.ProtocolFault),
    "huge headers": (
        send_then_close(b"HTTP/1.1 200 OK\r\n" + b"X-Junk: " + b"a" * (h1.MAX_HEAD_BYTES + 10) + b"\r\n\r\n"),
        h1.ProtocolFault,
    ),
    "bad header line": (send_then_close(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"), h1.ProtocolFault),
    "conflicting lengths": (
        send_then_close(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        h1.ProtocolFault,
    ),
    "negative length": (send_then_close(b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n"), h1.ProtocolFault),
    "interim answer": (send_then_close(b"HTTP/1.1 100 Continue\r\n\r\n"), h1.ProtocolFault),
    "closed at once": (send_then_close(b""), h1.ProtocolFault),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_answer_is_a_clean_failure_with_bounded_memory(case: str) -> None:
    respond, expected = HOSTILE[case]
    with raw_server(respond) as srv:
        tracemalloc.start()
        try:
            with pytest.raises(expected):
                run(get(srv.url))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # Never a buffer past what the caller allowed (the head buffer, one body of LIMIT, and small change).
    assert peak < h1.MAX_HEAD_BYTES + 2 * LIMIT + 256 * 1024


def test_a_silent_peer_times_out() -> None:
    def silent(n: int, head: bytes, conn: socket.socket) -> bool:
        conn.recv(1)  # until the client hangs up
        return False

    with raw_server(silent) as srv:
        with pytest.raises(TimeoutError):
            run(get(srv.url), read_timeout_s=0.3)


def test_a_peer_dripping_bytes_runs_out_of_time_however_steady() -> None:
    """One byte every 50 ms never trips the wait-for-bytes timeout, but the whole answer has a deadline."""
    stop = threading.Event()

    def drip(n: int, head: bytes, conn: socket.socket) -> bool:
        conn.sendall(ok_head(LIMIT))
        for i in range(LIMIT):
            if stop.wait(0.05):
                break
            try:
                conn.sendall(BODY[i : i + 1])
            except OSError:
                break
        return False

    with raw_server(drip) as srv:
        try:
            with pytest.raises(TimeoutError):
                run(get(srv.url), read_timeout_s=0.5)  # deadline: 0.5 s + LIMIT at MIN_BODY_BPS
        finally:
            stop.set()
        assert srv.requests and len(srv.requests) == 1


def test_a_connection_is_not_reused_after_an_error() -> None:
    """Request 0 fine, request 1 (same connection) gets junk, request 2 goes out on a new connection."""

    def respond(n: int, head: bytes, conn: socket.socket) -> bool:
        if n == 1:
            conn.sendall(ok_head(10) + b"0123456789EXTRA BYTES AFTER THE BODY")
            return True  # the server would keep it: the client must not
        return serve_body(n, head, conn)

    with raw_server(respond) as srv:

        async def go(c: h1.H1Client) -> list[object]:
            out: list[object] = []
            for i in range(3):
                try:
                    out.append(bytes((await c.request(srv.url, "GET", f"/{i}", limit=LIMIT)).body))
                except h1.ProtocolFault as e:
                    out.append(e)
            return out

        got = run(go)
        assert got[0] == BODY and got[2] == BODY  # type: ignore[index]
        # Request 1's 10 bytes may be taken before the junk arrives: either way the connection is not reused.
        assert [conn for conn, _ in srv.requests] == [0, 0, 1]


def test_a_stale_idle_connection_is_replaced_without_an_error() -> None:
    """The peer closed the kept-alive connection between requests: the request goes out again on a new one."""

    def respond(n: int, head: bytes, conn: socket.socket) -> bool:
        serve_body(n, head, conn)
        return False  # close after every answer, without saying so

    with raw_server(respond) as srv:

        async def go(c: h1.H1Client) -> list[bytes]:
            first = bytes((await c.request(srv.url, "GET", "/0", limit=LIMIT)).body)
            await asyncio.sleep(0.2)  # the close reaches the idle connection
            return [first, bytes((await c.request(srv.url, "GET", "/1", limit=LIMIT)).body)]

        assert run(go) == [BODY, BODY]
        assert [conn for conn, _ in srv.requests] == [0, 1]


def test_refused_connection_is_connect_failed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(h1.ConnectFailed):
            run(get(f"http://127.0.0.1:{port}"))


def test_header_values_cannot_smuggle_lines() -> None:
    async def go(c: h1.H1Client) -> object:
        return await c.request("http://127.0.0.1:1", "GET", "/", headers={"Range": "bytes=0-1\r\nX: y"})

    with pytest.raises(ValueError, match="line break"):
        run(go)


# -- through the transport: misses with the peer's health kept ------------------------------------------------------


def transport_get(
    url: str, data: bytes, read_timeout_s: float = 2.0, hash_name: str = "blake3"
) -> tuple[Peer, Exception | bytes]:
    cid = make_cid(RAW, data, hash_name)

    async def main() -> tuple[Peer, Exception | bytes]:
        t = Transport.open(None, timeout_s=2.0, read_timeout_s=read_timeout_s)
        peer = Peer(url=url, peer_id="12D3KooWtest", alive=True)
        try:
            return peer, bytes(await get_verified(t, peer, cid, len(data)))
        except Miss as e:
            return peer, e
        finally:
            await t.close()

    return asyncio.run(main())


def test_transport_scores_a_lying_length_as_bad_bytes() -> None:
    with raw_server(send_then_close(ok_head(2**40) + BODY)) as srv:
        peer, got = transport_get(srv.url, BODY)
    assert isinstance(got, Miss) and "over" in str(got)
    assert peer.bad_bytes == 1 and srv.requests and len(srv.requests) == 1  # refused unread, not retried


def test_transport_retries_a_dropped_body_then_misses() -> None:
    with raw_server(send_then_close(ok_head(LIMIT) + BODY[:100])) as srv:
        peer, got = transport_get(srv.url, BODY)
    assert isinstance(got, Miss) and "connection failed" in str(got)
    assert len(srv.requests) == 3 and peer.errors == 3 and peer.bad_bytes == 0  # READ_RETRIES = 2 more tries


@pytest.mark.parametrize("hash_name", ["blake3", "sha2-256"])
def test_transport_checks_the_received_buffer_against_the_cid(hash_name: str) -> None:
    with raw_server(serve_body) as srv:
        peer, got = transport_get(srv.url, BODY, hash_name=hash_name)
    assert got == BODY and peer.bad_bytes == 0
    with raw_server(lambda n, head, conn: (conn.sendall(ok_head(LIMIT) + BODY[::-1]), True)[1]) as srv:
        peer, got = transport_get(srv.url, BODY, hash_name=hash_name)
    assert isinstance(got, Miss) and "bad bytes" in str(got) and peer.bad_bytes == 1


def test_transport_gets_verified_bytes_from_a_chunked_answer() -> None:
    def chunked(n: int, head: bytes, conn: socket.socket) -> bool:
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        conn.sendall(head + b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n")
        return True

    with raw_server(chunked) as srv:
        peer, got = transport_get(srv.url, BODY)
    assert got == BODY and peer.errors == 0


# -- against real peers --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_shards_put_got_and_headed_on_a_real_peer(tmp_path) -> None:
    data = bytes(range(256)) * 4096 + b"tail"  # a little over 1 MiB
    cid = make_cid(RAW, data)
    path = f"/shards/{cid_to_text(cid)}"
    with running_peers(tmp_path, 1, token=TOKEN) as (peer,):

        async def main() -> None:
            c = client()
            try:
                auth = {"Authorization": f"Bearer {TOKEN}"}
                refused = await c.request(peer.url, "PUT", path, body=memoryview(data), headers=auth | {"X": "1"})
                assert refused.status in (200, 201)
                no_token = await c.request(peer.url, "PUT", path, body=memoryview(data))
                assert no_token.status == 401 and b"error" in no_token.body
                head = await c.request(peer.url, "HEAD", path)
                assert head.status == 200 and head.body == b""
                got = await c.request(peer.url, "GET", path, limit=len(data))
                assert got.status == 200 and got.body == data and _native.blake3(got.body) == cid.hash.digest
                part = await c.request(peer.url, "GET", path, limit=len(data), headers={"Range": "bytes=10-19"})
                assert part.status == 206 and part.body == data[10:20]
                assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
                missing = await c.request(peer.url, "GET", "/shards/" + cid_to_text(make_cid(RAW, b"x")), limit=10)
                assert missing.status == 404
                with pytest.raises(h1.BodyTooLarge):  # the peer says how long it is: refused before reading
                    await c.request(peer.url, "GET", path, limit=len(data) - 1)
                again = await c.request(peer.url, "GET", path, limit=len(data))
                assert again.body == data
                pool = c._pools[peer.url]  # noqa: SLF001 - one connection served every well-formed answer
                assert len(pool.idle) == 1
            finally:
                await c.close()

        asyncio.run(main())
        assert "Traceback" not in peer.stderr_text()


@pytest.mark.slow
def test_killed_peer_is_unreachable_and_comes_back(tmp_path) -> None:
    data = b"shard bytes" * 1000
    cid = make_cid(RAW, data)
    path = f"/shards/{cid_to_text(cid)}"
    with running_peers(tmp_path, 1, token=TOKEN) as (peer,):

        async def main() -> None:
            c = client()
            try:
                auth = {"Authorization": f"Bearer {TOKEN}"}
                assert (await c.request(peer.url, "PUT", path, body=data, headers=auth)).status in (200, 201)
                peer.kill()
                with pytest.raises((h1.ProtocolFault, h1.ConnectFailed)):
                    await c.request(peer.url, "GET", path, limit=len(data))  # the pooled connection died with it
                with pytest.raises(h1.ConnectFailed):
                    await c.request(peer.url, "GET", path, limit=len(data))
                peer.start()
                got = await c.request(peer.url, "GET", path, limit=len(data))
                assert got.body == data
            finally:
                await c.close()

        asyncio.run(main())


def test_head_time_is_monotonic() -> None:
    """Response.head_at is a monotonic time (latency bookkeeping), comparable with time.monotonic()."""
    with raw_server(serve_body) as srv:
        before = time.monotonic()
        resp = run(get(srv.url))
        assert before <= resp.head_at <= time.monotonic()  # type: ignore[attr-defined]
