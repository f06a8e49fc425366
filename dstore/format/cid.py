"""CIDs as dstore uses them: CIDv1 over py-multiformats, plus byte-level fast paths.

Every dstore CID is CIDv1 (docs/format.md). The hash function is a parameter
of a dataset (``hash_name``), ``"blake3"`` by default; ``"sha2-256"`` gives the
same CIDs as stock IPFS tools and is what the known-answer tests use.

Binary CIDv1 layout: ``varint(1) || varint(codec) || varint(hash code) ||
varint(digest len) || digest``. All the codecs and hashes dstore writes have
one-byte varints, so a raw+blake3 chunk ID is ``b"\\x01\\x55\\x1e\\x20" +
digest`` and needs no CID object (:func:`raw_cid_bytes`).
"""

from __future__ import annotations

import hashlib

import blake3
from multiformats import multibase
from multiformats.cid import CID
from multiformats.multihash import Multihash

from dstore.errors import BadCID
from dstore.limits import MAX_CID_BYTES

__all__ = [
    "BLAKE3",
    "CID",
    "DAG_CBOR",
    "DAG_PB",
    "DIGEST_BYTES",
    "HASH_CODES",
    "HASH_NAMES",
    "IDENTITY",
    "MAX_CID_BYTES",
    "RAW",
    "SHA2_256",
    "cid_bytes_from_digest",
    "cid_from_digest",
    "cid_to_text",
    "hash_code",
    "hash_digest",
    "inline_block",
    "make_cid",
    "parse_cid",
    "raw_cid_bytes",
]

RAW = 0x55
DAG_PB = 0x70
DAG_CBOR = 0x71

BLAKE3 = 0x1E
SHA2_256 = 0x12
#: The identity multihash: the "digest" is the block itself (IPFS inlines tiny blocks in their CIDs).
IDENTITY = 0x00

HASH_CODES: dict[str, int] = {"blake3": BLAKE3, "sha2-256": SHA2_256}
HASH_NAMES: dict[int, str] = {v: k for k, v in HASH_CODES.items()}
DIGEST_BYTES = 32

_PREFIX: dict[tuple[int, int], bytes] = {
    (codec, code): bytes([1, codec, code, DIGEST_BYTES])
    for codec in (RAW, DAG_PB, DAG_CBOR)
    for code in (BLAKE3, SHA2_256)
}


def hash_code(hash_name: str) -> int:
    """Multihash code of ``hash_name`` (``"blake3"`` or ``"sha2-256"``)."""
    try:
        return HASH_CODES[hash_name]
    except KeyError:
        raise ValueError(f"unsupported hash {hash_name!r}; expected one of {sorted(HASH_CODES)}") from None


def hash_digest(data: bytes, hash_name: str = "blake3") -> bytes:
    """The 32-byte digest of ``data`` under ``hash_name``."""
    if hash_name == "blake3":
        return blake3.blake3(data).digest()
    if hash_name == "sha2-256":
        return hashlib.sha256(data).digest()
    hash_code(hash_name)  # raises the clear error
    raise AssertionError("unreachable")


def cid_bytes_from_digest(codec: int, digest: bytes, hash_name: str = "blake3") -> bytes:
    """Binary CIDv1 of ``codec`` over a ready 32-byte ``digest``, without a CID object."""
    if len(digest) != DIGEST_BYTES:
        raise ValueError(f"digest must be {DIGEST_BYTES} bytes, got {len(digest)}")
    try:
        return _PREFIX[codec, HASH_CODES[hash_name]] + digest
    except KeyError:
        hash_code(hash_name)
        raise ValueError(f"unsupported codec 0x{codec:x}") from None


def raw_cid_bytes(digest: bytes, hash_name: str = "blake3") -> bytes:
    """Binary CIDv1 ``raw`` over ``digest``: the fast path for chunk IDs."""
    return cid_bytes_from_digest(RAW, digest, hash_name)


def cid_from_digest(codec: int, digest: bytes, hash_name: str = "blake3") -> CID:
    """CIDv1 of ``codec`` over a ready ``digest`` made with ``hash_name``."""
    if len(digest) != DIGEST_BYTES:
        raise ValueError(f"digest must be {DIGEST_BYTES} bytes, got {len(digest)}")
    return CID(1, codec, Multihash.wrap(hash_code(hash_name), digest))


def make_cid(codec: int, data: bytes, hash_name: str = "blake3") -> CID:
    """CIDv1 of ``codec`` whose multihash is ``hash_name`` of ``data``."""
    return cid_from_digest(codec, hash_digest(data, hash_name), hash_name)


def parse_cid(value: str | bytes | bytearray | memoryview | CID) -> CID:
    """Parse an untrusted CID given as text (any multibase, or CIDv0 ``Qm…``) or binary.

    Returns a CIDv1 (a CIDv0 is converted: same content, same multihash).
    Raises :class:`dstore.errors.BadCID` with a one-line reason on bad input.
    """
    if isinstance(value, CID):
        return value if value.version == 1 else value.to_v1()
    try:
        if isinstance(value, str):
            text = value.strip()
            if not text or len(text) > 4 * MAX_CID_BYTES:
                raise BadCID(f"not a CID: {value[:80]!r}")
            if len(text) == 46 and text.startswith("Qm"):
                raw = CID.decode(text).to_bytes()  # CIDv0: bare base58btc multihash
                if CID.decode(text).encode() != text:
                    raise BadCID(f"not a CID: {text!r}")
            else:
                raw = multibase.decode(text)[1]
        elif isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
        else:
            raise BadCID(f"not a CID: {type(value).__name__}")
        if not raw or len(raw) > MAX_CID_BYTES:
            raise BadCID(f"not a CID: {len(raw)} bytes")
        cid = CID.from_bytes(raw)
        if cid.to_bytes() != raw:
            raise BadCID("not a CID: trailing or non-canonical bytes")
        n = len(cid.hash.digest)
        if not 1 <= n <= 64 or (cid.hash.code == SHA2_256 and n != 32):
            raise BadCID(f"not a CID: {n}-byte digest")
    except BadCID:
        raise
    except Exception as e:  # py-multiformats raises several unrelated types
        shown = value[:80] if isinstance(value, str) else bytes(value[:40]).hex()
        raise BadCID(f"not a CID: {shown!r} ({e})") from e
    return cid if cid.version == 1 else cid.to_v1()


def inline_block(cid: CID) -> bytes | None:
    """The block an identity CID carries in itself; None for a CID that names a block by its hash."""
    return bytes(cid.hash.digest) if cid.hash.code == IDENTITY else None


def cid_to_text(cid: CID | bytes) -> str:
    """Canonical text form: multibase base32 lower case (``b…``)."""
    if not isinstance(cid, CID):
        cid = CID.from_bytes(bytes(cid))
    return (cid.to_v1() if cid.version == 0 else cid).encode("base32")  # CIDv0 links of imported DAGs
