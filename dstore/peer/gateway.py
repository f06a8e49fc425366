"""The peer's IPFS HTTP gateway: ``/ipfs/{cid}[/path]`` (trustless and deserialized) and delegated routing.

Trustless answers (IPFS "Trustless Gateway" specification): ``?format=raw`` or
``Accept: application/vnd.ipld.raw`` gives one block; ``?format=car`` or
``Accept: application/vnd.ipld.car`` a CAR v1 stream (``order=dfs; dups=n``)
of the path's blocks and the blocks ``dag-scope`` (``block``, ``entity``,
``all``) and ``entity-bytes`` ask for. Any other request is answered
deserialized (IPFS "Path Gateway"): a file's bytes (one ``Range`` at most), a
folder's listing (JSON on ``Accept: application/json``, else HTML).

The blocks served are those of the datasets whose pointer this peer holds
(:mod:`dstore.peer.blockindex`), plus any raw block held as a shard file.
Every block is checked against its CID before a byte of it is sent; a
failure in the middle of a stream closes the connection (the client sees a
truncated answer, never a wrong one). Streams are written while reading,
a run of chunks at a time.

``GET /routing/v1/providers/{cid}`` (Delegated Routing V1 HTTP API) lists this
peer and those of its ``--peers`` that can serve the CID.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import hdrs, web
from multiformats import multibase
from multiformats.cid import CID as _MFCID

from dstore.errors import BadCID, DstoreError, IntegrityError, NotFound
from dstore.format import unixfs
from dstore.format.car import car_header, car_section_head
from dstore.format.cid import CID, DAG_CBOR, DAG_PB, DIGEST_BYTES, RAW, cid_to_text, parse_cid
from dstore.peer import gateway_files as files
from dstore.peer import gateway_ipld as ipld
from dstore.peer import gateway_tar as tar
from dstore.peer.blockindex import BlockIndex
from dstore.peer.blockindex import GatewayReader as DatasetReader
from dstore.peer.gateway_car import (
    Item,
    PathRemainder,
    Resolved,
    block_bytes,
    chunk_cid_prefix,
    entity_blocks,
    resolve,
    verified,
)
from dstore.peer.gateway_runs import Leaf, Run, chunk_runs
from dstore.peer.storage import PeerStore

__all__ = ["GATEWAY", "GatewayState", "setup_gateway"]

log = logging.getLogger("dstore.peer.gateway")


@dataclass
class GatewayState:
    """What the gateway needs of the peer: its store, ID, ``--peers`` and their IDs as the peer learns them."""

    store: PeerStore
    peer_id: str
    peer_urls: list[str]
    known_peers: dict[str, str | None]  # url -> peer ID (None until it answered /health)
    index: BlockIndex | None = None

    @property
    def blocks(self) -> BlockIndex:
        if self.index is None:
            raise DstoreError("the gateway's block index is not open (the app has not started)")
        return self.index


GATEWAY = web.AppKey("gateway", GatewayState)

RAW_TYPE = "application/vnd.ipld.raw"
CAR_TYPE = "application/vnd.ipld.car"
CAR_CONTENT_TYPE = "application/vnd.ipld.car; version=1; order=dfs; dups={dups}"
IMMUTABLE = "public, max-age=29030400, immutable"
#: Folder listings are made by the peer (their page may change with its version): a week, then revalidated.
LISTING_CACHE = "public, max-age=604800, stale-while-revalidate=2678400"
IDENTITY_HASH = 0x00
#: CAR blocks are written in batches of about this many bytes.
CAR_BATCH_BYTES = 1 << 20
#: A CAR of at most this many blocks is measured before it is sent, to send it with its Content-Length;
#: a bigger one is sent chunked (measuring it would hold back its first byte for too long).
MAX_SIZED_CAR_BLOCKS = 1 << 16
#: ... and at most this many bytes of node blocks (the walk keeps them until they are sent).
MAX_SIZED_CAR_NODE_BYTES = 64 << 20
#: Streams are written to the socket this much at a time (the rest of a larger write would be copied
#: into the transport's buffer first).
WRITE_BYTES = 256 << 10
#: Inline (identity) CIDs carry their block in the CID; bigger ones are refused.
MAX_IDENTITY_BYTES = 128
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Range, User-Agent, X-Requested-With",
    "Access-Control-Expose-Headers": (
        "Content-Length, Content-Range, Content-Type, ETag, X-Chunked-Output, X-Stream-Output, "
        "X-Ipfs-Path, X-Ipfs-Roots"
    ),
}
_SCOPES = ("block", "entity", "all")
# Formats of the path gateway this peer does not make (406, not a silent deserialized answer).
_UNSUPPORTED_FORMATS = {"ipns-record": "application/vnd.ipfs.ipns-record"}
TAR_TYPE = "application/x-tar"
# Accept types naming an IPLD format; the plain ones (json, cbor) only for IPLD blocks (a UnixFS
# folder asked for application/json still answers its JSON listing).
_IPLD_ACCEPT = {t: f for f, (t, _, _) in ipld.FORMAT_TYPES.items()}


class GatewayError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or {}


def _json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status, headers={**CORS, **(headers or {})})


# -- request parsing ---------------------------------------------------------------------------------


def gateway_cid(text: str) -> CID:
    """A CID from the URL; identity-hashed (inline) CIDs such as ``bafkqaaa`` are allowed here."""
    try:
        return parse_cid(text)
    except BadCID:
        try:
            raw = multibase.decode(text)[1]
            cid = _MFCID.from_bytes(raw)
        except Exception:
            raise BadCID(f"not a CID: {text[:80]!r}") from None
        if cid.to_bytes() != raw or cid.hash.code != IDENTITY_HASH or len(cid.hash.digest) > MAX_IDENTITY_BYTES:
            raise
        return cid if cid.version == 1 else cid.to_v1()


@dataclass(frozen=True)
class Want:
    """What the client asked for: ``kind`` "raw", "car" or "" (deserialized), and the CAR options."""

    kind: str
    scope: str = "all"
    entity_bytes: tuple[int, int | None] | None = None  # (from, to or None for "*"), negatives count from the end
    dups: bool = False  # CAR dups=y: a block as often as the walk meets it
    fmt: str = ""  # an IPLD format (dag-json, dag-cbor, json, cbor) the request named, if any
    html: bool = False  # Accept names text/html first: a browser


def _media_types(accept: str) -> Iterator[tuple[str, dict[str, str]]]:
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        params = {}
        for f in fields[1:]:
            k, _, v = f.partition("=")
            params[k.strip().lower()] = v.strip().strip('"')
        yield fields[0].lower(), params


def _entity_bytes(text: str) -> tuple[int, int | None]:
    first, sep, last = text.partition(":")
    try:
        start = int(first)
        end = None if last == "*" else int(last)
    except ValueError:
        raise GatewayError(400, "bad_request", f"entity-bytes must be from:to (integers or *), not {text!r}") from None
    if not sep or (end is not None and 0 <= start and 0 <= end < start):
        raise GatewayError(400, "bad_request", f"entity-bytes {text!r}: from must not be past to")
    return start, end


def parse_want(request: web.Request) -> Want:
    """The answer kind: ``?format=`` first, then Accept (IPIP-0523, as boxo does).

    ``kind`` "raw", "car", "ipld" (an explicit IPLD format: ``fmt``) or "" (deserialized; ``fmt``
    may still carry a plain json/cbor Accept, used when the block is IPLD). CAR parameters come
    from the Accept entry naming the CAR type, and ``?car-version=``, ``?car-order=``,
    ``?car-dups=`` override them.
    """
    car_params: dict[str, str] = {}
    accepted, accepted_fmt = "", ""
    unsupported = None
    first_html = False
    for i, (mtype, params) in enumerate(_media_types(request.headers.get(hdrs.ACCEPT, ""))):
        if mtype == CAR_TYPE and not car_params:
            car_params = params
        if i == 0 and mtype == "text/html":
            first_html = True
        if accepted or accepted_fmt:
            continue
        if mtype == RAW_TYPE:
            accepted = "raw"
        elif mtype == CAR_TYPE:
            accepted = "car"
        elif mtype == TAR_TYPE:
            accepted = "tar"
        elif mtype in _IPLD_ACCEPT:
            accepted_fmt = _IPLD_ACCEPT[mtype]
            accepted = "ipld" if accepted_fmt.startswith("dag-") else ""
        elif mtype in _UNSUPPORTED_FORMATS.values() and unsupported is None:
            unsupported = mtype
    fmt = request.query.get("format")
    if fmt is not None:
        if fmt in ("raw", "car", "tar"):
            kind, accepted_fmt = fmt, ""
        elif fmt in ipld.FORMAT_TYPES:
            kind, accepted_fmt = "ipld", fmt
        elif fmt in _UNSUPPORTED_FORMATS:
            raise GatewayError(406, "not_acceptable", f"format={fmt} is not served here")
        else:
            raise GatewayError(400, "bad_request", f"unknown format={fmt!r}")
    else:
        kind = accepted
    if not kind and not accepted_fmt and unsupported is not None:
        raise GatewayError(406, "not_acceptable", f"{unsupported} is not served here ({RAW_TYPE}, {CAR_TYPE})")
    if kind != "car":
        return Want(kind, fmt=accepted_fmt, html=first_html and not kind)
    for name in ("version", "order", "dups"):
        if f"car-{name}" in request.query:
            car_params[name] = request.query[f"car-{name}"]
    if car_params.get("version", "1") != "1":
        raise GatewayError(406, "not_acceptable", "only CAR version=1 is served")
    if car_params.get("order", "dfs") not in ("dfs", "unk"):
        raise GatewayError(406, "not_acceptable", "only CAR order=dfs is served")
    dups = car_params.get("dups", "n")
    if dups not in ("y", "n"):
        raise GatewayError(400, "bad_request", f"CAR dups must be y or n, not {dups!r}")
    scope = request.query.get("dag-scope", "all")
    if scope not in _SCOPES:
        raise GatewayError(400, "bad_request", f"dag-scope must be one of {', '.join(_SCOPES)}, not {scope!r}")
    raw_range = request.query.get("entity-bytes")
    return Want("car", scope, _entity_bytes(raw_range) if raw_range is not None else None, dups == "y")


def _segments(request: web.Request) -> list[str]:
    return [s for s in request.match_info.get("path", "").split("/") if s]


def _ipfs_path(cid_text: str, segments: list[str], slash: bool = False) -> str:
    """The content path of the request (X-Ipfs-Path), its trailing slash kept."""
    return "/ipfs/" + "/".join([cid_text, *segments]) + ("/" if slash else "")


# -- what is served ----------------------------------------------------------------------------------


class Target:
    """One request's resolution, made in a worker thread: a reader of the dataset (if any) and where the path led."""

    def __init__(self, reader: DatasetReader | None, resolved: Resolved, loose: bytes | None = None) -> None:
        self.reader = reader
        self.resolved = resolved
        self.loose = loose  # a block outside any dataset (an identity CID, a shard held here)
        self.asked: CID | None = None  # the CID as the request named it (CIDv0 stays CIDv0 in answers)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


