"""Where the peers are and how to write to them: ``--peers`` / ``$DSTORE_PEERS``, ``--token`` / ``$DSTORE_TOKEN``;
trustless IPFS gateways to read from as well: ``--gateways`` / ``$DSTORE_GATEWAYS``.

A token can also come from a file (``--token-file`` / ``$DSTORE_TOKEN_FILE``): unlike an argument, it is not
visible to other users in ``ps``.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from dstore.errors import UsageError

__all__ = ["gateways_from_env", "normalize_url", "peers_from_env", "read_token_file", "token_from_env"]

MAX_TOKEN_FILE_BYTES = 4096  # a token is a line; anything longer is the wrong file


def normalize_url(url: str, what: str = "peer") -> str:
    """``host:port`` or ``http(s)://host:port[/prefix]`` → ``scheme://host:port[/prefix]`` without a trailing slash.

    Raises :class:`UsageError` for anything that is not an HTTP(S) address.
    """
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise UsageError(f"not a {what} address: {url!r} (expected http://host:port)")
    try:
        parts.port  # noqa: B018 - validates the port number
    except ValueError:
        raise UsageError(f"not a {what} address: {url!r} (bad port)") from None
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def peers_from_env(cli_value: str | None) -> list[str]:
    """Peer URLs from ``--peers URL,URL`` if given, else ``$DSTORE_PEERS``; duplicates dropped, order kept."""
    return _urls(cli_value if cli_value is not None else os.environ.get("DSTORE_PEERS", ""), "peer")


def gateways_from_env(cli_value: str | None) -> list[str]:
    """Gateway URLs from ``--gateways URL,URL`` if given, else ``$DSTORE_GATEWAYS``; as :func:`peers_from_env`."""
    return _urls(cli_value if cli_value is not None else os.environ.get("DSTORE_GATEWAYS", ""), "gateway")


def _urls(value: str, what: str) -> list[str]:
    urls: list[str] = []
    for item in value.replace(" ", ",").split(","):
        if item.strip():
            url = normalize_url(item, what)
            if url not in urls:
                urls.append(url)
    return urls


def token_from_env(cli_value: str | None, cli_file: str | None = None) -> str | None:
    """The write token: ``--token``, else ``--token-file``, else ``$DSTORE_TOKEN``, else ``$DSTORE_TOKEN_FILE``.

    None when none is given (reads need none). A token file holds the token on
    one line (what ``dstore peer serve`` writes to its ``<home>/token``); a
    missing, unreadable or empty one is a :class:`UsageError`.
    """
    if cli_value and cli_file:
        raise UsageError("give --token or --token-file, not both")
    if cli_value:
        return cli_value
    if cli_file:
        return read_token_file(cli_file, "--token-file")
    env = os.environ.get("DSTORE_TOKEN")
    if env:
        return env
    env_file = os.environ.get("DSTORE_TOKEN_FILE")
    if env_file:
        return read_token_file(env_file, "$DSTORE_TOKEN_FILE")
    return None


def read_token_file(path: str, source: str) -> str:
    """The token in file ``path`` (named by ``source``, for the error message), surrounding whitespace removed."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TOKEN_FILE_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"{source}: token file {path} does not exist") from None
    except OSError as e:
        raise UsageError(f"{source}: cannot read token file {path}: {e.strerror or e}") from None
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        token = None
    if len(data) > MAX_TOKEN_FILE_BYTES or token is None or any(c.isspace() for c in token):
        raise UsageError(f"{source}: token file {path} must hold one token on one line")
    if not token:
        raise UsageError(f"{source}: token file {path} is empty")
    return token
