"""CAR v1 (Content Addressable aRchive), https://ipld.io/specs/transport/car/carv1/.

Layout: ``varint(len(header)) || header`` where the header is DAG-CBOR
``{"roots": [CID, …], "version": 1}``, then for every block
``varint(len(cid) + len(block)) || cid || block``.

The writer streams (:class:`CarWriter`, :func:`iter_car`); the reader
(:class:`CarReader`) takes any binary file object or bytes, bounds every size
before reading it, and by default checks each block against its CID
(blake3, sha2-256, or identity: the block is the digest). It also reads a
CAR v2 (https://ipld.io/specs/transport/car/carv2/): the 11-byte pragma, the
40-byte header, then the CAR v1 payload it wraps; the index is ignored.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

from dstore.errors import BadCID, FormatError, IntegrityError
from dstore.format import cbor
from dstore.format.cid import CID, HASH_NAMES, IDENTITY, hash_digest, parse_cid
from dstore.format.dagpb import MAX_BLOCK_BYTES, decode_varint, encode_varint
from dstore.limits import MAX_CAR_HEADER_BYTES, MAX_CID_BYTES

__all__ = [
    "MAX_CAR_BLOCK_BYTES",
    "MAX_CAR_HEADER_BYTES",
    "CarReader",
    "CarWriter",
    "car_block",
    "car_section_head",
    "car_header",
    "encode_car",
    "iter_car",
    "read_car",
]

#: Bound on one block in a CAR we read (IPFS's 2 MiB block limit; dstore writes <= 1 MiB).
MAX_CAR_BLOCK_BYTES = MAX_BLOCK_BYTES
# A section longer than this is read in pieces of it (see CarReader._read_exact).
_READ_STEP_BYTES = 64 * 1024
#: The CAR v2 header that follows the pragma: characteristics (16 bytes), then data offset,
#: data size and index offset (little-endian u64 each).
CARV2_HEADER_BYTES = 40
#: The pragma's length prefix plus the pragma itself (``{"version": 2}`` in DAG-CBOR).
CARV2_PRAGMA_BYTES = 11


def car_header(roots: Iterable[CID]) -> bytes:
    """The length-prefixed CAR v1 header naming ``roots``."""
    h = cbor.encode({"roots": list(roots), "version": 1})
    return encode_varint(len(h)) + h


def car_block(cid: CID | bytes, block: bytes) -> bytes:
    """One CAR section: ``varint(len(cid) + len(block)) || cid || block``."""
    return car_section_head(cid, len(block)) + block


def car_section_head(cid: CID | bytes, block_len: int) -> bytes:
    """What precedes a block of ``block_len`` bytes in its CAR section: ``varint(len(cid) + block_len) || cid``.

    For streams that write the head and the block's bytes (a view of a bigger buffer) without joining them.
    """
    cb = cid if isinstance(cid, bytes) else cid.to_bytes()
    return encode_varint(len(cb) + block_len) + cb


def iter_car(roots: Iterable[CID], blocks: Iterable[tuple[CID | bytes, bytes]]) -> Iterator[bytes]:
    """Yield the pieces of a CAR v1 (header first); write them in order to stream one."""
    yield car_header(roots)
    for cid, block in blocks:
        yield car_block(cid, block)


def encode_car(roots: Iterable[CID], blocks: Iterable[tuple[CID | bytes, bytes]]) -> bytes:
    """A whole CAR v1 in memory (small CARs and tests; stream big ones with :class:`CarWriter`)."""
    return b"".join(iter_car(roots, blocks))


class CarWriter:
    """Streaming CAR v1 writer over ``write(bytes)`` (e.g. ``file.write``).

    The header is written at construction. Blocks are written as given;
    ``dedupe=True`` (default) skips a CID already written.
    """

    def __init__(
        self,
        write: Callable[[bytes], Any],
        roots: Iterable[CID],
        *,
        dedupe: bool = True,
    ) -> None:
        self._write = write
        self._seen: set[bytes] | None = set() if dedupe else None
        self.bytes_written = 0
        self._out(car_header(roots))

    def _out(self, b: bytes) -> None:
        self._write(b)
        self.bytes_written += len(b)

    def put(self, cid: CID | bytes, block: bytes) -> bool:
        """Write one block; return False if it was skipped as already written."""
        cb = cid if isinstance(cid, bytes) else cid.to_bytes()
        if self._seen is not None:
            if cb in self._seen:
                return False
            self._seen.add(cb)
        self._out(car_block(cb, block))
        return True


def _cid_len(buf: bytes) -> int:
    """Length of the binary CID at the start of ``buf`` (CIDv0 or CIDv1)."""
    if len(buf) >= 2 and buf[0] == 0x12 and buf[1] == 0x20:
        return 34  # CIDv0: a bare sha2-256 multihash
    pos = 0
    version, pos = decode_varint(buf, pos)
    if version != 1:
        raise FormatError(f"CAR block has CID version {version}")
    _codec, pos = decode_varint(buf, pos)
    _code, pos = decode_varint(buf, pos)
    dlen, pos = decode_varint(buf, pos)
    if dlen > 64:
        raise FormatError(f"CAR block CID has a {dlen}-byte digest")
    return pos + dlen


class CarReader:
    """Reads a CAR v1 from a binary file object (or bytes), block by block.

    ``roots`` is read at construction; iterate for ``(CID, block bytes)``.
    With ``verify=True`` (default) each block must hash to its CID (blake3 or
    sha2-256; other hashes are refused): IntegrityError otherwise. Malformed or
    truncated input raises FormatError; no size is trusted before it is bounded.
    """

    def __init__(
        self,
        source: BinaryIO | bytes | bytearray | memoryview,
        *,
        verify: bool = True,
        max_block_bytes: int = MAX_CAR_BLOCK_BYTES,
    ) -> None:
        self._fp: BinaryIO = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
        self.verify = verify
        self.max_block_bytes = max_block_bytes
        self.version = 1
        self._left: int | None = None  # bytes of the CAR v1 payload still to read (CAR v2 only)
        header = self._read_header()
        if header == {"version": 2}:
            self._enter_v2_payload()
            header = self._read_header()
        if header.get("version") != 1 or set(header) != {"roots", "version"}:
            raise FormatError("CAR header must be {roots, version: 1}")
        roots = header["roots"]
        if not isinstance(roots, list) or not all(isinstance(r, CID) for r in roots):
            raise FormatError("CAR header roots must be a list of CIDs")
        self.roots: list[CID] = roots

    def _read_header(self) -> dict[Any, Any]:
        n = self._read_varint(eof_ok=False)
        if n is None or n == 0 or n > MAX_CAR_HEADER_BYTES:
            raise FormatError(f"CAR header length {n} out of range 1..{MAX_CAR_HEADER_BYTES}")
        header = cbor.decode(self._read_exact(n, "header"))
        if not isinstance(header, dict):
            raise FormatError("CAR header is not a map")
        return header

    def _enter_v2_payload(self) -> None:
        """After the CAR v2 pragma: read the v2 header, skip to the v1 payload and read only within it."""
        if self.version != 1 or self._left is not None:
            raise FormatError("CAR v2 payload is itself a CAR v2")
        raw = self._read_exact(CARV2_HEADER_BYTES, "v2 header")
        data_offset = int.from_bytes(raw[16:24], "little")
        data_size = int.from_bytes(raw[24:32], "little")
        at = CARV2_PRAGMA_BYTES + CARV2_HEADER_BYTES
        if data_offset < at or data_size == 0:
            raise FormatError(f"CAR v2 header puts its payload at {data_offset} ({data_size} bytes)")
        # Skip the padding in bounded steps (the offset is a claim, not a size to allocate).
        skip = data_offset - at
        while skip:
            got = self._read_exact(min(skip, 1 << 16), "v2 padding")
            skip -= len(got)
        self.version = 2
        self._left = data_size

    def _read(self, n: int) -> bytes:
        if self._left is not None:
            n = min(n, self._left)
        b = self._fp.read(n) if n else b""
        if b and self._left is not None:
            self._left -= len(b)
        return b or b""

    def _read_exact(self, n: int, what: str) -> bytes:
        # In steps: ``read(n)`` of a file allocates n bytes up front, so a truncated CAR claiming a
        # 2 MiB section would cost 2 MiB however little of it is there.
        if n <= _READ_STEP_BYTES:
            b = self._read(n)
        else:
            parts = []
            left = n
            while left:
                part = self._read(min(left, _READ_STEP_BYTES))
                if not part:
                    break
                parts.append(part)
                left -= len(part)
            b = b"".join(parts)
        if len(b) != n:
            raise FormatError(f"truncated CAR {what}")
        return b

    def _read_varint(self, eof_ok: bool) -> int | None:
        buf = bytearray()
        while True:
            b = self._read(1)
            if not b:
                if not buf and eof_ok:
                    return None
                raise FormatError("truncated CAR varint")
            buf += b
            if b[0] < 0x80:
                return decode_varint(bytes(buf), 0)[0]
            if len(buf) >= 10:
                raise FormatError("CAR varint longer than 10 bytes")

    def __iter__(self) -> Iterator[tuple[CID, bytes]]:
        limit = self.max_block_bytes + MAX_CID_BYTES
        while True:
            n = self._read_varint(eof_ok=True)
            if n is None:
                return
            if n == 0 or n > limit:
                raise FormatError(f"CAR section of {n} bytes out of range 1..{limit}")
            section = self._read_exact(n, "block")
            clen = _cid_len(section)
            if clen > n:
                raise FormatError("truncated CAR block CID")
            try:
                cid = parse_cid(section[:clen])
            except BadCID as e:
                raise FormatError(f"CAR block has a bad CID ({e})") from e
            block = section[clen:]
            if len(block) > self.max_block_bytes:
                raise FormatError(f"CAR block of {len(block)} bytes exceeds {self.max_block_bytes}")
            if cid.version == 0:
                cid = cid.to_v1()
            if self.verify and cid.hash.code == IDENTITY:
                if bytes(cid.hash.digest) != block:
                    raise IntegrityError(f"CAR block does not match its identity CID {cid}")
            elif self.verify:
                hash_name = HASH_NAMES.get(cid.hash.code)
                if hash_name is None:
                    raise FormatError(f"cannot verify CAR block {cid}: hash 0x{cid.hash.code:x} not supported")
                if hash_digest(block, hash_name) != cid.hash.digest:
                    raise IntegrityError(f"CAR block does not match its CID {cid}")
            yield cid, block


def read_car(data: bytes, *, verify: bool = True) -> tuple[list[CID], list[tuple[CID, bytes]]]:
    """Parse a whole in-memory CAR v1: ``(roots, [(cid, block), …])``."""
    r = CarReader(data, verify=verify)
    return r.roots, list(r)