def _loose_block(store: PeerStore, cid: CID) -> bytes | None:
    """A raw block this peer holds as a shard file (a shard is a raw block), if it still matches its CID."""
    if cid.codec != RAW:
        return None
    try:
        return verified(cid, store.files.read(cid_to_text(cid)))
    except NotFound:
        return None
    except DstoreError:
        log.warning("gateway: held shard %s does not match its CID", cid_to_text(cid))
        return None


def _open_target(index: BlockIndex, cid: CID, segments: list[str], want: Want) -> Target:
    """Blocking: find the dataset holding ``cid`` and walk the path (NotFound when nothing here serves it)."""
    loose = None if cid.hash.code != IDENTITY_HASH else bytes(cid.hash.digest)
    metas = [] if loose is not None else index.find(cid)
    if not metas:
        loose = loose if loose is not None else _loose_block(index.store, cid)
        if loose is None:
            raise NotFound(f"this peer can serve no block {cid_to_text(cid)}")
        if segments:
            raise NotFound(f"{cid_to_text(cid)} is a single block: no path inside it")
        return Target(None, Resolved(cid, None, roots=[cid]), loose)
    errors: list[str] = []
    for meta in metas:  # a CID in several datasets: the first whose blocks can be read
        reader: DatasetReader | None = None
        try:
            reader = index.reader(meta)
            return Target(reader, resolve(reader, cid, segments, through_manifest=want.kind == ""))
        except (NotFound, PathRemainder):  # the answer, not a failure to read: no other dataset changes it
            if reader is not None:
                reader.close()
            raise
        except DstoreError as e:
            if reader is not None:
                reader.close()
            errors.append(str(e))
    raise DstoreError("; ".join(errors))


