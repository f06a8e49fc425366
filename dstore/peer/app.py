"""The storage peer's aiohttp application (the HTTP contract is docs/http-api.md).

``create_app(config)`` builds everything from a :class:`PeerConfig`; state
lives under typed ``web.AppKey`` keys, background work (scrub, asking the
``--peers`` for their IDs) runs in ``cleanup_ctx``, and one middleware turns
every exception into a JSON answer ``{"error": ..., "code": ...}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import hdrs, web

import dstore
from dstore.errors import BadCID, DstoreError, NotFound
from dstore.format.cid import CID, HASH_NAMES, cid_to_text, hash_digest, parse_cid
from dstore.limits import MAX_HEALTH_BYTES
from dstore.net.health import MAX_PEER_ID_CHARS
from dstore.net.transport import read_bounded
from dstore.peer.cachedread import read_if_cached
from dstore.peer.config import MAX_POINTER_BYTES, PeerConfig
from dstore.peer.connections import connection_middleware
from dstore.peer.gateway import GatewayState, setup_gateway
from dstore.peer.gc import Collector
from dstore.peer.identity import Identity, load_or_create_identity
from dstore.peer.metrics import CONTENT_TYPE_LATEST, PeerMetrics
from dstore.peer.pins import Pin, Pins, resolve_shards
from dstore.peer.scrub import Scrubber
from dstore.peer.storage import Full, PeerStore

__all__ = [
    "CONFIG",
    "DRAIN",
    "IDENTITY",
    "METRICS",
    "PEERS",
    "SCRUBBER",
    "STORE",
    "create_app",
]

log = logging.getLogger("dstore.peer")

CONFIG = web.AppKey("config", PeerConfig)
IDENTITY = web.AppKey("identity", Identity)
STORE = web.AppKey("store", PeerStore)
METRICS = web.AppKey("metrics", PeerMetrics)
SCRUBBER = web.AppKey("scrubber", Scrubber)
#: url -> peer ID (None until that peer has answered /health).
PEERS = web.AppKey("peers", dict[str, str | None])
#: canonical CID text -> the upload of it in progress (so two uploads of one block write it once).
IN_FLIGHT = web.AppKey("in_flight", dict[str, asyncio.Future[None]])
PINS = web.AppKey("pins", Pins)
COLLECTOR = web.AppKey("collector", Collector)
#: Held while a pointer PUT compares the pointer on disk with its own and writes.
POINTER_LOCK = web.AppKey("pointer_lock", threading.Lock)


class Drain:
    """Requests in progress, so a shutdown can wait for them while connections still receive.

    aiohttp's own graceful shutdown marks connections closing first, and a closing connection
    drops the rest of an upload's body: an upload in flight could never finish. So the peer
    first stops listening, waits here for the requests in flight (uploads included), and only
    then lets aiohttp close the connections.
    """

    def __init__(self) -> None:
        self.in_progress = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self) -> None:
        self.in_progress += 1
        self._idle.clear()

    def end(self) -> None:
        self.in_progress -= 1
        if self.in_progress == 0:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Stop taking keep-alive requests and wait for those in flight; False on timeout."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


DRAIN = web.AppKey("drain", Drain)

#: Bodies at least this big are hashed in a worker thread, off the event loop.
_THREAD_HASH_BYTES = 256 * 1024

_START = "dstore_peer_start"
_READ_CHUNK_BYTES = 1 << 20
#: A timed-out request's connection is not reused (the rest of its body may still be coming).
_CLOSE = {"Connection": "close"}
_SHARD_CID = "dstore_peer_shard_cid"


class ApiError(Exception):
    """An answer other than success: HTTP status, machine-readable code, one-line message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    411: "length_required",
    413: "too_large",
    416: "range_not_satisfiable",
    500: "internal",
    507: "full",
}


def _error_response(status: int, code: str, message: str, headers: Any = None) -> web.Response:
    response = web.json_response({"error": message, "code": code}, status=status, headers=headers)
    if headers and headers.get(hdrs.CONNECTION) == "close":
        response.force_close()
    return response


