"""A small HTTP/1.1 client for shard bodies: responses land straight in a buffer sized by the caller.

aiohttp feeds every received piece through its parser as a new ``bytes``,
then joins them: about 3 CPU-seconds per GiB on the client. This client is
an :class:`asyncio.BufferedProtocol`: the kernel copies a body's bytes
directly into one ``bytearray`` of the size the caller expects (a shard's
size is in its pack record), which is then hashed and decoded in place.

The peer's ``Content-Length`` is a hint checked against the caller's
``limit`` before anything is allocated: a body claimed longer is refused
unread, one that ends short is a dropped connection, bytes after the body
are a protocol error. Chunked bodies are decoded into a buffer that may
not grow past ``limit``. Any error closes the connection; only a
connection that delivered a whole, well-formed response goes back to its
peer's pool (keep-alive). Every wait is bounded: connecting by
``connect_timeout_s``, each wait for bytes by ``read_timeout_s``, and a
whole response by ``read_timeout_s`` plus its size at ``MIN_BODY_BPS``
(so a peer dripping one byte at a time cannot hold a request forever).

Only what moves shard bytes goes here (``GET``/``PUT /shards``); the
control plane (health, pointers, pins) stays on aiohttp.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from dstore import _native
from dstore.limits import MAX_ERROR_BODY_BYTES

__all__ = [
    "CONNECTIONS_PER_PEER",
    "IDLE_TIMEOUT_S",
    "MAX_HEAD_BYTES",
    "MIN_BODY_BPS",
    "BodyTooLarge",
    "ConnectFailed",
    "ConnectTimeout",
    "H1Client",
    "ProtocolFault",
    "Response",
]

#: Status line and headers of one response, at most.
MAX_HEAD_BYTES = 64 * 1024
#: Read size while looking for the end of the headers: small, so little of the body is read (and copied) with them.
HEAD_READ_BYTES = 4096
#: One chunk-size line (with extensions) or trailer line of a chunked body, at most.
MAX_CHUNK_LINE_BYTES = 1024
#: Connections open to one peer at once (as aiohttp's ``limit_per_host`` was).
CONNECTIONS_PER_PEER = 8
#: An idle keep-alive connection older than this is closed rather than reused.
IDLE_TIMEOUT_S = 30.0
#: Slowest body rate accepted over a whole response (beyond ``read_timeout_s`` of slack).
MIN_BODY_BPS = 256 * 1024
#: Flow control: pause writing above this many bytes buffered in the transport.
WRITE_HIGH_WATER_BYTES = 1 << 20

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) (\d{3})(?: [^\r\n]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class ProtocolFault(Exception):
    """The peer broke HTTP/1.1 or dropped the connection mid-response (transient: worth a retry)."""


class ConnectFailed(OSError):
    """The peer refused the connection (or it could not be made): the peer is down."""


class ConnectTimeout(TimeoutError):
    """Connecting took longer than ``connect_timeout_s``."""


class BodyTooLarge(Exception):
    """The 2xx body is, or claims to be, longer than the caller's ``limit``."""


