"""The storage peer: an aiohttp server that keeps content-addressed blocks and serves them.

The HTTP contract is docs/http-api.md. Entry points: :func:`create_app` (an
``aiohttp.web.Application`` from a :class:`PeerConfig`), :func:`serve` (run it
until SIGTERM/SIGINT), and the click group ``dstore.peer.cli.peer``
(``dstore peer serve``; also ``python -m dstore.peer serve``).
"""

from __future__ import annotations

from dstore.peer.app import create_app
from dstore.peer.config import PeerConfig
from dstore.peer.server import serve

__all__ = ["PeerConfig", "create_app", "serve"]
