"""The get's planning: File nodes parsed natively read as unixfs.parse_node reads them, and a folder's
chunks are looked up in one pass over the locator, with every check of the one-by-one lookup kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from dstore import _native
from dstore.errors import FormatError
from dstore.fetch.reader import DatasetReader, _file_node
from dstore.format import unixfs
from dstore.format.cid import CID, HASH_CODES, RAW, cid_from_digest
from dstore.format.locator import Locator
from dstore.limits import PACK_UNIT_BYTES
from dstore.store import Store

from treeutil import random_bytes, snapshot

BLAKE3 = HASH_CODES["blake3"]


def _leaves(sizes: list[int], seed: int) -> list[tuple[CID, int]]:
    return [(cid_from_digest(RAW, random_bytes(32, seed + i), "blake3"), s) for i, s in enumerate(sizes)]


def _python(cid: CID, block: bytes) -> unixfs.Node | None:
    try:
        return unixfs.parse_node(cid, block)
    except FormatError:
        return None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 1 << 20), min_size=2, max_size=300), st.integers(0, 1 << 30))
def test_native_file_nodes_read_what_dstore_writes_as_python_does(sizes, seed):
    """Every node of a file's DAG whose links are raw leaves is read natively, the same as in Python."""
    _, blocks, _ = unixfs.build_file(_leaves(sizes, seed), max_links=174)
    flats = _native.unixfs_file_nodes([b for _, b in blocks], BLAKE3)
    for (cid, block), flat in zip(blocks, flats, strict=True):
        node = unixfs.parse_node(cid, block)
        leaves_only = all(ln.cid.codec == RAW for ln in node.links)
        assert (flat is not None) == leaves_only  # a node of nodes (a deeper file) is Python's
        if flat is not None:
            assert _file_node(flat) == node


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_native_file_nodes_never_read_a_block_differently(data):
    """A damaged or foreign block is read natively only as Python reads it (else left to Python)."""
    sizes = data.draw(st.lists(st.integers(1, 5000), min_size=2, max_size=8))
    _, blocks, _ = unixfs.build_file(_leaves(sizes, data.draw(st.integers(0, 1000))))
    cid, block = blocks[-1]
    raw = bytearray(block)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del raw[at]
        else:
            raw.insert(at, data.draw(st.integers(0, 255)))
        if not raw:
            break
    hostile = bytes(raw)
    flat = _native.unixfs_file_nodes([hostile], BLAKE3)[0]
    if flat is not None:
        assert _file_node(flat) == _python(cid, hostile)


def test_native_file_nodes_leave_other_hashes_and_kinds_to_python():
    cid, blocks, _ = unixfs.build_file(_leaves([10, 20], 1))
    folder = unixfs.build_directory([("a", cid, 30)])[1][0][1]
    assert _native.unixfs_file_nodes([blocks[0][1]], HASH_CODES["sha2-256"]) == [None]
    assert _native.unixfs_file_nodes([b"", b"\xff" * 40, folder], BLAKE3) == [None, None, None]
    assert _native.unixfs_file_nodes([], BLAKE3) == []


def test_a_get_looks_up_a_folders_chunks_in_passes_not_one_by_one(dstore, home, tmp_path, monkeypatch):
    """One-chunk files, files of a few chunks and a big file: every chunk found through find_many,
    none by a lookup of its own; the output is the input."""
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    for i in range(150):
        (src / "d" / f"{i}.bin").write_bytes(random_bytes(200 + i * 97, i))
    for i in range(12):
        (src / "d" / "e" / f"m{i}.bin").write_bytes(random_bytes(300_000 + i * 5000, 1000 + i))
    (src / "big.bin").write_bytes(random_bytes(6 << 20, 7))
    (src / "empty").write_bytes(b"")
    cid = dstore("add", src, "-q", "--shards", "3+2").out.strip().splitlines()[-1]
    single, passes = [], []
    real_find, real_many = Locator.find, Locator.find_many
    monkeypatch.setattr(Locator, "find", lambda self, d: single.append(d) or real_find(self, d))
    monkeypatch.setattr(Locator, "find_many", lambda self, ds: passes.append(len(ds)) or real_many(self, ds))
    from dstore.fetch.get import get

    store = Store(home)
    try:
        summary = get(store, cid, tmp_path / "out")
        with DatasetReader(store, cid) as reader:
            chunks = sum(1 for _ in reader.locator.chunks())
    finally:
        store.close()
    assert snapshot(tmp_path / "out") == snapshot(src)
    assert summary["files"] == 164
    assert single == []
    assert sum(passes) >= chunks > 150 + 12 * 2 and len(passes) < 20