@web.middleware
async def timeout_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Bound a whole request, from its headers to its last answer byte, by ``request_timeout_s``:
    a body dribbled in, or a client that never reads the block it asked for, lets go in time.

    Cancelling the handler is safe: writes are shielded and own their reservation.
    """
    timeout_s = request.app[CONFIG].request_timeout_s
    try:
        async with asyncio.timeout(timeout_s) as scope:
            return await handler(request)
    except TimeoutError:
        if not scope.expired():
            raise
        if request.writer.output_size == 0:
            message = f"request not done within {timeout_s} s"
            return _error_response(408, "request_timeout", message, _CLOSE)
        if request.transport is not None:
            request.transport.abort()  # part of an answer is out: only closing is left
        raise ConnectionResetError(f"request not done within {timeout_s} s") from None


@web.middleware
async def drain_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Count the request as in flight until its response is completely sent."""
    drain = request.app[DRAIN]
    drain.begin()
    try:
        response = await handler(request)
        if drain.draining:
            response.force_close()
        if isinstance(response, web.FileResponse) and not response.prepared:
            # Send the file here (not after the middlewares) so that it counts as in flight.
            await response.prepare(request)
            await response.write_eof()
        return response
    finally:
        drain.end()


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure becomes ``{"error", "code"}`` JSON; never a traceback to the client."""
    request[_START] = time.perf_counter()
    try:
        return await handler(request)
    except ApiError as e:
        return _error_response(e.status, e.code, str(e), e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {k: v for k, v in e.headers.items() if k.lower() in ("allow", "content-range")}
        return _error_response(e.status, _HTTP_CODES.get(e.status, "error"), e.reason, headers)
    except BadCID as e:
        return _error_response(400, "bad_cid", str(e))
    except Full as e:
        return _error_response(507, "full", str(e))
    except NotFound as e:
        return _error_response(404, "not_found", str(e))
    except DstoreError as e:
        log.error("%s %s: %s", request.method, request.path, e)
        return _error_response(500, "store_error", str(e))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return _error_response(500, "internal", "internal error (logged by the peer)")


def _route_name(request: web.Request) -> str:
    match_info = request.match_info
    resource = match_info.route.resource
    if resource is None or match_info.http_exception is not None:
        return "unmatched"
    return resource.canonical


async def _on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Metrics for every answer (status as sent, e.g. 206), and the shard ETag."""
    cid_text = request.get(_SHARD_CID)
    if cid_text is not None and isinstance(response, web.FileResponse):
        # FileResponse sets an mtime-size ETag; a block's bytes are named by its CID.
        response.headers[hdrs.ETAG] = f'"{cid_text}"'
    metrics = request.app[METRICS]
    route = _route_name(request)
    metrics.requests.labels(request.method, route, str(response.status)).inc()
    start = request.get(_START)
    if start is not None:
        metrics.latency.labels(request.method, route).observe(time.perf_counter() - start)
    length = response.headers.get(hdrs.CONTENT_LENGTH)
    if request.method != "HEAD" and length and length.isdigit():
        metrics.bytes_out.inc(int(length))


# -- helpers -----------------------------------------------------------------------------------------


def _require_token(request: web.Request) -> None:
    expected = request.app[CONFIG].token
    got = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, token = got.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "missing or wrong token", {"WWW-Authenticate": "Bearer"})


def _path_cid(request: web.Request, name: str) -> CID:
    return parse_cid(request.match_info[name])


def _body_length(request: web.Request, limit: int) -> int:
    length = request.content_length
    if length is None:
        raise ApiError(411, "length_required", "Content-Length is required")
    if length > limit:
        raise ApiError(413, "too_large", f"body of {length} bytes is over the limit of {limit}")
    return length


async def _read_body(request: web.Request, length: int) -> bytes:
    """The body of ``length`` bytes (already bounded by the caller), as it arrives.

    408 ``body_timeout`` when no byte comes for ``body_idle_timeout_s`` (the whole request is
    bounded by timeout_middleware). The buffer grows with what arrives, never with what
    Content-Length claims.
    """
    idle_s = request.app[CONFIG].body_idle_timeout_s
    buf = bytearray()
    while len(buf) < length:
        try:
            async with asyncio.timeout(idle_s):
                chunk = await request.content.read(min(length - len(buf), _READ_CHUNK_BYTES))
        except TimeoutError:
            message = f"no body byte for {idle_s} s ({len(buf)} of {length} bytes came)"
            raise ApiError(408, "body_timeout", message, _CLOSE) from None
        if not chunk:
            raise ApiError(400, "incomplete_body", f"body ended after {len(buf)} of {length} bytes")
        buf += chunk
    request.app[METRICS].bytes_in.inc(len(buf))
    return bytes(buf)


# -- shards --------------------------------------------------------------------------------------