def _common_headers(target: Target, path: str) -> dict[str, str]:
    return {
        **CORS,
        "X-Ipfs-Path": path,
        "X-Ipfs-Roots": ",".join(cid_to_text(c) for c in target.resolved.roots),
        hdrs.CACHE_CONTROL: IMMUTABLE,
        hdrs.VARY: "Accept",
    }


def _not_modified(request: web.Request, etag: str, headers: dict[str, str]) -> web.Response | None:
    inm = request.headers.get(hdrs.IF_NONE_MATCH)
    if inm is None:
        return None
    tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
    if etag in tags or "*" in tags:
        return web.Response(status=304, headers={**headers, hdrs.ETAG: etag})
    return None


# -- answers ---------------------------------------------------------------------------------------------


async def _send_stream(
    request: web.Request, response: web.StreamResponse, pieces: Iterator[bytes | memoryview]
) -> web.StreamResponse:
    """Write ``pieces`` as they come; an error after the headers closes the connection.

    Pieces are pulled in a worker thread, the next one while this one is written (a piece stays
    valid once made), so reading and sending overlap. The handler returns only once the worker
    is done with ``pieces`` (its reader is closed next), also when the request is cancelled.
    """
    await response.prepare(request)
    if request.method == "HEAD":
        await response.write_eof()
        return response
    loop = asyncio.get_running_loop()
    upcoming: asyncio.Future[bytes | memoryview | None] | None = None
    length, sent = response.content_length, 0  # a stream must come out as long as it said it is
    try:
        upcoming = loop.run_in_executor(None, next, pieces, None)
        while True:
            piece = await asyncio.shield(upcoming)  # a cancelled request leaves the worker's future alone
            if piece is None:
                break
            upcoming = loop.run_in_executor(None, next, pieces, None)
            view = memoryview(piece)
            sent += len(view)
            if length is not None and sent > length:
                raise IntegrityError(f"the stream is longer than the {length} bytes its Content-Length says")
            for at in range(0, len(view), WRITE_BYTES):  # what the socket takes at once: little is copied
                await response.write(view[at : at + WRITE_BYTES])
        if length is not None and sent != length:
            raise IntegrityError(f"the stream ended after {sent} of the {length} bytes its Content-Length says")
    except DstoreError as e:
        log.error("gateway: %s %s failed mid-stream: %s", request.method, request.path, e)
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError(str(e)) from e
    except ConnectionError:  # the client left mid-stream: nothing more can be sent, nothing went wrong here
        log.info("gateway: %s %s: the client left mid-stream", request.method, request.path)
        return response
    finally:
        await _settled(upcoming)
        if isinstance(pieces, Generator):
            pieces.close()  # its shard files close now, not when a traceback that holds this frame goes
    await response.write_eof()
    return response


async def _settled(pending: asyncio.Future[Any] | None) -> None:
    """Wait for the worker thread's ``pending`` pull to end, even through a cancellation (raised after)."""
    if pending is None:
        return
    cancelled = False
    while not pending.done():
        try:
            await asyncio.wait([pending])
        except asyncio.CancelledError:
            cancelled = True
    if not pending.cancelled():
        pending.exception()  # retrieved: an error after the client left is not worth a warning
    if cancelled:
        raise asyncio.CancelledError


