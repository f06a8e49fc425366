"""Chunks read by range from real peers for a data loader (ChunkSource.read_chunks): raw chunks checked
where they lie in the answers, compressed ones decoded from them, chunks split between two data shards
put together first; and the grouping of chunks into runs per answer, as a property."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from peerutil import added_on_peers  # noqa: E402

import dstore  # noqa: E402
from dstore.format.locator import CODEC_RAW, CODEC_ZSTD, ChunkEntry  # noqa: E402
from dstore.mount.chunks import ChunkSource, _plan_ranges, _runs_by_answer  # noqa: E402
from dstore.net.ranges import RangeRead  # noqa: E402
from dstore.torch import SampleStream  # noqa: E402

from treeutil import random_bytes  # noqa: E402

TOKEN = "ranges-token"
# Incompressible files (stored raw) and text (stored as zstd frames) side by side, in packs small enough
# that many chunks straddle a data shard boundary.
FILES = {
    **{f"mix/raw-{i:02d}.bin": random_bytes(30_000 + 7_919 * i, 500 + i) for i in range(12)},
    **{f"mix/text-{i:02d}.txt": (f"sample {i} " * (4_000 + 1_000 * i)).encode() for i in range(6)},
}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("rangepeers")
    src = root / "src"
    for path, data in FILES.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_bytes(data)
    with added_on_peers(root, src, TOKEN) as found:
        yield found


def layout(ds, paths):
    """(codecs of the chunks, how many straddle a data shard boundary) of the files at ``paths``."""
    codecs, split = set(), 0
    for path in paths:
        for digest, _ in ds.reader.leaves(*ds.reader.resolve(path)):
            _, record, ref = ds.reader.chunk_ref(digest)
            codecs.add(ref.codec)
            split += ref.offset // record.shard_size != (ref.offset + ref.stored_len - 1) // record.shard_size
    return codecs, split


def test_raw_compressed_and_split_chunks_come_back_exact_from_ranges(mixed, tmp_path, monkeypatch):
    monkeypatch.delenv("DSTORE_PEERS", raising=False)
    peers, cid = mixed
    urls = [p.url for p in peers]
    with dstore.open(cid, peers=urls, cache=False) as ds:
        codecs, split = layout(ds, FILES)
    assert codecs == {CODEC_RAW, CODEC_ZSTD} and split >= 1  # the cases this test is about are there
    with SampleStream(cid, "mix", seed=3, peers=urls, home=tmp_path / "home", cache=tmp_path / "cache") as s:
        assert dict(s) == FILES
        stats = s._opened.ds.chunks.stats
        assert stats["pack"] == 0 and stats["bad_range"] == 0 and stats["range"] >= len(FILES)
    # ... and what was cached is what a fresh reader gets from the cache alone.
    with SampleStream(cid, "mix", seed=4, peers=urls, home=tmp_path / "home2", cache=tmp_path / "cache") as s:
        assert dict(s) == FILES
        assert s._opened.ds.chunks.stats["range_requests"] == 0


@pytest.mark.parametrize(("path", "codec"), [("mix/raw-05.bin", CODEC_RAW), ("mix/text-03.txt", CODEC_ZSTD)])
def test_a_damaged_chunk_in_a_range_answer_is_caught(mixed, tmp_path, monkeypatch, path, codec):
    """A byte of one chunk is flipped in its data shard on the peer holding it: the chunk fails its check
    (a raw one hashed in the answer, a compressed one decoded from it), the peer is scored down, and the
    pack is read whole (its damaged shard rebuilt from parity)."""
    monkeypatch.delenv("DSTORE_PEERS", raising=False)
    peers, cid = mixed
    urls = [p.url for p in peers]
    with dstore.open(cid, peers=urls, cache=False) as ds:
        digest, _ = next(iter(ds.reader.leaves(*ds.reader.resolve(path))))
        _, record, ref = ds.reader.chunk_ref(digest)
    assert ref.codec == codec
    shard, within = divmod(ref.offset, record.shard_size)
    text = record.shards[shard].encode("base32")
    holders = [p.home / "shards" / text[-2:] / text for p in peers]
    files = [f for f in holders if f.exists()]
    assert files
    saved = {f: f.read_bytes() for f in files}
    try:
        for f, data in saved.items():  # the shard of every peer that holds it: no good range anywhere
            bad = bytearray(data)
            bad[within] ^= 0xFF
            f.write_bytes(bytes(bad))
        with SampleStream(cid, "mix", seed=5, peers=urls, home=tmp_path / "home", cache=tmp_path / "c") as s:
            assert dict(s) == FILES
            stats = s._opened.ds.chunks.stats
            assert stats["bad_range"] >= 1 and stats["pack"] >= 1
    finally:
        for f, data in saved.items():
            f.write_bytes(data)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 4),  # k
    st.integers(16, 300),  # shard size
    st.lists(st.tuples(st.integers(0, 40), st.integers(1, 120), st.booleans()), min_size=1, max_size=12),
)
def test_runs_by_answer_hold_every_chunk_s_stored_bytes(k, shard_size, layout_spec):
    """Chunks (gap before, stored length, compressed?) laid out in a pack of k shards: the runs built from
    the planned range answers give each chunk exactly its stored bytes, sharing an answer where they can."""
    refs, pos = [], 0
    for gap, n, zstd in layout_spec:
        pos += gap
        refs.append(ChunkEntry(os.urandom(32), 0, pos, n, n + 10 if zstd else n, CODEC_ZSTD if zstd else CODEC_RAW))
        pos += n
    total = max(pos, 1)
    shard_size = max(shard_size, -(-total // k))
    data = os.urandom(shard_size * k)

    record = SimpleNamespace(size=shard_size * k, shard_size=shard_size)  # the fields _segments reads

    def segments(record, ref):
        return ChunkSource._segments(None, record, ref)  # type: ignore[arg-type]  # uses no state

    ranges, pieces = _plan_ranges(record, refs, segments)
    assert pieces is not None
    answers = [RangeRead(data[s * shard_size + a : s * shard_size + b], None) for s, a, b in ranges]
    runs = _runs_by_answer(refs, pieces, answers)
    covered = []
    for stored, first, end, offsets in runs:
        assert len(offsets) == end - first
        for ref, at in zip(refs[first:end], offsets, strict=True):
            assert bytes(memoryview(stored)[at : at + ref.stored_len]) == data[ref.offset : ref.offset + ref.stored_len]
        covered += range(first, end)
    assert covered == list(range(len(refs)))
    whole = sum(1 for p in pieces if len(p) == 1)
    assert len(runs) <= len(ranges) + (len(refs) - whole)  # one run per answer, plus one per split chunk


def test_chunks_read_for_other_workers_are_not_read_again_when_cached(mixed, tmp_path, monkeypatch):
    """``read_chunks(..., keep=mine)`` with every chunk cached reads (and checks) only ``mine``: the other
    workers' chunks are theirs to read from the cache."""
    monkeypatch.delenv("DSTORE_PEERS", raising=False)
    peers, cid = mixed
    urls = [p.url for p in peers]
    cache = tmp_path / "cache"
    with dstore.open(cid, peers=urls, home=tmp_path / "home", cache=cache) as ds:
        wants = []
        for path in sorted(FILES):
            wants += [(d, n) for d, n in ds.reader.leaves(*ds.reader.resolve(path)) if (d, n) not in wants]
        assert len(ds.chunks.read_chunks(wants)) == len(wants)  # now all cached
        ds.chunks.flush()
    mine = {d for d, _ in wants[::3]}
    with dstore.open(cid, peers=urls, home=tmp_path / "home2", cache=cache) as ds:
        got = ds.chunks.read_chunks(wants, keep=mine)
        assert set(got) == mine
        assert ds.chunks.stats["cache"] == len(mine) and ds.chunks.stats.get("range_requests", 0) == 0
        assert ds.chunks.cache.hits == len(mine)