def test_a_chunk_the_locator_lacks_still_fails_the_get_at_its_file(dstore, home, tmp_path):
    """Looked up ahead, a chunk missing from the locator is skipped, not refused early nor taken for
    found: the walk reaches its file and the get fails there, one line, leaving nothing behind."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"{i:02}.bin").write_bytes(random_bytes(1000 + i, i))
    cid = dstore("add", src, "-q", "--shards", "3+2").out.strip().splitlines()[-1]
    store = Store(home)
    try:
        with DatasetReader(store, cid) as reader:
            _, node = reader.resolve("")
            lost = bytes(dict(reader.entries(node))["20.bin"].hash.digest)
    finally:
        store.close()
    # The locator is content-addressed, so it cannot be edited in place: the get's process drops
    # the chunk from every lookup, as a locator without it would.
    (tmp_path / "sitecustomize.py").write_text(
        "from dstore.format.locator import Locator\n"
        f"LOST = {lost!r}\n"
        "_find, _many = Locator.find, Locator.find_many\n"
        "Locator.find = lambda self, d: None if d == LOST else _find(self, d)\n"
        "Locator.find_many = lambda self, ds: [None if d == LOST else e for d, e in zip(ds, _many(self, ds))]\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    r = dstore("get", cid, "-o", tmp_path / "out", check=False, env=env)
    assert r.code != 0
    assert "not in the dataset's locator" in r.err and len(r.err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sitecustomize.py", "src", "store"]


def test_a_local_get_does_not_import_the_gateway_client(dstore, home, tmp_path):
    """The HTTP and TLS modules behind --gateways cost a get from the store a tenth of its start."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(random_bytes(5000, 1))
    cid = dstore("add", src, "-q").out.strip().splitlines()[-1]
    code = (
        "import sys\n"
        "from dstore.cli import main\n"
        "try:\n"
        f"    main(['get', {cid!r}, '-o', {str(tmp_path / 'out')!r}, '-q'])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print(sorted(m for m in ('dstore.net.gateways', 'dstore.fetch.gateway', 'http.client') if m in sys.modules))\n"
    )
    env = {**os.environ, "DSTORE_HOME": str(home)}
    env.pop("DSTORE_GATEWAYS", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "[]"
    assert snapshot(tmp_path / "out") == snapshot(src)


def test_damaged_chunks_are_retried_while_later_batches_are_in_flight(dstore, home, tmp_path, monkeypatch):
    """Many small batches, two in flight: a batch whose chunks fail to verify is retried from the
    rebuilt pack while the next ones are written; every file is whole and recorded once."""
    from dstore.fetch import batch, partial
    from dstore.fetch.get import get

    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for i in range(60):
        (src / "a" / f"{i:02}.bin").write_bytes(random_bytes(500 + i * 1500, i))
    # k pack units and the small files: two 3+2 packs at least.
    (src / "big.bin").write_bytes(random_bytes(3 * PACK_UNIT_BYTES, 99))
    cid = dstore("add", src, "-q", "--shards", "3+2").out.strip().splitlines()[-1]
    store = Store(home)
    try:
        with DatasetReader(store, cid) as reader:
            records = [reader.locator.pack(i)[1] for i in range(reader.locator.num_packs)]
        for record in records:  # one flipped byte in each pack's first data shard: parity repairs it
            path = Path(store.shards.path(record.shards[0].encode("base32")))
            raw = bytearray(path.read_bytes())
            raw[min(100, record.shard_size - 1)] ^= 0xFF
            os.chmod(path, 0o644)
            path.write_bytes(raw)
        monkeypatch.setattr(batch, "BATCH_FILES", 5)
        monkeypatch.setattr(batch, "BATCH_BYTES", 200_000)
        recorded: list[str] = []
        real_mark = partial.PartialGet.mark_done

        def mark_done(self, files):
            recorded.extend(f[0] for f in files)
            return real_mark(self, files)

        monkeypatch.setattr(partial.PartialGet, "mark_done", mark_done)
        in_flight: list[int] = []
        real_settle = batch.BatchWriter._settle
        monkeypatch.setattr(
            batch.BatchWriter, "_settle", lambda self, p: in_flight.append(len(self._pending)) or real_settle(self, p)
        )
        summary = get(store, cid, tmp_path / "out")
    finally:
        store.close()
    assert snapshot(tmp_path / "out") == snapshot(src)
    assert summary["files"] == 61
    assert sorted(recorded) == sorted(["big.bin", *(f"a/{i:02}.bin" for i in range(60))])
    assert max(in_flight) == batch.IN_FLIGHT_BATCHES and len(records) >= 2
