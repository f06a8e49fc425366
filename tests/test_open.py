"""`dstore.open`: seekable file objects that read only the chunks they need."""

from __future__ import annotations

import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dstore
from dstore.fetch.packs import PackReader
from dstore.ingest.add import ShardSpec, add
from dstore.store import Store

from treeutil import csv_like, random_bytes

DATA = random_bytes(3 << 20, 21) + csv_like(2 << 20)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("open")
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "data.bin").write_bytes(DATA)
    (src / "small.txt").write_bytes(b"small file")
    home = root / "store"
    with Store(home) as store:
        result = add(src, store, ShardSpec(4, 2))
    return home, result.dataset.encode("base32")


def test_ls_walk_and_read_all(dataset):
    home, cid = dataset
    with dstore.open(cid, home=home) as ds:
        assert [e.name for e in ds.ls()] == ["small.txt", "sub"]
        assert list(ds.walk()) == [("", ["sub"], ["small.txt"]), ("sub", [], ["data.bin"])]
        with ds.open("sub/data.bin") as f:
            assert isinstance(f, io.BufferedIOBase)
            assert f.read() == DATA
        assert ds.open("small.txt").read() == b"small file"


@settings(max_examples=60)
@given(st.integers(0, len(DATA)), st.integers(0, 300_000), st.sampled_from([os.SEEK_SET, os.SEEK_END]))
def test_random_access(dataset, offset, length, whence):
    home, cid = dataset
    with dstore.open(cid, home=home) as ds, ds.open("sub/data.bin") as f:
        pos = f.seek(offset if whence == os.SEEK_SET else offset - len(DATA), whence)
        assert pos == offset
        assert f.read(length) == DATA[offset : offset + length]
        assert f.tell() == min(len(DATA), offset + length)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.one_of(st.none(), st.integers(0, len(DATA))), st.integers(0, 1_500_000)),
        min_size=1,
        max_size=12,
    )
)
def test_any_sequence_of_reads(dataset, reads):
    """Reads going on where the last ended (None) or jumping anywhere, of any size, in one file object:
    the runs it reads whole, the chunks it keeps and its streaming state never change a byte."""
    home, cid = dataset
    with dstore.open(cid, home=home) as ds, ds.open("sub/data.bin") as f:
        for offset, length in reads:
            if offset is not None:
                f.seek(offset)
            pos = f.tell()
            buf = bytearray(length)
            n = f.readinto(buf)
            assert bytes(buf[:n]) == DATA[pos : pos + length]


def test_sequential_reads_go_by_runs(dataset):
    """Read to the end in 1 MiB pieces: the chunks come in runs read and decoded together, not one by one."""
    home, cid = dataset
    with dstore.open(cid, home=home) as ds, ds.open("sub/data.bin") as f:
        got = bytearray()
        while piece := f.read(1 << 20):
            got += piece
        assert bytes(got) == DATA
        stats = ds.chunks.stats
        assert stats["local"] >= 20 and stats["runs"] <= stats["local"] // 4


def test_reads_only_covering_chunks(dataset, monkeypatch):
    """A 10-byte read in the middle of a 5 MiB file touches one chunk's bytes, not the pack."""
    home, cid = dataset
    read_bytes = []
    original = dstore.store.shards.ShardFiles.read_into

    def counting(self, cid_text, buf, offset=0):
        read_bytes.append(len(buf))
        return original(self, cid_text, buf, offset)

    monkeypatch.setattr(dstore.store.shards.ShardFiles, "read_into", counting)
    monkeypatch.setattr(PackReader, "_parts", None)  # the whole-pack path must not be used
    with dstore.open(cid, home=home) as ds, ds.open("sub/data.bin") as f:
        f.seek(2_000_000)
        assert f.read(10) == DATA[2_000_000:2_000_010]
    assert 0 < sum(read_bytes) <= 2 * 262_144


def test_errors_are_oserrors(dataset):
    home, cid = dataset
    with dstore.open(cid, home=home) as ds:
        with pytest.raises(IsADirectoryError):
            ds.open("sub")
        with pytest.raises(FileNotFoundError):
            ds.open("nope")


def test_one_store_opened_twice_in_a_process_shares_its_index(dstore, home, tmp_path) -> None:
    """LMDB refuses a second open of one environment in a process: dstore.open and a dstore:// URL share it."""
    import fsspec

    from dstore import open as open_dataset  # the fixture ``dstore`` (the CLI) hides the module here

    src = tmp_path / "a.csv"
    src.write_bytes(b"x,y\n1,2\n")
    cid = dstore("add", src, "-q").out.strip().splitlines()[-1]
    first = open_dataset(cid, home=home)
    second = open_dataset(cid, home=home)
    fs = fsspec.filesystem("dstore", home=str(home))
    with first.open("") as a, second.open("") as b:
        assert a.read() == b.read() == src.read_bytes() == fs.cat(cid)
    first.close()
    with second.open("") as b:  # closing one leaves the shared index open for the other
        assert b.read() == src.read_bytes()
    second.close()