async def put_shard(request: web.Request) -> web.Response:
    _require_token(request)
    cid = _path_cid(request, "cid")
    hash_name = HASH_NAMES.get(cid.hash.code)
    if hash_name is None:
        supported = sorted(HASH_NAMES.values())
        raise ApiError(400, "bad_cid", f"unsupported hash 0x{cid.hash.code:x}; expected one of {supported}")
    cid_text = cid_to_text(cid)
    store = request.app[STORE]
    length = _body_length(request, request.app[CONFIG].max_body_bytes)
    if not store.has(cid_text):
        store.check_room(length)  # 507 before reading a byte of a body we could not keep
    # Capacity is booked only once the body is in: a client stalling mid-body holds none.
    data = await _read_body(request, length)
    if len(data) >= _THREAD_HASH_BYTES:
        digest = await asyncio.to_thread(hash_digest, data, hash_name)
    else:
        digest = hash_digest(data, hash_name)
    if digest != bytes(cid.hash.digest):
        raise ApiError(400, "hash_mismatch", f"the body does not hash to {cid_text}: nothing stored")

    # Two uploads of one block: the second waits for the first, then finds it held.
    in_flight = request.app[IN_FLIGHT]
    while (other := in_flight.get(cid_text)) is not None:
        await asyncio.shield(other)
    if store.has(cid_text):
        if await asyncio.to_thread(store.intact, cid_text, hash_name, bytes(cid.hash.digest)):
            await asyncio.to_thread(store.touch, cid_text)  # confirmed: gc's grace starts again
            return web.json_response({"cid": cid_text, "size": length, "stored": False}, status=200)
        # A rotten copy the scrub has not reached yet: these verified bytes replace it (repair).
        store.remove(cid_text)
    store.reserve(length)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    in_flight[cid_text] = done
    try:
        # The write owns the reservation. Shielded: once begun, it completes even if the
        # client goes away or the peer shuts down (it is atomic either way).
        new = await asyncio.shield(asyncio.to_thread(store.write_reserved, cid_text, data, length))
    finally:
        in_flight.pop(cid_text, None)
        done.set_result(None)
    return web.json_response({"cid": cid_text, "size": length, "stored": new}, status=201 if new else 200)


class _BlockFileResponse(web.FileResponse):
    """A block file, sent by drain_middleware (so that it counts as in flight).

    aiohttp prepares every response a handler returns; FileResponse would then open and send
    the file a second time onto a finished answer, fail, and close the kept-alive connection.
    """

    async def prepare(self, request: web.BaseRequest) -> Any:
        if self.prepared:
            return None
        return await super().prepare(request)


# ASCII digits only (``\d`` also takes "١"), unit in any case: what aiohttp's own parser, which serves
# the range, accepts. A number longer than this is no byte position of any block: refused (int()
# of more than 4300 digits raises, and once answered 500).
_RANGE_RE = re.compile(r"^bytes=(\d{0,64})-(\d{0,64})$", re.ASCII | re.IGNORECASE)


def _check_range(request: web.Request, size: int) -> tuple[int, int] | None:
    """The first and last byte of the request's range (None without one); 416 as JSON for a range that is
    malformed, multiple, or selects no byte.

    Parsed here, not by aiohttp: ``request.http_range`` reads ``bytes=-0`` (no byte) as ``bytes=0-``
    (every byte).
    """
    header = request.headers.get(hdrs.RANGE)
    if header is None:
        return None
    m = _RANGE_RE.match(header.strip())
    first, last = (m.group(1), m.group(2)) if m else ("", "")
    if not first:  # suffix range bytes=-n: the last n bytes
        ok = last != "" and int(last) > 0 and size > 0
    else:
        ok = int(first) < size and (last == "" or int(last) >= int(first))
    if not ok:
        raise ApiError(
            416, "range_not_satisfiable", f"the block has {size} bytes", {hdrs.CONTENT_RANGE: f"bytes */{size}"}
        )
    if not first:
        return max(0, size - int(last)), size - 1
    return int(first), size - 1 if last == "" else min(int(last), size - 1)


#: A range of a shard up to this size is read in one call (on the loop when its bytes are in memory,
#: dstore/peer/cachedread.py) and answered from memory: what a FileResponse costs besides (thread hops,
#: sendfile set-up) was most of a small range's cost, ~0.85-1.2 ms of peer CPU.
RANGE_READ_MAX_BYTES = 4 << 20


def _read_range(path: Path, first: int, length: int) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return os.pread(f.fileno(), length, first)


