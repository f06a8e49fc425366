"""A sequential reader of a local dataset: chunks decoded straight from the mapped data shards, few packs
mapped at once, and a damaged, missing or shortened shard read from parity instead (never a crash)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dstore
from dstore.ingest.add import ShardSpec, add
from dstore.mount.cache import ChunkCache
from dstore.mount.mapped import MAPPED_PACKS
from dstore.store import Store

from treeutil import csv_like, random_bytes

K = 2  # packs of about 2 MiB: a file of 8 MiB spans several
DATA = random_bytes(6 << 20, 71) + csv_like(2 << 20, 72)
REPO = Path(__file__).resolve().parent.parent


def _add(root: Path) -> tuple[Path, str]:
    src = root / "src"
    src.mkdir()
    (src / "data.bin").write_bytes(DATA)
    home = root / "store"
    with Store(home) as store:
        result = add(src, store, ShardSpec(K, 1))
    return home, result.dataset.encode("base32")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _add(tmp_path_factory.mktemp("local"))


@pytest.fixture
def fresh(tmp_path):
    """A dataset of its own, for a test that damages its shards."""
    return _add(tmp_path)


def mapped_shards(home: Path) -> set[str]:
    """The shard files of ``home`` this process has mapped now."""
    root = str((home / "shards").resolve())
    with open("/proc/self/maps") as f:
        return {line.split(None, 5)[5].strip() for line in f if root in line}


def chunk_at(ds, offset: int):
    """(pack record, locator entry) of the chunk that holds the file's byte ``offset``."""
    cid, node = ds.reader.resolve("data.bin")
    pos = 0
    for digest, size in ds.reader.leaves(cid, node):
        if pos + size > offset:
            _, record, ref = ds.reader.chunk_ref(digest)
            return record, ref
        pos += size
    raise AssertionError("offset past the end")


def data_shard_at(ds, offset: int) -> tuple[Path, int]:
    """The data shard file holding the stored bytes of the chunk at the file's byte ``offset``, and where
    in it they start."""
    record, ref = chunk_at(ds, offset)
    shard, within = divmod(ref.offset, record.shard_size)
    return ds.reader.store.shards.path(record.shards[shard].encode("base32")), within


@pytest.mark.parametrize("piece", [128 << 10, 1 << 20, 3 << 20])
def test_a_sequential_reader_reads_the_mapped_shards_and_keeps_few_mapped(dataset, piece):
    """Reads of a mount's size, of 1 MiB and larger than a pack: the same bytes, at most MAPPED_PACKS packs
    mapped at any time, none once the file is closed, and nothing read through the whole-pack path."""
    home, cid = dataset
    most = 0
    with dstore.open(cid, home=home) as ds:
        with ds.open("data.bin") as f:
            got = bytearray()
            while data := f.read(piece):
                got += data
                most = max(most, len(mapped_shards(home)))
        assert bytes(got) == DATA
        assert not mapped_shards(home)
        assert ds.chunks.stats["pack"] == 0
    assert 1 <= most <= MAPPED_PACKS * K


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.one_of(st.none(), st.integers(-(600 << 10), 600 << 10)), st.integers(0, 1_500_000)),
        min_size=1,
        max_size=16,
    )
)
def test_reads_going_on_or_stepping_back_a_little(dataset, reads):
    """Sequential reads of any size, some starting a little before or after where the last ended (a mount's
    read-ahead): the chunks decoded into the two reused buffers never hand out a wrong byte."""
    home, cid = dataset
    with dstore.open(cid, home=home) as ds, ds.open("data.bin") as f:
        for step, length in reads:
            if step is not None:
                f.seek(max(0, f.tell() + step))
            pos = f.tell()
            if length % 2:
                assert f.read(length) == DATA[pos : pos + length]
            else:
                buf = bytearray(length)
                n = f.readinto(buf)
                assert bytes(buf[:n]) == DATA[pos : pos + length]


