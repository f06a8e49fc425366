"""The batched native add path: same chunks, same IDs as the per-segment path it replaced."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import blake3
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

import dstore.ingest.add as add_module
import dstore.ingest.packer as packer
from dstore import _native
from dstore.errors import InputError
from dstore.ingest.add import ShardSpec, add
from dstore.store import Store

import reference_chunker as ref
from treeutil import csv_like, random_bytes

SMALL_FILES = 300
FOLDERS = 7


def _small_sizes(rng: random.Random, n: int) -> list[int]:
    """Log-normal around 48 KiB (like the 20,000-file benchmark tree), a few tiny ones."""
    sizes = [max(0, int(rng.lognormvariate(math.log(48 * 1024), 0.8))) for _ in range(n)]
    sizes[:5] = [0, 1, 63, 64, 16 * 1024 - 1]
    return sizes


def make_mixed_tree(root: Path) -> None:
    """Many small files (random and compressible, some repeated) in folders, plus a few big ones.

    Big files straddle the 16 MiB segment of the streaming path (one exactly a segment long).
    """
    rng = random.Random(7)
    root.mkdir(parents=True)
    folders = [root / "a", root / "b", root / "b" / "c", root / "d" / "e" / "f"] + [
        root / f"g{i}" for i in range(FOLDERS - 4)
    ]
    for f in folders:
        f.mkdir(parents=True)
    made: list[bytes] = []
    for i, size in enumerate(_small_sizes(rng, SMALL_FILES)):
        kind = rng.random()
        if kind < 0.1 and made:
            data = rng.choice(made)  # the same bytes again: dedup within the add
        elif kind < 0.4:
            data = csv_like(size, seed=i)
        else:
            data = random_bytes(size, seed=1000 + i)
        made.append(data)
        (rng.choice(folders) / f"f{i:04d}.bin").write_bytes(data)
    (root / "a" / "big_random.bin").write_bytes(random_bytes((20 << 20) + 12345, seed=1))
    (root / "b" / "big_csv.csv").write_bytes(b"".join(csv_like(1 << 20, seed=s) for s in range(17)))
    (root / "b" / "c" / "segment.bin").write_bytes(random_bytes(16 << 20, seed=2))
    (root / "d" / "segment_less_one.bin").write_bytes(random_bytes((16 << 20) - 1, seed=2))


def store_fingerprint(home: Path) -> str:
    """BLAKE3-free digest of the names and sizes of every shard file the store holds (data and metadata)."""
    h = hashlib.sha256()
    for folder in ("shards", "metadata"):
        for p in sorted((home / folder).rglob("*")):
            if p.is_file():
                h.update(f"{folder}/{p.name} {p.stat().st_size}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- the batch kernel

SMALL = (256, 1024, 4096)  # small chunker sizes: many chunks per file, a fast reference chunker


def _file_data(draw: st.DrawFn) -> bytes:
    size = draw(st.integers(0, 40_000))
    seed = draw(st.integers(0, 2**32))
    kind = draw(st.sampled_from(["random", "text", "mixed"]))
    if kind == "random":
        return random_bytes(size, seed)
    if kind == "text":
        return csv_like(size, seed)
    half = size // 2
    return csv_like(half, seed) + random_bytes(size - half, seed)


@st.composite
def files_and_splits(draw: st.DrawFn) -> tuple[list[bytes], list[int]]:
    files = [_file_data(draw) for _ in range(draw(st.integers(1, 8)))]
    cuts = sorted(draw(st.sets(st.integers(1, len(files)), max_size=len(files))) | {len(files)})
    return files, cuts


def _decoded(stored: bytes, codec: int, length: int) -> bytes:
    if codec == 1:
        out = zstandard.ZstdDecompressor().decompress(stored, max_output_size=length)
        assert len(stored) <= length - -(-length // 20)  # stored only when it saves at least 5%
        return out
    return stored


@given(files_and_splits(), st.sampled_from([0, 1, 3]))
def test_batches_cut_the_chunks_of_one_segment_per_file(tmp_path_factory, case, level):
    """Whatever the batch split, every file's chunks are those of process_segment over the whole file."""
    files, cuts = case
    folder = tmp_path_factory.mktemp("batch")
    paths = []
    for i, data in enumerate(files):
        paths.append(folder / f"{i}.bin")
        paths[-1].write_bytes(data)
    got: list[list[tuple[int, bytes, int, bytes]]] = []
    start = 0
    for end in cuts:
        batch = _native.process_files(
            [str(p) for p in paths[start:end]], [len(d) for d in files[start:end]], *SMALL, level
        )
        assert batch.errors == []
        assert batch.bytes_in == sum(len(d) for d in files[start:end])
        assert len(batch.chunk_counts) == end - start
        buf = bytearray(sum(batch.stored_lengths) + 7)
        order = list(range(len(batch)))
        random.Random(end).shuffle(order)
        assert batch.copy_into(order, buf, 7) == len(buf)
        assert bytes(buf[7:]) == b"".join(batch.stored(i) for i in order)
        c = 0
        for count in batch.chunk_counts:
            got.append(
                [
                    (batch.lengths[i], batch.digests[32 * i : 32 * i + 32], batch.codecs[i], batch.stored(i))
                    for i in range(c, c + count)
                ]
            )
            c += count
        start = end
    for data, chunks in zip(files, got, strict=True):
        seg = _native.process_segment(data, True, *SMALL, level)
        want = [
            (seg.lengths[i], seg.digests[32 * i : 32 * i + 32], seg.codecs[i], bytes(seg.stored(i)))
            for i in range(len(seg))
        ]
        assert chunks == want
        assert [n for n, *_ in chunks] == ref.chunk_lengths(data, True, *SMALL)
        pos = 0
        for length, digest, codec, stored in chunks:
            piece = data[pos : pos + length]
            assert digest == blake3.blake3(piece).digest()
            assert _decoded(stored, codec, length) == piece
            pos += length


