"""The locator: DAG-CBOR blocks saying which pack, offset and length hold each chunk.

Layout (docs/format.md, "Locator")::

    root        {"type": "dstore/locator", "version": 1, "dataset": CID,
                 "packs": [CID of pack-table page, …],
                 "chunks": [[first digest, CID of chunk-table page], …]}
    pack page   [[pack ID, pack record map], …]            up to 1024 entries
    chunk page  [[digest, pack index, offset, stored length, size, codec], …]
                                                           up to 4096, sorted by digest

:func:`build_locator` makes every block; :class:`Locator` answers lookups
reading the root, one chunk page and one pack page, with small caches. Chunk
pages are encoded and checked by a specialised fast path (they are most of
the bytes); the result is the same canonical DAG-CBOR that :mod:`cbor` writes.
"""

from __future__ import annotations

import array
import bisect
import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from dstore import _native
from dstore.errors import FormatError
from dstore.format import cbor
from dstore.format.cid import CID, DAG_CBOR, DIGEST_BYTES, HASH_NAMES
from dstore.format.pack import PackRecord

__all__ = [
    "CHUNKS_PER_PAGE",
    "CHUNK_PAGE_TARGET",
    "chunk_pages",
    "CODEC_RAW",
    "CODEC_ZSTD",
    "LOCATOR_TYPE",
    "LOCATOR_VERSION",
    "PACKS_PER_PAGE",
    "ChunkEntry",
    "Locator",
    "build_locator",
    "locator_root",
]

LOCATOR_TYPE = "dstore/locator"
LOCATOR_VERSION = 1
# Chunk-table pages end where the content says (docs/format.md, "Locator"):
# an entry ends its page when its digest's first four bytes, big-endian, are
# CHUNK_PAGE_TARGET - 1 modulo CHUNK_PAGE_TARGET, or when the page holds
# CHUNKS_PER_PAGE entries. A new version of a dataset then rewrites only the
# pages around the chunks that changed, not every page after the first change.
CHUNK_PAGE_TARGET = 1024
CHUNKS_PER_PAGE = 4096
PACKS_PER_PAGE = 1024
# Decoded pages a reader keeps. Reading a file looks its chunks up in file
# order, which is random digest order, so a cache smaller than the dataset's
# page count decodes a page per chunk. A page is kept compact (80 bytes an
# entry: its digests in one bytes object, its numbers in arrays), so
# CACHE_BYTES holds some 1.2 million chunks' entries: an ImageNet-sized tree
# of small files is read with each page decoded once.
DEFAULT_CACHE_PAGES = 4096
CACHE_BYTES = 96 << 20
CODEC_RAW = 0
CODEC_ZSTD = 1
_U64 = 1 << 64
Block = tuple[CID, bytes]


class ChunkEntry(NamedTuple):
    """Where one chunk lives: ``codec`` 0 = stored raw, 1 = one zstd frame."""

    digest: bytes
    pack_index: int
    offset: int
    stored_len: int
    size: int
    codec: int


def _uint(n: int) -> bytes:
    # CBOR major type 0 head, minimal (same bytes cbor.encode writes).
    if n < 24:
        return bytes((n,))
    if n < 0x100:
        return bytes((24, n))
    if n < 0x10000:
        return b"\x19" + n.to_bytes(2, "big")
    if n < 0x100000000:
        return b"\x1a" + n.to_bytes(4, "big")
    return b"\x1b" + n.to_bytes(8, "big")


def _array_head(n: int) -> bytes:
    h = _uint(n)
    return bytes((h[0] | 0x80,)) + h[1:]


_ENTRY_PREFIX = b"\x86\x58\x20"  # array(6), bytes(32)


def _encode_chunk_page(entries: Sequence[Sequence[Any]]) -> bytes:
    parts = [_array_head(len(entries))]
    for d, p, off, sl, sz, codec in entries:
        parts.append(_ENTRY_PREFIX + d + _uint(p) + _uint(off) + _uint(sl) + _uint(sz) + _uint(codec))
    return b"".join(parts)