def test_a_small_file_read_whole_or_a_few_reads_in_a_row_map_no_pack(dataset):
    """A sample read whole (``read_bytes``, a DataLoader's), or a few reads in a row: mapping a pack's k shards
    would cost more than reading their chunks, so nothing is mapped; a stream of reads maps."""
    home, cid = dataset
    with dstore.open(cid, home=home) as ds, ds.open("data.bin") as f:
        assert f.read(1 << 20) == DATA[: 1 << 20]
        assert not mapped_shards(home)
        assert f.read(100) == DATA[1 << 20 : (1 << 20) + 100]
        assert not mapped_shards(home)
        f.seek(5 << 20)  # a record deep in a file: its header, then its body
        assert f.read(100) == DATA[5 << 20 : (5 << 20) + 100]
        assert f.read(200_000) == DATA[(5 << 20) + 100 : (5 << 20) + 200_100]
        assert not mapped_shards(home)
        f.seek(3 << 20)  # and from there on, a stream
        got = bytearray()
        while data := f.read(1 << 20):
            got += data
            if len(got) >= 3 << 20:
                assert mapped_shards(home)
        assert bytes(got) == DATA[3 << 20 :]


def test_the_cache_is_not_asked_for_chunks_the_mapped_shards_hold(dataset, tmp_path):
    home, cid = dataset
    cache = ChunkCache(tmp_path / "cache")
    with dstore.open(cid, home=home, cache=cache) as ds, ds.open("data.bin") as f:
        assert f.read() == DATA
        assert ds.chunks.stats["local"] > 0
    assert cache.misses == 0


def test_a_shard_damaged_while_a_reader_streams_is_rebuilt_from_parity(fresh):
    home, cid = fresh
    with dstore.open(cid, home=home) as ds, ds.open("data.bin") as f:
        first = f.read(3 << 20)  # past MAP_FROM_BYTES: the reader maps the packs it reads
        shard, within = data_shard_at(ds, (3 << 20) + (300 << 10))  # past the chunk decoded into memory
        assert str(shard.resolve()) in mapped_shards(home)  # the reader is in this pack
        with open(shard, "r+b") as g:  # bit rot in place, under the mapping
            g.seek(within)
            b = g.read(1)
            g.seek(within)
            g.write(bytes([b[0] ^ 0xFF]))
        assert first + f.read() == DATA
        assert ds.chunks.stats["pack"] > 0


def test_a_missing_shard_is_read_from_parity(fresh):
    home, cid = fresh
    with dstore.open(cid, home=home) as ds:
        data_shard_at(ds, 3 << 20)[0].unlink()
        with ds.open("data.bin") as f:
            got = bytearray()
            while data := f.read(1 << 20):
                got += data
        assert bytes(got) == DATA
        assert ds.chunks.stats["pack"] > 0


TRUNCATE_WHILE_STREAMING = """
import os, sys
import dstore
sys.path.insert(0, sys.argv[4])
from test_open_local import data_shard_at
home, cid = sys.argv[1], sys.argv[2]
expected = open(sys.argv[3], "rb").read()
with dstore.open(cid, home=home) as ds, ds.open("data.bin") as f:
    got = f.read(3 << 20)
    shard, _ = data_shard_at(ds, len(got) + (300 << 10))  # the data shard the reader reads next, mapped
    os.truncate(shard, 1000)
    while piece := f.read(1 << 20):
        got += piece
    assert got == expected, "wrong bytes"
    assert ds.chunks.stats["pack"] > 0, ds.chunks.stats
print("ok")
"""


