"""dstore.torch: FileDataset and SampleStream read by real DataLoaders (2 workers) from real peer processes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

torch = pytest.importorskip("torch")

from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from peerutil import added_on_peers  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402

import dstore  # noqa: E402
from dstore.torch import FileDataset, SampleStream  # noqa: E402
from dstore.torch.files import matcher  # noqa: E402
from dstore.torch.prefetch import prefetched  # noqa: E402
from dstore.torch.tars import index_tar, sample_from_span  # noqa: E402

from treeutil import random_bytes  # noqa: E402

TOKEN = "torch-token"
TRAIN = {f"train/{i // 10}/{i:03d}.bin": random_bytes(1000 + 997 * (i % 23), i) for i in range(37)}
VAL = {f"val/{i}.txt": f"validation sample {i}\n".encode() for i in range(5)}
TAR_SAMPLES = 9  # per shard; 3 shards
FAIL_NOT_HANG_S = 200  # a DataLoader batch not ready by then fails the test rather than hanging it


def wds_tar(shard: int) -> tuple[bytes, list[dict]]:
    """A WebDataset-style tar (key.jpg, key.cls, key.json per sample) and its samples as webdataset reads them."""
    buf = io.BytesIO()
    samples = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(TAR_SAMPLES):
            key = f"s{shard}/{i:04d}" if i != 4 else f"s{shard}/{'long-' * 30}{i:04d}"  # one GNU long name
            sample = {
                "__key__": key,
                "jpg": random_bytes(700 + 5000 * (i % 3), 1000 * shard + i),
                "cls": str(i % 4).encode(),
                "json": json.dumps({"shard": shard, "i": i}).encode(),
            }
            for ext in ("jpg", "cls", "json"):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(sample[ext])
                tar.addfile(info, io.BytesIO(sample[ext]))
            samples.append(sample)
    return buf.getvalue(), samples


SHARDS = {f"shards/train-{j:03d}.tar": wds_tar(j) for j in range(3)}
EVERYTHING = {**TRAIN, **VAL, **{path: tar for path, (tar, _) in SHARDS.items()}}


@pytest.fixture(scope="module")
def six(tmp_path_factory):
    """Six peers holding one 4+2 dataset (files, and WebDataset tars) added through the CLI by another store."""
    root = tmp_path_factory.mktemp("torchpeers")
    src = root / "src"
    for path, data in EVERYTHING.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_bytes(data)
    with added_on_peers(root, src, TOKEN) as found:
        yield found


@pytest.fixture
def opts(tmp_path, six, monkeypatch):
    """Keyword arguments that read the dataset from the peers into an empty store, with a cache of its own."""
    monkeypatch.delenv("DSTORE_PEERS", raising=False)
    peers, _ = six
    return {"peers": [p.url for p in peers], "home": tmp_path / "fresh", "cache": tmp_path / "cache"}


@pytest.fixture
def cid(six):
    return six[1]


@pytest.fixture
def make(opts, cid):
    """``make(FileDataset, "train", …)``: made on the fixture's peers and store, closed after the test."""
    made = []

    def make_(cls, *args, of=None, **kw):
        obj = cls(of or cid, *args, **{**opts, **kw})
        made.append(obj)
        return obj

    yield make_
    for obj in made:
        obj.close()


def paths_of(items):
    return [path for path, _ in items]


def epoch_paths(loader):
    """Paths a DataLoader of (path, bytes) items hands over, checking every byte against the source."""
    out = []
    for paths, datas in loader:
        for path, data in zip(paths, datas, strict=True):
            assert bytes(data) == EVERYTHING[path], path
            out.append(path)
    return out


def collate_files(batch):
    return [p for p, _ in batch], [d for _, d in batch]


def collate_keys(batch):
    return [s["__key__"] for s in batch]


# -- the module and its import ------------------------------------------------------------------------


def test_import_dstore_never_imports_torch():
    code = "import sys, dstore; dstore.open; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_torch_the_error_names_the_extra():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "try:\n    import dstore.torch\nexcept ImportError as e:\n    print(e)\nelse:\n    print('imported')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'dstore[torch]'" in out


# -- FileDataset -------------------------------------------------------------------------------------


