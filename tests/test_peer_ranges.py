"""Ranged shard reads answered from memory (dstore/peer/cachedread.py): the same bytes and headers as a
FileResponse, on tmpfs, on a disk, and for the bytes past the in-memory limit."""

from __future__ import annotations

import os

import pytest

from dstore.peer import app as peer_app
from dstore.peer.cachedread import read_if_cached


def test_read_if_cached_reads_memory_and_refuses_what_it_cannot_promise(tmp_path):
    data = os.urandom(300_000)
    for folder in (tmp_path, "/dev/shm"):
        path = os.path.join(folder, f"cachedread-{os.getpid()}")
        with open(path, "wb") as f:
            f.write(data)
        try:
            got = read_if_cached(path, 1000, 5000)
            assert got is None or got == data[1000:6000]  # None only for bytes not in the page cache
            assert read_if_cached(path, 299_000, 5000) is None  # shorter than asked: the careful path
        finally:
            os.unlink(path)
    assert read_if_cached(tmp_path / "missing", 0, 10) is None


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [("bytes=0-99", 0, 99), ("bytes=100-", 100, 999), ("bytes=-10", 990, 999), ("bytes=990-5000", 990, 999)],
)
def test_the_range_parser_gives_the_bytes_served(header, first, last):
    class Req:
        headers = {"Range": header}

    assert peer_app._check_range(Req(), 1000) == (first, last)
