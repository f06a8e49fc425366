"""dstore.format.locator: building locator blocks and looking chunks up."""

from __future__ import annotations

import hashlib
import random

import pytest
from fuzzutil import mutated
from hypothesis import given, settings
from hypothesis import strategies as st

from dstore import _native as native
from dstore.errors import FormatError
from dstore.format import cbor
from dstore.format.cid import CID, DAG_CBOR, RAW, make_cid
from dstore.format.locator import (
    CHUNKS_PER_PAGE,
    PACKS_PER_PAGE,
    ChunkEntry,
    Locator,
    _encode_chunk_page,
    _Page,
    build_locator,
    chunk_pages,
    parse_chunk_page,
)
from dstore.format.pack import PackRecord, shard_size

DATASET = make_cid(DAG_CBOR, b"manifest")


def make_packs(n: int, size: int = 1 << 20) -> list[tuple[CID, PackRecord]]:
    out = []
    for i in range(n):
        rec = PackRecord(
            k=2,
            m=1,
            size=size,
            shard_size=shard_size(size, 2),
            shards=tuple(make_cid(RAW, b"%d-%d" % (i, j)) for j in range(3)),
        )
        out.append((rec.cid(), rec))
    return out


def make_entries(n: int, n_packs: int, seed: int = 0) -> list[tuple[bytes, int, int, int, int, int]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        d = hashlib.sha256(b"%d-%d" % (seed, i)).digest()
        size = rng.randrange(1, 1000)
        codec = rng.randrange(2)
        stored = size if codec == 0 else rng.randrange(1, size + 1)
        out.append((d, rng.randrange(n_packs), rng.randrange(0, 1000), stored, size, codec))
    return out


class CountingStore:
    def __init__(self, blocks: list[tuple[CID, bytes]]) -> None:
        self.blocks = {c.to_bytes(): b for c, b in blocks}
        self.reads: list[CID] = []

    def get(self, cid: CID) -> bytes:
        self.reads.append(cid)
        return self.blocks[cid.to_bytes()]

    __call__ = get


def check_locator(n_chunks: int, n_packs: int, seed: int = 0, hash_name: str = "blake3") -> None:
    packs = make_packs(n_packs)
    entries = make_entries(n_chunks, n_packs, seed)
    root, blocks = build_locator(DATASET, entries, packs, hash_name)
    assert blocks[-1][0] == root
    assert all(c.codec == DAG_CBOR for c, _ in blocks)
    store = CountingStore(blocks)
    loc = Locator(store.get, root)
    assert loc.dataset == DATASET
    assert loc.num_chunk_pages == len(chunk_pages(sorted(entries)))
    assert loc.num_pack_pages == -(-n_packs // PACKS_PER_PAGE)
    for e in entries:
        assert loc.find(e[0]) == ChunkEntry(*e)
    assert [tuple(e) for e in loc.chunks()] == sorted(entries)
    for absent in (b"\x00" * 32, b"\xff" * 32, hashlib.sha256(b"absent").digest()):
        assert loc.find(absent) is None
    for i, (pid, rec) in enumerate(packs):
        assert loc.pack(i) == (pid, rec)
    assert loc.num_packs == n_packs
    with pytest.raises(IndexError):
        loc.pack(n_packs)
    with pytest.raises(IndexError):
        loc.pack(-1)


@pytest.mark.parametrize(
    ("n_chunks", "n_packs"),
    [
        (0, 0),
        (1, 1),
        (CHUNKS_PER_PAGE - 1, 3),
        (CHUNKS_PER_PAGE, PACKS_PER_PAGE - 1),
        (CHUNKS_PER_PAGE + 1, PACKS_PER_PAGE),
        (2 * CHUNKS_PER_PAGE, PACKS_PER_PAGE + 1),
        (2 * CHUNKS_PER_PAGE + 1, 2 * PACKS_PER_PAGE + 5),
    ],
)
def test_page_boundaries(n_chunks: int, n_packs: int) -> None:
    check_locator(n_chunks, n_packs)


@settings(max_examples=15, deadline=None)
@given(
    n_chunks=st.integers(0, 3 * CHUNKS_PER_PAGE),
    n_packs=st.integers(1, 2 * PACKS_PER_PAGE + 2),
    seed=st.integers(0, 1000),
)
def test_random_entry_sets(n_chunks: int, n_packs: int, seed: int) -> None:
    check_locator(n_chunks, n_packs, seed)


def test_sha256_locator() -> None:
    check_locator(10, 2, hash_name="sha2-256")


def test_lookup_reads_root_one_chunk_page_one_pack_page_and_caches() -> None:
    packs = make_packs(PACKS_PER_PAGE + 2)
    entries = make_entries(3 * CHUNKS_PER_PAGE, len(packs))
    root, blocks = build_locator(DATASET, entries, packs)
    store = CountingStore(blocks)
    loc = Locator(store.get, root, cache_pages=2)
    assert store.reads == [root]
    e = loc.find(entries[0][0])
    assert e is not None and len(store.reads) == 2
    loc.pack(e.pack_index)
    assert len(store.reads) == 3
    loc.find(entries[0][0])
    loc.pack(e.pack_index)
    assert len(store.reads) == 3  # cached
    for x in entries[:200]:
        loc.find(x[0])
    assert len(store.reads) <= 3 + 3 * 200


def test_root_layout() -> None:
    packs = make_packs(2)
    entries = make_entries(5, 2)
    root, blocks = build_locator(DATASET, entries, packs)
    obj = cbor.decode({c.to_bytes(): b for c, b in blocks}[root.to_bytes()])
    assert obj["type"] == "dstore/locator" and obj["version"] == 1 and obj["dataset"] == DATASET
    assert len(obj["packs"]) == 1 and len(obj["chunks"]) == 1
    first, page_cid = obj["chunks"][0]
    assert first == min(e[0] for e in entries)
    page = cbor.decode({c.to_bytes(): b for c, b in blocks}[page_cid.to_bytes()])
    assert page == [list(e) for e in sorted(entries)]  # the fast encoder writes plain DAG-CBOR


def test_duplicates() -> None:
    packs = make_packs(1)
    e = make_entries(3, 1)
    root, blocks = build_locator(DATASET, e + [e[0]], packs)
    assert Locator(CountingStore(blocks).get, root).find(e[0][0]) == ChunkEntry(*e[0])
    other = (e[0][0], 0, e[0][2] + 1, e[0][3], e[0][4], e[0][5])
    with pytest.raises(ValueError, match="two different"):
        build_locator(DATASET, [*e, other], packs)


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ((b"\x01" * 31, 0, 0, 1, 1, 0), "32 bytes"),
        ((b"\x01" * 32, 5, 0, 1, 1, 0), "pack index"),
        ((b"\x01" * 32, 0, -1, 1, 1, 0), "non-negative"),
        ((b"\x01" * 32, 0, 0, 1, 1, 2), "codec"),
        ((b"\x01" * 32, 0, 0, 1, 2, 0), "raw-stored"),
        ((b"\x01" * 32, 0, 1 << 20, 1, 1, 0), "past its pack"),
    ],
)
def test_build_rejects_bad_entries(entry: tuple, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        build_locator(DATASET, [entry], make_packs(1))


def test_build_rejects_bad_dataset_and_pack_ids() -> None:
    with pytest.raises(ValueError, match="dataset"):
        build_locator(make_cid(RAW, b"x"), [], [])
    rec = make_packs(1)[0][1]
    with pytest.raises(ValueError, match="pack IDs"):
        build_locator(DATASET, [], [(make_cid(RAW, b"x"), rec)])


def _tampered(mutate) -> tuple[CountingStore, CID]:  # type: ignore[no-untyped-def]
    packs = make_packs(2)
    entries = make_entries(CHUNKS_PER_PAGE + 10, 2)
    root, blocks = build_locator(DATASET, entries, packs)
    store = CountingStore(blocks)
    obj = cbor.decode(store.blocks[root.to_bytes()])
    assert len(obj["chunks"]) >= 2
    new_root = mutate(store, obj)
    return store, new_root


def _put(store: CountingStore, value: object) -> CID:
    block = value if isinstance(value, bytes) else cbor.encode(value)
    cid = cbor.block_cid(block)
    store.blocks[cid.to_bytes()] = block
    return cid


def test_reader_rejects_bad_roots() -> None:
    store = CountingStore([])
    for bad in [
        [1],
        {"type": "dstore/locator"},
        {"type": "x", "version": 1, "dataset": DATASET, "packs": [], "chunks": []},
    ]:
        with pytest.raises(FormatError):
            Locator(store.get, _put(store, bad))

    def unsorted(store: CountingStore, obj: dict) -> CID:
        obj["chunks"] = obj["chunks"][::-1]
        return _put(store, obj)

    with pytest.raises(FormatError, match="digest order"):
        Locator(*_tampered(unsorted))

    def bad_ref(store: CountingStore, obj: dict) -> CID:
        obj["chunks"][0] = [b"short", obj["chunks"][0][1]]
        return _put(store, obj)

    with pytest.raises(FormatError, match="digest, CID"):
        Locator(*_tampered(bad_ref))


def test_reader_rejects_bad_pages() -> None:
    def swap_pages(store: CountingStore, obj: dict) -> CID:
        a, b = obj["chunks"][:2]
        obj["chunks"][:2] = [[a[0], b[1]], [b[0], a[1]]]
        return _put(store, obj)

    store, root = _tampered(swap_pages)
    loc = Locator(store.get, root)
    with pytest.raises(FormatError, match="first digest"):
        loc.find(cbor.decode(store.blocks[root.to_bytes()])["chunks"][0][0])

    def unsorted_page(store: CountingStore, obj: dict) -> CID:
        page = cbor.decode(store.blocks[obj["chunks"][1][1].to_bytes()])
        page[0], page[1] = page[1], page[0]
        obj["chunks"][1] = [page[0][0], _put(store, page)]
        return _put(store, obj)

    store, root = _tampered(unsorted_page)
    with pytest.raises(FormatError, match="not sorted"):
        Locator(store.get, root).find(cbor.decode(store.blocks[root.to_bytes()])["chunks"][1][0])

    def garbage_page(store: CountingStore, obj: dict) -> CID:
        obj["chunks"][0] = [obj["chunks"][0][0], _put(store, b"\x81\xf7")]
        return _put(store, obj)

    store, root = _tampered(garbage_page)
    with pytest.raises(FormatError):
        Locator(store.get, root).find(cbor.decode(store.blocks[root.to_bytes()])["chunks"][0][0])

    def wrong_pack_id(store: CountingStore, obj: dict) -> CID:
        page = cbor.decode(store.blocks[obj["packs"][0].to_bytes()])
        page[0][0] = page[1][0]
        obj["packs"] = [_put(store, page)]
        return _put(store, obj)

    store, root = _tampered(wrong_pack_id)
    with pytest.raises(FormatError, match="does not match its pack ID"):
        Locator(store.get, root).pack(0)

    def float_in_page(store: CountingStore, obj: dict) -> CID:
        page = cbor.decode(store.blocks[obj["chunks"][0][1].to_bytes()])
        block = cbor.encode(page)
        # Replace the first entry's codec (0 or 1, one byte) by a float.
        first = cbor.encode(page[0])
        i = block.index(first) + len(first) - 1
        bad = block[:i] + b"\xf9\x3c\x00" + block[i + 1 :]
        obj["chunks"][0] = [obj["chunks"][0][0], _put(store, bad)]
        return _put(store, obj)

    store, root = _tampered(float_in_page)
    with pytest.raises(FormatError):
        Locator(store.get, root).find(cbor.decode(store.blocks[root.to_bytes()])["chunks"][0][0])


def test_a_big_locator_finds_each_chunk_reading_one_page_and_the_root_once() -> None:
    """The work of a lookup, not its time: one chunk page per find once the root is read (timings: bench/)."""
    n = 60_000  # about 4 GiB of 64 KiB chunks
    packs = make_packs(250)
    entries = make_entries(n, len(packs))
    root, blocks = build_locator(DATASET, entries, packs)
    store = CountingStore(blocks)
    loc = Locator(store.get, root, cache_pages=1)
    assert store.reads == [root]
    for e in entries[:5000:97]:
        before = len(store.reads)
        assert loc.find(e[0]) is not None
        assert len(store.reads) - before <= 1  # at most the one chunk page holding it
    assert store.reads.count(root) == 1


def test_chunk_pages_are_content_defined() -> None:
    """Adding or removing one entry changes at most the page it falls in (and maybe its neighbour)."""
    entries = sorted(make_entries(20_000, 3, seed=5))
    pages = chunk_pages(entries)
    assert 4 <= len(pages) <= 20
    assert all(1 <= len(p) <= CHUNKS_PER_PAGE for p in pages)
    assert [e for p in pages for e in p] == entries
    fewer = entries[:7000] + entries[7001:]
    before = {tuple(map(tuple, p)) for p in pages}
    after = {tuple(map(tuple, p)) for p in chunk_pages(fewer)}
    assert len(after - before) <= 2


def test_chunk_pages_split_long_runs() -> None:
    """A run of entries none of which ends a page is cut at CHUNKS_PER_PAGE."""
    from dstore.format.locator import ends_page

    digests = [hashlib.sha256(str(i).encode()).digest() for i in range(4 * CHUNKS_PER_PAGE)]
    run = sorted(d for d in digests if not ends_page(d))[: CHUNKS_PER_PAGE + 5]
    pages = chunk_pages([(d, 0, 0, 1, 1, 0) for d in run])
    assert [len(p) for p in pages] == [CHUNKS_PER_PAGE, 5]


def _page_outcome(block: bytes) -> object:
    """What the native parser makes of a chunk page, in the Python parser's terms (None: refused)."""
    fast = native.locator_chunk_page(block)
    if fast is None:
        return None
    page = _Page.from_native(*fast)
    return list(page.entries())


def _python_outcome(block: bytes) -> object:
    try:
        return parse_chunk_page(block)
    except FormatError:
        return None


page_entries = st.lists(
    st.tuples(
        st.binary(min_size=32, max_size=32),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1) | st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32]),
        st.integers(0, 2**64 - 1),
        st.sampled_from([0, 1]),
    ),
    min_size=1,
    max_size=40,
)