def test_batch_reports_each_unreadable_or_resized_file(tmp_path):
    good, grew, shrank = (tmp_path / n for n in ("good", "grew", "shrank"))
    for p in (good, grew, shrank):
        p.write_bytes(random_bytes(5000, 1))
    names = [good, tmp_path / "missing", grew, shrank, good]
    batch = _native.process_files([str(p) for p in names], [5000, 10, 4999, 5001, 5000], *SMALL, 1)
    assert [(i, errno) for i, errno, _ in batch.errors] == [(1, 2), (2, 0), (3, 0)]
    assert "grew" in batch.errors[1][2] and "shrank" in batch.errors[2][2]
    assert batch.chunk_counts[1:4] == [0, 0, 0]
    assert batch.chunk_counts[0] == batch.chunk_counts[4] > 0
    assert batch.bytes_in == 10_000


def test_batch_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="differ in length"):
        _native.process_files([str(tmp_path)], [], *SMALL, 1)
    with pytest.raises(ValueError, match="zstd_level"):
        _native.process_files([], [], *SMALL, 99)
    batch = _native.process_files([], [], *SMALL, 1)
    assert len(batch) == 0 and batch.chunk_counts == []
    with pytest.raises(IndexError):
        batch.stored(0)
    with pytest.raises(IndexError):
        batch.copy_into([0], bytearray(1), 0)


# --------------------------------------------------------------------------- same datasets as before

# `dstore add --json` of make_mixed_tree (then of its folder b/ into the same store), and a digest of
# the shard files the store holds, made with the per-segment add path before the batch kernel replaced it,
# with packs closing at k × 1 MiB: these tests pack with that unit whatever the default. The dataset IDs do
# not depend on the unit; the bytes stored (padding) and the pack records do.
KNOWN = json.loads(Path(__file__).with_name("vectors").joinpath("add_mixed_tree.json").read_text())
KNOWN_PACK_UNIT_BYTES = 1 << 20
_DSTORE_WITH_KNOWN_UNIT = (
    f"import dstore.ingest.packer as p; p.PACK_UNIT_BYTES = {KNOWN_PACK_UNIT_BYTES}; "
    "from dstore.cli import main; main()"
)


@pytest.fixture(scope="module")
def mixed_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mixed") / "src"
    make_mixed_tree(root)
    return root


@pytest.mark.parametrize("shards", ["4+2", "1+0"])
def test_add_gives_the_same_datasets_and_figures_as_before(tmp_path, mixed_tree, shards):
    home = tmp_path / "home"
    env = {**os.environ, "DSTORE_HOME": str(home)}

    def add_json(path: Path) -> dict[str, object]:
        cmd = [sys.executable, "-c", _DSTORE_WITH_KNOWN_UNIT, "add", str(path), "--json", "-q", "--shards", shards]
        return json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)

    assert add_json(mixed_tree) == KNOWN[shards]["first"]
    assert add_json(mixed_tree / "b") == KNOWN[shards]["second"]
    assert store_fingerprint(home) == KNOWN[shards]["shards"]