def test_file_dataset_items_patterns_and_decode(make):
    with make(FileDataset) as everything:
        assert everything.paths == sorted(EVERYTHING)
        assert everything[0] == (everything.paths[0], EVERYTHING[everything.paths[0]])
    with make(FileDataset, "train/**/*.bin") as train:
        assert train.paths == sorted(TRAIN) and len(train) == len(TRAIN)
    assert make(FileDataset, "train").paths == sorted(TRAIN)  # a folder: everything under it
    assert make(FileDataset, "train/1/*").paths == sorted(p for p in TRAIN if p.startswith("train/1/"))
    assert make(FileDataset, "val/[0-2].txt").paths == ["val/0.txt", "val/1.txt", "val/2.txt"]
    assert make(FileDataset, "val/3.txt").paths == ["val/3.txt"]  # a file: itself
    assert make(FileDataset, "**/?.txt").paths == sorted(VAL)
    words = make(FileDataset, "val", lambda data, path: (path.upper(), data.decode().split()))
    assert words[2] == ("VAL/2.TXT", ["validation", "sample", "2"])
    assert words[-1] == ("VAL/4.TXT", ["validation", "sample", "4"])


def test_reading_every_file_of_a_folder_parses_the_folder_once(make, monkeypatch):
    """Opening by path walks the folders each time; a parsed folder is kept (a 500-entry one costs ms to parse)."""
    from dstore.format import unixfs

    ds = make(FileDataset, "train/1")
    parsed = []
    parse = unixfs.parse_node
    monkeypatch.setattr(unixfs, "parse_node", lambda cid, data: parsed.append(cid.to_bytes()) or parse(cid, data))
    for i in range(len(ds)):
        assert ds[i][1] == TRAIN[ds.paths[i]]
    folders = {ds._opened.ds.info(p).cid.to_bytes() for p in ("", "train", "train/1")}
    assert all(parsed.count(f) <= 1 for f in folders) and len(ds) == 10


def test_file_dataset_in_a_dataloader_with_two_workers(make):
    ds = make(FileDataset, "train")
    loader = DataLoader(
        ds, batch_size=5, shuffle=True, num_workers=2, collate_fn=collate_files, multiprocessing_context="forkserver"
    )
    assert sorted(epoch_paths(loader)) == sorted(TRAIN)


def test_unknown_dataset_and_patterns_are_file_not_found(make):
    other = dstore.format.cid.cid_to_text(dstore.format.cid.make_cid(0x71, b"no such dataset"))
    with pytest.raises(FileNotFoundError):
        make(FileDataset, of=other)
    with pytest.raises(FileNotFoundError, match="nope"):
        make(FileDataset, "train/nope")
    with pytest.raises(FileNotFoundError, match=r"\*\.png"):
        make(SampleStream, "train/**/*.png")
    with pytest.raises(FileNotFoundError, match="absent"):
        make(SampleStream, "absent/*.bin")
    with pytest.raises(dstore.errors.FormatError, match="not a tar"):
        make(SampleStream, "val/0.txt", tar=True)


# -- SampleStream: order and partition ---------------------------------------------------------------


def rank_run(make, rank, world_size, *, workers=2, batch_size=4, epoch=0, **kw):
    stream = make(SampleStream, "train", rank=rank, world_size=world_size, **kw)
    stream.set_epoch(epoch)
    return epoch_paths(stream.loader(batch_size=batch_size, num_workers=workers, collate_fn=collate_files))