async def get_shard(request: web.Request) -> web.StreamResponse:
    cid = _path_cid(request, "cid")
    cid_text = cid_to_text(cid)
    path = request.app[STORE].path(cid_text)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ApiError(404, "not_found", f"this peer does not hold {cid_text}") from None
    if request.method == "HEAD" and not await asyncio.to_thread(request.app[STORE].touch, cid_text):
        # A HEAD is a client's dedup check: confirming the block restarts gc's grace.
        raise ApiError(404, "not_found", f"this peer does not hold {cid_text}")
    etag = f'"{cid_text}"'
    if request.headers.get(hdrs.IF_NONE_MATCH, "").strip() in (etag, f"W/{etag}", "*"):
        return web.Response(status=304, headers={hdrs.ETAG: etag})
    byte_range = _check_range(request, size)
    headers = {hdrs.CONTENT_TYPE: "application/octet-stream", hdrs.CACHE_CONTROL: "public, max-age=31536000, immutable"}
    if request.method == "GET" and byte_range is not None and byte_range[1] - byte_range[0] < RANGE_READ_MAX_BYTES:
        first, last = byte_range
        data = read_if_cached(path, first, last - first + 1)
        try:
            if data is None:
                data = await asyncio.to_thread(_read_range, path, first, last - first + 1)
        except FileNotFoundError:  # collected meanwhile
            raise ApiError(404, "not_found", f"this peer does not hold {cid_text}") from None
        if len(data) != last - first + 1:
            raise ApiError(404, "not_found", f"this peer holds only part of {cid_text}")
        headers |= {hdrs.ETAG: etag, hdrs.ACCEPT_RANGES: "bytes", hdrs.CONTENT_RANGE: f"bytes {first}-{last}/{size}"}
        return web.Response(status=206, body=data, headers=headers)
    request[_SHARD_CID] = cid_text
    return _BlockFileResponse(path, headers=headers)


# -- dataset pointers ------------------------------------------------------------------------------


#: Largest pointer ``seq`` (docs/format.md, "Datasets on peers": a non-negative 63-bit integer).
_MAX_SEQ = (1 << 63) - 1


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise ValueError(f"{text[:40]} is out of range")
    return value


def _validate_pointer(raw: bytes) -> dict[str, Any]:
    try:
        # NaN and Infinity are Python's extension, not JSON: stored, they were served to every reader.
        pointer = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, "bad_pointer", f"body is not JSON: {e}") from None
    except RecursionError:  # 64 KiB of "[" (answered 500 before)
        raise ApiError(400, "bad_pointer", "body is nested too deeply") from None
    if not isinstance(pointer, dict):
        raise ApiError(400, "bad_pointer", "a dataset pointer is a JSON object")
    locator = pointer.get("locator")
    if not isinstance(locator, str):
        raise ApiError(400, "bad_pointer", 'a dataset pointer needs "locator": "<CID>"')
    try:
        pointer["locator"] = cid_to_text(parse_cid(locator))
    except BadCID as e:
        raise ApiError(400, "bad_pointer", f"locator: {e}") from None
    if "metadata" in pointer and not isinstance(pointer["metadata"], dict):
        raise ApiError(400, "bad_pointer", '"metadata" must be a JSON object')
    seq = pointer.get("seq")
    if type(seq) is not int or not 0 <= seq <= _MAX_SEQ:
        raise ApiError(400, "bad_pointer", 'a dataset pointer needs "seq": a non-negative 63-bit integer')
    return pointer


def _held_seq(pointer: dict[str, Any]) -> int:
    """The ``seq`` of a pointer already on disk; -1 for one written before pointers had it (any new one wins)."""
    seq = pointer.get("seq")
    return seq if type(seq) is int else -1


def _keep_newest(
    store: PeerStore, lock: threading.Lock, dataset: str, pointer: dict[str, Any]
) -> tuple[bool, dict[str, Any] | None]:
    """Write ``pointer`` unless the held one is newer, or as new and different: (written, the held one).

    Under ``lock`` (in the worker thread, so a cancelled request cannot let go of it early):
    two publishers cannot both compare against the same old pointer.
    """
    with lock:
        try:
            held = store.read_pointer(dataset)
        except ValueError:  # a damaged pointer file: the new pointer replaces it
            held = None
        if not isinstance(held, dict):
            held = None
        if held is not None:
            held_seq, seq = _held_seq(held), pointer["seq"]
            if held_seq > seq or (held_seq == seq and held != pointer):
                return False, held
            if held == pointer:
                return True, held  # the same pointer again: nothing to write
        store.write_pointer(dataset, pointer)
        return True, held