async def _answer_raw(request: web.Request, target: Target, cid: CID, path: str) -> web.StreamResponse:
    terminal = target.resolved.cid
    text = cid_to_text(terminal)
    headers = _common_headers(target, path)
    etag = f'"{text}.raw"'
    cached = _not_modified(request, etag, headers)
    if cached is not None:
        return cached
    headers.update(
        {
            hdrs.CONTENT_TYPE: RAW_TYPE,
            hdrs.ETAG: etag,
            hdrs.CONTENT_DISPOSITION: _attachment(request, f"{text}.bin"),
            "X-Content-Type-Options": "nosniff",
        }
    )
    if target.loose is not None:
        return _whole_or_range(request, target.loose, headers)  # aiohttp sends no body for a HEAD
    reader = target.reader
    assert reader is not None
    if request.method == "HEAD":
        # A HEAD (a routing probe, a dedup check) learns the size from verified metadata: no chunk is read.
        response = web.StreamResponse(headers=headers)
        response.content_length = await asyncio.to_thread(_block_size, reader, target.resolved)
        await response.prepare(request)
        await response.write_eof()
        return response
    return _whole_or_range(request, await asyncio.to_thread(block_bytes, reader, terminal), headers)


def _block_size(reader: DatasetReader, resolved: Resolved) -> int:
    cid, node = resolved.cid, resolved.node
    if cid.codec == RAW and node is not None:
        return node.filesize or 0  # a chunk: its size in the locator (the empty file: 0)
    return len(verified(cid, reader.block(cid)))


def _resolve_range(want: Want, target: Target) -> tuple[int, int] | None:
    node = target.resolved.node
    if want.entity_bytes is None or node is None or node.is_dir or node.kind == "symlink":
        return None
    size = node.filesize or 0
    start, end = want.entity_bytes
    first = start if start >= 0 else max(0, size + start)
    last = size - 1 if end is None else (end if end >= 0 else size + end)
    last = min(last, size - 1)
    if first > last:
        return (size, size - 1) if first >= size else None  # nothing of the file: only its root block
    return first, last


def _car_items(target: Target, want: Want, reader: DatasetReader) -> Iterator[Item]:
    """The blocks of the CAR after its header, in stream order (each once unless ``dups``)."""
    resolved = target.resolved
    return _once(
        itertools.chain(
            resolved.path_blocks, entity_blocks(reader, resolved, want.scope, _resolve_range(want, target))
        ),
        reader,
        want.dups,
    )


def _car_pieces(target: Target, items: Iterator[Item]) -> Iterator[bytes | memoryview]:
    """The CAR stream: its header, then ``items`` (the path's blocks, then the terminal's).

    Node blocks are joined into pieces of at least CAR_BATCH_BYTES; a run of chunks comes already
    framed as CAR sections (gateway_runs) and is a piece of its own, valid until the generator has
    been advanced twice more.
    """
    resolved = target.resolved
    yield car_header([_as_asked(target, resolved.roots[0])])
    if target.loose is not None:
        if resolved.cid.hash.code != IDENTITY_HASH:
            yield car_section_head(_as_asked(target, resolved.cid), len(target.loose)) + target.loose
        return
    reader = target.reader
    assert reader is not None
    batch: list[bytes] = []
    batch_bytes = 0
    for item in chunk_runs(reader, items, cid_prefix=chunk_cid_prefix(reader)):
        if isinstance(item, Run):
            if batch:
                yield b"".join(batch)
                batch, batch_bytes = [], 0
            yield item.data
            continue
        cid, data = item
        batch.append(car_section_head(_as_asked(target, cid), len(data)))
        batch.append(data)
        batch_bytes += len(data)
        if batch_bytes >= CAR_BATCH_BYTES:
            yield b"".join(batch)
            batch, batch_bytes = [], 0
    if batch:
        yield b"".join(batch)


@dataclass
class CarPlan:
    """A CAR's blocks after its header, and its exact length (None: it is sent chunked)."""

    length: int | None
    items: Iterator[Item]


def _car_plan(target: Target, want: Want) -> CarPlan:
    """The CAR's blocks, measured by one walk of its verified nodes before the first byte is sent.

    The walk's items are kept (at most MAX_SIZED_CAR_BLOCKS, their node blocks at most
    MAX_SIZED_CAR_NODE_BYTES) and the stream sends them without walking again. Past either bound,
    or when its dataset's metadata holds raw blocks (an imported CAR's: its raw leaves are read as
    the walk reaches them), the length is None: the CAR is sent chunked, the kept items first and
    then the rest of the same walk.

    A chunk's size is the one its verified parent declares: the stream reads it only if its
    locator entry and bytes agree, and breaks the connection otherwise. A node is checked against
    its CID by the walk; the stream sends those same bytes.
    """
    resolved = target.resolved
    total = len(car_header([_as_asked(target, resolved.roots[0])]))
    if target.loose is not None:
        if resolved.cid.hash.code != IDENTITY_HASH:
            total += len(car_section_head(_as_asked(target, resolved.cid), len(target.loose))) + len(target.loose)
        return CarPlan(total, iter(()))
    reader = target.reader
    assert reader is not None
    walk = _car_items(target, want, reader)
    if reader.holds_raw:
        return CarPlan(None, walk)
    leaf_cid_bytes = len(chunk_cid_prefix(reader)) + DIGEST_BYTES
    kept: list[Item] = []
    node_bytes = 0
    for item in walk:
        kept.append(item)
        if isinstance(item, Leaf):
            section = leaf_cid_bytes + item.size
        else:
            node_bytes += len(item[1])
            section = len(_as_asked(target, item[0]).to_bytes()) + len(item[1])
        total += (section.bit_length() + 6) // 7 + section  # its head's varint, then the section
        if len(kept) >= MAX_SIZED_CAR_BLOCKS or node_bytes > MAX_SIZED_CAR_NODE_BYTES:
            return CarPlan(None, itertools.chain(kept, walk))
    return CarPlan(total, iter(kept))


