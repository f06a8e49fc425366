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