@pytest.mark.slow
@pytest.mark.parametrize("shuffle", ["uniform", "block"])
@pytest.mark.parametrize("drop_last", [False, True])
def test_two_ranks_of_two_workers_see_every_sample_once(make, drop_last, shuffle):
    files = sorted(TRAIN)
    kw = {"shuffle_block": 4, "shuffle_window": 2} if shuffle == "block" else {}
    runs = [rank_run(make, r, 2, drop_last=drop_last, seed=7, epoch=3, shuffle=shuffle, **kw) for r in range(2)]
    assert len(runs[0]) == len(runs[1]) == (18 if drop_last else 19)
    if shuffle == "uniform":  # DistributedSampler's order over the sorted files, whatever the workers
        for r, run in enumerate(runs):
            sampler = DistributedSampler(range(len(files)), num_replicas=2, rank=r, seed=7, drop_last=drop_last)
            sampler.set_epoch(3)
            assert run == [files[i] for i in sampler]
    seen = runs[0] + runs[1]
    if drop_last:  # no sample twice; one (37 = 2 * 18 + 1) dropped
        assert len(set(seen)) == len(seen) == 36
    else:  # every sample, and one padded by repeating the epoch's first
        assert set(seen) == set(files) and len(seen) == 38
        (twice,) = [p for p in set(seen) if seen.count(p) == 2]
        assert twice == runs[0][0]


def test_same_seed_and_epoch_same_order_other_epoch_other_order(make):
    stream = make(SampleStream, "train", seed=3)
    first = paths_of(stream)
    assert paths_of(stream) == first  # a second pass of the same epoch
    assert paths_of(make(SampleStream, "train", seed=3)) == first
    stream.set_epoch(1)
    second = paths_of(stream)
    assert second != first and sorted(second) == sorted(first) == sorted(TRAIN)
    assert paths_of(make(SampleStream, "train", seed=4)) != first
    assert paths_of(make(SampleStream, "train", shuffle=False)) == sorted(TRAIN)


def test_workers_and_batch_sizes_do_not_change_the_order(make):
    stream = make(SampleStream, "train", seed=5)
    alone = paths_of(stream)
    for workers, batch_size in [(0, 3), (2, 1), (2, 5)]:
        assert epoch_paths(stream.loader(batch_size=batch_size, num_workers=workers, collate_fn=collate_files)) == alone


def test_state_dict_counts_what_was_yielded(make):
    stream = make(SampleStream, "train")
    it = iter(stream)
    for _ in range(5):
        next(it)
    assert stream.state_dict()["position"] == 5
    rest = make(SampleStream, "train")
    rest.load_state_dict(stream.state_dict())
    assert paths_of(rest) == paths_of(make(SampleStream, "train"))[5:]
    assert rest.state_dict()["position"] == len(TRAIN)
    done = make(SampleStream, "train")
    done.load_state_dict(rest.state_dict())
    assert list(done) == []  # a finished epoch resumes finished
    other = make(SampleStream, "train", seed=99)
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(stream.state_dict())


def test_consumed_count_with_a_plain_dataloader(make):
    """With workers of a plain DataLoader, `state_dict(consumed=n)` maps what the loop took to the position."""
    stream = make(SampleStream, "train", seed=1, batch_size=4)
    loader = DataLoader(
        stream, batch_size=4, num_workers=2, collate_fn=collate_files, multiprocessing_context="forkserver"
    )
    taken = []
    for paths, _ in loader:
        taken += paths
        if len(taken) == 12:
            break
    state = stream.state_dict(consumed=len(taken))
    rest = make(SampleStream, "train", seed=1)
    rest.load_state_dict(state)
    assert taken + paths_of(rest) == paths_of(make(SampleStream, "train", seed=1))