def _once(items: Iterable[Item], reader: DatasetReader, dups: bool) -> Iterator[Item]:
    """The blocks a CAR sends, in order: inline (identity) CIDs never (their block is the CID, as
    the trustless gateway spec says), and each block only the first time unless ``dups``."""
    seen: set[bytes] = set()
    prefix = chunk_cid_prefix(reader)
    for item in items:
        if isinstance(item, Leaf):
            key = prefix + item.digest
        elif item[0].hash.code == IDENTITY_HASH:
            continue
        else:
            key = item[0].to_bytes()
        if not dups:
            if key in seen:
                continue
            seen.add(key)
        yield item


async def _answer_car(request: web.Request, target: Target, want: Want, path: str, cid_text: str) -> web.StreamResponse:
    headers = _common_headers(target, path)
    range_tag = "" if want.entity_bytes is None else f".{want.entity_bytes[0]}:{want.entity_bytes[1]}"
    etag = f'"{cid_text}{path[len("/ipfs/" + cid_text) :]}.car.{want.scope}{range_tag}"'
    cached = _not_modified(request, etag, headers)
    if cached is not None:
        return cached
    headers.update(
        {
            hdrs.CONTENT_TYPE: CAR_CONTENT_TYPE.format(dups="y" if want.dups else "n"),
            hdrs.ETAG: etag,
            hdrs.CONTENT_DISPOSITION: _attachment(request, f"{cid_text}.car"),
            hdrs.ACCEPT_RANGES: "none",  # a CAR stream is made while read: resume with entity-bytes instead
            "X-Content-Type-Options": "nosniff",
        }
    )
    response = web.StreamResponse(headers=headers)
    plan = await asyncio.to_thread(_car_plan, target, want)
    if plan.length is None:
        response.enable_chunked_encoding()
    else:  # known: sent as it is, without chunked framing (aiohttp would copy every write to frame it)
        response.content_length = plan.length
    return await _send_stream(request, response, _car_pieces(target, plan.items))


async def _answer_tar(request: web.Request, target: Target, path: str) -> web.StreamResponse:
    """A UnixFS file or folder as a TAR stream, its top entry named by the CID (as Kubo names it)."""
    resolved, reader = target.resolved, target.reader
    if reader is None or resolved.node is None:
        raise GatewayError(400, "bad_request", "format=tar is made of UnixFS files and folders only")
    node = resolved.node
    name = cid_to_text(_as_asked(target, resolved.cid)) if not resolved.name else cid_to_text(resolved.cid)
    headers = _common_headers(target, path)
    etag = f'W/"{cid_to_text(resolved.cid)}.x-tar"'
    cached = _not_modified(request, etag.removeprefix("W/"), headers)
    if cached is not None:
        return cached
    await asyncio.to_thread(tar.check_tree, reader, name, resolved.cid, node)
    headers.update(
        {
            hdrs.CONTENT_TYPE: TAR_TYPE,
            hdrs.ETAG: etag,
            hdrs.CONTENT_DISPOSITION: _attachment(request, f"{name}.tar"),
            "X-Content-Type-Options": "nosniff",
        }
    )
    response = web.StreamResponse(headers=headers)
    response.enable_chunked_encoding()
    return await _send_stream(request, response, tar.tar_pieces(reader, name, resolved.cid, node))


def _listing(reader: DatasetReader, target: Target) -> list[dict[str, Any]]:
    node = target.resolved.node
    assert node is not None
    out = []
    for name, child_cid in reader.entries(node):
        child = reader.node(child_cid)
        out.append(
            {
                "name": name,
                "cid": cid_to_text(child_cid),
                "type": "dir" if child.is_dir else "file",
                "size": None if child.is_dir else child.filesize,
            }
        )
    return out


def _disposition(request: web.Request, kind: str, default_name: str) -> str:
    """``kind`` (inline, attachment) with ``?filename=`` or ``default_name``; ``?download=true``: attachment."""
    if request.query.get("download") == "true":
        kind = "attachment"
    return _attachment(request, default_name).replace("attachment", kind, 1)