@dataclass
class Response:
    """One response: status, headers (names lowercased), the body, and when the headers were in."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    head_at: float = 0.0
    http_minor: int = 1


# The states of a connection.
_IDLE, _HEAD, _BODY, _CHUNKED, _EOF_BODY, _DONE, _BROKEN = range(7)
# The parts of a chunked body.
_C_SIZE, _C_DATA, _C_DATA_END, _C_TRAILER = range(4)


class _Connection(asyncio.BufferedProtocol):
    """One keep-alive connection; one request at a time, its response read into the buffer planned for it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.state = _IDLE
        self.idle_since = time.monotonic()
        self.reused = False
        self.got_bytes = False  # any byte of the current response
        self.head = bytearray(MAX_HEAD_BYTES)
        self.head_view = memoryview(self.head)
        self.head_filled = 0
        self.response: Response | None = None
        self.done: asyncio.Future[Response] | None = None
        self.is_head_request = False
        self.limit = 0
        self.body_view: memoryview | None = None
        self.body_len = 0
        self.body_got = 0
        self.keep_alive = True
        self.over_limit = False  # a 2xx body longer than ``limit``
        self.last_read = 0.0
        self.closed = False
        self.chunk_part = _C_SIZE
        self.chunk_left = 0
        self.chunk_line = bytearray()
        self.scratch = bytearray(HEAD_READ_BYTES)
        self.can_write: asyncio.Future[None] | None = None

    # -- asyncio.BufferedProtocol ---------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.state == _BODY and self.body_view is not None:
            return self.body_view[self.body_got : self.body_len]  # exactly the rest of the body: never past it
        if self.state == _HEAD:
            end = min(MAX_HEAD_BYTES, self.head_filled + HEAD_READ_BYTES)
            return self.head_view[self.head_filled : end]
        if self.state in (_CHUNKED, _EOF_BODY):
            return self.head_view  # staging; copied into the body
        return memoryview(self.scratch)  # idle or done: any byte here is a protocol error

    def buffer_updated(self, nbytes: int) -> None:
        self.last_read = self.loop.time()
        self.got_bytes = True
        try:
            if self.state == _BODY:
                self.body_got += nbytes
                if self.body_got == self.body_len:
                    self._finish()
            elif self.state == _HEAD:
                self.head_filled += nbytes
                self._on_head_bytes()
            elif self.state == _CHUNKED:
                self._on_chunked(self.head_view[:nbytes])
            elif self.state == _EOF_BODY:
                self._append_eof_body(self.head_view[:nbytes])
            else:
                raise ProtocolFault("bytes outside any response")
        except (ProtocolFault, BodyTooLarge) as e:
            self._fail(e)

    def eof_received(self) -> bool:
        if self.state == _EOF_BODY:
            self.keep_alive = False
            self._finish()
        else:
            self._fail(ProtocolFault("connection closed by the peer" + (" mid-response" if self.got_bytes else "")))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.state == _EOF_BODY and exc is None:
            self.keep_alive = False
            self._finish()
            return
        reason = f"connection lost ({type(exc).__name__})" if exc else "connection closed by the peer"
        self._fail(ProtocolFault(reason + (" mid-response" if self.got_bytes else "")))
        self.resume_writing()  # wake a writer: drain() sees the connection is closed

    def pause_writing(self) -> None:
        if self.can_write is None or self.can_write.done():
            self.can_write = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.can_write is not None and not self.can_write.done():
            self.can_write.set_result(None)

    # -- one request ------------------------------------------------------------

    def start(self, *, limit: int, is_head_request: bool) -> asyncio.Future[Response]:
        """Expect a response (limit: the longest 2xx body taken); the future resolves when it is whole."""
        self.state = _HEAD
        self.head_filled = 0
        self.got_bytes = False
        self.limit = limit
        self.is_head_request = is_head_request
        self.response = None
        self.body_view = None
        self.body_len = self.body_got = 0
        self.keep_alive = True
        self.over_limit = False
        self.last_read = self.loop.time()
        self.done = self.loop.create_future()
        return self.done

    async def drain(self) -> None:
        """Wait while the transport holds more than the high-water mark; ProtocolFault if it closes meanwhile."""
        if self.can_write is not None and not self.can_write.done():
            await self.can_write
            if self.closed:
                raise ProtocolFault("connection closed by the peer while sending")

    def close(self) -> None:
        self.state = _BROKEN
        self.body_view = None  # let the caller's buffer go (no export held)
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    @property
    def reusable(self) -> bool:
        return self.state == _DONE and self.keep_alive and not self.closed

    # -- parsing ------------------------------------------------------------------

    def _on_head_bytes(self) -> None:
        end = self.head.find(b"\r\n\r\n", 0, self.head_filled)
        if end < 0:
            if self.head_filled >= MAX_HEAD_BYTES:
                raise ProtocolFault(f"response headers over {MAX_HEAD_BYTES} bytes")
            return
        resp = _parse_head(bytes(self.head_view[:end]))
        resp.head_at = time.monotonic()
        self.response = resp
        rest = self.head_view[end + 4 : self.head_filled]
        self._plan_body(resp)
        if self.state == _BODY:
            if len(rest) > self.body_len - self.body_got:
                raise ProtocolFault("bytes after the end of the body")
            assert self.body_view is not None
            self.body_view[: len(rest)] = rest
            self.body_got = len(rest)
            if self.body_got == self.body_len:
                self._finish()
        elif self.state == _CHUNKED:
            self._on_chunked(bytes(rest))
        elif self.state == _EOF_BODY:
            self._append_eof_body(rest)
        elif rest:
            raise ProtocolFault("bytes after a response without a body")

    def _plan_body(self, resp: Response) -> None:
        """Decide how the body is read, from the status and headers, before allocating anything."""
        if resp.status < 200:
            raise ProtocolFault(f"unexpected interim answer HTTP {resp.status}")
        strict, cap = self._cap()
        conn = resp.headers.get("connection", "").lower()
        if conn == "close" or (resp.http_minor == 0 and conn != "keep-alive"):
            self.keep_alive = False
        if self.is_head_request or resp.status in (204, 304):
            self._finish()
            return
        te = resp.headers.get("transfer-encoding")
        if te is not None:
            if te.strip().lower() != "chunked":
                raise ProtocolFault(f"unsupported Transfer-Encoding {te[:40]!r}")
            self.state = _CHUNKED
            self.chunk_part, self.chunk_left = _C_SIZE, 0
            self.chunk_line = bytearray()
            return
        cl = resp.headers.get("content-length")
        if cl is None:
            self.state = _EOF_BODY  # until the peer closes
            self.keep_alive = False
            return
        if not cl.isdigit() or len(cl) > 19:
            raise ProtocolFault(f"bad Content-Length {cl[:40]!r}")
        n = int(cl)
        if n > cap:
            if strict:
                raise BodyTooLarge(f"answer of {n} bytes, over {cap}")
            n, self.keep_alive = cap, False  # a text nobody needs whole: read the start, drop the rest
        if n == 0:
            self._finish()
            return
        resp.body = _native.empty_bytearray(n)  # filled whole by the receive, or dropped with the response
        self.body_view = memoryview(resp.body)
        self.body_len = n
        self.state = _BODY

    def _cap(self) -> tuple[bool, int]:
        """(whether a longer body is a fault, the most of it kept): a 2xx body the caller wants, else a text."""
        assert self.response is not None
        if 200 <= self.response.status < 300 and self.limit > 0:
            return True, self.limit
        return False, MAX_ERROR_BODY_BYTES

    def _append_eof_body(self, data: memoryview | bytes) -> None:
        assert self.response is not None
        body = self.response.body
        strict, cap = self._cap()
        if len(body) + len(data) > cap:
            if strict:
                raise BodyTooLarge(f"answer over {cap} bytes")
            body += data[: cap - len(body)]
            self.keep_alive = False
            self._finish()
            return
        body += data

    def _on_chunked(self, view: memoryview | bytes) -> None:
        assert self.response is not None
        body = self.response.body
        strict, cap = self._cap()
        data = bytes(view)  # the rare path (peers send Content-Length): one copy, then plain finds
        pos, n = 0, len(data)
        while pos < n:
            if self.state != _CHUNKED:
                raise ProtocolFault("bytes after the end of the body")
            if self.chunk_part == _C_DATA:
                take = min(self.chunk_left, n - pos)
                body += data[pos : pos + take]
                pos += take
                self.chunk_left -= take
                if self.chunk_left == 0:
                    self.chunk_part = _C_DATA_END
                continue
            # A line: chunk size, the CRLF after a chunk's data, or a trailer.
            nl = data.find(b"\n", pos)
            piece = data[pos : n if nl < 0 else nl + 1]
            pos += len(piece)
            self.chunk_line += piece
            if len(self.chunk_line) > MAX_CHUNK_LINE_BYTES:
                raise ProtocolFault("chunk line too long")
            if nl < 0:
                continue
            line = bytes(self.chunk_line)
            self.chunk_line = bytearray()
            if not line.endswith(b"\r\n"):
                raise ProtocolFault("bare LF in a chunked body")
            line = line[:-2]
            if self.chunk_part == _C_DATA_END:
                if line:
                    raise ProtocolFault("chunk data longer than its size")
                self.chunk_part = _C_SIZE
            elif self.chunk_part == _C_SIZE:
                size_text = line.split(b";", 1)[0].strip()
                if not size_text or len(size_text) > 16 or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
                    raise ProtocolFault(f"bad chunk size {size_text[:20]!r}")
                size = int(size_text, 16)
                if len(body) + size > cap:
                    if strict:
                        raise BodyTooLarge(f"chunked answer over {cap} bytes")
                    raise ProtocolFault(f"chunked text over {cap} bytes")
                self.chunk_left = size
                self.chunk_part = _C_DATA if size else _C_TRAILER
            elif line:  # a trailer field: ignored
                continue
            else:
                self._finish()
                if pos < n:
                    raise ProtocolFault("bytes after the end of the body")

    def _finish(self) -> None:
        self.state = _DONE
        self.body_view = None
        if self.done is not None and not self.done.done() and self.response is not None:
            self.done.set_result(self.response)

    def _fail(self, exc: Exception) -> None:
        if self.state in (_IDLE, _DONE):
            self.state = _BROKEN
            self.close()
            return
        self.close()
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)


