"""Connection-level limits of a peer: how many sockets it keeps, and how long they may idle.

aiohttp has no timeout for a request's headers, and keeps any number of
connections open: 300 sockets that send half a request line exhaust a peer
with 256 file descriptors, and it stops answering anything (``/health``
included). So every accepted socket goes through a :class:`TrackedConnection`
(an ``asyncio.Protocol`` in front of aiohttp's own protocol) that

- closes it when its request headers are not complete within
  ``header_timeout_s`` of the connection opening (or of the first byte of a
  later request on a kept-alive connection), however slowly they trickle in;
- closes it when it stays idle between requests for ``keepalive_timeout_s``;
- counts it against ``max_connections`` (:class:`ConnectionLimiter`, the accept
  loop): when a new connection would pass the limit, the oldest connection
  that is *not* in the middle of a request (waiting for headers, or idle) is
  closed to make room, and only if every connection is serving a request is
  the newcomer closed instead. A fresh
  ``/health`` probe therefore always gets in past idle or half-open sockets;
  requests themselves are bounded by the body and request timeouts (app.py).

Malformed requests (bad method, bad header) are answered by aiohttp's
protocol before any middleware runs; :class:`JsonErrorRequestHandler` makes
those answers JSON like every other error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest

from dstore.peer.metrics import PeerMetrics

__all__ = [
    "ConnectionLimiter",
    "JsonErrorRequestHandler",
    "TrackedConnection",
    "connection_middleware",
    "default_max_connections",
]

log = logging.getLogger("dstore.peer")

#: Descriptors kept free for block files, the worker threads and the listener itself.
FD_MARGIN = 64
MAX_DEFAULT_CONNECTIONS = 1024
#: Sockets accepted per wake-up of the listener, and the pause when the process is out of descriptors.
_ACCEPT_BATCH = 32
_ACCEPT_RETRY_S = 1.0

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 500: "internal", 504: "timeout"}


def default_max_connections() -> int:
    """The open-file limit less :data:`FD_MARGIN`, at most :data:`MAX_DEFAULT_CONNECTIONS`."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_DEFAULT_CONNECTIONS
    return max(8, min(soft - FD_MARGIN, MAX_DEFAULT_CONNECTIONS))


class JsonErrorRequestHandler(web.RequestHandler):
    """aiohttp's protocol, answering unparsable requests with ``{"error", "code"}`` JSON."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, ConnectionError) or request.writer.output_size > 0:
            raise ConnectionError("connection gone or answer already started: only closing is left")
        if status >= 500:
            log.error("error answering %s %s", request.method, request.path, exc_info=exc)
        first_line = (message or "").strip().splitlines()[:1]
        text = first_line[0].rstrip(":") if first_line else f"HTTP {status}"
        if status >= 500:
            text = "internal error (logged by the peer)"
        body = json.dumps({"error": text, "code": _HTTP_CODES.get(status, "bad_request")})
        resp = web.Response(status=status, text=body, content_type="application/json")
        resp.force_close()
        return resp


class TrackedConnection(asyncio.Protocol):
    """One accepted socket: header/keep-alive timers and the limiter's bookkeeping, in front of
    aiohttp's protocol (every transport event is passed on to it)."""

    def __init__(self, limiter: ConnectionLimiter, inner: asyncio.Protocol) -> None:
        self.limiter = limiter
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a request's headers arrived and its answer is not finished
        self.waiting_for_headers = True
        self.closing = False
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._arm(self.limiter.header_timeout_s, "header")
        self.inner.connection_made(transport)
        self.limiter.connected()

    def data_received(self, data: bytes) -> None:
        if not self.busy and not self.waiting_for_headers:
            # The first byte of the next request on a kept-alive connection: its headers are due.
            self.waiting_for_headers = True
            self._arm(self.limiter.header_timeout_s, "header")
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.limiter.forget(self)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # -- requests (called by connection_middleware) ------------------------------------------------

    def request_started(self) -> None:
        self.busy = True
        self.waiting_for_headers = False
        self._disarm()

    def request_finished(self) -> None:
        self.busy = False
        if self.transport is not None and not self.transport.is_closing():
            self._arm(self.limiter.keepalive_timeout_s, "keepalive")

    # -- closing -----------------------------------------------------------------------------------

    @property
    def evictable(self) -> bool:
        """Connected, not closing, and not serving a request (waiting for headers, or idle)."""
        return self.transport is not None and not self.closing and not self.busy

    def close(self, reason: str) -> None:
        """Drop the socket now (no request is being served on it; unread output is let go, so a
        client that reads nothing cannot keep its descriptor)."""
        self._disarm()
        self.closing = True
        self.limiter.count_closed(reason)
        if self.transport is not None:
            self.transport.abort()

    def _arm(self, delay_s: float, reason: str) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(delay_s, self._expire, reason)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, reason: str) -> None:
        self._timer = None
        if not self.busy:
            self.close(f"{reason}_timeout")