async def _answer_ipld(request: web.Request, target: Target, want: Want, path: str) -> web.StreamResponse:
    """An IPLD block (DAG-JSON, DAG-CBOR, JSON, CBOR) as it is stored, or its HTML page for a browser."""
    resolved = target.resolved
    codec = resolved.cid.codec
    text = cid_to_text(_as_asked(target, resolved.cid))
    headers = _common_headers(target, path)
    data = target.loose
    if data is None:
        assert target.reader is not None
        data = await asyncio.to_thread(block_bytes, target.reader, resolved.cid)
    native = ipld.CODEC_FORMATS[codec]
    if want.html and want.kind == "" and not want.fmt:
        etag = f'"DagIndex-{text}"'
        cached = _not_modified(request, etag, headers)
        if cached is not None:
            return cached
        headers.pop(hdrs.CACHE_CONTROL)  # the page may change with the gateway, not the block
        headers.update({hdrs.CONTENT_TYPE: "text/html; charset=utf-8", hdrs.ETAG: etag})
        return web.Response(body=ipld.ipld_html(path, text, native, len(data)).encode(), headers=headers)
    fmt = want.fmt or native
    if not ipld.same_family(fmt, codec):
        raise GatewayError(406, "not_acceptable", f"a {native} block is not converted to {fmt}")
    mime, disposition, ext = ipld.FORMAT_TYPES[fmt]
    etag = f'"{text}.{fmt}"'
    cached = _not_modified(request, etag, headers)
    if cached is not None:
        return cached
    headers.update(
        {
            hdrs.CONTENT_TYPE: mime,
            hdrs.ETAG: etag,
            hdrs.CONTENT_DISPOSITION: _disposition(request, disposition, f"{text}.{ext}"),
            "X-Content-Type-Options": "nosniff",
        }
    )
    return _whole_or_range(request, data, headers)


async def _answer_deserialized(request: web.Request, target: Target, path: str, mime: str = "") -> web.StreamResponse:
    """A file's bytes (``mime``: its Content-Type when the request named one), a folder's listing."""
    resolved = target.resolved
    headers = _common_headers(target, path)
    text = cid_to_text(resolved.cid)
    if resolved.node is None and resolved.cid.codec == DAG_PB:
        raise GatewayError(501, "not_implemented", "a dag-pb block without UnixFS data: ask format=raw or car")
    if target.loose is not None or resolved.node is None:  # a single block that is not UnixFS
        data = target.loose
        if data is None:
            assert target.reader is not None
            data = verified(resolved.cid, target.reader.block(resolved.cid))
        mime = "application/vnd.ipld.dag-cbor" if resolved.cid.codec == DAG_CBOR else files.sniff(data)
        headers.update({hdrs.CONTENT_TYPE: mime, hdrs.ETAG: f'"{text}"'})
        return _whole_or_range(request, data, headers)
    reader = target.reader
    assert reader is not None
    node = resolved.node
    wants_json = any(m == "application/json" for m, _ in _media_types(request.headers.get(hdrs.ACCEPT, "")))
    if node.is_dir and not wants_json and not request.path.endswith("/"):
        # A folder's page (its index.html or its listing) has relative links: they need its slash.
        raw_path = request.rel_url.raw_path
        location = raw_path + "/" + (f"?{request.query_string}" if request.query_string else "")
        return web.Response(status=301, headers={**headers, hdrs.LOCATION: location})
    if node.is_dir and not wants_json:
        index_page = await asyncio.to_thread(_index_html, reader, target)
        if index_page is not None:  # served as the folder: its ETag is the folder's CID
            return await _answer_file(request, reader, index_page, headers, etag=f'"{text}"')
    if node.is_dir:
        entries = await asyncio.to_thread(_listing, reader, target)
        etag = f'"DirIndex-{"json" if wants_json else "html"}-v1_CID-{text}"'
        cached = _not_modified(request, etag, headers)
        if cached is not None:
            return cached
        headers[hdrs.ETAG] = etag
        headers[hdrs.CACHE_CONTROL] = LISTING_CACHE  # a page the gateway makes: it may change, the folder not
        if wants_json:
            return web.json_response(files.listing_json(path, text, entries), headers=headers)
        headers[hdrs.CONTENT_TYPE] = "text/html; charset=utf-8"
        return web.Response(body=files.listing_html(path, text, entries).encode(), headers=headers)
    if node.kind == "symlink":
        headers.update({hdrs.CONTENT_TYPE: "text/plain; charset=utf-8", hdrs.ETAG: f'"{text}"'})
        return _whole_or_range(request, node.data, headers)
    return await _answer_file(request, reader, target, headers, mime)


def _index_html(reader: DatasetReader, target: Target) -> Target | None:
    """The folder's ``index.html`` as a target of its own (served instead of a listing, as gateways do)."""
    node = target.resolved.node
    assert node is not None
    link = unixfs.lookup(reader.block, node, "index.html")
    if link is None:
        return None
    child = reader.node(link.cid)
    if child.is_dir or child.kind == "symlink":
        return None
    resolved = target.resolved
    return Target(reader, Resolved(link.cid, child, resolved.path_blocks, [*resolved.roots, link.cid], "index.html"))


def _whole_or_range(request: web.Request, data: bytes, headers: dict[str, str]) -> web.Response:
    try:
        rng = files.parse_range(request.headers.get(hdrs.RANGE), len(data))
    except files.Unsatisfiable as e:
        raise GatewayError(416, "range_not_satisfiable", str(e), {hdrs.CONTENT_RANGE: f"bytes */{len(data)}"}) from e
    headers[hdrs.ACCEPT_RANGES] = "bytes"
    status = 200
    if rng is not None:
        status = 206
        headers[hdrs.CONTENT_RANGE] = f"bytes {rng[0]}-{rng[1]}/{len(data)}"
        data = data[rng[0] : rng[1] + 1]
    return web.Response(status=status, body=data, headers=headers)


def _file_head(reader: DatasetReader, target: Target) -> bytes:
    """The first bytes of a file, to sniff its type (one chunk read)."""
    node = target.resolved.node
    assert node is not None
    if not node.filesize:
        return b""
    return b"".join(bytes(p) for p in files.iter_range(reader, target.resolved.cid, node, 0, files.SNIFF_BYTES - 1))