def _parse_head(raw: bytes) -> Response:
    """Status line and header fields; names lowercased, repeated fields joined with ", "."""
    lines = raw.split(b"\r\n")
    m = _STATUS_LINE.fullmatch(lines[0])
    if m is None:
        raise ProtocolFault(f"bad status line {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise ProtocolFault(f"bad header line {line[:60]!r}")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        if key in headers:
            if key == "content-length" and headers[key] != text:
                raise ProtocolFault("conflicting Content-Length headers")
            if key != "content-length":
                headers[key] += ", " + text
        else:
            headers[key] = text
    if "content-length" in headers and "transfer-encoding" in headers:
        raise ProtocolFault("both Content-Length and Transfer-Encoding")
    return Response(int(m.group(2)), headers, http_minor=int(m.group(1)))


class _Pool:
    """Idle connections to one peer, and a bound on how many are open at once."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: deque[_Connection] = deque()
        self.slots = asyncio.Semaphore(CONNECTIONS_PER_PEER)


class H1Client:
    """Keep-alive HTTP/1.1 connections to peers (``http://host:port`` URLs), one pool per peer."""

    def __init__(self, *, connect_timeout_s: float, read_timeout_s: float, user_agent: str) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.user_agent = user_agent
        self._pools: dict[str, _Pool] = {}
        self._closed = False

    def _pool(self, base_url: str) -> _Pool:
        pool = self._pools.get(base_url)
        if pool is None:
            u = urlsplit(base_url)
            if u.scheme != "http" or not u.hostname:
                raise ValueError(f"not an http:// peer URL: {base_url}")
            pool = self._pools[base_url] = _Pool(u.hostname, u.port or 80)
        return pool

    async def request(
        self,
        base_url: str,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | bytearray | memoryview | None = None,
        limit: int = 0,
        read_timeout_s: float | None = None,
    ) -> Response:
        """One request on a pooled connection; the 2xx body (at most ``limit`` bytes) in ``Response.body``.

        Raises :class:`ConnectFailed`, :class:`ConnectTimeout`, ``TimeoutError``
        (no bytes for ``read_timeout_s``, or the whole response too slow),
        :class:`ProtocolFault` (broken or dropped response) or
        :class:`BodyTooLarge`. A reused connection the peer had closed before
        answering is replaced by a new one once, silently.
        """
        if self._closed:
            raise RuntimeError("H1Client is closed")
        pool = self._pool(base_url)
        read_s = self.read_timeout_s if read_timeout_s is None else read_timeout_s
        head = _request_head(method, path, pool, self.user_agent, headers or {}, body)
        async with pool.slots:
            for _fresh_retry in range(2):
                conn = await self._connect(pool)
                try:
                    resp = await self._exchange(conn, head, body, limit, method == "HEAD", read_s)
                except ProtocolFault:
                    conn.close()
                    if conn.reused and not conn.got_bytes:
                        continue  # a stale keep-alive connection: the peer never saw this request
                    raise
                except BaseException:
                    conn.close()
                    raise
                if conn.reusable and not self._closed:
                    conn.state, conn.idle_since, conn.reused = _IDLE, time.monotonic(), True
                    conn.response = conn.done = None  # an idle connection must not keep its last body alive
                    pool.idle.append(conn)
                else:
                    conn.close()
                return resp
        raise AssertionError("unreachable")

    async def _connect(self, pool: _Pool) -> _Connection:
        now = time.monotonic()
        while pool.idle:
            conn = pool.idle.pop()  # the most recently used first: likely still open
            if conn.closed or now - conn.idle_since > IDLE_TIMEOUT_S:
                conn.close()
                continue
            return conn
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(lambda: _Connection(loop), pool.host, pool.port)
        except TimeoutError as e:
            raise ConnectTimeout(f"connecting to {pool.host}:{pool.port} timed out") from e
        except OSError as e:
            raise ConnectFailed(e.errno, e.strerror or str(e)) from e
        sock = conn.transport.get_extra_info("socket") if conn.transport else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    async def _exchange(
        self,
        conn: _Connection,
        head: bytes,
        body: bytes | bytearray | memoryview | None,
        limit: int,
        is_head_request: bool,
        read_s: float,
    ) -> Response:
        assert conn.transport is not None
        if conn.closed:
            raise ProtocolFault("connection closed by the peer")
        done = conn.start(limit=limit, is_head_request=is_head_request)
        loop = conn.loop
        # Each wait for bytes is bounded by read_s; the whole response by read_s + its size at MIN_BODY_BPS.
        started = loop.time()
        expect = limit + (memoryview(body).nbytes if body is not None else 0)
        deadline = started + read_s + expect / MIN_BODY_BPS
        try:
            conn.transport.write(head)
            if body is not None and memoryview(body).nbytes:
                conn.transport.write(body)  # sent from the caller's buffer; only what the socket refuses is copied
            try:
                await conn.drain()
            except ProtocolFault:
                if done.done() and not done.cancelled() and done.exception() is None:
                    return done.result()  # answered before taking the whole body (e.g. 401): the answer counts
                raise
            while True:
                wait_until = min(deadline, max(conn.last_read, started) + read_s)
                timeout = wait_until - loop.time()
                if timeout > 0:
                    try:
                        async with asyncio.timeout(timeout):
                            return await asyncio.shield(done)
                    except TimeoutError:
                        if done.done():
                            return done.result()
                now = loop.time()
                if now >= deadline or now - max(conn.last_read, started) >= read_s:
                    raise TimeoutError("no answer in time")
        finally:
            if not done.done():
                done.cancel()
            elif not done.cancelled():
                done.exception()  # retrieved: no "exception never retrieved" warning

    async def close(self) -> None:
        """Close every idle connection (those in use close when their request ends)."""
        self._closed = True
        for pool in self._pools.values():
            while pool.idle:
                pool.idle.pop().close()


def _request_head(
    method: str,
    path: str,
    pool: _Pool,
    user_agent: str,
    headers: dict[str, str],
    body: bytes | bytearray | memoryview | None,
) -> bytes:
    host = pool.host if pool.port == 80 else f"{pool.host}:{pool.port}"
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"User-Agent: {user_agent}"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} has a line break")
        lines.append(f"{name}: {value}")
    if body is not None or method in ("PUT", "POST"):
        lines.append(f"Content-Length: {memoryview(body).nbytes if body is not None else 0}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
