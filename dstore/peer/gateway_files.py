"""Deserialized gateway answers: a file's bytes (whole or one range), a folder's listing.

Pure helpers for the handlers in :mod:`dstore.peer.gateway`: Range parsing
against a file's verified size, the Content-Type of a file (by its name's
extension, else sniffed from its first bytes), and folder listings as JSON or
HTML.
"""

from __future__ import annotations

import html
import json
import mimetypes
import re
from collections.abc import Iterator
from urllib.parse import quote

from dstore.format import unixfs
from dstore.format.cid import CID
from dstore.peer.blockindex import GatewayReader as DatasetReader
from dstore.peer.gateway_car import file_bytes
from dstore.peer.gateway_runs import Leaf, chunk_runs

__all__ = ["Unsatisfiable", "type_by_name", "iter_range", "listing_html", "listing_json", "parse_range", "sniff"]

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
#: Bytes looked at to guess a type when the name says nothing.
SNIFF_BYTES = 512
#: A range up to this long is read chunk by chunk (random access), a longer one in runs.
SHORT_RANGE_BYTES = 1 << 20

_MAGIC: list[tuple[bytes, str]] = [
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"\x1f\x8b", "application/gzip"),
    (b"PK\x03\x04", "application/zip"),
    (b"PAR1", "application/vnd.apache.parquet"),
    (b"\x28\xb5\x2f\xfd", "application/zstd"),
    (b"<!DOCTYPE html", "text/html; charset=utf-8"),
    (b"<html", "text/html; charset=utf-8"),
]
_EXTRA_TYPES = {
    ".parquet": "application/vnd.apache.parquet",
    ".jsonl": "application/jsonl",
    ".ndjson": "application/x-ndjson",
    ".zst": "application/zstd",
    ".md": "text/markdown; charset=utf-8",
}


class Unsatisfiable(ValueError):
    """A Range that selects no byte of the file (416)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range one ``bytes=`` range asks of a ``size``-byte file; None: the whole file.

    Of several ranges only the first is answered (as the path gateway spec allows); a malformed header
    is ignored as RFC 9110 says; a range selecting no byte raises Unsatisfiable.
    """
    if header is None:
        return None
    header = header.strip()
    if header.startswith("bytes=") and "," in header:  # several ranges: the first one only (206 of it)
        header = header.split(",", 1)[0]
    m = _RANGE_RE.match(header)
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if not first:
        if not last:
            return None
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable(f"the file has {size} bytes")
        return max(0, size - n), size - 1
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if last and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise Unsatisfiable(f"the file has {size} bytes")
    return start, end


def type_by_name(name: str) -> str | None:
    """A file's Content-Type by its name's extension; None when the name says nothing."""
    lower = name.lower()
    for ext, mime in _EXTRA_TYPES.items():
        if lower.endswith(ext):
            return mime
    guessed, encoding = mimetypes.guess_type(lower, strict=False)
    if guessed is None:
        return None
    if encoding is not None:  # x.csv.gz is a gzip file to a client that does not decode it
        return {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz"}.get(
            encoding, "application/octet-stream"
        )
    return f"{guessed}; charset=utf-8" if guessed.startswith("text/") else guessed


def sniff(head: bytes) -> str:
    for magic, mime in _MAGIC:
        if head.startswith(magic):
            return mime
    sample = head[:SNIFF_BYTES]
    if not sample:
        return "text/plain; charset=utf-8"
    if sample.lstrip()[:1] in (b"{", b"[") and len(head) < SNIFF_BYTES:  # the whole file is here
        try:
            json.loads(sample)
            return "application/json"
        except ValueError:
            pass
    if b"\x00" in sample:
        return "application/octet-stream"
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(sample) - 3:  # not just a character cut at the end of the sample
            return "application/octet-stream"
    return "text/plain; charset=utf-8"


def iter_range(
    reader: DatasetReader, cid: CID, node: unixfs.Node, first: int, last: int
) -> Iterator[bytes | memoryview]:
    """Bytes ``first..last`` (inclusive) of a file: only the chunks that cover them are read.

    A short range reads chunk by chunk (only the shard bytes that cover each); a longer one in runs
    of chunks, the next packs fetched meanwhile (:mod:`dstore.peer.gateway_runs`): a piece is then a
    view that stays valid until the generator has been advanced twice more (copy it to keep it).
    """
    if reader.holds_raw:  # its leaves may be blocks held in the metadata, not chunks
        yield from file_bytes(reader, cid, node, first, last)
        return
    if last - first + 1 <= SHORT_RANGE_BYTES:
        yield from _chunk_by_chunk(reader, cid, node, first, last)
        return
    for run in chunk_runs(reader, _covering(reader.leaves(cid, node), first, last)):
        start = run.leaves[0].tag
        yield run.data[max(0, first - start) : last + 1 - start]


def _covering(leaves: Iterator[tuple[bytes, int]], first: int, last: int) -> Iterator[Leaf]:
    """The chunks of a file that hold bytes of ``first..last``, tagged with their offset in the file."""
    pos = 0
    for digest, size in leaves:
        end = pos + size
        if end > first and pos <= last:
            yield Leaf(digest, size, pos)
        if end > last:
            return
        pos = end


def _chunk_by_chunk(reader: DatasetReader, cid: CID, node: unixfs.Node, first: int, last: int) -> Iterator[bytes]:
    for leaf in _covering(reader.leaves(cid, node), first, last):
        data = reader.read_chunk(leaf.digest)
        yield data[max(0, first - leaf.tag) : min(leaf.size, last + 1 - leaf.tag)]


def listing_json(path: str, cid: str, entries: list[dict[str, object]]) -> dict[str, object]:
    return {"path": path, "cid": cid, "entries": entries}


def listing_html(path: str, cid: str, entries: list[dict[str, object]]) -> str:
    """A folder's page: breadcrumbs of the path, a link up, and per entry its content path and CID.

    Links are percent-encoded paths under ``/ipfs``, as gateways write them; the CID link carries
    the entry's name as ``?filename=`` (encoded once more, as Kubo's listing does).
    """
    parts = [p for p in path.split("/") if p][1:]  # the CID, then the names
    crumbs = []
    href = "/ipfs"
    for part in parts:
        href += "/" + quote(part, safe="")
        crumbs.append(f'<a href="{html.escape(href, quote=True)}">{html.escape(part)}</a>')
    base = href
    rows = []
    if len(parts) > 1:
        rows.append(f'<tr><td><a href="{html.escape(base, quote=True)}/..">..</a></td><td></td><td></td></tr>')
    for e in entries:
        name = str(e["name"])
        suffix = "/" if e["type"] == "dir" else ""
        link = html.escape(f"{base}/{quote(name, safe='')}", quote=True)
        size = "" if e["size"] is None else str(e["size"])
        entry_cid = html.escape(str(e["cid"]))
        by_cid = html.escape(f"/ipfs/{e['cid']}?filename={quote(quote(name, safe=''), safe='')}", quote=True)
        rows.append(
            f'<tr><td><a href="{link}">{html.escape(name)}</a>{suffix}</td><td>{size}</td>'
            f'<td><a class="ipfs-hash" translate="no" href="{by_cid}">{entry_cid}</a></td></tr>'
        )
    title = html.escape(path)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Index of "
        f"{title}</title></head><body><h1>Index of /ipfs/{'/'.join(crumbs)}</h1><p><code>{html.escape(cid)}</code></p>"
        "<table><tr><th>Name</th><th>Size</th><th>CID</th></tr>" + "".join(rows) + "</table></body></html>\n"
    )