def _check_entry(e: Sequence[Any], n_packs: int | None) -> None:
    d, p, off, sl, sz, codec = e
    if type(d) is not bytes or len(d) != DIGEST_BYTES:
        raise ValueError(f"chunk digest must be {DIGEST_BYTES} bytes")
    for v in (p, off, sl, sz):
        if type(v) is not int or not 0 <= v < _U64:
            raise ValueError("chunk entry fields must be non-negative 64-bit integers")
    if codec not in (CODEC_RAW, CODEC_ZSTD) or type(codec) is not int:
        raise ValueError(f"chunk codec must be 0 (raw) or 1 (zstd), got {codec!r}")
    if codec == CODEC_RAW and sl != sz:
        raise ValueError("a raw-stored chunk has stored length == size")
    if n_packs is not None and p >= n_packs:
        raise ValueError(f"chunk pack index {p} out of range ({n_packs} packs)")


def ends_page(digest: bytes) -> bool:
    """Whether a chunk-table entry with this digest ends its page (content-defined paging)."""
    return int.from_bytes(digest[:4], "big") % CHUNK_PAGE_TARGET == CHUNK_PAGE_TARGET - 1


def chunk_pages(entries: Sequence[Sequence[Any]]) -> list[Sequence[Sequence[Any]]]:
    """Split digest-sorted entries into chunk-table pages (see CHUNK_PAGE_TARGET)."""
    pages = []
    start = 0
    for i, e in enumerate(entries):
        if ends_page(e[0]) or i + 1 - start == CHUNKS_PER_PAGE:
            pages.append(entries[start : i + 1])
            start = i + 1
    if start < len(entries):
        pages.append(entries[start:])
    return pages


def build_locator(
    dataset: CID,
    chunks: Sequence[tuple[bytes, int, int, int, int, int]],
    packs: Sequence[tuple[CID, PackRecord]],
    hash_name: str = "blake3",
) -> tuple[CID, list[Block]]:
    """Build the locator of ``dataset``.

    ``chunks`` are ``(digest32, pack_index, offset, stored_len, size, codec)``
    in any order (an exact duplicate is dropped; two places for one digest is
    an error); ``packs`` are ``(pack ID, record)`` in pack-index order.
    Returns ``(root CID, [(cid, block), …])`` with the root last. Linear after
    one sort.
    """
    if not isinstance(dataset, CID) or dataset.codec != DAG_CBOR:
        raise ValueError("locator dataset must be a dag-cbor CID (a dataset ID)")
    n_packs = len(packs)
    for pack_id, rec in packs:
        if not isinstance(pack_id, CID) or pack_id.codec != DAG_CBOR:
            raise ValueError("pack IDs must be dag-cbor CIDs")
        rec.validate()
    sorted_chunks = sorted(chunks, key=lambda e: e[0])
    unique: list[tuple[bytes, int, int, int, int, int]] = []
    for e in sorted_chunks:
        e = tuple(e)  # type: ignore[assignment]
        if unique and unique[-1][0] == e[0]:
            if unique[-1] != e:
                raise ValueError(f"chunk {e[0].hex()} has two different locations")
            continue
        _check_entry(e, n_packs)
        sizes = packs[e[1]][1].size
        if e[2] + e[3] > sizes:
            raise ValueError(f"chunk {e[0].hex()} ends past its pack ({e[2]} + {e[3]} > {sizes})")
        unique.append(e)
    blocks: list[Block] = []
    chunk_refs: list[list[Any]] = []
    for page in chunk_pages(unique):
        block = _encode_chunk_page(page)
        cid = cbor.block_cid(block, hash_name)
        blocks.append((cid, block))
        chunk_refs.append([page[0][0], cid])
    pack_refs: list[CID] = []
    for i in range(0, n_packs, PACKS_PER_PAGE):
        block = cbor.encode([[pid, rec.to_cbor()] for pid, rec in packs[i : i + PACKS_PER_PAGE]])
        cid = cbor.block_cid(block, hash_name)
        blocks.append((cid, block))
        pack_refs.append(cid)
    root = cbor.encode(
        {
            "type": LOCATOR_TYPE,
            "version": LOCATOR_VERSION,
            "dataset": dataset,
            "packs": pack_refs,
            "chunks": chunk_refs,
        }
    )
    root_cid = cbor.block_cid(root, hash_name)
    blocks.append((root_cid, root))
    return root_cid, blocks