# -- block shuffle and bulk reads ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 300),
    st.integers(1, 20),
    st.integers(1, 6),
    st.integers(1, 4),
    st.booleans(),
    st.integers(0, 50),
)
def test_block_shuffle_sees_every_sample_once_and_reads_windows_of_neighbours(n, block, window, world, drop_last, seed):
    from dstore.torch.order import Order

    def order(rank, epoch=1):
        return Order(n, seed, epoch, "block", rank, world, drop_last, block, window)

    runs = [order(r).sequence_and_windows() for r in range(world)]
    seqs = [s.tolist() for s, _ in runs]
    assert all(len(s) == order(0).length for s in seqs)
    seen = [i for s in seqs for i in s]
    if drop_last:
        assert len(set(seen)) == len(seen) == (n // world) * world
    else:
        assert set(seen) == set(range(n)) and len(seen) == -(-n // world) * world
        assert seen[n:] == seen[: len(seen) - n]  # the padding repeats the epoch's first samples
    assert [s.tolist() for s, _ in (order(r).sequence_and_windows() for r in range(world))] == seqs  # determinism
    for seq, (_, windows) in zip(seqs, runs, strict=True):
        ws = windows.tolist()
        bounds: dict[int, list[int]] = {}
        for pos, w in enumerate(ws):
            bounds.setdefault(w, []).append(pos)
        for w, where in bounds.items():
            assert where == list(range(where[0], where[-1] + 1))  # a window is a run of positions
            assert len({seq[p] // block for p in where}) <= window  # of at most `window` blocks of neighbours


def test_block_shuffle_is_shuffled_and_changes_with_the_epoch():
    from dstore.torch.order import Order

    def seq(epoch, seed=0):
        return Order(2000, seed, epoch, "block", 0, 1, False, 10, 8).sequence().tolist()

    first = seq(0)
    assert sorted(first) == list(range(2000)) and first != sorted(first)
    assert seq(0) == first and seq(1) != first and seq(0, seed=1) != first
    blocks = [i // 10 for i in first]
    assert blocks[:80] != sorted(blocks[:80])  # samples of the window's blocks interleave
    assert len(set(blocks[:80])) == 8  # a window: 8 blocks, from all over the dataset
    assert max(blocks[:80]) - min(blocks[:80]) > 20
    leaps = sum(abs(a - b) > 10 for a, b in zip(first, first[1:], strict=False))
    assert leaps > 1000  # most neighbours in the epoch are not neighbours in the dataset


def test_block_windows_across_two_workers_keep_the_order_and_fetch_each_window_once(make):
    """Windows of 6 samples over 2 workers (batches of 2): the worker that yields a window's first sample
    reads it whole into the cache, the other takes its samples from there; the order is the in-process one."""
    stream = make(SampleStream, "train", seed=4, shuffle_block=3, shuffle_window=2)
    alone = paths_of(stream)
    assert alone != sorted(TRAIN) and sorted(alone) == sorted(TRAIN)
    loader = stream.loader(batch_size=2, num_workers=2, collate_fn=collate_files)
    assert epoch_paths(loader) == alone


def test_workers_with_an_unusable_cache_read_their_own_samples(make, tmp_path):
    """No cache to share windows through (a file where its folder should be): each worker reads its own."""
    (tmp_path / "not-a-folder").write_bytes(b"x")
    stream = make(SampleStream, "train", seed=4, shuffle_block=3, shuffle_window=2, cache=tmp_path / "not-a-folder")
    alone = paths_of(stream)
    assert epoch_paths(stream.loader(batch_size=2, num_workers=2, collate_fn=collate_files)) == alone


def test_workers_reading_the_local_store_never_wait_for_each_other(tmp_path, monkeypatch):
    """The store's own chunks are not cached, so workers must not wait for one another's cache entries."""
    from dstore.torch.bulk import SampleReader

    src = tmp_path / "src"
    for path, data in TRAIN.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_bytes(data)
    monkeypatch.delenv("DSTORE_PEERS", raising=False)
    env = {**os.environ, "DSTORE_HOME": str(tmp_path / "home")}
    add = subprocess.run(
        [sys.executable, "-m", "dstore", "add", str(src), "-q"], env=env, capture_output=True, text=True
    )
    assert add.returncode == 0, add.stderr

    def never(*args, **kw):
        raise AssertionError("a worker waited for the cache")

    monkeypatch.setattr(SampleReader, "read_when_cached", never)  # forked workers inherit the patch
    with SampleStream(
        add.stdout.strip(),
        "train",
        seed=4,
        shuffle_block=3,
        shuffle_window=2,
        home=tmp_path / "home",
        cache=tmp_path / "cache",
    ) as stream:
        alone = paths_of(stream)
        loader = stream.loader(batch_size=2, num_workers=2, collate_fn=collate_files, multiprocessing_context="fork")
        assert epoch_paths(loader) == alone


def test_a_stream_reads_neighbouring_samples_with_few_range_requests(make):
    stream = make(SampleStream, "train", seed=6, cache=False)  # one window: the whole folder
    assert sorted(paths_of(stream)) == sorted(TRAIN)
    stats = stream._opened.ds.chunks.stats
    assert stats["range"] >= len(TRAIN) and stats["pack"] == 0
    assert stats["range_requests"] <= 8  # 4 data shards a pack: one request per stretch, not one per chunk
    uniform = make(SampleStream, "train", seed=6, cache=False, shuffle="uniform", prefetch_samples=1)
    assert sorted(paths_of(uniform)) == sorted(TRAIN)
    assert uniform._opened.ds.chunks.stats["range_requests"] >= len(TRAIN)  # one sample at a time


def test_the_shuffle_mode_is_named_and_checked(make):
    assert make(SampleStream, "train").state_dict()["shuffle"] == "block"
    assert make(SampleStream, "train", shuffle=False).state_dict()["shuffle"] == "none"
    with pytest.raises(ValueError, match="shuffle"):
        make(SampleStream, "train", shuffle="sideways")
    uniform = make(SampleStream, "train", seed=2, shuffle="uniform")
    old = {**uniform.state_dict(), "version": 1, "shuffle": True, "position": 3}
    del old["shuffle_block"], old["shuffle_window"]
    uniform.load_state_dict(old)  # a state saved before block shuffle: shuffle=True meant uniform
    assert paths_of(uniform) == paths_of(make(SampleStream, "train", seed=2, shuffle="uniform"))[3:]
    block = make(SampleStream, "train", seed=2)
    with pytest.raises(ValueError, match="shuffle"):
        block.load_state_dict(old)
    with pytest.raises(ValueError, match="shuffle_window"):
        block.load_state_dict({**block.state_dict(), "shuffle_window": 3})


def test_corrupt_range_bytes_are_caught_and_read_from_the_whole_pack(make, six, cid):
    """One peer's data shards are damaged on its disk: the ranges it serves fail their chunk check, the
    peer is scored down, and those packs are read whole (shards checked against their CIDs, rebuilt)."""
    peers, _ = six
    with dstore.open(cid, peers=[p.url for p in peers], cache=False) as ds:
        texts = set()
        for path in TRAIN:
            for digest, _ in ds.reader.leaves(*ds.reader.resolve(path)):
                _, record, ref = ds.reader.chunk_ref(digest)  # the data shards holding the folder's bytes
                first, last = ref.offset // record.shard_size, (ref.offset + ref.stored_len - 1) // record.shard_size
                texts |= {record.shards[i].encode("base32") for i in range(first, last + 1)}
    held = [[p.home / "shards" / t[-2:] / t for t in sorted(texts)] for p in peers]
    victim_files = max(([f for f in files if f.exists()] for files in held), key=len)  # one peer: m = 2 covers it
    damaged = {}
    for f in victim_files:
        damaged[f] = f.read_bytes()
        f.write_bytes(bytes(b ^ 0x5A for b in damaged[f]))
    assert damaged, "the victim holds no data shard of the folder"
    try:
        stream = make(SampleStream, "train", seed=9, cache=False)
        got = dict(stream)
        assert got == TRAIN
        stats = stream._opened.ds.chunks.stats
        assert stats["bad_range"] >= 1 and stats["pack"] >= 1
    finally:
        for f, data in damaged.items():
            f.write_bytes(data)


# -- resuming in a new process -------------------------------------------------------------------------

RESUME = """
import json, sys
from dstore.torch import SampleStream
cid, opts, workers, stop, state = json.loads(sys.argv[1])
with SampleStream(cid, "train", seed=11, rank=1, world_size=2, **opts) as stream:
    stream.set_epoch(2)
    if state:
        stream.load_state_dict(state)
        stream.set_epoch(2)  # a training loop's set_epoch for the epoch it resumes: stays where it was
    got = []
    for paths, _ in stream.loader(batch_size=3, num_workers=workers):  # default_collate: (paths, bytes)
        got += list(paths)
        if len(got) == stop:
            break
    print(json.dumps([got, stream.state_dict()]))
"""


def run_resume(cid, opts, workers, stop, state):
    args = json.dumps([cid, {k: str(v) if k != "peers" else v for k, v in opts.items()}, workers, stop, state])
    out = subprocess.run([sys.executable, "-c", RESUME, args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_in_a_new_process_gives_the_rest_of_the_epoch(cid, opts, workers):
    whole, _ = run_resume(cid, opts, workers, -1, None)
    assert len(whole) == 19
    first, state = run_resume(cid, opts, workers, 9, None)
    assert state["position"] == 9 and state["epoch"] == 2
    rest, end = run_resume(cid, opts, workers, -1, state)
    assert first + rest == whole  # the uninterrupted order; no sample twice, none skipped
    assert end["position"] == 19


FORKED = """
import gc, json, multiprocessing, sys
from dstore.net.sync import SyncPeerSet
from dstore.torch import SampleStream

cid, opts = json.loads(sys.argv[1])
stream = SampleStream(cid, "train", **opts)
next(iter(stream))  # the parent reads: its peers' event loop and read-ahead threads run at the fork


def child(queue):
    n = sum(1 for _ in stream)  # prefetch threads start at once in a process that must reopen the dataset
    queue.put((n, sum(isinstance(o, SyncPeerSet) for o in gc.get_objects())))


ctx = multiprocessing.get_context("fork")
queue = ctx.Queue()
proc = ctx.Process(target=child, args=(queue,))
proc.start()
print(json.dumps(queue.get(timeout=200)))
proc.join(60)
stream.close()
"""


def test_a_forked_worker_reopens_the_dataset_once(cid, opts):
    """The child's prefetch threads must not each reopen the dataset (each would connect its own peer set)."""
    args = json.dumps([cid, {k: str(v) if k != "peers" else v for k, v in opts.items()}])
    out = subprocess.run([sys.executable, "-c", FORKED, args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    samples, peer_sets = json.loads(out.stdout)
    assert samples == len(TRAIN) - 1  # the rest of the epoch
    assert peer_sets == 2  # the parent's (inherited, unused) and the child's own


@pytest.mark.slow
def test_spawned_workers_unpickle_the_stream_and_open_their_own(make):
    stream = make(SampleStream, "train", seed=8)
    want = paths_of(stream)
    loader = stream.loader(batch_size=3, num_workers=2, multiprocessing_context="spawn", collate_fn=collate_files)
    assert epoch_paths(loader) == want


DISTRIBUTED = """
import json, sys
import torch.distributed as dist
from dstore.torch import SampleStream

cid, opts, rank, store_file = json.loads(sys.argv[1])
dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=2)
try:
    with SampleStream(cid, "train", seed=5, drop_last=True, shuffle="uniform", **opts) as stream:  # world from dist
        stream.set_epoch(1)
        got = [p for p, _ in stream]
        print(json.dumps([stream.rank, stream.world_size, got]))
finally:
    dist.destroy_process_group()
"""


@pytest.mark.slow
def test_rank_and_world_size_come_from_torch_distributed(cid, opts, tmp_path):
    args = [
        json.dumps([cid, {k: str(v) if k != "peers" else v for k, v in opts.items()}, r, str(tmp_path / "pg")])
        for r in range(2)
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DISTRIBUTED, a], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for a in args
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    runs = [json.loads(out) for out, _ in outs]
    assert [(r[0], r[1]) for r in runs] == [(0, 2), (1, 2)]
    files = sorted(TRAIN)
    for rank, (_, _, got) in enumerate(runs):
        sampler = DistributedSampler(range(len(files)), num_replicas=2, rank=rank, seed=5, drop_last=True)
        sampler.set_epoch(1)
        assert got == [files[i] for i in sampler]


# -- faults ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_peers_killed_during_an_epoch_change_no_sample(make, six):
    """Two of six peers (m = 2) SIGKILLed mid-epoch: the epoch completes with the samples of an undisturbed one."""
    peers, _ = six

    def loader():
        # Every byte from the peers, and little read ahead: most of the epoch is read after the kill.
        stream = make(SampleStream, "**", seed=21, cache=False, prefetch_samples=2)
        return stream.loader(
            batch_size=4,
            num_workers=2,
            prefetch_factor=1,
            collate_fn=collate_files,
            timeout=FAIL_NOT_HANG_S,
            multiprocessing_context="fork",  # forked after the native pool ran: the child needs a pool of its own
        )

    from dstore import _native

    _native.blake3(bytes(32 << 20))  # runs the native thread pool here, as a training script's reads would
    undisturbed = epoch_paths(loader())
    got = []
    victims = peers[1:3]
    try:
        for paths, datas in loader():
            for path, data in zip(paths, datas, strict=True):
                assert bytes(data) == EVERYTHING[path], path
                got.append(path)
            if len(got) == 4:
                for victim in victims:
                    victim.kill()
    finally:
        for victim in victims:
            if not victim.running:
                victim.start()
    assert got == undisturbed and len(got) == len(EVERYTHING)


# -- tar shards ----------------------------------------------------------------------------------------


def test_tar_shards_give_webdataset_samples(make):
    want = {s["__key__"]: s for _, samples in SHARDS.values() for s in samples}
    stream = make(SampleStream, "shards/*.tar", tar=True, seed=2)
    assert stream.samples == len(want) == 27
    got = list(stream)
    assert sorted(s["__key__"] for s in got) == sorted(want)
    for s in got:
        url = s.pop("__url__")
        assert url.startswith(f"dstore://{stream.cid}/shards/train-")
        assert s == want[s["__key__"]]
    # Through two workers, in the same order.
    loader = stream.loader(batch_size=4, num_workers=2, collate_fn=collate_keys)
    assert [k for keys in loader for k in keys] == [s["__key__"] for s in got]
    decoded = make(SampleStream, "shards", tar=True, decode=lambda s, path: (path, int(s["cls"])))
    assert sorted(decoded) == sorted((f"shards/train-{j:03d}.tar", i % 4) for j in range(3) for i in range(9))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096), st.integers(0, 3))
def test_tar_index_of_hostile_bytes_fails_cleanly_or_stays_in_bounds(data, shard):
    tar, _ = wds_tar(shard)
    for raw in (data, tar[: len(data)], tar[:512] + data):
        try:
            spans = index_tar(io.BytesIO(raw), "x.tar")
        except dstore.errors.FormatError:
            continue
        for start, end in spans:
            assert 0 <= start < end
            try:
                sample_from_span(raw[start:end], "x.tar")
            except dstore.errors.FormatError:
                pass


# -- pieces ----------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text("ab*?[]!.^-", max_size=8), st.text("ab.!]^-", max_size=8))
def test_a_glob_segment_matches_as_fnmatch_does(pattern, name):
    import fnmatch

    assume(pattern not in ("", ".") and name not in ("", "."))  # empty and "." segments name the folder itself
    assert matcher(pattern)(name) == fnmatch.fnmatchcase(name, pattern)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", "*", "**", "?", "[ab]"]), max_size=5),
    st.lists(st.sampled_from("ab"), max_size=5),
)
def test_a_double_star_segment_matches_any_run_of_segments(parts, names):
    """Against the definition: some way to give each ``**`` zero or more names and each other segment one."""
    import fnmatch

    def ways(ps, ns):
        if not ps:
            return not ns
        if ps[0] == "**":
            return any(ways(ps[1:], ns[k:]) for k in range(len(ns) + 1))
        return bool(ns) and fnmatch.fnmatchcase(ns[0], ps[0]) and ways(ps[1:], ns[1:])

    assert matcher("/".join(parts))("/".join(names)) == ways(parts, names)


def test_prefetch_keeps_order_and_its_bounds():
    import threading
    import time

    lock = threading.Lock()
    now = {"count": 0, "bytes": 0}
    peak = {"count": 0, "bytes": 0}
    released = []

    def read(item):
        with lock:
            now["count"] += 1
            now["bytes"] += item[1]
            peak["count"] = max(peak["count"], now["count"])
            peak["bytes"] = max(peak["bytes"], now["bytes"])
        time.sleep(0.002)
        return item[0] * 2

    got = []
    for item, result in prefetched(
        [(i, 10 + i % 7) for i in range(200)], read, lambda it: it[1], max_samples=6, max_bytes=50, threads=4
    ):
        with lock:  # the consumer has it: it is no longer in flight
            now["count"] -= 1
            now["bytes"] -= item[1]
        got.append(result)
        released.append(item[0])
    assert got == [2 * i for i in range(200)]
    assert peak["count"] <= 6 and peak["bytes"] <= 50