@given(page_entries, st.data())
@settings(max_examples=300)
def test_native_chunk_page_parser_agrees_with_the_python_one(entries: list, data: st.DataObject) -> None:
    """Canonical pages and near misses (a byte flipped, cut or inserted; unsorted; raw with two sizes):
    the native parser accepts exactly what parse_chunk_page accepts, and reads the same entries."""
    entries = sorted({e[0]: e for e in entries}.values())
    if data.draw(st.booleans()):
        entries = [(d, p, o, sz, sz, 0) if c == 0 else (d, p, o, sl, sz, c) for d, p, o, sl, sz, c in entries]
    page = _encode_chunk_page(entries)
    block = data.draw(st.one_of(st.just(page), mutated(page, 2)))
    assert _page_outcome(block) == _python_outcome(block)


def test_native_chunk_page_parser_on_the_edges() -> None:
    entry = (bytes(32), 0, 0, 5, 5, 0)
    page = _encode_chunk_page([entry])
    assert _page_outcome(page) == [ChunkEntry(*entry)]
    full = [(i.to_bytes(32, "big"), 0, 0, 1, 1, 0) for i in range(CHUNKS_PER_PAGE)]
    assert len(_page_outcome(_encode_chunk_page(full))) == CHUNKS_PER_PAGE
    too_many = full + [((CHUNKS_PER_PAGE).to_bytes(32, "big"), 0, 0, 1, 1, 0)]
    assert _page_outcome(_encode_chunk_page(too_many)) is None is _python_outcome(_encode_chunk_page(too_many))
    assert _page_outcome(b"\x80") is None is _python_outcome(b"\x80")  # no entries
    assert _page_outcome(page[:1] + b"\x00" + page[1:]) is None  # a head that is not minimal