def locator_root(
    dataset: CID,
    chunk_refs: list[list[Any]],
    packs: Sequence[tuple[CID, PackRecord]],
    emit: Callable[[CID, bytes], None],
    hash_name: str = "blake3",
) -> tuple[CID, bytes]:
    """The pack-table pages (to ``emit``) and the root of a locator whose chunk pages are
    ``chunk_refs`` (``[first digest, page CID]`` each, in order); returns the root's CID and block."""
    pack_refs: list[CID] = []
    for i in range(0, len(packs), PACKS_PER_PAGE):
        block = cbor.encode([[pid, rec.to_cbor()] for pid, rec in packs[i : i + PACKS_PER_PAGE]])
        cid = cbor.block_cid(block, hash_name)
        emit(cid, block)
        pack_refs.append(cid)
    root = cbor.encode(
        {"type": LOCATOR_TYPE, "version": LOCATOR_VERSION, "dataset": dataset, "packs": pack_refs, "chunks": chunk_refs}
    )
    return cbor.block_cid(root, hash_name), root


def parse_chunk_page(block: bytes) -> list[ChunkEntry]:
    """The entries of a locator chunk page: canonical DAG-CBOR, valid entries, sorted by digest; else FormatError."""
    try:
        raw = cbor.parse(block, max_depth=2)
    except FormatError as e:
        raise FormatError(f"malformed locator chunk page: {e}") from e
    if not isinstance(raw, list) or not 1 <= len(raw) <= CHUNKS_PER_PAGE:
        raise FormatError(f"locator chunk page must list 1..{CHUNKS_PER_PAGE} entries")
    entries: list[ChunkEntry] = []
    try:
        for item in raw:
            if not isinstance(item, list) or len(item) != 6:
                raise ValueError("entry is not a list of 6")
            _check_entry(item, None)
            entries.append(ChunkEntry(*item))
    except ValueError as err:
        raise FormatError(f"bad locator chunk page: {err}") from err
    if _encode_chunk_page(entries) != block:
        raise FormatError("locator chunk page is not canonical DAG-CBOR")
    if any(a.digest >= b.digest for a, b in itertools.pairwise(entries)):
        raise FormatError("locator chunk page is not sorted by digest")
    return entries


class _Page:
    """One validated chunk page, compact: digests joined, their first 8 bytes as integers (searched
    by bisect, in C), the five numbers of each entry in an array: 80 bytes an entry."""

    __slots__ = ("digests", "prefixes", "numbers", "count")

    def __init__(self, entries: Sequence[ChunkEntry]) -> None:
        self.count = len(entries)
        self.digests = b"".join(e.digest for e in entries)
        self.prefixes = array.array("Q", [int.from_bytes(e.digest[:8], "big") for e in entries])
        self.numbers = array.array("Q", [v for e in entries for v in e[1:]])

    @classmethod
    def from_native(cls, count: int, digests: bytes, prefixes: bytes, numbers: bytes) -> _Page:
        """A page from ``_native.locator_chunk_page`` (its prefixes and numbers as native-endian u64 bytes)."""
        page = cls.__new__(cls)
        page.count = count
        page.digests = digests
        page.prefixes = array.array("Q")
        page.prefixes.frombytes(prefixes)
        page.numbers = array.array("Q")
        page.numbers.frombytes(numbers)
        return page

    @property
    def nbytes(self) -> int:
        return len(self.digests) + 8 * (len(self.prefixes) + len(self.numbers)) + 300

    def entry(self, j: int) -> ChunkEntry:
        d = DIGEST_BYTES * j
        return ChunkEntry(self.digests[d : d + DIGEST_BYTES], *self.numbers[5 * j : 5 * j + 5])

    def find(self, digest: bytes) -> ChunkEntry | None:
        key = int.from_bytes(digest[:8], "big")
        j = bisect.bisect_left(self.prefixes, key)  # the page is sorted by digest (checked when read)
        w = DIGEST_BYTES
        while j < self.count and self.prefixes[j] == key:
            if self.digests[j * w : j * w + w] == digest:
                return self.entry(j)
            j += 1
        return None

    def entries(self) -> Iterator[ChunkEntry]:
        for j in range(self.count):
            yield self.entry(j)


