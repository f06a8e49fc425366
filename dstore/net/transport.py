"""One HTTP request to one storage peer, with the peer's health bookkeeping (docs/http-api.md).

Every answer updates the peer's health (:class:`dstore.net.peers.Peer`):
latency to headers, body throughput, errors, bad bytes, unreachable. 5xx,
429 and dropped connections are retried with exponential backoff and
jitter; bodies are read bounded by what the caller expects, never by what
the peer claims.

Two clients stand behind :meth:`Transport.call`, with the same bookkeeping:
aiohttp for the control plane (health, pointers, pins), and
:class:`dstore.net.h1.H1Client` for the data plane (``data_plane=True``:
shard bodies received straight into a buffer of the expected size, and
uploads sent from the caller's buffer; docs/architecture.md, "Network data
plane").
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from dstore import __version__
from dstore.limits import MAX_ERROR_BODY_BYTES
from dstore.net import h1
from dstore.net.peers import Peer

__all__ = ["BACKOFF_S", "READ_BUFFER_BYTES", "READ_RETRIES", "Answer", "Miss", "Transport"]

#: Retries of a read after a transient failure (5xx, 429, dropped connection), with exponential backoff.
READ_RETRIES = 2
BACKOFF_S = 0.05
#: Shards are ~1 MiB (PACK_UNIT_BYTES): read them in big pieces rather than aiohttp's default 64 KiB.
READ_BUFFER_BYTES = 1 << 20


class Miss(Exception):
    """One request to one peer did not give what was asked. ``fatal``: no other peer would answer otherwise."""

    def __init__(self, peer: Peer | None, reason: str, *, status: int | None = None, fatal: bool = False) -> None:
        super().__init__(f"{peer.name}: {reason}" if peer is not None else reason)
        self.peer = peer
        self.status = status
        self.fatal = fatal


@dataclass
class Answer:
    """A peer's answer: the status, the body of a 2xx (bounded), else the error text."""

    status: int
    body: bytes | bytearray = b""
    error: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """A response header by name, whatever its case."""
        want = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == want), None)


def parse_error(raw: bytes | bytearray) -> str:
    """``": <error> (<code>)"`` from a JSON error body, best effort."""
    try:
        obj = json.loads(raw[:MAX_ERROR_BODY_BYTES])
        return f": {str(obj.get('error', ''))[:200]} ({str(obj.get('code', ''))[:40]})"
    except Exception:
        return ""


async def error_text(resp: aiohttp.ClientResponse) -> str:
    """``": <error> (<code>)"`` from a JSON error answer, best effort, read bounded."""
    try:
        return parse_error(await resp.content.read(MAX_ERROR_BODY_BYTES))
    except Exception:
        return ""


