"""Trustless IPFS gateways as one more source of blocks (``--gateways`` / ``$DSTORE_GATEWAYS``).

A gateway is untrusted, like a peer (docs/ipfs.md, "Reading from gateways"): every block is fetched
alone (``GET /ipfs/{cid}?format=raw``, ``Accept: application/vnd.ipld.raw``), read up to the bound the
caller gives (a ``Content-Length`` over it is refused unread, one under it is only a hint: the body is
read to the bound and no further), and checked against its CID before it is returned. A gateway that
answers wrong bytes, too many bytes or an error is passed over for the next one, and moved to the end
of the order for later blocks; a block fails only when no gateway has it.

Blocks are spread over the gateways by rendezvous hashing of the CID (as shards are over peers), and
fetched in parallel by :meth:`GatewayClient.submit` (a thread pool with one keep-alive connection per
gateway and thread). A large file's blocks also come as one stream, :meth:`GatewayClient.entity_blocks`
(``?format=car&dag-scope=entity``), each block verified as it arrives; a stream that goes wrong is
dropped and the caller asks for the blocks one by one. Only the standard library and dstore's CAR
reader are used: this module knows CIDs and blocks, nothing of datasets.
"""

from __future__ import annotations

import hashlib
import http.client
import ssl
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import urlsplit

from dstore.errors import DstoreError, IntegrityError, NotFound, PeerError
from dstore.format.car import CarReader
from dstore.format.cid import CID, HASH_NAMES, cid_to_text, hash_digest, inline_block

__all__ = ["GATEWAY_CONCURRENCY", "GATEWAY_TIMEOUT_S", "GatewayClient", "verify_block"]

#: Block requests in flight at once over all gateways.
GATEWAY_CONCURRENCY = 8
#: One request (connect, answer, body) to one gateway.
GATEWAY_TIMEOUT_S = 30.0
#: The MIME type of one block, as the Trustless Gateway specification names it.
RAW_BLOCK_TYPE = "application/vnd.ipld.raw"
#: The MIME type of a CAR stream (version 1, depth first, no duplicates: what dstore peers send).
CAR_TYPE = "application/vnd.ipld.car; version=1; order=dfs; dups=n"
_READ_PIECE_BYTES = 1 << 20


def verify_block(cid: CID, data: bytes | memoryview) -> bool:
    """True if ``data`` is the block ``cid`` names (BLAKE3, SHA2-256, or an identity CID's own bytes)."""
    inline = inline_block(cid)
    if inline is not None:
        return inline == bytes(data)
    name = HASH_NAMES.get(cid.hash.code)
    return name is not None and hash_digest(bytes(data), name) == bytes(cid.hash.digest)


class _Gateway:
    """One gateway's address, and a keep-alive connection per thread."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.url = url
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.prefix = parts.path.rstrip("/")
        self.weight_key = url.encode()
        self.strikes = 0  # wrong bytes or errors answered; more strikes, later in the order
        self._local = threading.local()
        self._open: set[http.client.HTTPConnection] = set()  # every thread's, closed by close_all
        self._open_lock = threading.Lock()

    def connection(self, timeout_s: float) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.https:
                conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=timeout_s, context=ssl.create_default_context()
                )
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)
            self._local.conn = conn
            with self._open_lock:
                self._open.add(conn)
        return conn

    def drop_connection(self) -> None:
        """Close this thread's connection (its answer was not read to the end, or it failed)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._open_lock:
                self._open.discard(conn)

    def close_all(self) -> None:
        with self._open_lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            conn.close()


