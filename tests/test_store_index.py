"""The data.mdb length check that keeps a truncated index from killing a reader with SIGBUS (real LMDB)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dstore.errors import StoreError
from dstore.store.index import Index, check_data_file


@pytest.fixture(scope="module")
def full_index(tmp_path_factory) -> tuple[bytes, int]:
    """Bytes of a real data.mdb of many pages, and the length its newest meta page asks for."""
    path = tmp_path_factory.mktemp("lmdb") / "index-0"
    index = Index(path)
    index.commit_dataset(((os.urandom(36), os.urandom(200)) for _ in range(3000)), b"d" * 36, b"l" * 36)
    index.close()
    data = (path / "data.mdb").read_bytes()
    check_data_file(path / "data.mdb")
    return data, len(data)


@given(cut=st.integers(min_value=1, max_value=1 << 30))
def test_every_truncation_is_refused(tmp_path_factory, full_index, cut):
    data, size = full_index
    target = tmp_path_factory.mktemp("cut") / "data.mdb"
    target.write_bytes(data[: cut % size])
    if cut % size == 0:
        check_data_file(target)  # an empty file is a new environment (Store refuses it when shards exist)
        return
    with pytest.raises(StoreError, match="fsck --rebuild"):
        check_data_file(target)


@given(junk=st.binary(max_size=9000))
def test_any_bytes_are_checked_or_refused_cleanly(tmp_path_factory, junk):
    target: Path = tmp_path_factory.mktemp("junk") / "data.mdb"
    target.write_bytes(junk)
    try:
        check_data_file(target)
    except StoreError:
        pass


def _resident_mib(path: Path) -> float:
    """This process's resident pages of its mappings of ``path`` (/proc/self/smaps), in MiB."""
    target, kib, current = os.path.realpath(path), 0, None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                current = fields[5] if len(fields) > 5 else None
            elif fields[0] == "Rss:" and current == target:
                kib += int(fields[1])
    return kib / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_lookups_and_commits_keep_the_index_s_share_of_rss_bounded(tmp_path):
    """An index of ~600,000 chunks (tens of MiB) is read and written at random, as an add of a big tree
    does; the pages touched are dropped as they add up (a fault maps up to 16 pages), never the whole map."""
    from dstore.store.index import RELEASE_TOUCHES, ChunkLoc

    index = Index(tmp_path / "index-0")
    try:
        loc = ChunkLoc(b"p" * 36, 0, 100, 100, 0)
        keys = [os.urandom(36) for _ in range(600_000)]
        for start in range(0, len(keys), 50_000):
            index.commit_packs([], [(k, loc) for k in keys[start : start + 50_000]])
        data = tmp_path / "index-0" / "data.mdb"
        assert data.stat().st_size > 48 << 20  # bigger than the bound below, or the test shows nothing
        bound = RELEASE_TOUCHES * 64 / 1024 + 1  # MiB: 16 pages per touch, plus branch pages
        assert _resident_mib(data) <= bound
        found = index.lookup_chunks(keys[::7])
        assert all(f == loc for f in found)
        assert _resident_mib(data) <= bound
    finally:
        index.close()
