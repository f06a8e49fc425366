"""Where the peers are and how to write to them: ``--peers`` / ``$DSTORE_PEERS``, ``--token`` / ``$DSTORE_TOKEN``."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from dstore.errors import UsageError

__all__ = ["normalize_url", "peers_from_env", "token_from_env"]


def normalize_url(url: str) -> str:
    """``host:port`` or ``http(s)://host:port[/prefix]`` → ``scheme://host:port[/prefix]`` without a trailing slash.

    Raises :class:`UsageError` for anything that is not an HTTP(S) address.
    """
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise UsageError(f"not a peer address: {url!r} (expected http://host:port)")
    try:
        parts.port  # noqa: B018 - validates the port number
    except ValueError:
        raise UsageError(f"not a peer address: {url!r} (bad port)") from None
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def peers_from_env(cli_value: str | None) -> list[str]:
    """Peer URLs from ``--peers URL,URL`` if given, else ``$DSTORE_PEERS``; duplicates dropped, order kept."""
    value = cli_value if cli_value is not None else os.environ.get("DSTORE_PEERS", "")
    urls: list[str] = []
    for item in value.replace(" ", ",").split(","):
        if item.strip():
            url = normalize_url(item)
            if url not in urls:
                urls.append(url)
    return urls


def token_from_env(cli_value: str | None) -> str | None:
    """The write token from ``--token`` if given, else ``$DSTORE_TOKEN``, else None (reads need none)."""
    if cli_value:
        return cli_value
    return os.environ.get("DSTORE_TOKEN") or None