class ConnectionLimiter:
    """The accept loop of the listening socket: at most ``max_connections`` open sockets, each a
    :class:`TrackedConnection` in front of a protocol from ``make_protocol``.

    asyncio's own accept loop takes up to its backlog of sockets at once, before any protocol
    sees them, so a burst exhausts descriptors before anything can be closed. This one makes
    room *before* it accepts: it closes the oldest evictable connection and accepts once that
    descriptor is free (the next turn of the loop); when every connection is serving a request,
    it accepts the newcomer only to close it at once.
    """

    def __init__(
        self,
        make_protocol: Callable[[], asyncio.Protocol],
        *,
        max_connections: int,
        header_timeout_s: float,
        keepalive_timeout_s: float,
        metrics: PeerMetrics | None = None,
    ) -> None:
        self.make_protocol = make_protocol
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.keepalive_timeout_s = keepalive_timeout_s
        self.metrics = metrics
        #: Sockets whose descriptor is open (closing ones too), oldest first.
        self.open: dict[TrackedConnection, None] = {}
        self._sock: socket.socket | None = None
        self._paused: asyncio.TimerHandle | None = None
        self._reading = False  # whether the listener is watched for new connections

    def start(self, sock: socket.socket) -> None:
        """Accept connections on the listening ``sock`` (until :meth:`stop`)."""
        sock.setblocking(False)
        self._sock = sock
        self._watch(True)

    def _watch(self, on: bool) -> None:
        """Watch the listener for connections, or not (while waiting for room, so as not to spin)."""
        if self._sock is None or on == self._reading:
            return
        loop = asyncio.get_running_loop()
        if on:
            loop.add_reader(self._sock.fileno(), self._on_readable)
        else:
            loop.remove_reader(self._sock.fileno())
        self._reading = on

    def stop(self) -> None:
        """Stop accepting; open connections are left alone."""
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        self._watch(False)
        self._sock = None

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(_ACCEPT_BATCH):
            if len(self.open) >= self.max_connections:
                victim = next((c for c in self.open if c.evictable), None)
                if victim is not None:
                    victim.close("evicted")
                if victim is not None or any(c.closing or c.transport is None for c in self.open):
                    self._watch(False)  # room is coming: forget() watches again once it is here
                    return
            try:
                client, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._pause(e)
                return
            if len(self.open) >= self.max_connections:
                self.count_closed("rejected")  # every connection is serving a request
                client.close()
                continue
            client.setblocking(False)
            conn = TrackedConnection(self, self.make_protocol())
            self.open[conn] = None
            self._gauge()
            asyncio.get_running_loop().create_task(self._connect(conn, client))

    async def _connect(self, conn: TrackedConnection, client: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: conn, client)
        except OSError as e:
            log.debug("dropped a connection as it was accepted: %s", e)
            client.close()
            self.forget(conn)

    def _pause(self, error: OSError) -> None:
        """Out of descriptors or memory anyway (block files, threads): stop accepting for a moment."""
        log.warning("cannot accept a connection (%s); retrying in %s s", error.strerror or error, _ACCEPT_RETRY_S)
        if self._sock is None or self._paused is not None:
            return
        self._watch(False)

        def resume() -> None:
            self._paused = None
            self._watch(True)

        self._paused = asyncio.get_running_loop().call_later(_ACCEPT_RETRY_S, resume)

    def connected(self) -> None:
        """A socket accepted earlier is ready (evictable now): the listener may make room again."""
        if self._paused is None:
            self._watch(True)

    def forget(self, conn: TrackedConnection) -> None:
        """The socket is gone: its room is free."""
        self.open.pop(conn, None)
        self._gauge()
        if self._paused is None and len(self.open) < self.max_connections:
            self._watch(True)

    def count_closed(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.connections_closed.labels(reason).inc()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.connections_open.set(len(self.open))


@web.middleware
async def connection_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Mark the request's connection busy (not evictable, no header timer) while it is served."""
    transport = request.transport
    conn: Any = transport.get_protocol() if transport is not None else None
    if not isinstance(conn, TrackedConnection):  # an app served some other way (tests, other runners)
        return await handler(request)
    conn.request_started()
    try:
        return await handler(request)
    finally:
        conn.request_finished()
