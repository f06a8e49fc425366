"""The native batch writer (`write_files`) against `decode_chunks` + Python writes, and `dstore get` through it."""

from __future__ import annotations

import errno
import os
import random
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import blake3 as blake3_py
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from dstore import _native as native
from dstore.fetch.reader import DatasetReader
from dstore.store import Store

from treeutil import random_bytes, snapshot

BLAKE3 = 0x1E


@dataclass
class Batch:
    """A batch as the kernel takes it, built from known file contents."""

    packs: list[bytearray] = field(default_factory=list)  # whole packs, split into parts on the call
    k: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    want: list[bytes] = field(default_factory=list)
    chunks: list[tuple[int, int, int, int, int, int, int]] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)

    def parts(self, pack: int) -> list[bytes]:
        data, k = bytes(self.packs[pack]), self.k[pack]
        part = -(-max(len(data), 1) // k)
        data = data.ljust(part * k, b"\0")
        return [data[i * part : (i + 1) * part] for i in range(k)]

    def call(self, folder: Path, *, create: bool = True, only: list[int] | None = None, packs=None) -> list[int]:
        idx = list(range(len(self.chunks))) if only is None else only
        cols = list(zip(*[self.chunks[i] for i in idx], strict=True)) or [[]] * 7
        return native.write_files(
            str(folder),
            self.paths,
            [len(w) for w in self.want],
            [create] * len(self.paths),
            packs if packs is not None else [self.parts(p) for p in range(len(self.packs))],
            *cols,
            b"".join(self.digests[i] for i in idx),
            BLAKE3,
        )


def make_batch(files: list[list[tuple[int, bool]]], n_packs: int, ks: list[int], seed: int) -> Batch:
    """Files given as (chunk size, compressible) lists; chunks spread over packs at random."""
    rng = random.Random(seed)
    b = Batch(packs=[bytearray() for _ in range(n_packs)], k=ks)
    cctx = zstandard.ZstdCompressor(level=3, write_content_size=True)
    for f, chunks in enumerate(files):
        content = b""
        for size, compressible in chunks:
            data = bytes([rng.randrange(4)]) * size if compressible else rng.randbytes(size)
            frame = cctx.compress(data)
            codec, stored = (1, frame) if compressible and len(frame) < size else (0, data)
            p = rng.randrange(n_packs)
            b.chunks.append((p, len(b.packs[p]), len(stored), size, codec, f, len(content)))
            b.packs[p] += stored
            b.digests.append(blake3_py.blake3(data).digest())
            content += data
        b.paths.append(f"d{f % 3}/f{f}")
        b.want.append(content)
    return b


def python_write(b: Batch, folder: Path) -> None:
    """The reference: decode_chunks on the joined pack, then plain Python writes."""
    for path, want in zip(b.paths, b.want, strict=True):
        (folder / path).write_bytes(b"")
    for p, off, slen, size, codec, f, at in b.chunks:
        i = b.chunks.index((p, off, slen, size, codec, f, at))
        data = native.decode_chunks(b"".join(b.parts(p)), [off], [slen], [size], [codec], b.digests[i])
        with open(folder / b.paths[f], "r+b") as fh:
            fh.seek(at)
            fh.write(data)


def folders(root: Path) -> Path:
    for d in ("d0", "d1", "d2"):
        (root / d).mkdir(parents=True, exist_ok=True)
    return root


chunk = st.tuples(st.integers(0, 5000), st.booleans())
files = st.lists(st.lists(chunk, max_size=6), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(files, st.integers(1, 4), st.lists(st.integers(1, 5), min_size=4, max_size=4), st.integers(0, 2**32))
def test_kernel_matches_decode_chunks_and_python_writes(files, n_packs, ks, seed):
    b = make_batch(files, n_packs, ks, seed)
    with tempfile.TemporaryDirectory() as tmp:
        native_dir, ref_dir = folders(Path(tmp, "native")), folders(Path(tmp, "ref"))
        assert b.call(native_dir) == []
        python_write(b, ref_dir)
        assert snapshot(native_dir) == snapshot(ref_dir)
        for path, want in zip(b.paths, b.want, strict=True):
            assert (native_dir / path).read_bytes() == want
            assert (native_dir / path).stat().st_mode & 0o777 == 0o644


@settings(max_examples=30, deadline=None)
@given(files.filter(lambda fs: any(any(s > 0 for s, _ in f) for f in fs)), st.integers(0, 2**32))
def test_a_corrupt_chunk_is_reported_and_its_retry_fixes_only_it(files, seed):
    b = make_batch(files, 2, [3, 1], seed)
    rng = random.Random(seed)
    victim = rng.choice([i for i, c in enumerate(b.chunks) if c[2] > 0])
    p, off, slen, size, codec, f, at = b.chunks[victim]
    good = [bytes(x) for x in b.packs]
    b.packs[p][off + rng.randrange(slen)] ^= 0x40
    with tempfile.TemporaryDirectory() as tmp:
        out = folders(Path(tmp))
        assert b.call(out) == [victim]
        for path, want in zip(b.paths, b.want, strict=True):
            got = (out / path).read_bytes()
            if path == b.paths[f]:
                # Everything outside the failed chunk's range is already right.
                assert got[:at] == want[:at]
                assert got[at + size :] == want[at + size : len(got)]
            else:
                assert got == want
        b.packs = [bytearray(x) for x in good]
        assert b.call(out, create=False, only=[victim]) == []
        assert [(out / path).read_bytes() for path in b.paths] == b.want


def one_file_batch() -> Batch:
    return make_batch([[(3000, False), (3000, True)]], 1, [2], 1)


@pytest.mark.parametrize(
    "column, value",
    [(0, 1), (0, -1), (1, 10**9), (1, -5), (2, 10**12), (3, 17 << 20), (4, 9), (5, 3), (6, 2**62), (6, -1)],
)
def test_bad_places_raise_value_error_and_create_nothing(tmp_path, column, value):
    b = one_file_batch()
    row = list(b.chunks[0])
    row[column] = value
    b.chunks[0] = tuple(row)  # type: ignore[assignment]
    with pytest.raises(ValueError):
        b.call(folders(tmp_path))
    assert not (tmp_path / b.paths[0]).exists()


@pytest.mark.parametrize("path", ["../escape", "/abs/olute", "", "./x"])
def test_paths_that_leave_the_folder_raise_value_error(tmp_path, path):
    b = one_file_batch()
    b.paths = [path]
    with pytest.raises(ValueError):
        b.call(folders(tmp_path))


def test_mismatched_columns_digests_and_parts_raise_value_error(tmp_path):
    b = one_file_batch()
    folders(tmp_path)
    b.digests[0] = b.digests[0][:31]
    with pytest.raises(ValueError):
        b.call(tmp_path)
    b = one_file_batch()
    with pytest.raises(ValueError):
        b.call(tmp_path, packs=[[b"abc", b"de"]])
    with pytest.raises(ValueError, match="unsupported hash 0x13"):
        native.write_files(str(tmp_path), [], [], [], [], [], [], [], [], [], [], [], b"", 0x13)
    with pytest.raises(ValueError):
        native.write_files(str(tmp_path), ["a"], [1, 2], [True], [], [], [], [], [], [], [], [], b"")


def test_an_existing_file_raises_file_exists_error_naming_it(tmp_path):
    b = one_file_batch()
    folders(tmp_path)
    (tmp_path / b.paths[0]).write_bytes(b"keep")
    with pytest.raises(FileExistsError) as e:
        b.call(tmp_path)
    assert e.value.errno == errno.EEXIST
    assert e.value.filename == str(tmp_path / b.paths[0])
    assert (tmp_path / b.paths[0]).read_bytes() == b"keep"
    # Opening existing files (a retry) writes into them.
    assert b.call(tmp_path, create=False) == []
    assert (tmp_path / b.paths[0]).read_bytes() == b.want[0]


def test_os_errors_carry_errno_and_path(tmp_path):
    b = one_file_batch()
    folders(tmp_path)
    b.paths = ["d0/" + "n" * 300]
    with pytest.raises(OSError) as e:
        b.call(tmp_path)
    assert e.value.errno == errno.ENAMETOOLONG
    assert e.value.filename.endswith("n" * 300)
    b.paths = ["missing-folder/f"]
    with pytest.raises(FileNotFoundError):
        b.call(tmp_path)


def test_empty_files_and_an_empty_batch(tmp_path):
    folders(tmp_path)
    assert native.write_files(str(tmp_path), ["d0/e"], [0], [True], [], [], [], [], [], [], [], [], b"") == []
    assert (tmp_path / "d0/e").read_bytes() == b""
    assert native.write_files(str(tmp_path), [], [], [], [], [], [], [], [], [], [], [], b"") == []


# -- through the CLI --------------------------------------------------------------


def small_tree(root: Path) -> Path:
    rng = random.Random(5)
    for i in range(2500):
        folder = root / f"class_{i % 25:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        size = rng.choice([0, 1, 200, 2000, 9000, 70_000])
        data = random_bytes(size, i) if i % 3 else (b"label,%d\n" % i) * (size // 8)
        (folder / f"{i:05d}.bin").write_bytes(data)
    (root / "big.bin").write_bytes(random_bytes(40 << 20, 99) + b"tail")  # spans batches and packs
    (root / "empty-dir").mkdir()
    return root


@pytest.mark.slow
def test_get_of_many_small_files_and_a_big_one(dstore, tmp_path):
    src = small_tree(tmp_path / "src")
    cid = dstore("add", src, "-q", "--shards", "4+2").out.strip().splitlines()[-1]
    dstore("get", cid, "-o", tmp_path / "out", "-q")
    assert snapshot(tmp_path / "out") == snapshot(src)


@pytest.mark.slow
def test_get_rebuilds_packs_whose_data_shards_are_damaged(dstore, home, tmp_path):
    src = small_tree(tmp_path / "src")
    cid = dstore("add", src, "-q", "--shards", "4+2").out.strip().splitlines()[-1]
    store = Store(home)
    try:
        with DatasetReader(store, cid) as reader:
            packs = [reader.locator.pack(i)[1] for i in range(reader.locator.num_packs)]
        damaged = 0
        for record in packs:
            # One flipped byte in the first data shard, inside the chunks (parity can repair it).
            path = store.shards.path(record.shards[0].encode("base32"))
            raw = bytearray(Path(path).read_bytes())
            raw[min(100, record.size - 1)] ^= 0xFF
            os.chmod(path, 0o644)
            Path(path).write_bytes(raw)
            damaged += 1
    finally:
        store.close()
    assert damaged >= 2
    dstore("get", cid, "-o", tmp_path / "out", "-q")
    assert snapshot(tmp_path / "out") == snapshot(src)


@pytest.mark.slow
def test_files_spanning_many_small_batches(dstore, home, tmp_path, monkeypatch):
    """Tiny batches: big files go out over many calls, into the file the first one created."""
    from dstore.fetch import batch
    from dstore.fetch.get import get

    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for i in range(40):
        (src / "a" / f"{i}.bin").write_bytes(random_bytes(i * 997, i))
    (src / "big.bin").write_bytes(random_bytes(6 << 20, 1))
    (src / "z.csv").write_bytes(b"x,y\n" * 300_000)
    cid = dstore("add", src, "-q").out.strip().splitlines()[-1]
    monkeypatch.setattr(batch, "BATCH_BYTES", 100_000)
    monkeypatch.setattr(batch, "BATCH_FILES", 7)
    seen: list[int] = []
    store = Store(home)
    try:
        summary = get(store, cid, tmp_path / "out", progress=seen.append)
    finally:
        store.close()
    assert snapshot(tmp_path / "out") == snapshot(src)
    assert summary["files"] == 42
    assert sum(seen) == summary["bytes"]
    assert len(seen) > 20


def test_local_packs_are_mapped_by_a_helper_and_a_missing_shard_is_rebuilt(dstore, home, tmp_path, monkeypatch):
    """The get maps (and rebuilds) local packs on its mapping thread (the next batch's while the writer
    thread writes one), not on the thread that plans batches."""
    from dstore.fetch import batch, packs
    from dstore.fetch.get import get

    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for i in range(60):
        (src / "a" / f"{i}.bin").write_bytes(random_bytes(1000 + i * 3001, i))
    cid = dstore("add", src, "-q", "--shards", "3+2").out.strip().splitlines()[-1]
    store = Store(home)
    try:
        with DatasetReader(store, cid) as reader:
            records = [reader.locator.pack(i)[1] for i in range(reader.locator.num_packs)]
        os.unlink(store.shards.path(records[0].shards[1].encode("base32")))  # parity rebuilds it
        threads: list[str] = []
        real_map, real_rebuild = packs.LocalShards.map, packs.LocalShards.rebuild

        def map_(self, *a):
            threads.append(threading.current_thread().name)
            return real_map(self, *a)

        def rebuild(self, *a):
            threads.append(threading.current_thread().name)
            return real_rebuild(self, *a)

        monkeypatch.setattr(packs.LocalShards, "map", map_)
        monkeypatch.setattr(packs.LocalShards, "rebuild", rebuild)
        monkeypatch.setattr(batch, "BATCH_FILES", 7)
        summary = get(store, cid, tmp_path / "out")
    finally:
        store.close()
    assert snapshot(tmp_path / "out") == snapshot(src)
    assert summary["files"] == 60
    assert len(threads) > len(records) and all(name.startswith("dstore-map") for name in threads)
