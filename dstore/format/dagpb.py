"""Canonical dag-pb (codec 0x70): the PBNode/PBLink protobuf of IPFS.

Schema (https://ipld.io/specs/codecs/dag-pb/spec/)::

    message PBLink { optional bytes Hash = 1; optional string Name = 2; optional uint64 Tsize = 3; }
    message PBNode { repeated PBLink Links = 2; optional bytes Data = 1; }

Canonical encoding writes a node's Links (field 2) *before* its Data (field 1)
and a link's fields in the order Hash, Name, Tsize. The decoder is strict, as
the spec asks: it accepts exactly the canonical form (fields in that order,
each at most once, Hash present, minimal varints, no unknown fields), so
``encode(decode(b)) == b`` for every accepted ``b`` and a CID has one block.

Link hashes are kept as binary CIDs (``bytes``), not CID objects: builders
emit tens of thousands of links per GiB and never need more than the bytes.
"""

from __future__ import annotations

from typing import NamedTuple

from multiformats.cid import CID

from dstore import _native
from dstore.errors import FormatError
from dstore.limits import MAX_BLOCK_BYTES

__all__ = [
    "MAX_BLOCK_BYTES",
    "PBLink",
    "PBNode",
    "decode_node",
    "decode_varint",
    "encode_node",
    "encode_varint",
]

_U64_MAX = (1 << 64) - 1


class PBLink(NamedTuple):
    """One dag-pb link: ``hash`` is a binary CID; ``name``/``tsize`` may be absent (None)."""

    hash: bytes
    name: str | None = None
    tsize: int | None = None


class PBNode(NamedTuple):
    """A dag-pb node: links in their stored order, ``data`` absent (None) or bytes."""

    links: list[PBLink]
    data: bytes | None = None


def encode_varint(n: int) -> bytes:
    """Unsigned LEB128 varint of ``0 <= n < 2**64``."""
    if n < 0x80:
        if n < 0:
            raise ValueError("varint must be non-negative")
        return bytes((n,))
    if n > _U64_MAX:
        raise ValueError("varint exceeds 64 bits")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode_varint(buf: bytes | memoryview, pos: int, end: int | None = None) -> tuple[int, int]:
    """Read a minimal unsigned varint at ``pos``; return ``(value, new_pos)``.

    Raises FormatError on truncation, more than 64 bits or a non-minimal form.
    """
    if end is None:
        end = len(buf)
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise FormatError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if b == 0 and pos - start > 1:
                raise FormatError("non-minimal varint")
            if result > _U64_MAX:
                raise FormatError("varint exceeds 64 bits")
            return result, pos
        shift += 7
        if shift >= 70:
            raise FormatError("varint longer than 10 bytes")


def _bytes_field(tag: int, value: bytes) -> bytes:
    return bytes((tag,)) + encode_varint(len(value)) + value


def encode_link(link: PBLink) -> bytes:
    """The PBLink message bytes (without the enclosing field header)."""
    out = _bytes_field(0x0A, link.hash)
    if link.name is not None:
        out += _bytes_field(0x12, link.name.encode("utf-8"))
    if link.tsize is not None:
        out += b"\x18" + encode_varint(link.tsize)
    return out


def encode_node(links: list[PBLink] | tuple[PBLink, ...], data: bytes | None = None) -> bytes:
    """Canonical dag-pb bytes of a node: Links (field 2) first, then Data (field 1).

    Encoded natively (``_native.dagpb_encode``: the same bytes, property-tested against
    :func:`encode_node_python`); what the native encoder cannot take (a negative or too large
    Tsize, a hash that is not bytes) goes through the Python encoder, which says why.
    """
    try:
        return _native.dagpb_encode(links, data)
    except (OverflowError, TypeError):
        return encode_node_python(links, data)


def encode_node_python(links: list[PBLink] | tuple[PBLink, ...], data: bytes | None = None) -> bytes:
    """:func:`encode_node` in Python: the reference the native encoder is tested against."""
    parts = []
    for link in links:
        body = encode_link(link)
        parts.append(b"\x12" + encode_varint(len(body)) + body)
    if data is not None:
        parts.append(_bytes_field(0x0A, data))
    return b"".join(parts)


