"""`dstore.open` on a store that has never seen the dataset: metadata and bytes from real peer processes."""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peerutil import added_on_peers

import dstore
from dstore.format.cid import cid_to_text, make_cid

from treeutil import csv_like, random_bytes

TOKEN = "mount-token"
BIG = random_bytes(6 << 20, 7)
CSV = csv_like(1 << 20)


@pytest.fixture(scope="module")
def six(tmp_path_factory):
    """Six peers holding one 4+2 dataset added through the CLI by another store."""
    root = tmp_path_factory.mktemp("mountpeers")
    src = root / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "big.bin").write_bytes(BIG)
    (src / "sub" / "table.csv").write_bytes(CSV)
    (src / "sub" / "deeper" / "note.txt").write_bytes(b"hello")
    (src / "empty").write_bytes(b"")
    with added_on_peers(root, src, TOKEN) as found:
        yield found


def urls(peers):
    return [p.url for p in peers]


@pytest.fixture
def fresh(tmp_path, six, monkeypatch):
    """Open the dataset from peers into an empty store, with a cache of its own."""
    monkeypatch.delenv("DSTORE_PEERS", raising=False)
    peers, cid = six

    def open_(**kw):
        kw.setdefault("peers", urls(peers))
        kw.setdefault("cache", tmp_path / "cache")
        return dstore.open(cid, home=tmp_path / "fresh", **kw)

    return open_


def read_in_pieces(ds, path, size):
    """The whole file, read sequentially ``size`` bytes at a time."""
    with ds.open(path) as f:
        got = bytearray()
        while piece := f.read(size):
            got += piece
    return bytes(got)


def chunk_places(ds, path):
    """(start, size, digest, pack ID, record, entry) of every chunk of a file."""
    _, node = ds.reader.resolve(path)
    cid, _ = ds.reader.resolve(path)
    out, pos = [], 0
    for digest, size in ds.reader.leaves(cid, node):
        pack_id, record, ref = ds.reader.chunk_ref(digest)
        out.append((pos, size, digest, pack_id, record, ref))
        pos += size
    return out


def test_metadata_from_peers_without_reading_file_bytes(fresh):
    with fresh() as ds:
        assert ds.listdir() == ["big.bin", "empty", "sub"]
        assert list(ds.walk()) == [
            ("", ["sub"], ["big.bin", "empty"]),
            ("sub", ["deeper"], ["table.csv"]),
            ("sub/deeper", [], ["note.txt"]),
        ]
        big = ds.info("big.bin")
        assert (big.kind, big.size) == ("file", len(BIG))
        assert ds.info("sub").kind == "dir" and ds.info("sub").size is None
        assert ds.info("empty").size == 0
        assert ds.info("sub/table.csv").cid_text == ds.ls("sub")[1].cid_text
        with pytest.raises(NotADirectoryError):
            ds.listdir("big.bin")
        with pytest.raises(FileNotFoundError):
            ds.info("sub/nope")
        assert set(ds.chunks.stats.values()) == {0}


def test_peers_and_token_from_the_environment(fresh, six, monkeypatch, tmp_path):
    peers, _ = six
    monkeypatch.setenv("DSTORE_PEERS", ",".join(urls(peers)))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("DSTORE_TOKEN_FILE", str(token_file))
    with fresh(peers=None) as ds, ds.open("sub/deeper/note.txt") as f:
        assert f.read() == b"hello"
    monkeypatch.setenv("DSTORE_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(dstore.errors.UsageError):
        fresh(peers=None)


def test_random_reads_fetch_ranges_not_packs(fresh):
    with fresh() as ds, ds.open("big.bin") as f:
        assert isinstance(f, io.BufferedIOBase) and f.seekable()
        for offset, length in [(5_000_000, 4096), (17, 65536), (len(BIG) - 10, 100), (3_000_000, 300_000)]:
            f.seek(offset)
            assert f.read(length) == BIG[offset : offset + length]
        stats = ds.chunks.stats
        assert stats["range"] > 0 and stats["pack"] == 0 and stats["bad_range"] == 0


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, len(BIG)), st.integers(0, 700_000))
def test_readinto_any_window(fresh, offset, length):
    with fresh() as ds, ds.open("big.bin") as f:
        f.seek(offset)
        buf = bytearray(length)
        n = f.readinto(buf)
        assert bytes(buf[:n]) == BIG[offset : offset + length]
        assert f.tell() == offset + n