def test_shards_truncated_while_a_reader_streams_are_read_from_parity_not_a_crash(fresh, tmp_path):
    """A mapped shard file that shrinks would kill the reader (SIGBUS) when its lost pages are read: the reader
    checks the size first and reads the pack from parity instead. In a child process, so a crash shows as one."""
    home, cid = fresh
    (tmp_path / "expected").write_bytes(DATA)
    (tmp_path / "reader.py").write_text(TRUNCATE_WHILE_STREAMING)
    env = {**os.environ, "PYTHONPATH": str(REPO), "DSTORE_PEERS": "", "DSTORE_GATEWAYS": ""}
    run = subprocess.run(
        [sys.executable, str(tmp_path / "reader.py"), str(home), cid, str(tmp_path / "expected"), str(REPO / "tests")],
        capture_output=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 0, (run.returncode, run.stderr.decode()[-2000:])
    assert run.stdout.strip() == b"ok"


def _read_rest(f, piece, queue) -> None:
    got = bytearray()
    while data := f.read(piece):
        got += data
    queue.put(bytes(got) == DATA[3 << 20 :])


@pytest.mark.parametrize("piece", [128 << 10, 1 << 20])
def test_a_forked_child_goes_on_reading_with_the_parents_mappings(dataset, piece):
    """A DataLoader worker forks after the parent started reading (with small reads, while its helper thread
    decodes the next run): both read the rest correctly."""
    home, cid = dataset
    ctx = multiprocessing.get_context("fork")
    with dstore.open(cid, home=home) as ds, ds.open("data.bin") as f:
        got = bytearray()
        while len(got) < 3 << 20:
            got += f.read(piece)
        assert bytes(got) == DATA[: 3 << 20]
        queue = ctx.Queue()
        child = ctx.Process(target=_read_rest, args=(f, piece, queue))
        child.start()
        assert queue.get(timeout=60) is True
        child.join(60)
        assert child.exitcode == 0
        assert f.read() == DATA[3 << 20 :]


def test_a_small_reader_closed_while_its_next_run_is_decoded(dataset):
    """Closing a file whose helper thread decodes the next run: no error, and nothing left mapped."""
    home, cid = dataset
    with dstore.open(cid, home=home) as ds:
        for stop in (1, 3, 17):
            f = ds.open("data.bin")
            for _ in range(stop):
                assert f.read(128 << 10)
            f.close()
            assert not mapped_shards(home)
            assert not any(t.name.startswith("dstore-next") for t in threading.enumerate())


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(-(600 << 10), 600 << 10)),
            st.sampled_from([4096, 128 << 10, 131072 + 4096, 1 << 20]),
            st.booleans(),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_a_mounts_reads_at_offsets_go_on_where_they_should(dataset, reads):
    """A mount's reads (``readinto_at``: an offset and libfuse's buffer), most going on exactly where the last
    ended, some stepping aside, mixed with plain reads: the right bytes, and the position after each is where
    it ended, so the plain read after a read from the window goes on from there."""
    home, cid = dataset
    with dstore.open(cid, home=home) as ds, ds.open("data.bin") as f:
        end = 0
        for step, length, plain in reads:
            offset = min(len(DATA), max(0, end + (step or 0)))
            if plain:
                f.seek(offset)
                got = f.read(length)
            else:
                buf = bytearray(length)
                got = bytes(buf[: f.readinto_at(offset, memoryview(buf))])
            assert got == DATA[offset : offset + length]
            end = offset + len(got)
            assert f.tell() == end
        assert f.read(1000) == DATA[end : end + 1000]


def test_a_closed_file_serves_no_read_at_an_offset(dataset):
    """Closing clears the window: a read where the last ended, which the window would have held, is refused."""
    home, cid = dataset
    with dstore.open(cid, home=home) as ds:
        f = ds.open("data.bin")
        buf = memoryview(bytearray(128 << 10))
        for i in range(20):  # past the first window: the next run decodes on the helper thread
            assert f.readinto_at(i * len(buf), buf) == len(buf)
            assert bytes(buf) == DATA[i * len(buf) : (i + 1) * len(buf)]
        f.close()
        with pytest.raises(ValueError, match="closed file"):
            f.readinto_at(20 * len(buf), buf)