async def _answer_file(
    request: web.Request,
    reader: DatasetReader,
    target: Target,
    headers: dict[str, str],
    mime: str = "",
    etag: str = "",
) -> web.StreamResponse:
    resolved = target.resolved
    node = resolved.node
    assert node is not None
    size = node.filesize or 0
    etag = etag or f'"{cid_to_text(resolved.cid)}"'
    cached = _not_modified(request, etag, headers)
    if cached is not None:
        return cached
    try:
        rng = files.parse_range(request.headers.get(hdrs.RANGE), size)
    except files.Unsatisfiable as e:
        raise GatewayError(416, "range_not_satisfiable", str(e), {hdrs.CONTENT_RANGE: f"bytes */{size}"}) from e
    if request.headers.get(hdrs.IF_RANGE, etag) != etag:
        rng = None  # the client's copy is of something else: send it whole
    mime = mime or files.type_by_name(resolved.name) or ""
    if not mime:  # nothing said by the request or the name: look at the bytes
        mime = files.sniff(await asyncio.to_thread(_file_head, reader, target))
    headers.update({hdrs.CONTENT_TYPE: mime, hdrs.ETAG: etag, hdrs.ACCEPT_RANGES: "bytes"})
    if resolved.name:
        headers[hdrs.CONTENT_DISPOSITION] = f"inline; filename*=UTF-8''{_quote(resolved.name)}"
    if rng is None:
        status, length = 200, size
        pieces = files.iter_range(reader, resolved.cid, node, 0, size - 1)
    else:
        status, length = 206, rng[1] - rng[0] + 1
        headers[hdrs.CONTENT_RANGE] = f"bytes {rng[0]}-{rng[1]}/{size}"
        pieces = files.iter_range(reader, resolved.cid, node, rng[0], rng[1])
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = length
    return await _send_stream(request, response, pieces)


def _attachment(request: web.Request, default_name: str) -> str:
    """Content-Disposition of a trustless answer: ``?filename=`` if given, else ``default_name``."""
    name = request.query.get("filename") or default_name
    ascii_name = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in name)
    if ascii_name == name:
        return f'attachment; filename="{name}"'
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{_quote(name)}"


def _as_asked(target: Target, cid: CID) -> CID:
    """``cid`` in the version the request named it (a CIDv0 request gets CIDv0 back)."""
    asked = target.asked
    if asked is not None and asked.version == 0 and cid.version == 1 and cid == asked.to_v1():
        return asked
    return cid


def _quote(name: str) -> str:
    return quote(name, safe="")