def test_sequential_read_with_readahead_and_warm_cache(fresh, tmp_path):
    with fresh() as ds:
        assert read_in_pieces(ds, "big.bin", 100_000) == BIG
        first = dict(ds.chunks.stats)
        chunks = len(chunk_places(ds, "big.bin"))
    assert first["range"] + first["pack"] == chunks and first["cache"] == 0
    # Another process-like reader of the same machine: every chunk comes from the cache.
    with fresh() as ds2:
        assert ds2.open("big.bin").read() == BIG
        assert ds2.chunks.stats["cache"] == chunks and ds2.chunks.stats["range"] == 0


def test_sequential_read_asks_for_runs_not_chunks(fresh):
    """Read-ahead asks for runs of back-to-back chunks, one range request per data shard they lie in."""
    with fresh(cache=False) as ds:
        chunks = len(chunk_places(ds, "big.bin"))
        assert read_in_pieces(ds, "big.bin", 1 << 20) == BIG
        stats = ds.chunks.stats
    assert chunks >= 40 and stats["range"] + stats["pack"] == chunks
    assert stats["range_requests"] <= chunks // 4


def test_a_random_read_over_two_chunks_is_one_run(fresh):
    """A read that straddles two chunks stored back to back asks for both at once (one request per data shard)."""
    with fresh(cache=False) as ds:
        places = chunk_places(ds, "big.bin")
        a, b = next(
            (a, b)
            for a, b in zip(places[1:], places[2:], strict=False)
            if a[3] == b[3] and a[5].offset + a[5].stored_len == b[5].offset
        )
        boundary = b[0]
        with ds.open("big.bin") as f:
            f.seek(boundary - 1000)
            assert f.read(2000) == BIG[boundary - 1000 : boundary + 1000]
        stats = ds.chunks.stats
        shard_size = a[4].shard_size
        shards = {a[5].offset // shard_size, (b[5].offset + b[5].stored_len - 1) // shard_size}
    assert stats["range"] == 2 and stats["runs"] == 1 and stats["range_requests"] == len(shards)


def test_a_data_shard_holder_down_rebuilds_from_parity(fresh, six):
    peers, _ = six
    with fresh(cache=False) as ds:
        start, size, _, pack_id, record, ref = chunk_places(ds, "big.bin")[3]
        holder = ds.reader.placement(pack_id)[ref.offset // record.shard_size]
        victim = next(p for p in peers if p.peer_id == holder)
        victim.kill()
        try:
            with ds.open("big.bin") as f:
                f.seek(start + 10)
                assert f.read(4096) == BIG[start + 10 : start + 10 + 4096]
            assert ds.chunks.stats["pack"] == 1
        finally:
            victim.start()


def test_wrong_range_bytes_are_caught_scored_and_read_again(fresh, six):
    """A peer whose shard file rotted serves wrong range bytes: the chunk check catches them."""
    peers, _ = six
    with fresh(cache=False) as ds:
        places = [
            p
            for p in chunk_places(ds, "big.bin")
            if p[5].offset // p[4].shard_size == (p[5].offset + p[5].stored_len - 1) // p[4].shard_size
        ]
        start, size, _, pack_id, record, ref = places[2]
        shard = ref.offset // record.shard_size
        holder = ds.reader.placement(pack_id)[shard]
        victim = next(p for p in peers if p.peer_id == holder)
        shard_file = next(victim.home.rglob(cid_to_text(record.shards[shard])))
        at = ref.offset % record.shard_size + ref.stored_len // 2
        original = shard_file.read_bytes()
        rotten = bytearray(original)
        rotten[at] ^= 0xFF
        shard_file.write_bytes(rotten)
        try:
            with ds.open("big.bin") as f:
                f.seek(start)
                assert f.read(size) == BIG[start : start + size]
            assert ds.chunks.stats["bad_range"] == 1 and ds.chunks.stats["pack"] == 1
            client = ds._owns[-1]
            assert next(p for p in client.peers if p.peer_id == holder).bad_bytes >= 1
        finally:
            shard_file.write_bytes(original)


def test_unknown_dataset_without_peers_is_not_found(tmp_path, six, monkeypatch):
    monkeypatch.delenv("DSTORE_PEERS", raising=False)
    _, cid = six
    with pytest.raises(FileNotFoundError):
        dstore.open(cid, home=tmp_path / "empty", cache=False)


def test_a_damaged_cache_entry_is_fetched_again(fresh, tmp_path):
    with fresh() as ds:
        assert ds.open("sub/table.csv").read() == CSV
        ds.chunks.flush()  # cache writes run on a thread of their own
        entries = ds.chunks.cache.entries()
    assert entries
    for _, _, path in entries:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x55
        path.write_bytes(data)
    with fresh() as ds:
        assert ds.open("sub/table.csv").read() == CSV
        assert ds.chunks.cache.dropped == len(entries) and ds.chunks.stats["cache"] == 0
    with fresh() as ds:  # cached again, whole
        assert ds.open("sub/table.csv").read() == CSV
        assert ds.chunks.stats["cache"] == len(entries)


def test_an_unwritable_cache_folder_does_not_fail_reads(fresh, tmp_path):
    (tmp_path / "blocked").write_bytes(b"a file where the cache folder should be")
    with fresh(cache=tmp_path / "blocked") as ds:
        assert ds.open("sub/table.csv").read() == CSV


FULL_DISK_READER = """
import hashlib, resource, signal, sys
import dstore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
cid, home, cache, peers = sys.argv[1:5]
with dstore.open(cid, peers=peers, home=home, cache=cache) as ds:  # the store's index is made before the limit
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    data = ds.open("big.bin").read()
print(hashlib.sha256(data).hexdigest())
"""


def test_a_full_disk_does_not_fail_reads(six, tmp_path):
    import hashlib

    peers, cid = six
    env = {k: v for k, v in os.environ.items() if k != "DSTORE_PEERS"}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            FULL_DISK_READER,
            cid,
            str(tmp_path / "home"),
            str(tmp_path / "cache"),
            ",".join(urls(peers)),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == hashlib.sha256(BIG).hexdigest()
    # Nothing was cached (every write failed), and no temporary file was left behind.
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.stat().st_size > 4096]
    assert not list((tmp_path / "cache").rglob(".tmp-*"))


def test_read_ahead_runs_survive_rotten_range_bytes(fresh, six):
    """Read-ahead asks for runs of chunks at once; a pack whose range bytes hold a bad chunk is read whole."""
    peers, _ = six
    with fresh(cache=False) as ds:
        start, size, _, pack_id, record, ref = chunk_places(ds, "big.bin")[5]
        shard = ref.offset // record.shard_size
        holder = ds.reader.placement(pack_id)[shard]
        victim = next(p for p in peers if p.peer_id == holder)
        shard_file = next(victim.home.rglob(cid_to_text(record.shards[shard])))
        original = shard_file.read_bytes()
        rotten = bytearray(original)
        rotten[ref.offset % record.shard_size] ^= 0xFF
        shard_file.write_bytes(rotten)
        try:
            assert read_in_pieces(ds, "big.bin", 32768) == BIG
            assert ds.chunks.stats["bad_range"] >= 1 and ds.chunks.stats["pack"] >= 1
        finally:
            shard_file.write_bytes(original)


def test_a_data_shard_holder_dead_during_a_sequential_read(fresh, six):
    """Read-ahead asks for every data shard of its runs at once; a pack with a range from a dead holder is
    read whole (rebuilt from parity), the others still by range, and the bytes come back exact."""
    peers, _ = six
    with fresh() as ds:
        places = chunk_places(ds, "big.bin")
        _, _, _, pack_id, record, ref = places[len(places) // 2]
        holder = ds.reader.placement(pack_id)[ref.offset // record.shard_size]
        victim = next(p for p in peers if p.peer_id == holder)
        victim.kill()
        try:
            assert read_in_pieces(ds, "big.bin", 1 << 20) == BIG
            stats = ds.chunks.stats
            assert stats["pack"] >= 1 and stats["range"] >= 1 and stats["range"] + stats["pack"] == len(places)
        finally:
            victim.start()
    with fresh() as ds:  # everything read was cached, whichever way it came
        assert ds.open("big.bin").read() == BIG and ds.chunks.stats["cache"] == len(places)


def test_a_local_dataset_opened_with_peers_reads_ahead_from_its_own_shards(six, tmp_path):
    """With peers configured, a dataset the local store holds is still read from its shard files: read-ahead
    runs are a pread per data shard, not a chunk at a time, and nothing is asked of the peers."""
    peers, _ = six
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(BIG)
    env = {**os.environ, "DSTORE_HOME": str(tmp_path / "home"), "DSTORE_PEERS": ""}
    add = [sys.executable, "-m", "dstore", "add", str(src), "-q"]
    cid = subprocess.run(add, env=env, capture_output=True, text=True, check=True).stdout.strip()
    with dstore.open(cid, peers=urls(peers), home=tmp_path / "home", cache=tmp_path / "cache") as ds:
        assert read_in_pieces(ds, "big.bin", 1 << 20) == BIG
        stats, chunks = ds.chunks.stats, len(chunk_places(ds, "big.bin"))
    assert stats["local"] == chunks and stats["range"] == stats["pack"] == 0
    assert 0 < stats["runs"] <= chunks // 4


def test_fetch_ranges_answers_each_call_or_none(tmp_path, six):
    """Many ranges at once: each call gets its bytes, or None when no peer asked can serve it; a peer whose
    206 holds fewer bytes than its Content-Range says is scored down as a liar."""
    from hostile_peer import hostile_peer

    from dstore.net import SyncPeerSet

    peers, cid = six
    with dstore.open(cid, peers=urls(peers), home=tmp_path / "h", cache=False) as ds:
        _, _, _, pack_id, record, ref = chunk_places(ds, "big.bin")[1]
        hints = ds.reader.placement(pack_id)
        shard = ref.offset // record.shard_size
        other = (shard + 1) % record.k
        nowhere = make_cid(record.shards[shard].codec, b"held by no peer")
        unknown = dataclasses.replace(record, shards=(nowhere,) * len(record.shards))
        client = ds._owns[-1]
        calls = [(record, pack_id, shard, 10, 1000, hints), (unknown, pack_id, shard, 0, 10, None)]
        calls.append((record, pack_id, other, 0, 5000, hints))
        got = client.fetch_ranges(calls)
        holder = next(p for p in peers if p.peer_id == hints[shard])
        shard_bytes = next(holder.home.rglob(cid_to_text(record.shards[shard]))).read_bytes()
    assert got[0] is not None and got[0].data == shard_bytes[10:1010] and got[0].peer_id == hints[shard]
    assert got[1] is None
    assert got[2] is not None and len(got[2].data) == 5000
    shard_text = cid_to_text(record.shards[shard])
    with hostile_peer(tmp_path, mode="short-range", shards={shard_text: shard_bytes}) as hp:
        with SyncPeerSet.connect([hp.url], None) as client:
            call = (record, pack_id, shard, 100, 4000, [hp.peer_id] * len(record.shards))
            assert client.fetch_ranges([call, call]) == [None, None]
            assert client.peers[0].bad_bytes >= 1


def test_a_peer_that_ignores_range_is_checked_against_the_shard_cid(tmp_path, six):
    """A peer answering 200 with the whole shard (no Range support) is verified like a shard fetch."""
    from hostile_peer import hostile_peer

    from dstore.net import SyncPeerSet

    peers, cid = six
    with dstore.open(cid, peers=urls(peers), home=tmp_path / "h", cache=False) as ds:
        _, _, _, pack_id, record, ref = chunk_places(ds, "big.bin")[1]
        shard = ref.offset // record.shard_size
        holder = next(p for p in peers if p.peer_id == ds.reader.placement(pack_id)[shard])
        shard_text = cid_to_text(record.shards[shard])
        shard_bytes = next(holder.home.rglob(shard_text)).read_bytes()
    within = ref.offset % record.shard_size
    with hostile_peer(tmp_path, shards={shard_text: shard_bytes}) as hp:
        with SyncPeerSet.connect([hp.url], None) as client:
            got = client.fetch_range(record, pack_id, shard, within, 1000, [hp.peer_id] * len(record.shards))
            assert got.data == shard_bytes[within : within + 1000] and got.peer_id == hp.peer_id
            hp.configure(mode="wrong-bytes")
            with pytest.raises(dstore.errors.PeerError):
                client.fetch_range(record, pack_id, shard, within, 1000, [hp.peer_id] * len(record.shards))
            assert client.peers[0].bad_bytes == 1


def test_threads_share_one_dataset(fresh):
    from concurrent.futures import ThreadPoolExecutor

    def work(i):
        with ds.open("big.bin" if i % 2 else "sub/table.csv") as f:
            want = BIG if i % 2 else CSV
            offset = (i * 777_777) % (len(want) - 200_000)
            f.seek(offset)
            got = f.read(200_000)
            assert ds.info("sub/deeper/note.txt").size == 5
            return got == want[offset : offset + 200_000]

    with fresh() as ds, ThreadPoolExecutor(6) as pool:
        assert all(pool.map(work, range(24)))


def test_forked_workers_reopen_what_a_fork_does_not_keep(fresh):
    """DataLoader workers fork after the dataset is open (and its threads running): they read all the same."""
    import multiprocessing

    with fresh() as ds:
        f = ds.open("big.bin")
        assert f.read(1 << 20) == BIG[: 1 << 20]  # read-ahead threads and the peers' event loop are running
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()

        def child(i):
            import faulthandler

            faulthandler.dump_traceback_later(100, exit=True)  # a deadlocked child says where, and ends
            try:
                g = ds.open("sub/table.csv")
                f.seek(i * 1_000_000)
                results.put((i, f.read(300_000) == BIG[i * 1_000_000 : i * 1_000_000 + 300_000] and g.read() == CSV))
            except BaseException as e:  # report, do not hang the parent
                results.put((i, repr(e)))

        workers = [ctx.Process(target=child, args=(i,)) for i in range(2)]
        for w in workers:
            w.start()
        got = dict(results.get(timeout=120) for _ in workers)
        for w in workers:
            w.join(60)
        assert got == {0: True, 1: True}
        assert f.read(1000) == BIG[1 << 20 : (1 << 20) + 1000]  # the parent's file goes on


@pytest.mark.parametrize("parent", ["open", "closed"])
def test_a_forked_worker_reads_its_parent_s_metadata_in_place(fresh, monkeypatch, parent):
    """A worker forked from a process that loaded the metadata from peers does not fetch and check it again:
    it reads the parent's verified blocks file (read-only). Once the parent has closed the dataset (and
    removed that file), the worker loads the metadata from peers itself."""
    import multiprocessing

    import dstore.fetch.reader

    ctx = multiprocessing.get_context("fork")
    results, go = ctx.Queue(), ctx.Event()
    calls = []
    with fresh() as ds:
        assert ds.open("sub/deeper/note.txt").read() == b"hello"
        load = dstore.fetch.reader.load_from_peers
        monkeypatch.setattr(dstore.fetch.reader, "load_from_peers", lambda *a: calls.append(1) or load(*a))

        def child():
            import faulthandler

            faulthandler.dump_traceback_later(100, exit=True)
            try:
                go.wait(60)
                csv = ds.open("sub/table.csv").read() == CSV
                results.put((ds.listdir("sub"), csv, ds.info("big.bin").size, len(calls)))
            except BaseException as e:
                results.put(repr(e))

        worker = ctx.Process(target=child)
        worker.start()
        if parent == "open":
            go.set()
            got = results.get(timeout=120)
    if parent == "closed":
        go.set()
        got = results.get(timeout=120)
    worker.join(60)
    assert got == (["deeper", "table.csv"], True, len(BIG), 0 if parent == "open" else 1)


def test_threads_of_a_forked_child_reopen_the_dataset_once(fresh):
    """Several threads of a forked worker read at once before anything reopened the dataset: one of them
    reopens the store and peers, the others wait for it (two reopens would close what the first opened)."""
    import multiprocessing
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    with fresh() as ds:
        assert ds.open("big.bin").read(1000) == BIG[:1000]
        reopen = ds.chunks.on_fork
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()

        def child():
            reopens = []

            def slow_reopen():
                reopens.append(threading.get_ident())
                time.sleep(0.3)  # every other thread asks meanwhile
                reopen()

            ds.chunks.on_fork = slow_reopen
            try:
                with ThreadPoolExecutor(4) as pool:
                    reads = list(pool.map(lambda i: ds.open("big.bin").read(50_000), range(4)))
                results.put((len(reopens), all(r == BIG[:50_000] for r in reads)))
            except BaseException as e:
                results.put((len(reopens), repr(e)))

        worker = ctx.Process(target=child)
        worker.start()
        got = results.get(timeout=120)
        worker.join(60)
        assert got == (1, True)


@pytest.mark.parametrize("how", ["dropped", "left open at exit"])
def test_a_dataset_never_closed_leaves_no_unclosed_session(six, tmp_path, how):
    """A script that opens a dataset from peers and never closes it (as a SampleStream does) exits quietly:
    its peer set is closed when collected or at exit, not reported by aiohttp as an unclosed session."""
    peers, cid = six
    drop = "del ds\nimport gc; gc.collect()\n" if how == "dropped" else ""
    script = (
        "import dstore\n"
        f"ds = dstore.open({cid!r}, peers={','.join(urls(peers))!r}, token={TOKEN!r}, cache=False,"
        f" home={str(tmp_path / 'home')!r})\n"
        "assert ds.read_bytes('sub/deeper/note.txt') == b'hello'\n" + drop
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Unclosed" not in r.stderr, r.stderr