def test_the_pack_unit_changes_how_chunks_are_packed_not_the_dataset_id(tmp_path, mixed_tree, monkeypatch):
    """Packs of 4 MiB units: the IDs and figures of the known dataset, fewer packs."""
    monkeypatch.setattr(packer, "PACK_UNIT_BYTES", 4 * KNOWN_PACK_UNIT_BYTES)
    with Store(tmp_path / "home") as store:
        got = add(mixed_tree, store, ShardSpec(4, 2)).to_json()
    known = KNOWN["4+2"]["first"]
    same = ("cid", "root", "bytes_in", "files", "chunks", "new_chunks", "dedup_ratio", "compression_ratio")
    assert {k: got[k] for k in same} == {k: known[k] for k in same}
    # Fewer packs: less padding in the shards, fewer pack records in the metadata.
    assert got["new_bytes_stored"] < known["new_bytes_stored"]
    assert got["new_metadata_bytes"] < known["new_metadata_bytes"]


def test_batch_size_does_not_change_the_dataset(tmp_path, mixed_tree, monkeypatch):
    """Tiny batches (a few files, 1 MiB) store the same dataset, packs and shards."""
    monkeypatch.setattr(packer, "PACK_UNIT_BYTES", KNOWN_PACK_UNIT_BYTES)
    monkeypatch.setattr(add_module, "BATCH_BYTES", 1 << 20)
    monkeypatch.setattr(add_module, "BATCH_MAX_FILES", 3)
    monkeypatch.setattr(add_module, "LOCATOR_RECORDS", 5)  # the chunk table's records in many native calls
    reported: list[int] = []
    with Store(tmp_path / "home") as store:
        result = add(mixed_tree, store, ShardSpec(4, 2), progress=reported.append)
        assert result.to_json() == KNOWN["4+2"]["first"]
        assert sum(reported) == result.bytes_in
        assert add(mixed_tree / "b", store, ShardSpec(4, 2)).to_json() == KNOWN["4+2"]["second"]
    assert store_fingerprint(tmp_path / "home") == KNOWN["4+2"]["shards"]