async def read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None if it is (or claims to be) larger than ``limit``."""
    if resp.content_length is not None:
        if resp.content_length > limit:
            return None
        body = await resp.read()
        return body if len(body) <= limit else None
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(READ_BUFFER_BYTES):
        buf += chunk
        if len(buf) > limit:
            return None
    return bytes(buf)


class Transport:
    """One HTTP session to the peers and the write token (see :meth:`open`)."""

    def __init__(
        self, session: aiohttp.ClientSession | None, token: str | None, data: h1.H1Client | None = None
    ) -> None:
        self.session = session
        self.token = token
        self.data = data  # the data-plane client; without it, data-plane calls go through aiohttp too

    @classmethod
    def open(cls, token: str | None, *, timeout_s: float, read_timeout_s: float) -> Transport:
        """A new session: ``timeout_s`` bounds connecting, ``read_timeout_s`` any wait for bytes."""
        connector = aiohttp.TCPConnector(limit=64, limit_per_host=8, keepalive_timeout=30.0, ttl_dns_cache=300)
        session = aiohttp.ClientSession(
            connector=connector,
            read_bufsize=READ_BUFFER_BYTES,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=read_timeout_s),
            headers={"User-Agent": f"dstore/{__version__}"},
        )
        data = h1.H1Client(
            connect_timeout_s=timeout_s, read_timeout_s=read_timeout_s, user_agent=f"dstore/{__version__}"
        )
        return cls(session, token, data)

    async def close(self) -> None:
        """Close the session (idempotent)."""
        if self.data is not None:
            await self.data.close()
        if self.session is not None and not self.session.closed:
            await self.session.close()
        await asyncio.sleep(0)  # let the connector's transports finish closing

    async def call(
        self,
        peer: Peer,
        method: str,
        path: str,
        *,
        body: bytes | memoryview | None = None,
        content_type: str | None = None,
        auth: bool = False,
        limit: int = 0,
        retries: int = READ_RETRIES,
        timeout: aiohttp.ClientTimeout | None = None,
        headers: dict[str, str] | None = None,
        data_plane: bool = False,
    ) -> Answer:
        """One request with health bookkeeping; 5xx/429/dropped connections retried with backoff.

        Returns the answer (body read up to ``limit`` bytes for 2xx, else the
        error text); ``headers`` are sent as given (e.g. ``Range``). Raises
        :class:`Miss` when the peer is unreachable, times out, keeps failing,
        or sends a body over ``limit``. ``data_plane``: a shard transfer, made
        with the data-plane client (``timeout`` does not apply there).
        """
        headers = dict(headers or {})
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if content_type:
            headers["Content-Type"] = content_type
        if data_plane and self.data is not None:
            return await self._call_data(self.data, peer, method, path, body, headers, limit, retries)
        if self.session is None:
            raise RuntimeError("PeerSet has no session: use PeerSet.connect")
        url = peer.url + path
        extra: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
        last: Miss | None = None
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(BACKOFF_S * 2 ** (attempt - 1) * (0.5 + random.random()))
            t0 = time.monotonic()
            try:
                async with self.session.request(method, url, data=body, headers=headers, **extra) as resp:
                    t1 = time.monotonic()
                    peer.observe_latency(t1 - t0)
                    status = resp.status
                    if (status >= 500 and status != 507) or status == 429:
                        peer.record_error()
                        last = Miss(peer, f"HTTP {status}{await error_text(resp)}", status=status)
                        continue
                    if not 200 <= status < 300:
                        peer.record_ok()
                        return Answer(status, error=await error_text(resp))
                    data = b""
                    if limit and method != "HEAD":
                        read = await read_bounded(resp, limit)
                        if read is None:
                            peer.record_bad_bytes()
                            raise Miss(peer, f"answer over {limit} bytes", status=status)
                        data = read
                        peer.observe_throughput(len(data), time.monotonic() - t1)
                    peer.record_ok()
                    return Answer(status, data, headers=dict(resp.headers))
            except Miss:
                raise
            except TimeoutError as e:
                peer.record_error()
                peer.observe_slow(time.monotonic() - t0)
                if isinstance(e, aiohttp.ConnectionTimeoutError):
                    peer.alive = False
                raise Miss(peer, "timed out") from e
            except aiohttp.ClientConnectorError as e:
                peer.record_unreachable()
                raise Miss(peer, f"unreachable ({e.os_error.strerror or e.os_error})") from e
            except aiohttp.ClientError as e:
                peer.record_error()
                last = Miss(peer, f"connection failed ({type(e).__name__})")
                continue
            except asyncio.CancelledError:
                # Abandoned (hedged or no longer needed): it took at least this long.
                peer.observe_slow(time.monotonic() - t0)
                raise
        assert last is not None
        raise last

    async def _call_data(
        self,
        client: h1.H1Client,
        peer: Peer,
        method: str,
        path: str,
        body: bytes | memoryview | None,
        headers: dict[str, str],
        limit: int,
        retries: int,
    ) -> Answer:
        """:meth:`call` over the data-plane client: the same answers, retries and health bookkeeping."""
        last: Miss | None = None
        keep = limit if method != "HEAD" else 0
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(BACKOFF_S * 2 ** (attempt - 1) * (0.5 + random.random()))
            t0 = time.monotonic()
            try:
                resp = await client.request(peer.url, method, path, headers=headers, body=body, limit=keep)
            except h1.BodyTooLarge as e:
                peer.record_bad_bytes()
                raise Miss(peer, f"answer over {limit} bytes", status=200) from e
            except TimeoutError as e:  # connecting (ConnectTimeout: the peer is down) or waiting for bytes
                peer.record_error()
                peer.observe_slow(time.monotonic() - t0)
                if isinstance(e, h1.ConnectTimeout):
                    peer.alive = False
                raise Miss(peer, "timed out") from e
            except h1.ConnectFailed as e:
                peer.record_unreachable()
                raise Miss(peer, f"unreachable ({e.strerror or e})") from e
            except h1.ProtocolFault as e:
                peer.record_error()
                last = Miss(peer, f"connection failed ({e})")
                continue
            except asyncio.CancelledError:
                # Abandoned (hedged or no longer needed): it took at least this long.
                peer.observe_slow(time.monotonic() - t0)
                raise
            peer.observe_latency(resp.head_at - t0)
            status = resp.status
            if (status >= 500 and status != 507) or status == 429:
                peer.record_error()
                last = Miss(peer, f"HTTP {status}{parse_error(resp.body)}", status=status)
                continue
            peer.record_ok()
            if not 200 <= status < 300:
                return Answer(status, error=parse_error(resp.body))
            data: bytes | bytearray = b""
            if keep:
                data = resp.body
                peer.observe_throughput(len(data), time.monotonic() - resp.head_at)
            return Answer(status, data, headers=resp.headers)
        assert last is not None
        raise last

    async def put(self, peer: Peer, path: str, body: bytes | memoryview, content_type: str) -> None:
        """PUT, or raise :class:`Miss` (``fatal`` when another peer would refuse it the same way)."""
        ans = await self.call(
            peer, "PUT", path, body=body, content_type=content_type, auth=True, retries=0, data_plane=True
        )
        if ans.status in (200, 201, 204):
            return
        if ans.status == 507:
            peer.full_at = time.monotonic()
            raise Miss(peer, f"full (HTTP 507){ans.error}", status=507)
        if ans.status in (401, 403):
            hint = "no token given" if not self.token else "token refused"
            raise Miss(peer, f"HTTP {ans.status}{ans.error}: {hint} (--token / DSTORE_TOKEN)", status=401, fatal=True)
        raise Miss(peer, f"HTTP {ans.status}{ans.error}", status=ans.status, fatal=400 <= ans.status < 500)