class Locator:
    """Reads a locator through ``get_block(cid) -> bytes`` (which must verify hashes).

    ``find(digest)`` reads the root (once), one chunk page and binary-searches
    it; ``pack(index)`` reads one pack-table page. Pages are kept in small LRU
    caches. Every page is validated on first read; a bad locator raises
    FormatError, it never answers wrongly about a well-formed chunk table.
    """

    def __init__(
        self, get_block: Callable[[CID], bytes], root_cid: CID, *, cache_pages: int = DEFAULT_CACHE_PAGES
    ) -> None:
        self._get = get_block
        self.root_cid = root_cid
        self._cache_pages = max(1, cache_pages)
        self._chunk_pages: OrderedDict[int, _Page] = OrderedDict()
        self._cached_bytes = 0
        self._pack_pages: OrderedDict[int, list[tuple[CID, PackRecord]]] = OrderedDict()
        root = cbor.decode(get_block(root_cid))
        if not isinstance(root, dict) or set(root) != {
            "type",
            "version",
            "dataset",
            "packs",
            "chunks",
        }:
            raise FormatError("locator root must be a map of type, version, dataset, packs, chunks")
        if root["type"] != LOCATOR_TYPE or root["version"] != LOCATOR_VERSION:
            raise FormatError(f"not a version-{LOCATOR_VERSION} dstore locator")
        if not isinstance(root["dataset"], CID):
            raise FormatError("locator dataset must be a CID")
        self.dataset: CID = root["dataset"]
        packs, chunks = root["packs"], root["chunks"]
        if not isinstance(packs, list) or not all(isinstance(c, CID) for c in packs):
            raise FormatError("locator packs must be a list of CIDs")
        if not isinstance(chunks, list):
            raise FormatError("locator chunks must be a list")
        self._pack_page_cids: list[CID] = packs
        self._firsts: list[bytes] = []
        self._chunk_page_cids: list[CID] = []
        for ref in chunks:
            if (
                not isinstance(ref, list)
                or len(ref) != 2
                or type(ref[0]) is not bytes
                or len(ref[0]) != DIGEST_BYTES
                or not isinstance(ref[1], CID)
            ):
                raise FormatError("locator chunks entries must be [digest, CID]")
            if self._firsts and ref[0] <= self._firsts[-1]:
                raise FormatError("locator chunk pages are not in digest order")
            self._firsts.append(ref[0])
            self._chunk_page_cids.append(ref[1])

    @property
    def num_chunk_pages(self) -> int:
        return len(self._chunk_page_cids)

    @property
    def num_pack_pages(self) -> int:
        return len(self._pack_page_cids)

    def _chunk_page(self, i: int) -> _Page:
        hit = self._chunk_pages.get(i)
        if hit is not None:
            self._chunk_pages.move_to_end(i)
            return hit
        block = self._get(self._chunk_page_cids[i])
        if len(block) > cbor.MAX_BLOCK_BYTES:
            raise FormatError("locator chunk page too large")
        # The native parser accepts exactly the pages parse_chunk_page does (tested against it);
        # a page it refuses goes through the Python one, which says why.
        fast = _native.locator_chunk_page(block)
        page = _Page.from_native(*fast) if fast is not None else _Page(parse_chunk_page(block))
        if page.digests[:DIGEST_BYTES] != self._firsts[i]:
            raise FormatError("locator chunk page does not start with the root's first digest")
        if i + 1 < len(self._firsts) and page.digests[-DIGEST_BYTES:] >= self._firsts[i + 1]:
            raise FormatError("locator chunk page overlaps the next page")
        self._chunk_pages[i] = page
        self._cached_bytes += page.nbytes
        while len(self._chunk_pages) > 1 and (
            len(self._chunk_pages) > self._cache_pages or self._cached_bytes > CACHE_BYTES
        ):
            self._cached_bytes -= self._chunk_pages.popitem(last=False)[1].nbytes
        return page

    def find(self, digest: bytes) -> ChunkEntry | None:
        """The entry of the chunk with this multihash digest, or None if the locator has none."""
        i = bisect.bisect_right(self._firsts, digest) - 1
        if i < 0:
            return None
        return self._chunk_page(i).find(digest)

    def find_many(self, digests: Sequence[bytes]) -> list[ChunkEntry | None]:
        """``find`` of each digest, in one pass (a get looks up a folder's files at once)."""
        firsts = self._firsts
        out: list[ChunkEntry | None] = []
        pages: dict[int, _Page] = {}
        for digest in digests:
            i = bisect.bisect_right(firsts, digest) - 1
            if i < 0:
                out.append(None)
                continue
            page = pages.get(i)
            if page is None:
                page = pages[i] = self._chunk_page(i)
            out.append(page.find(digest))
        return out

    def chunks(self) -> Iterator[ChunkEntry]:
        """Every chunk entry, in digest order (reads every chunk page)."""
        for i in range(len(self._chunk_page_cids)):
            yield from self._chunk_page(i).entries()

    def _pack_page(self, i: int) -> list[tuple[CID, PackRecord]]:
        hit = self._pack_pages.get(i)
        if hit is not None:
            self._pack_pages.move_to_end(i)
            return hit
        raw = cbor.decode(self._get(self._pack_page_cids[i]))
        if not isinstance(raw, list) or not 1 <= len(raw) <= PACKS_PER_PAGE:
            raise FormatError(f"locator pack page must list 1..{PACKS_PER_PAGE} entries")
        if i + 1 < len(self._pack_page_cids) and len(raw) != PACKS_PER_PAGE:
            raise FormatError(f"locator pack page {i} is not full but is not the last")
        page = []
        for e in raw:
            if not isinstance(e, list) or len(e) != 2 or not isinstance(e[0], CID):
                raise FormatError("locator pack entries must be [pack ID, record]")
            pack_id = e[0]
            rec = PackRecord.from_cbor(e[1])
            hash_name = HASH_NAMES.get(pack_id.hash.code)
            if pack_id.codec != DAG_CBOR or hash_name is None or cbor.block_cid(rec.encode(), hash_name) != pack_id:
                raise FormatError(f"locator pack record does not match its pack ID {pack_id}")
            page.append((pack_id, rec))
        self._pack_pages[i] = page
        if len(self._pack_pages) > self._cache_pages:
            self._pack_pages.popitem(last=False)
        return page

    def pack(self, index: int) -> tuple[CID, PackRecord]:
        """``(pack ID, record)`` of global pack ``index``; IndexError if there is no such pack."""
        if index < 0:
            raise IndexError(f"pack index {index} out of range")
        page_no, k = divmod(index, PACKS_PER_PAGE)
        if page_no >= len(self._pack_page_cids):
            raise IndexError(f"pack index {index} out of range")
        page = self._pack_page(page_no)
        if k >= len(page):
            raise IndexError(f"pack index {index} out of range")
        return page[k]

    @property
    def chunk_page_cids(self) -> list[CID]:
        return list(self._chunk_page_cids)

    @property
    def pack_page_cids(self) -> list[CID]:
        return list(self._pack_page_cids)

    @property
    def num_packs(self) -> int:
        """Number of packs (reads the last pack page)."""
        if not self._pack_page_cids:
            return 0
        last = len(self._pack_page_cids) - 1
        return last * PACKS_PER_PAGE + len(self._pack_page(last))