# -- handlers ------------------------------------------------------------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _gateway_errors(handler: Handler) -> Handler:
    """Every failure as ``{"error", "code"}`` JSON with the CORS headers (a browser must be able to read it)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except GatewayError as e:
            return _json_error(e.status, e.code, str(e), e.headers)
        except BadCID as e:
            return _json_error(400, "bad_cid", str(e))
        except PathRemainder as e:
            return _json_error(501, "not_implemented", str(e))
        except NotFound as e:
            if "only-if-cached" in request.headers.get(hdrs.CACHE_CONTROL, ""):
                return _json_error(412, "not_cached", f"only-if-cached: {e}")
            return _json_error(404, "not_found", str(e))
        except DstoreError as e:
            log.error("gateway: %s %s: %s", request.method, request.path, e)
            return _json_error(502, "unreadable", f"the block could not be read or verified: {e}")

    return wrapped


async def get_ipfs(request: web.Request) -> web.StreamResponse:
    cid_text = request.match_info["cid"]
    cid = gateway_cid(cid_text)
    want = parse_want(request)
    segments = _segments(request)
    path = _ipfs_path(cid_text, segments, request.path.endswith("/"))
    target = await asyncio.to_thread(_open_target, request.app[GATEWAY].blocks, cid, segments, want)
    if cid_text.startswith("Qm"):  # CIDv0: answered in CIDv0 where the request named it
        target.asked = CID.decode(cid_text)
    try:
        terminal = target.resolved.cid.codec
        if want.kind in ("", "ipld") and terminal in ipld.CODEC_FORMATS:
            return await _answer_ipld(request, target, want, path)
        if want.kind == "ipld":  # a UnixFS file asked as plain json/cbor is its bytes; no codec is converted
            if want.fmt.startswith("dag-") or target.resolved.node is None or target.resolved.node.is_dir:
                raise GatewayError(406, "not_acceptable", f"a 0x{terminal:x} block is not converted to {want.fmt}")
        if want.kind == "tar":
            return await _answer_tar(request, target, path)
        if want.kind == "raw":
            return await _answer_raw(request, target, cid, path)
        if want.kind == "car":
            return await _answer_car(request, target, want, path, cid_text)
        return await _answer_deserialized(request, target, path, ipld.FORMAT_TYPES.get(want.fmt, ("",))[0])
    finally:
        target.close()


#: Multihash codes of libp2p peer IDs: identity (an inline Ed25519 key), sha2-256 (an RSA key's hash).
_PEER_ID_HASHES = (IDENTITY_HASH, 0x12)
LIBP2P_KEY = 0x72


def canonical_ipns_name(name: str) -> str | None:
    """The CIDv1 (libp2p-key, base36) of an IPNS name written as a base58 peer ID; None if it is not one."""
    if not name.startswith(("12D3KooW", "Qm", "1")):
        return None
    try:
        multihash = multibase.decode("z" + name)[1]
    except Exception:  # noqa: BLE001 - any decoding failure: not a peer ID
        return None
    if len(multihash) < 2 or multihash[0] not in _PEER_ID_HASHES or multihash[1] != len(multihash) - 2:
        return None
    return str(multibase.encode("base36", bytes([1, LIBP2P_KEY]) + multihash))


async def get_ipns(request: web.Request) -> web.StreamResponse:
    """``/ipns/{name}``: a base58 peer ID is redirected to its canonical CIDv1 name; IPNS itself is not resolved."""
    name = request.match_info["name"]
    canonical = canonical_ipns_name(name)
    if canonical is not None:
        raw = request.rel_url.raw_path
        location = "/ipns/" + canonical + raw[len("/ipns/") + len(name) :]
        if request.query_string:
            location += "?" + request.query_string
        return web.Response(status=302, headers={**CORS, hdrs.LOCATION: location})
    raise GatewayError(501, "not_implemented", "this peer does not resolve IPNS names or DNSLink")


async def options_any(request: web.Request) -> web.Response:
    return web.Response(status=200, headers=CORS)


# -- delegated routing -------------------------------------------------------------------------------------


def _multiaddr(host: str, port: int) -> str:
    proto = "ip6" if ":" in host else "ip4"
    return f"/{proto}/{host}/tcp/{port}/http"


def _url_multiaddr(url: str) -> str | None:
    parsed = aiohttp.client.URL(url)
    if parsed.host is None or parsed.port is None:
        return None
    scheme = "https" if parsed.scheme == "https" else "http"
    return _multiaddr(parsed.host, parsed.port).removesuffix("/http") + f"/{scheme}"


def _provider(peer_id: str, addrs: list[str]) -> dict[str, Any]:
    return {"Schema": "peer", "ID": peer_id, "Addrs": addrs, "Protocols": ["transport-ipfs-gateway-http"]}


async def _others_serving(app: web.Application, cid_text: str) -> list[dict[str, Any]]:
    """The ``--peers`` whose gateway answers a HEAD of the block (they index their own pointers)."""
    peers = app[GATEWAY].known_peers
    if not peers:
        return []
    out: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def ask(url: str, peer_id: str | None) -> None:
            try:
                async with session.head(f"{url}/ipfs/{cid_text}?format=raw") as resp:
                    if resp.status != 200:
                        return
                if peer_id is None:  # not learnt yet by the peer's poll: ask now
                    async with session.get(f"{url}/health") as resp:
                        body = await resp.json() if resp.status == 200 else None
                    found = body.get("peer_id") if isinstance(body, dict) else None
                    if not isinstance(found, str) or not found.startswith("12D3KooW"):
                        return
                    peers[url] = peer_id = found
                addr = _url_multiaddr(url)
                out.append(_provider(peer_id, [addr] if addr else []))
            except (TimeoutError, aiohttp.ClientError, ValueError) as e:
                log.debug("peer %s did not answer about %s: %s", url, cid_text, e)

        await asyncio.gather(*(ask(u, p) for u, p in list(peers.items())))
    return out


async def get_providers(request: web.Request) -> web.StreamResponse:
    cid = gateway_cid(request.match_info["cid"])
    text = cid_to_text(cid)
    index = request.app[GATEWAY].blocks

    def here() -> bool:
        try:
            _open_target(index, cid, [], Want("raw")).close()
        except DstoreError:
            return False
        return True

    providers: list[dict[str, Any]] = []
    if await asyncio.to_thread(here):
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        addrs = [_multiaddr(str(sock[0]), int(sock[1]))] if sock else []
        providers.append(_provider(request.app[GATEWAY].peer_id, addrs))
    providers += await _others_serving(request.app, text)
    headers = {
        **CORS,
        hdrs.VARY: "Accept",
        hdrs.CACHE_CONTROL: "public, max-age=300" if providers else "public, max-age=15",
    }
    ndjson = any(m == "application/x-ndjson" for m, _ in _media_types(request.headers.get(hdrs.ACCEPT, "")))
    status = 200 if providers else 404
    if ndjson:
        body = "".join(json.dumps(p) + "\n" for p in providers).encode()
        headers[hdrs.CONTENT_TYPE] = "application/x-ndjson"
        return web.Response(status=status, body=body, headers=headers)
    return web.json_response({"Providers": providers}, status=status, headers=headers)


# -- setup ---------------------------------------------------------------------------------------------


async def _index_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[GATEWAY]
    state.index = BlockIndex(state.store, state.peer_urls)
    try:
        yield
    finally:
        await asyncio.to_thread(state.index.close)


def setup_gateway(app: web.Application, state: GatewayState) -> None:
    """Register the gateway's routes and its state (the block index opens when the app starts)."""
    app[GATEWAY] = state
    app.router.add_get("/ipfs/{cid}", _gateway_errors(get_ipfs))  # also HEAD
    app.router.add_get("/ipfs/{cid}/{path:.*}", _gateway_errors(get_ipfs))
    app.router.add_route("OPTIONS", "/ipfs/{tail:.*}", options_any)
    app.router.add_get("/ipns/{name}", _gateway_errors(get_ipns))
    app.router.add_get("/ipns/{name}/{path:.*}", _gateway_errors(get_ipns))
    app.router.add_get("/routing/v1/providers/{cid}", _gateway_errors(get_providers))
    app.router.add_route("OPTIONS", "/routing/v1/{tail:.*}", options_any)
    app.cleanup_ctx.append(_index_ctx)