async def put_dataset(request: web.Request) -> web.Response:
    _require_token(request)
    dataset = cid_to_text(_path_cid(request, "dataset"))
    length = _body_length(request, MAX_POINTER_BYTES)
    pointer = _validate_pointer(await _read_body(request, length))
    app = request.app
    keep = asyncio.to_thread(_keep_newest, app[STORE], app[POINTER_LOCK], dataset, pointer)
    written, held = await asyncio.shield(keep)
    if not written:
        assert held is not None
        held_seq = _held_seq(held)
        why = "a newer one" if held_seq > pointer["seq"] else "another one of the same seq"
        message = f"this peer keeps {why} (seq {held_seq}) for dataset {dataset}"
        return _error_response(409, "stale_pointer", message)
    return web.json_response(pointer, status=200)


async def get_dataset(request: web.Request) -> web.Response:
    dataset = cid_to_text(_path_cid(request, "dataset"))
    pointer = await asyncio.to_thread(request.app[STORE].read_pointer, dataset)
    if pointer is None:
        raise ApiError(404, "not_found", f"this peer has no pointer for dataset {dataset}")
    return web.json_response(pointer)


# -- status ------------------------------------------------------------------------------------------


async def get_health(request: web.Request) -> web.Response:
    app = request.app
    store = app[STORE]
    last = app[SCRUBBER].last
    return web.json_response(
        {
            "peer_id": app[IDENTITY].peer_id,
            "version": dstore.__version__,
            "bytes_stored": store.bytes_stored,
            "shards": store.shards,
            "capacity": store.capacity_bytes,
            "bytes_reserved": store.bytes_reserved,
            "pins": len(app[PINS].pins),
            "last_scrub": None
            if last is None
            else {"started": last.started, "finished": last.finished, "checked": last.checked, "bad": last.bad},
        }
    )


async def get_metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST})


async def get_peers(request: web.Request) -> web.Response:
    peers = request.app[PEERS]
    return web.json_response({"peers": [{"url": url, "peer_id": pid} for url, pid in peers.items()]})


# -- pins and gc -------------------------------------------------------------------------------------


def _pin_answer(pin: Pin) -> dict[str, Any]:
    return {
        "dataset": pin.dataset,
        "resolved": pin.shards is not None,
        "shards": None if pin.shards is None else len(pin.shards),
        "error": pin.error,
    }


async def _resolve(app: web.Application, dataset: CID) -> tuple[frozenset[str] | None, str | None]:
    try:
        return await resolve_shards(app[STORE], dataset, app[CONFIG].peers), None
    except DstoreError as e:
        log.warning("pin %s: cannot learn its shards yet: %s", cid_to_text(dataset), e)
        return None, str(e)


async def put_pin(request: web.Request) -> web.Response:
    _require_token(request)
    dataset = _path_cid(request, "dataset")
    text = cid_to_text(dataset)
    pins = request.app[PINS]
    existing = pins.get(text)
    shards, error = await _resolve(request.app, dataset)
    if shards is None and existing is not None and existing.shards is not None:
        shards, error = existing.shards, None  # keep what an earlier pin learned
    pin = Pin(text, existing.pinned_at if existing else time.time(), shards, error)
    await asyncio.shield(asyncio.to_thread(pins.save, pin))
    status = 202 if shards is None else 200 if existing is not None else 201
    return web.json_response(_pin_answer(pin), status=status)


async def delete_pin(request: web.Request) -> web.Response:
    _require_token(request)
    text = cid_to_text(_path_cid(request, "dataset"))
    if not await asyncio.to_thread(request.app[PINS].remove, text):
        raise ApiError(404, "not_found", f"dataset {text} is not pinned here")
    return web.json_response({"dataset": text, "pinned": False})


async def get_pins(request: web.Request) -> web.Response:
    pins = request.app[PINS].pins
    return web.json_response({"pins": [_pin_answer(p) for _, p in sorted(pins.items())]})


async def post_gc(request: web.Request) -> web.Response:
    _require_token(request)
    report = await request.app[COLLECTOR].run_pass()
    return web.json_response(asdict(report))


async def _resolve_pending(app: web.Application) -> None:
    pins = app[PINS]
    for pin in pins.unresolved():
        shards, error = await _resolve(app, parse_cid(pin.dataset))
        if shards is not None:
            await asyncio.to_thread(pins.save, Pin(pin.dataset, pin.pinned_at, shards))
        else:
            pin.error = error