class _Refused(Exception):
    """One gateway's answer for one block was not the block; ``kind`` says how (for the final error)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "missing", "wrong" (bytes or sizes that lie) or "down"


class GatewayClient:
    """Blocks by CID from a list of trustless gateways, verified; thread-safe."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout_s: float = GATEWAY_TIMEOUT_S,
        concurrency: int = GATEWAY_CONCURRENCY,
    ) -> None:
        if not urls:
            raise ValueError("a GatewayClient needs at least one gateway")
        self.gateways = [_Gateway(u) for u in urls]
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="dstore-gateway")
        self._lock = threading.Lock()
        self.closed = False

    @property
    def urls(self) -> list[str]:
        return [g.url for g in self.gateways]

    def get_block(self, cid: CID, max_bytes: int) -> bytes:
        """The block ``cid`` names, at most ``max_bytes`` long, verified.

        NotFound when every gateway answers that it lacks it; IntegrityError when one answered
        bytes that are not the block (or more than ``max_bytes``) and none the right ones;
        PeerError when the others could not be reached.
        """
        inline = inline_block(cid)
        if inline is not None:
            return inline
        failures: list[tuple[_Gateway, _Refused]] = []
        for gateway in self._order(cid):
            try:
                data = self._fetch(gateway, cid, max_bytes)
            except _Refused as e:
                failures.append((gateway, e))
                if e.kind != "missing":
                    with self._lock:
                        gateway.strikes += 1
                continue
            return data
        raise _error_for(cid, failures)

    def submit(self, cid: CID, max_bytes: int) -> Future[bytes]:
        """:meth:`get_block` on the client's threads."""
        return self._pool.submit(self.get_block, cid, max_bytes)

    def get_blocks(self, wanted: Iterable[tuple[CID, int]], *, window: int = GATEWAY_CONCURRENCY) -> Iterator[bytes]:
        """The blocks of ``wanted`` ((CID, max bytes) pairs), in order, ``window`` requests in flight."""
        pending: list[Future[bytes]] = []
        try:
            for cid, max_bytes in wanted:
                pending.append(self.submit(cid, max_bytes))
                if len(pending) >= window:
                    yield pending.pop(0).result()
            while pending:
                yield pending.pop(0).result()
        finally:
            for future in pending:
                future.cancel()

    def entity_blocks(self, cid: CID, max_block_bytes: int) -> Iterator[tuple[CID, bytes]]:
        """The blocks of the entity ``cid`` (a file's DAG) as one CAR stream from the first gateway in order,
        each checked against its CID as it arrives; ``max_block_bytes`` bounds each.

        The caller decides which blocks it wanted; the stream may end early, or raise a DstoreError
        (FormatError, IntegrityError, PeerError) when the gateway sends what is no CAR or a block that
        does not verify: that gateway gets a strike, and the caller asks for the rest block by block.
        """
        gateway = self._order(cid)[0]
        conn = _Gateway(gateway.url).connection(self.timeout_s)  # its own: other requests go on meanwhile
        try:
            path = f"{gateway.prefix}/ipfs/{cid_to_text(cid)}?format=car&dag-scope=entity"
            try:
                conn.request("GET", path, headers={"Accept": CAR_TYPE})
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                raise PeerError(f"{gateway.url}: {e or type(e).__name__}") from None
            if response.status != 200:
                raise PeerError(f"{gateway.url} answered HTTP {response.status} for a CAR of {cid_to_text(cid)}")
            try:
                yield from CarReader(response, verify=True, max_block_bytes=max_block_bytes)
            except (OSError, http.client.HTTPException) as e:
                raise PeerError(f"{gateway.url}: {e or type(e).__name__}") from None
            except DstoreError:
                with self._lock:
                    gateway.strikes += 1
                raise
        finally:
            conn.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        for gateway in self.gateways:
            gateway.close_all()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request --------------------------------------------------------

    def _order(self, cid: CID) -> list[_Gateway]:
        """Fewest strikes first, then by rendezvous weight for this CID (spreads blocks over gateways)."""
        key = cid.to_bytes()
        with self._lock:
            strikes = {id(g): g.strikes for g in self.gateways}
        return sorted(
            self.gateways,
            key=lambda g: (
                strikes[id(g)],
                -int.from_bytes(hashlib.blake2b(g.weight_key + key, digest_size=8).digest()),
            ),
        )

    def _fetch(self, gateway: _Gateway, cid: CID, max_bytes: int) -> bytes:
        path = f"{gateway.prefix}/ipfs/{cid_to_text(cid)}?format=raw"
        for attempt in (1, 2):  # a kept-alive connection the gateway closed meanwhile fails once
            conn = gateway.connection(self.timeout_s)
            try:
                conn.request("GET", path, headers={"Accept": RAW_BLOCK_TYPE})
                response = conn.getresponse()
                return self._read(gateway, response, cid, max_bytes)
            except _Refused:
                raise
            except (OSError, http.client.HTTPException) as e:
                gateway.drop_connection()
                if attempt == 2 or not isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError)):
                    raise _Refused("down", f"{gateway.url}: {e or type(e).__name__}") from None
        raise AssertionError("unreachable")

    def _read(self, gateway: _Gateway, response: http.client.HTTPResponse, cid: CID, max_bytes: int) -> bytes:
        try:
            if response.status == 404:
                raise _Refused("missing", f"{gateway.url} does not have it")
            if response.status != 200:
                raise _Refused("down", f"{gateway.url} answered HTTP {response.status}")
            claimed = response.getheader("Content-Length")
            if claimed is not None and claimed.isdigit() and int(claimed) > max_bytes:
                raise _Refused("wrong", f"{gateway.url} announced {claimed} bytes, over the {max_bytes} expected")
            data = _read_at_most(response, max_bytes)
            if data is None:
                raise _Refused("wrong", f"{gateway.url} sent more than the {max_bytes} bytes expected")
        except _Refused:
            response.close()
            gateway.drop_connection()  # the rest of the body is not read: this connection cannot be reused
            raise
        if not verify_block(cid, data):
            raise _Refused("wrong", f"{gateway.url} sent bytes that do not match the CID")
        return data


def _read_at_most(response: http.client.HTTPResponse, max_bytes: int) -> bytes | None:
    """The body if it is at most ``max_bytes`` long, else None; never reads more than one piece past the bound."""
    out = bytearray()
    while True:
        piece = response.read(min(_READ_PIECE_BYTES, max_bytes + 1 - len(out)))
        if not piece:
            return bytes(out)
        out += piece
        if len(out) > max_bytes:
            return None


def _error_for(cid: CID, failures: list[tuple[_Gateway, _Refused]]) -> DstoreError:
    """One error for a block no gateway gave: its class says what the user can do next."""
    text = cid_to_text(cid)
    detail = "; ".join(str(e) for _, e in failures)
    kinds = {e.kind for _, e in failures}
    if kinds == {"missing"}:
        return NotFound(f"block {text} is on none of the {len(failures)} gateways")
    message = f"no gateway gave a verified copy of block {text} ({detail})"
    return IntegrityError(message) if "wrong" in kinds else PeerError(message)
