"""``dstore peer …``: the click group the main CLI registers (``main.add_command(peer)``)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from dstore.errors import DstoreError, UsageError
from dstore.net.config import read_token_file
from dstore.peer.config import (
    DEFAULT_BODY_IDLE_TIMEOUT_S,
    DEFAULT_GC_GRACE_S,
    DEFAULT_GC_INTERVAL_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_KEEPALIVE_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_REQUEST_TIMEOUT_S,
    DEFAULT_SCRUB_INTERVAL_S,
    DEFAULT_SCRUB_RATE_BYTES_S,
    DEFAULT_SHUTDOWN_TIMEOUT_S,
    PeerConfig,
    parse_duration,
    parse_listen,
    parse_peer_urls,
    parse_size,
    resolve_token,
)
from dstore.peer.heap import keep_freed_buffers

__all__ = ["peer"]


class _Size(click.ParamType):
    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except DstoreError as e:
            self.fail(str(e), param, ctx)


SIZE = _Size()


class _Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(str(value))
        except DstoreError as e:
            self.fail(str(e), param, ctx)


DURATION = _Duration()


def _token(home: Path, token: str | None, token_file: str | None) -> tuple[str, str]:
    """(token, where it came from): ``--token``, ``--token-file``, ``$DSTORE_TOKEN``, ``$DSTORE_TOKEN_FILE``, else
    ``<home>/token`` (made on first start). A token file named but missing or unreadable is an error, never a
    reason to fall back to another token."""
    if token and token_file:
        raise UsageError("give --token or --token-file, not both")
    if token_file:
        return read_token_file(token_file, "--token-file"), token_file
    env_file = os.environ.get("DSTORE_TOKEN_FILE")
    if not token and not os.environ.get("DSTORE_TOKEN") and env_file:
        return read_token_file(env_file, "$DSTORE_TOKEN_FILE"), env_file
    return resolve_token(home, token)


@click.group()
def peer() -> None:
    """Run a storage peer."""


@peer.command()
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder of this peer: identity, token, blocks, dataset pointers.",
)
@click.option("--listen", default="127.0.0.1:8081", show_default=True, help="HOST:PORT to serve on (port 0: any).")
@click.option("--capacity", type=SIZE, default=None, help="Most bytes of blocks to keep (10G, 512M, bytes).")
@click.option(
    "--token",
    default=None,
    help="Write token (else --token-file, $DSTORE_TOKEN, $DSTORE_TOKEN_FILE, <home>/token made on first start).",
)
@click.option(
    "--token-file",
    metavar="PATH",
    default=None,
    help="Read the write token from PATH (else $DSTORE_TOKEN_FILE); unlike --token, not visible in ps.",
)
@click.option(
    "--peers",
    default=None,
    help="Comma-separated URLs of other peers: listed on /peers, asked for a pinned dataset's metadata.",
)
@click.option(
    "--scrub-rate",
    type=SIZE,
    default=DEFAULT_SCRUB_RATE_BYTES_S,
    show_default=True,
    help="Bytes per second re-hashed by scrub (0: no scrub).",
)
@click.option("--max-body", type=SIZE, default=DEFAULT_MAX_BODY_BYTES, show_default=True, help="Largest block body.")
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_HEADER_TIMEOUT_S,
    show_default=True,
    help="Seconds a connection may take to send a request's headers.",
)
@click.option(
    "--keepalive-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_KEEPALIVE_TIMEOUT_S,
    show_default=True,
    help="Seconds an idle connection is kept open between requests.",
)
@click.option(
    "--body-idle-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_BODY_IDLE_TIMEOUT_S,
    show_default=True,
    help="Longest pause, in seconds, within an upload's body.",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_REQUEST_TIMEOUT_S,
    show_default=True,
    help="Seconds a request may take from its headers to its answer, body included.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=None,
    help="Most open connections (default: the open-file limit less 64, at most 1024).",
)
@click.option(
    "--gc/--no-gc",
    "gc_enabled",
    default=True,
    show_default=True,
    help="Delete, every hour, the shards no pin keeps once past --gc-grace (--no-gc: keep every block).",
)
@click.option(
    "--gc-grace",
    type=DURATION,
    default=DEFAULT_GC_GRACE_S,
    show_default="24h",
    help="How long an unpinned shard is kept after its last upload or confirmation (24h, 30m, 90s).",
)
@click.option("--gc-interval", type=DURATION, default=DEFAULT_GC_INTERVAL_S, hidden=True)
@click.option("--scrub-interval", type=float, default=DEFAULT_SCRUB_INTERVAL_S, hidden=True)
@click.option("--shutdown-timeout", type=float, default=DEFAULT_SHUTDOWN_TIMEOUT_S, hidden=True)
@click.option("--peer-poll-interval", type=float, default=30.0, hidden=True)
@click.option("-v", "--verbose", is_flag=True, help="Log every request on stderr.")
def serve(
    home: Path,
    listen: str,
    capacity: int | None,
    token: str | None,
    token_file: str | None,
    peers: str | None,
    scrub_rate: int,
    max_body: int,
    header_timeout: float,
    keepalive_timeout: float,
    body_idle_timeout: float,
    request_timeout: float,
    max_connections: int | None,
    gc_enabled: bool,
    gc_grace: float,
    gc_interval: float,
    scrub_interval: float,
    shutdown_timeout: float,
    peer_poll_interval: float,
    verbose: bool,
) -> None:
    """Serve blocks over HTTP (docs/http-api.md) until SIGTERM or SIGINT."""
    keep_freed_buffers()
    from dstore.peer.server import serve as run

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        host, port = parse_listen(listen)
        home.mkdir(parents=True, exist_ok=True)
        secret, token_source = _token(home, token, token_file)
        config = PeerConfig(
            home=home,
            token=secret,
            capacity_bytes=capacity,
            peers=parse_peer_urls(peers),
            max_body_bytes=max_body,
            scrub_rate_bytes_s=scrub_rate,
            scrub_interval_s=scrub_interval,
            peer_poll_interval_s=peer_poll_interval,
            header_timeout_s=header_timeout,
            keepalive_timeout_s=keepalive_timeout,
            body_idle_timeout_s=body_idle_timeout,
            request_timeout_s=request_timeout,
            max_connections=max_connections,
            gc_enabled=gc_enabled,
            gc_grace_s=gc_grace,
            gc_interval_s=gc_interval,
        )
        run(config, host, port, token_source=token_source, shutdown_timeout_s=shutdown_timeout, access_log=verbose)
    except DstoreError as e:
        click.echo(f"dstore: error: {e}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:
        click.echo(f"dstore: error: {e.strerror or e}{': ' + str(e.filename) if e.filename else ''}", err=True)
        sys.exit(8)
