"""DAG-CBOR (codec 0x71): the strict, canonical CBOR subset of IPLD.

Data model: ``None``, ``bool``, ``int`` (-2**64 … 2**64-1), ``bytes``, ``str``,
``list``, ``dict`` with ``str`` keys, and CIDs (tag 42 over ``0x00 || CID
bytes``). No floats (dstore never needs them), no undefined, no other tags.

:func:`encode` writes the one canonical form (minimal integer and length
heads, definite lengths, map keys sorted length-first then bytewise).
:func:`decode` parses untrusted bytes with cbor2 (Rust core, bounded depth,
duplicate keys refused), then re-encodes the result and requires the same
bytes: anything non-canonical, any foreign tag or type, is refused with a
FormatError. So every accepted block has exactly one encoding, and its CID
identifies its value.
"""

from __future__ import annotations

from typing import Any

import cbor2

from dstore.errors import BadCID, FormatError
from dstore.format.cid import CID, DAG_CBOR, make_cid, parse_cid
from dstore.limits import MAX_BLOCK_BYTES

__all__ = ["MAX_BLOCK_BYTES", "MAX_DEPTH", "block_cid", "decode", "encode", "parse"]

MAX_DEPTH = 32

_U64 = 1 << 64
# Tags that cbor2 decodes by itself (found by probing cbor2 6.3): refuse them
# before they become datetimes, cyclic shared references, sets, and so on.
_BUILTIN_TAGS = (
    0,
    1,
    2,
    3,
    4,
    5,
    25,
    28,
    29,
    30,
    35,
    36,
    37,
    52,
    54,
    100,
    256,
    258,
    260,
    261,
    1004,
    43000,
    55799,
)


# Heads of small items, made once: a decode re-encodes its result, and one new bytes object per item
# would cost some 100 bytes of memory per input byte.
_SMALL_HEADS = [[bytes(((major << 5) | n,)) for n in range(24)] for major in range(8)]


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return _SMALL_HEADS[major][n]
    mt = major << 5
    if n < 0x100:
        return bytes((mt | 24, n))
    if n < 0x10000:
        return bytes((mt | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((mt | 26,)) + n.to_bytes(4, "big")
    return bytes((mt | 27,)) + n.to_bytes(8, "big")


def _enc(obj: Any, out: bytearray, depth: int) -> None:
    # Order of checks: bool before int (bool is an int subclass).
    t = type(obj)
    if t is bytes:
        out += _head(2, len(obj))
        out += obj
    elif t is int:
        if obj >= 0:
            if obj >= _U64:
                raise ValueError(f"integer {obj} too large for DAG-CBOR")
            out += _head(0, obj)
        else:
            if obj < -_U64:
                raise ValueError(f"integer {obj} too small for DAG-CBOR")
            out += _head(1, -1 - obj)
    elif t is str:
        b = obj.encode("utf-8")
        out += _head(3, len(b))
        out += b
    elif t is list or t is tuple:
        if depth >= MAX_DEPTH:
            raise ValueError("DAG-CBOR value nested too deeply")
        out += _head(4, len(obj))
        for x in obj:
            _enc(x, out, depth + 1)
    elif t is dict:
        if depth >= MAX_DEPTH:
            raise ValueError("DAG-CBOR value nested too deeply")
        items = []
        for k, v in obj.items():
            if type(k) is not str:
                raise ValueError(f"DAG-CBOR map keys must be str, not {type(k).__name__}")
            kb = k.encode("utf-8")
            items.append((len(kb), kb, v))
        items.sort(key=lambda e: (e[0], e[1]))
        out += _head(5, len(items))
        for n, kb, v in items:
            out += _head(3, n)
            out += kb
            _enc(v, out, depth + 1)
    elif obj is None:
        out += b"\xf6"
    elif obj is True:
        out += b"\xf5"
    elif obj is False:
        out += b"\xf4"
    elif isinstance(obj, CID):
        cb = obj.to_bytes()
        out += b"\xd8\x2a"
        out += _head(2, len(cb) + 1)
        out += b"\x00"
        out += cb
    elif isinstance(obj, float):
        raise ValueError("floats are not allowed in dstore DAG-CBOR")
    else:
        raise ValueError(f"type {type(obj).__name__} cannot be encoded as DAG-CBOR")


def encode(obj: Any) -> bytes:
    """Canonical DAG-CBOR bytes of ``obj`` (raises ValueError on what DAG-CBOR cannot hold)."""
    out = bytearray()
    _enc(obj, out, 0)
    return bytes(out)


def block_cid(block: bytes, hash_name: str = "blake3") -> CID:
    """CIDv1 dag-cbor of an encoded block."""
    return make_cid(DAG_CBOR, block, hash_name)


class _Refused(Exception):
    pass


def _tag_hook(*args: Any) -> Any:
    # cbor2 6.x calls tag_hook(tag, immutable); older versions (decoder, tag).
    tag = next(a for a in args if isinstance(a, cbor2.CBORTag))
    if tag.tag != 42:
        raise _Refused(f"CBOR tag {tag.tag} is not allowed in DAG-CBOR")
    v = tag.value
    if type(v) is not bytes or not v or v[0] != 0:
        raise _Refused("tag 42 must hold bytes 0x00 || CID")
    try:
        cid = parse_cid(v[1:])
        # A CIDv0 (IPFS CAR roots, Kubo's DAG-CBOR) stays CIDv0, so the block re-encodes as it came.
        return CID.from_bytes(v[1:]) if cid.version == 1 and v[1] != 1 else cid
    except BadCID as e:
        raise _Refused(str(e)) from e


def _refuse_builtin(*_args: Any) -> Any:
    raise _Refused("a CBOR tag that DAG-CBOR does not allow")


_SEMANTIC = {t: _refuse_builtin for t in _BUILTIN_TAGS}


def parse(data: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Parse untrusted CBOR with DAG-CBOR's rules on tags, lengths and depth, WITHOUT the canonical check.

    For a caller that checks canonical form its own, faster way (locator chunk pages). Every tag but
    42 is refused before cbor2 builds anything from it: its built-in decoders compile regular
    expressions and parse MIME messages, minutes of work from one block. FormatError on any fault.
    """
    try:
        return cbor2.loads(
            data,
            tag_hook=_tag_hook,
            semantic_decoders=_SEMANTIC,
            max_depth=max_depth + 1,
            allow_duplicate_keys=False,
            allow_indefinite=False,
            strict_hashable_types=True,
        )
    except _Refused as e:
        raise FormatError(str(e)) from e
    except (
        cbor2.CBORError,
        ValueError,
        TypeError,
        OverflowError,
        RecursionError,
        MemoryError,
    ) as e:
        cause: BaseException = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise FormatError(f"malformed DAG-CBOR: {cause}") from e


def decode(block: bytes | bytearray | memoryview, max_bytes: int = MAX_BLOCK_BYTES) -> Any:
    """Decode untrusted DAG-CBOR bytes; FormatError unless they are canonical dstore DAG-CBOR."""
    if len(block) > max_bytes:
        raise FormatError(f"DAG-CBOR block of {len(block)} bytes exceeds {max_bytes}")
    data = bytes(block)
    if not data:
        raise FormatError("empty DAG-CBOR block")
    obj = parse(data)
    try:
        again = encode(obj)
    except ValueError as e:
        raise FormatError(f"not DAG-CBOR: {e}") from e
    if again != data:
        raise FormatError("DAG-CBOR is not in canonical form (or has trailing bytes)")
    return obj
