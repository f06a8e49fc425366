"""Run a peer's app until SIGTERM/SIGINT, then shut down gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_log import AccessLogger

from dstore.errors import UsageError
from dstore.peer.app import DRAIN, IDENTITY, METRICS, create_app
from dstore.peer.config import DEFAULT_SHUTDOWN_TIMEOUT_S, PeerConfig
from dstore.peer.connections import ConnectionLimiter, JsonErrorRequestHandler, default_max_connections

__all__ = ["serve", "serve_async", "start_line"]

_GRACE_S = 0.1


class _DroppedClientFilter(logging.Filter):
    """Hide aiohttp's traceback when a client hangs up mid-answer.

    Clients cancel hedged shard requests on purpose (the first k verified shards win); the
    request is simply over, nothing is wrong with the peer.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ConnectionResetError)


logging.getLogger("aiohttp.server").addFilter(_DroppedClientFilter())


def start_line(peer_id: str, url: str, token_source: str) -> str:
    """The one line a peer prints on stdout once it accepts connections (tests wait for it)."""
    return f"dstore peer {peer_id} listening on {url} (token: {token_source})"


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else so a taken port fails first and cleanly."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family, backlog=1024)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e


async def serve_async(
    config: PeerConfig,
    host: str,
    port: int,
    *,
    token_source: str = "--token",
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
    announce: Callable[[str], None] | None = None,
    access_log: bool = False,
) -> None:
    """Serve until SIGTERM or SIGINT; then stop accepting, let requests in flight finish
    (up to ``shutdown_timeout_s``), stop background work and return."""
    sock = _bind(host, port)
    try:
        app = create_app(config)
    except BaseException:
        sock.close()
        raise
    # The drain below waits for requests in flight; aiohttp's own wait is only for stragglers.
    handler_options: dict[str, Any] = {
        "access_log": logging.getLogger("aiohttp.access") if access_log else None,
        # TrackedConnection enforces the keep-alive timeout; aiohttp's own is the backstop.
        "keepalive_timeout": config.keepalive_timeout_s + 1.0,
    }
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=min(shutdown_timeout_s, 1.0), **handler_options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    limiter: ConnectionLimiter | None = None
    try:
        await runner.setup()
        server = runner.server
        assert server is not None

        def make_protocol() -> asyncio.Protocol:
            return JsonErrorRequestHandler(server, loop=loop, access_log_class=AccessLogger, **handler_options)

        limiter = ConnectionLimiter(
            make_protocol,
            max_connections=config.max_connections or default_max_connections(),
            header_timeout_s=config.header_timeout_s,
            keepalive_timeout_s=config.keepalive_timeout_s,
            metrics=app[METRICS],
        )
        limiter.start(sock)
        line = start_line(app[IDENTITY].peer_id, _url(host, sock.getsockname()[1]), token_source)
        (announce or _print_flush)(line)
        await stop.wait()
        # Stop listening, let requests in flight finish (connections still receive), then close.
        limiter.stop()
        sock.close()  # refuse new connections at once rather than queue them
        # Requests whose bytes had already arrived get a moment to reach their handler.
        await asyncio.sleep(_GRACE_S)
        await app[DRAIN].wait_idle(shutdown_timeout_s)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if limiter is not None:
            limiter.stop()
        await runner.cleanup()
        sock.close()


def _print_flush(line: str) -> None:
    print(line, flush=True)
    sys.stdout.flush()


def serve(config: PeerConfig, host: str, port: int, **kwargs: object) -> None:
    """Blocking form of :func:`serve_async` (its own event loop)."""
    asyncio.run(serve_async(config, host, port, **kwargs))  # type: ignore[arg-type]
