"""Settings of one storage peer, and the parsing of their command-line forms."""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from dstore.errors import StoreError, UsageError
from dstore.limits import MAX_POINTER_BYTES, MAX_SHARD_BYTES
from dstore.peer.identity import write_private_file
from dstore.units import parse_size

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_POINTER_BYTES",
    "PeerConfig",
    "parse_duration",
    "parse_listen",
    "parse_peer_urls",
    "parse_size",
    "resolve_token",
]

#: ``--max-body`` by default: the largest shard (docs/format.md, "Limits").
DEFAULT_MAX_BODY_BYTES = MAX_SHARD_BYTES
DEFAULT_SCRUB_RATE_BYTES_S = 50_000_000
DEFAULT_SCRUB_INTERVAL_S = 3600.0
DEFAULT_SHUTDOWN_TIMEOUT_S = 5.0
#: From a connection opening (or the first byte of a later request on it) to the end of the headers.
DEFAULT_HEADER_TIMEOUT_S = 10.0
#: An idle kept-alive connection is closed after this (longer than clients keep theirs: 15 s).
DEFAULT_KEEPALIVE_TIMEOUT_S = 60.0
#: The longest pause between two pieces of a request body.
DEFAULT_BODY_IDLE_TIMEOUT_S = 30.0
#: The longest a request may take from its headers to its answer, body included
#: (17 MiB in 300 s is about 58 kB/s).
DEFAULT_REQUEST_TIMEOUT_S = 300.0
#: An unpinned shard is collected this long after its last upload or confirmation.
DEFAULT_GC_GRACE_S = 24 * 3600.0
DEFAULT_GC_INTERVAL_S = 3600.0
TOKEN_FILE = "token"


@dataclass
class PeerConfig:
    """Everything :func:`dstore.peer.app.create_app` needs; the CLI builds one from its options."""

    home: Path
    token: str
    capacity_bytes: int | None = None
    peers: list[str] = field(default_factory=list)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: 0 turns scrubbing off.
    scrub_rate_bytes_s: int = DEFAULT_SCRUB_RATE_BYTES_S
    #: A pass starts this long after the previous one started (immediately if none ever ran).
    scrub_interval_s: float = DEFAULT_SCRUB_INTERVAL_S
    #: How often the peers of ``peers`` are asked for their peer ID.
    peer_poll_interval_s: float = 30.0
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    keepalive_timeout_s: float = DEFAULT_KEEPALIVE_TIMEOUT_S
    body_idle_timeout_s: float = DEFAULT_BODY_IDLE_TIMEOUT_S
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    #: Most open connections; None: the open-file limit less a margin (connections.py).
    max_connections: int | None = None
    #: Collect unpinned shards in the background (POST /gc works either way); ``--no-gc`` turns it off.
    gc_enabled: bool = True
    gc_grace_s: float = DEFAULT_GC_GRACE_S
    gc_interval_s: float = DEFAULT_GC_INTERVAL_S


_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """``24h``, ``30m``, ``90s``, ``2d``, ``1.5`` (seconds) → seconds."""
    m = _DURATION_RE.match(text)
    if not m:
        raise UsageError(f"not a duration: {text!r} (expected e.g. 24h, 30m, 90s or a number of seconds)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) → (host, port); port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen wants HOST:PORT, got {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def parse_peer_urls(text: str | None) -> list[str]:
    """``URL,URL`` → URLs without a trailing slash; only http(s)."""
    urls = []
    for part in (text or "").split(","):
        url = part.strip().rstrip("/")
        if not url:
            continue
        if not re.match(r"^https?://[^/\s]+(/\S*)?$", url):
            raise UsageError(f"--peers: not an http(s) URL: {url!r}")
        urls.append(url)
    return urls


def resolve_token(home: Path, given: str | None) -> tuple[str, str]:
    """(token, where it came from): ``--token``, else ``$DSTORE_TOKEN``, else ``<home>/token``.

    The file is created with a fresh random token (mode 0600) on first start.
    """
    if given:
        return given, "--token"
    env = os.environ.get("DSTORE_TOKEN")
    if env:
        return env, "$DSTORE_TOKEN"
    path = home / TOKEN_FILE
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror or e}") from e
    if not token:
        token = secrets.token_urlsafe(32)
        write_private_file(path, token.encode() + b"\n")
    return token, str(path)