# -- background work -------------------------------------------------------------------------------


async def _scrub_ctx(app: web.Application) -> AsyncIterator[None]:
    scrubber = app[SCRUBBER]
    task = None
    if scrubber.rate_bytes_s > 0:
        task = asyncio.create_task(scrubber.run_forever(), name="dstore-peer-scrub")
    yield
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


async def _gc_ctx(app: web.Application) -> AsyncIterator[None]:
    task = None
    if app[CONFIG].gc_enabled:
        task = asyncio.create_task(app[COLLECTOR].run_forever(), name="dstore-peer-gc")
    yield
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


async def _poll_peers(app: web.Application, session: aiohttp.ClientSession) -> None:
    """Learn the peer ID of every ``--peers`` URL from its /health, again every poll interval."""
    peers = app[PEERS]
    config = app[CONFIG]

    async def ask(url: str) -> None:
        try:
            async with session.get(f"{url}/health") as resp:
                if resp.status == 200:
                    # Bounded: resp.json() read whatever a listed peer sent, gigabytes included.
                    raw = await read_bounded(resp, MAX_HEALTH_BYTES)
                    if raw is None:
                        raise ValueError(f"/health answer over {MAX_HEALTH_BYTES} bytes")
                    body = json.loads(raw)
                    pid = body.get("peer_id") if isinstance(body, dict) else None
                    if isinstance(pid, str) and 1 <= len(pid) <= MAX_PEER_ID_CHARS and pid.isprintable():
                        peers[url] = pid
        except (TimeoutError, aiohttp.ClientError, ValueError, RecursionError) as e:
            log.debug("peer %s did not answer /health: %s", url, e)

    while True:
        await asyncio.gather(*(ask(url) for url in list(peers)), return_exceptions=True)
        await asyncio.sleep(config.peer_poll_interval_s)


async def _peers_ctx(app: web.Application) -> AsyncIterator[None]:
    if not app[PEERS]:
        yield
        return
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    task = asyncio.create_task(_poll_peers(app, session), name="dstore-peer-poll")
    try:
        yield
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await session.close()


# -- the app ---------------------------------------------------------------------------------------


def create_app(config: PeerConfig) -> web.Application:
    """The peer's application for ``config``: opens (or creates) its home, identity and store."""
    config.home.mkdir(parents=True, exist_ok=True)
    # Bodies are read by the handlers with their own bounds; this is only a backstop.
    app = web.Application(
        middlewares=[connection_middleware, timeout_middleware, drain_middleware, error_middleware],
        client_max_size=config.max_body_bytes + 1024,
    )
    app[CONFIG] = config
    app[IDENTITY] = load_or_create_identity(config.home)
    store = PeerStore(config.home, config.capacity_bytes)
    app[STORE] = store
    metrics = PeerMetrics(
        lambda: store.bytes_stored, lambda: store.shards, config.capacity_bytes, lambda: store.bytes_reserved
    )
    app[METRICS] = metrics
    app[SCRUBBER] = Scrubber(store, metrics, config.scrub_rate_bytes_s, config.scrub_interval_s)
    app[PEERS] = dict.fromkeys(config.peers)
    app[IN_FLIGHT] = {}
    app[PINS] = Pins(config.home)
    app[COLLECTOR] = Collector(store, app[PINS], config.gc_grace_s, config.gc_interval_s, lambda: _resolve_pending(app))
    app[DRAIN] = Drain()
    app[POINTER_LOCK] = threading.Lock()

    app.router.add_put("/shards/{cid}", put_shard)
    app.router.add_get("/shards/{cid}", get_shard)  # also HEAD
    app.router.add_put("/datasets/{dataset}", put_dataset)
    app.router.add_get("/datasets/{dataset}", get_dataset)
    app.router.add_get("/health", get_health)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/peers", get_peers)
    app.router.add_put("/pins/{dataset}", put_pin)
    app.router.add_delete("/pins/{dataset}", delete_pin)
    app.router.add_get("/pins", get_pins)
    app.router.add_post("/gc", post_gc)
    # The IPFS gateway (/ipfs/…) and delegated routing (/routing/v1/…): docs/ipfs.md.
    setup_gateway(app, GatewayState(store, app[IDENTITY].peer_id, config.peers, app[PEERS]))

    app.on_response_prepare.append(_on_response_prepare)
    app.cleanup_ctx.append(_scrub_ctx)
    app.cleanup_ctx.append(_peers_ctx)
    app.cleanup_ctx.append(_gc_ctx)
    return app