def test_the_next_batch_is_read_while_the_one_before_is_stored(tmp_path, monkeypatch):
    """Batches overlap: the native call of batch N+1 starts before batch N's chunks are packed (Python's part)."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(7):
        (src / ("d" if i % 2 else "") / f"{i}.bin").write_bytes(random_bytes(3000 + i, i))
    with Store(tmp_path / "one") as store:
        expected = add(src, store, ShardSpec(4, 2)).to_json()
    monkeypatch.setattr(add_module, "BATCH_MAX_FILES", 2)
    events: list[str] = []
    real_process, real_add_chunks = _native.process_files, add_module.Packer.add_chunks
    monkeypatch.setattr(add_module._native, "process_files", lambda *a: events.append("read") or real_process(*a))
    monkeypatch.setattr(
        add_module.Packer, "add_chunks", lambda self, *a: events.append("pack") or real_add_chunks(self, *a)
    )
    with Store(tmp_path / "home") as store:
        assert add(src, store, ShardSpec(4, 2)).to_json() == expected
    assert events[:3] == ["read", "read", "pack"]
    assert events.count("read") == events.count("pack") >= 3


def test_a_failed_batch_leaves_no_native_call_running(tmp_path, monkeypatch):
    """A file of a later batch that vanished fails the add naming it; the batch read ahead is waited for."""
    monkeypatch.setattr(add_module, "BATCH_MAX_FILES", 2)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(9):
        (src / f"{i}.bin").write_bytes(random_bytes(3000 + i, i))
    victim = src / "4.bin"
    monkeypatch.setattr(add_module, "walk", _racing_walk(victim.unlink))
    with Store(tmp_path / "home") as store, pytest.raises(InputError, match=f"cannot read {victim}"):
        add(src, store, ShardSpec(2, 1))
    assert not [t for t in threading.enumerate() if t.name.startswith("dstore-batch")]


# --------------------------------------------------------------------------- files that change under the add


def _racing_walk(change):
    """The real walk lists the tree, then ``change`` (a file vanishes or is rewritten before it is read)."""
    real = add_module.walk

    def walk(path: Path):
        listed = list(real(path))
        change()
        yield from listed

    return walk


@pytest.mark.parametrize("size", [5000, 17 << 20])  # a batched file, a streamed one
@pytest.mark.parametrize("what", ["vanish", "grow", "shrink"])
def test_a_file_that_changes_after_the_walk_is_an_input_error(tmp_path, monkeypatch, size, what):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(random_bytes(3000, 1))
    victim = src / "b.bin"
    victim.write_bytes(random_bytes(size, 2))
    change = {
        "vanish": victim.unlink,
        "grow": lambda: victim.write_bytes(random_bytes(size + 1, 2)),
        "shrink": lambda: victim.write_bytes(random_bytes(size - 1, 2)),
    }[what]
    monkeypatch.setattr(add_module, "walk", _racing_walk(change))
    with Store(tmp_path / "home") as store, pytest.raises(InputError, match=f"cannot read {victim}"):
        add(src, store, ShardSpec(2, 1))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_an_input_error(tmp_path, dstore):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"x" * 100)
    (src / "a.bin").chmod(0)
    result = dstore("add", src, check=False)
    assert result.code != 0 and f"{src / 'a.bin'}" in result.err


@given(
    st.lists(
        st.tuples(
            # Some digests end their page (first 4 bytes = 1023 mod 1024): pages of many sizes.
            st.builds(
                bytes.__add__,
                st.sampled_from([b"\x00\x00\x03\xff", b"\x7f\x00\x07\xff", b"\x00\x00\x00\x01"])
                | st.binary(min_size=4, max_size=4),
                st.binary(min_size=28, max_size=28),
            ),
            st.integers(0, 2),
            st.integers(0, 1000),
            st.integers(1, 500),
            st.sampled_from([0, 1]),
        ),
        min_size=1,
        max_size=300,
    ),
    st.integers(1, 64),
)
def test_native_locator_pages_are_build_locators_pages(entries, piece):
    """Chunk pages made natively from spool records, in pieces of any size, are build_locator's pages."""
    from dstore.format.cbor import block_cid
    from dstore.format.cid import make_cid
    from dstore.format.locator import build_locator, chunk_pages
    from dstore.format.pack import PackRecord
    from dstore.ingest.spool import _ENTRY, RECORD_BYTES

    rows = sorted({d: (d, p, off, sl, sl + c, c) for d, p, off, sl, c in entries}.values())
    record = PackRecord(k=1, m=0, size=2000, shard_size=2048, shards=(make_cid(0x55, b"x"),))
    packs = [(block_cid(record.encode()), record)] * 3
    _, blocks = build_locator(make_cid(0x71, b"d"), rows, packs)
    expected = blocks[: len(chunk_pages(rows))]
    records = b"".join(_ENTRY.pack(d, p, off, sl, sz, c) for d, p, off, sl, sz, c in rows)
    got, carry, after = [], b"", None
    for start in range(0, len(records), piece * RECORD_BYTES):
        data = carry + records[start : start + piece * RECORD_BYTES]
        last = start + piece * RECORD_BYTES >= len(records)
        pages, done = _native.locator_pages(data, [0, 1, 2], [2000, 2000, 2000], after, last)
        got += pages
        if done:
            after = data[(done - 1) * RECORD_BYTES : (done - 1) * RECORD_BYTES + 32]
        carry = data[done * RECORD_BYTES :]
    assert got == [block for _, block in expected]
    assert all(
        add_module._first_digest(page) == first
        for page, first in zip(got, [p[0][0] for p in chunk_pages(rows)], strict=True)
    )


def test_native_locator_pages_refuse_what_is_no_locator():
    from dstore.ingest.spool import _ENTRY

    a, b = _ENTRY.pack(b"a" * 32, 0, 0, 5, 5, 0), _ENTRY.pack(b"b" * 32, 0, 0, 5, 5, 0)
    for records, sizes, why in [
        (b + a, [10], "sorted"),
        (a + a, [10], "sorted"),
        (_ENTRY.pack(b"a" * 32, 0, 8, 5, 5, 0), [10], "ends past its pack"),
        (_ENTRY.pack(b"a" * 32, 0, 0, 4, 5, 0), [10], "raw-stored"),
        (_ENTRY.pack(b"a" * 32, 0, 0, 4, 5, 2), [10], "codec"),
        (_ENTRY.pack(b"a" * 32, 1, 0, 5, 5, 0), [10], "out of range"),
        (a[:-1], [10], "61 bytes"),
    ]:
        with pytest.raises(ValueError, match=why):
            _native.locator_pages(records, [0], sizes, None, True)
    with pytest.raises(ValueError, match="sorted"):
        _native.locator_pages(a, [0], [10], b"a" * 32, True)  # the record before was this digest