def _check_cid(raw: bytes) -> None:
    try:
        cid = CID.from_bytes(raw)
        ok = cid.to_bytes() == raw
    except Exception as e:
        raise FormatError(f"dag-pb link hash is not a CID ({e})") from e
    if not ok:
        raise FormatError("dag-pb link hash is not a canonical CID")


def _decode_link(buf: memoryview, pos: int, end: int, check_cids: bool) -> PBLink:
    hash_: bytes | None = None
    name: str | None = None
    tsize: int | None = None
    last = 0
    while pos < end:
        key, pos = decode_varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field <= last:
            raise FormatError("dag-pb link fields out of order or repeated")
        last = field
        if field == 1 and wire == 2:
            n, pos = decode_varint(buf, pos, end)
            if n > end - pos:
                raise FormatError("truncated dag-pb link hash")
            hash_ = bytes(buf[pos : pos + n])
            pos += n
        elif field == 2 and wire == 2:
            n, pos = decode_varint(buf, pos, end)
            if n > end - pos:
                raise FormatError("truncated dag-pb link name")
            try:
                name = str(buf[pos : pos + n], "utf-8")
            except UnicodeDecodeError as e:
                raise FormatError("dag-pb link name is not UTF-8") from e
            pos += n
        elif field == 3 and wire == 0:
            tsize, pos = decode_varint(buf, pos, end)
        else:
            raise FormatError(f"unexpected field {field} (wire type {wire}) in dag-pb link")
    if hash_ is None:
        raise FormatError("dag-pb link without Hash")
    if check_cids:
        _check_cid(hash_)
    return PBLink(hash_, name, tsize)


def decode_node(block: bytes | bytearray | memoryview, *, check_cids: bool = True) -> PBNode:
    """Strictly decode untrusted dag-pb bytes.

    Raises FormatError (a ValueError) with a short reason on anything that is
    not the canonical encoding, or on a block larger than MAX_BLOCK_BYTES.
    With ``check_cids`` (default) every link hash must parse as a CID.

    The native decoder (``_native.dagpb_decode``) accepts exactly what
    :func:`decode_node_python` does, with the same messages; the link CIDs are
    checked here, in order, before a later fault is reported, as there.
    """
    if len(block) > MAX_BLOCK_BYTES:
        raise FormatError(f"dag-pb block of {len(block)} bytes exceeds {MAX_BLOCK_BYTES}")
    raw_links, data, error = _native.dagpb_decode(block)
    if check_cids:
        for hash_, _, _ in raw_links:
            _check_cid(hash_)
    if error is not None:
        raise FormatError(error)
    return PBNode([PBLink(*t) for t in raw_links], data)


def decode_node_python(block: bytes | bytearray | memoryview, *, check_cids: bool = True) -> PBNode:
    """:func:`decode_node` in Python: the reference the native decoder is tested against."""
    buf = memoryview(block)
    end = len(buf)
    if end > MAX_BLOCK_BYTES:
        raise FormatError(f"dag-pb block of {end} bytes exceeds {MAX_BLOCK_BYTES}")
    links: list[PBLink] = []
    data: bytes | None = None
    pos = 0
    while pos < end:
        key, pos = decode_varint(buf, pos, end)
        if key == 0x12:  # Links, field 2, length-delimited
            if data is not None:
                raise FormatError("dag-pb Links after Data")
            n, pos = decode_varint(buf, pos, end)
            if n > end - pos:
                raise FormatError("truncated dag-pb link")
            links.append(_decode_link(buf, pos, pos + n, check_cids))
            pos += n
        elif key == 0x0A:  # Data, field 1, length-delimited
            if data is not None:
                raise FormatError("dag-pb Data repeated")
            n, pos = decode_varint(buf, pos, end)
            if n > end - pos:
                raise FormatError("truncated dag-pb Data")
            data = bytes(buf[pos : pos + n])
            pos += n
        else:
            raise FormatError(f"unexpected field {key >> 3} (wire type {key & 7}) in dag-pb node")
    return PBNode(links, data)
