"""``FileDataset`` (map-style) and ``SampleStream`` (iterable) over a dataset read in place.

Both open the dataset with :func:`dstore.open` (the local store, else the
peers; the machine's chunk cache) and list their files once, from metadata,
when made. A DataLoader worker forked from the process that made them reopens
the dataset on first use (:class:`dstore.mount.dataset.Dataset` does that
after a fork); a spawned one unpickles them without the open handle and opens
its own. docs/training.md, "PyTorch", describes the order, the partition
over ranks and workers, and how to resume.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data import Dataset as TorchDataset

import dstore
from dstore.mount.dataset import Dataset
from dstore.torch.bulk import FileChunks, SampleReader, window_bounds
from dstore.torch.files import match_nodes
from dstore.torch.order import Order, shuffle_mode, worker_positions
from dstore.torch.prefetch import (
    GROUP_THREADS,
    PREFETCH_BYTES,
    PREFETCH_SAMPLES,
    PREFETCH_THREADS,
    grouped,
    prefetched,
)
from dstore.torch.tars import Span, index_tar, sample_from_span

__all__ = ["SHUFFLE_BLOCK_BYTES", "SHUFFLE_WINDOW", "STATE_VERSION", "FileDataset", "SampleStream", "StreamLoader"]

#: The version of :meth:`SampleStream.state_dict`'s layout (1: before block shuffle; still loaded).
STATE_VERSION = 2
#: Threads indexing tar shards (headers only) when a tar-mode stream is made.
INDEX_THREADS = 8
#: Block shuffle: a block is about this many bytes of consecutive samples (by the dataset's mean sample size).
SHUFFLE_BLOCK_BYTES = 2 << 20
#: Block shuffle: the samples of this many consecutive blocks of the shuffled block order are shuffled together.
SHUFFLE_WINDOW = 8


def _chunk_lists(ds: Dataset, nodes: list[Any]) -> FileChunks | None:
    """Every file's chunk list, for reading samples in bulk; None where chunks come one by one (gateways)."""
    if ds.reader.gateway is not None:
        return None
    try:
        return FileChunks(ds, [(cid, node) for _, _, cid, node in nodes])
    except ValueError:  # a chunk ID of another length than the arrays hold: read file by file
        return None


class _Opened:
    """How to open the dataset, and the dataset once open in this process; pickled without the handle."""

    def __init__(self, cid: str, peers: Any, token: str | None, cache: Any, home: Any) -> None:
        self.cid = cid
        self.options = {"peers": peers, "token": token, "cache": cache, "home": home}
        self._ds: Dataset | None = None

    @property
    def ds(self) -> Dataset:
        if self._ds is None or self._ds.closed:
            self._ds = dstore.open(self.cid, **self.options)
        return self._ds

    def close(self) -> None:
        if self._ds is not None:
            self._ds.close()
            self._ds = None

    @contextmanager
    def closed_on_error(self) -> Iterator[Dataset]:
        """The dataset, closed again if what is made with it fails (a constructor raising leaks nothing)."""
        try:
            yield self.ds
        except BaseException:
            self.close()
            raise

    def __getstate__(self) -> dict[str, Any]:
        return {"cid": self.cid, "options": self.options, "_ds": None}


class FileDataset(TorchDataset[Any]):
    """Map-style: item ``i`` is the ``i``-th file (sorted by path) that ``pattern`` names.

    ``pattern`` is a file, a folder (every file under it) or a glob (``*``, ``?``,
    ``[...]`` within a path segment, ``**`` across segments). Without ``decode``
    an item is ``(path, bytes)``; with it, ``decode(bytes, path)``. A batch
    (``__getitems__``, which DataLoader uses) reads its files concurrently.
    """

    def __init__(
        self,
        cid: str,
        pattern: str = "**",
        decode: Callable[[bytes, str], Any] | None = None,
        *,
        peers: Any = None,
        token: str | None = None,
        cache: Any = None,
        home: str | os.PathLike[str] | None = None,
    ) -> None:
        self._opened = _Opened(cid, peers, token, cache, home)
        self.pattern = pattern
        self.decode = decode
        with self._opened.closed_on_error() as ds:
            self.cid = ds.cid
            nodes = match_nodes(ds, pattern)
            self.files = [(path, size) for path, size, _, _ in nodes]
            self._chunks = _chunk_lists(ds, nodes)

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def _item(self, path: str, data: bytes) -> Any:
        return (path, data) if self.decode is None else self.decode(data, path)

    def __getitem__(self, index: int) -> Any:
        path, _ = self.files[index]
        return self._item(path, self._opened.ds.read_bytes(path))

    def __getitems__(self, indices: list[int]) -> list[Any]:
        ds = self._opened.ds
        ds.chunks.check_process()  # a forked worker reopens the dataset here, once, before the threads read
        if self._chunks is not None:  # the batch's chunks together: one cache batch, ranges per data shard
            spans = [(i, 0, self.files[i][1]) for i in indices]
            datas = SampleReader(ds, self._chunks).read(spans)
            return [self._item(self.files[i][0], data) for i, data in zip(indices, datas, strict=True)]
        return [
            self._item(path, data)
            for (path, _), data in prefetched(
                [self.files[i] for i in indices], lambda f: ds.read_bytes(f[0]), lambda f: f[1]
            )
        ]

    def close(self) -> None:
        self._opened.close()

    def __enter__(self) -> FileDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit arguments, else torch.distributed's when it is initialised, else a world of one."""
    dist = torch.distributed
    initialised = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    return rank, world_size


class SampleStream(IterableDataset[Any]):
    """Iterable: every sample of ``pattern`` once per epoch, in an order from ``(seed, epoch)``.

    A sample is a file (item ``(path, bytes)``), or with ``tar=True`` a group of
    members of a tar shard, WebDataset style (item ``{"__key__": key,
    "__url__": "dstore://CID/shard.tar", ext: bytes, …}``); with ``decode`` the
    item is ``decode(bytes or that dict, path)``. The epoch's order comes from
    ``seed + epoch``: by default (``shuffle=True`` or ``"block"``) blocks of
    ``shuffle_block`` neighbouring samples in a random order, shuffled within
    windows of ``shuffle_window`` blocks, so that what is read together lies
    together in the data shards; ``shuffle="uniform"`` is ``DistributedSampler``'s
    order, ``False`` path order (dstore/torch/order.py). It is padded
    (``drop_last=False``) or cut (``drop_last=True``) to equal counts per rank;
    a rank's share is split over DataLoader workers by batches of
    ``batch_size`` so the loop receives it in order.

    ``state_dict()`` is the position reached (what was yielded so far, when
    iterated in this process or by :meth:`loader`); with a DataLoader of your
    own and workers, ``state_dict(consumed=n)`` with the samples the loop has
    taken in this pass. ``load_state_dict`` resumes there, in a new process too.
    """

    def __init__(
        self,
        cid: str,
        pattern: str = "**",
        decode: Callable[[Any, str], Any] | None = None,
        *,
        seed: int = 0,
        shuffle: bool | str = True,
        tar: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        peers: Any = None,
        token: str | None = None,
        cache: Any = None,
        home: str | os.PathLike[str] | None = None,
        batch_size: int = 1,
        prefetch_samples: int = PREFETCH_SAMPLES,
        prefetch_bytes: int = PREFETCH_BYTES,
        shuffle_block: int | None = None,
        shuffle_window: int = SHUFFLE_WINDOW,
    ) -> None:
        self._opened = _Opened(cid, peers, token, cache, home)
        self.pattern = pattern
        self.decode = decode
        self.seed = int(seed)
        self.shuffle = shuffle_mode(shuffle)
        self.tar = bool(tar)
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.drop_last = bool(drop_last)
        self.batch_size = batch_size
        self.prefetch_samples = prefetch_samples
        self.prefetch_bytes = prefetch_bytes
        with self._opened.closed_on_error() as ds:
            self.cid = ds.cid
            nodes = match_nodes(ds, pattern)
            self.files = [(path, size) for path, size, _, _ in nodes]
            self._index(ds)
            self.samples = len(self._shards) if self.tar else len(self.files)
            self._chunks = _chunk_lists(ds, nodes)
            del nodes
            if shuffle_block is None:  # about SHUFFLE_BLOCK_BYTES of samples of the mean size
                mean = self._bytes() / max(1, self.samples)
                shuffle_block = max(1, min(1 << 16, round(SHUFFLE_BLOCK_BYTES / max(1.0, mean))))
            self.shuffle_block = int(shuffle_block)
            self.shuffle_window = int(shuffle_window)
            self.epoch = 0
            self.order()  # checks rank, block and window
        self._position = 0  # of this rank's sequence, in the epoch
        self._done = False  # a pass in this process ran to the end: the next one starts over

    def _bytes(self) -> int:
        if self.tar:
            return sum(self._ends) - sum(self._starts)
        return sum(size for _, size in self.files)

    def _index(self, ds: Dataset) -> None:
        # Tar mode: sample i is bytes _starts[i]:_ends[i] of file _shards[i]. Arrays, not tuples: a worker
        # touching them does not unshare the pages its fork inherited.
        self._shards = array("q")
        self._starts = array("q")
        self._ends = array("q")
        if not self.tar:
            return

        def index(shard: int) -> list[Span]:
            path = self.files[shard][0]
            with ds.open(path) as f:
                return index_tar(f, path)

        with ThreadPoolExecutor(INDEX_THREADS, thread_name_prefix="dstore-tar-index") as pool:
            for shard, spans in enumerate(pool.map(index, range(len(self.files)))):
                for start, end in spans:
                    self._shards.append(shard)
                    self._starts.append(start)
                    self._ends.append(min(end, self.files[shard][1]))

    # -- order -------------------------------------------------------------------

    def order(self, epoch: int | None = None) -> Order:
        """This rank's share of ``epoch`` (default: the current one)."""
        return Order(
            self.samples,
            self.seed,
            self.epoch if epoch is None else epoch,
            self.shuffle,
            self.rank,
            self.world_size,
            self.drop_last,
            self.shuffle_block,
            self.shuffle_window,
        )

    def __len__(self) -> int:
        """Samples of this rank per epoch (as for DistributedSampler)."""
        return self.order().length

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning; the current epoch (a resumed one) is left where it is."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self._position = 0
            self._done = False

    # -- reading -----------------------------------------------------------------

    def _span(self, sample: int) -> tuple[str, int, int]:
        if self.tar:
            return self.files[self._shards[sample]][0], self._starts[sample], self._ends[sample]
        path, size = self.files[sample]
        return path, 0, size

    def _file_span(self, sample: int) -> tuple[int, int, int]:
        """(file index, start, end) of a sample."""
        if self.tar:
            return self._shards[sample], self._starts[sample], self._ends[sample]
        return sample, 0, self.files[sample][1]

    def _item(self, path: str, data: bytes) -> Any:
        item: Any
        if self.tar:
            item = sample_from_span(data, path)
            item["__url__"] = f"dstore://{self.cid}/{path}"
            return item if self.decode is None else self.decode(item, path)
        return (path, data) if self.decode is None else self.decode(data, path)

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self._done:
            self._position, self._done = 0, False
        order = self.order()
        ordered, windows = order.sequence_and_windows()
        sequence = array("q")  # compact, and a plain index is ~50x faster than indexing a tensor
        for piece in ordered.split(1 << 16):
            sequence.extend(piece.tolist())
        window = array("q")
        for piece in windows.split(1 << 16) if windows is not None else ():
            window.extend(piece.tolist())
        del ordered, windows
        ds = self._opened.ds
        ds.chunks.check_process()  # a forked worker reopens the dataset here, once, before the threads read
        positions = worker_positions(self._position, order.length, self.batch_size, worker, workers)
        if self._chunks is None:
            yield from self._one_by_one(ds, sequence, positions)
        else:
            yield from self._in_groups(ds, self._chunks, sequence, window, positions, worker, workers)
        if workers == 1:
            self._position, self._done = order.length, True

    def _in_groups(
        self,
        ds: Dataset,
        chunks: FileChunks,
        sequence: array[int],
        window: array[int],
        positions: Iterator[int],
        worker: int,
        workers: int,
    ) -> Iterator[Any]:
        """Samples read a group at a time: this worker's samples of one shuffle window (or a run of them
        when there are no windows), within the prefetch bounds; groups read ahead on threads.

        With several workers, a disk cache and a dataset read from peers, a window's samples are fetched
        by one worker, the one that yields its first sample: it reads the whole window (one range
        request per data shard stretch, not one per worker) into the cache, and the others take their
        samples of it from there.
        """
        max_samples, max_bytes = max(1, self.prefetch_samples), max(1, self.prefetch_bytes)
        group_samples, group_bytes = max_samples, max_bytes  # a whole window is one group
        start, batch = self._position, self.batch_size
        cache = ds.chunks.cache
        # Sharing needs chunks that go through the cache: read from peers (the store's own are not cached).
        from_peers = ds.chunks.peers is not None and ds.reader.pointer is not None
        share = workers > 1 and bool(window) and from_peers and cache is not None and cache.writable()
        bounds = window_bounds(window) if share else {}

        def span(pos: int) -> tuple[int, int, int, int]:
            return (pos, *self._file_span(sequence[pos]))

        def read(group: list[tuple[int, int, int, int]]) -> list[bytes]:
            spans = [s[1:] for s in group]
            if not share or (cache is not None and cache.write_failed):  # others could not count on the cache
                return reader.read(spans)
            a, b = bounds[window[group[0][0]]]
            first = max(a, start)
            whole = [self._file_span(sequence[p]) for p in range(first, b)]
            if b - first > max_samples or sum(e - s for _, s, e in whole) > max_bytes:
                return reader.read(spans)  # a window past the prefetch bounds: each worker reads its own
            if ((first - start) // batch) % workers == worker:  # this worker fetches the window for all
                mine = {s[0] for s in group}
                return reader.read(spans, [whole[p - first] for p in range(first, b) if p not in mine])
            return reader.read_when_cached(spans)

        groups = grouped(
            (span(pos) for pos in positions),
            (lambda s: window[s[0]]) if window else (lambda s: None),
            lambda s: s[3] - s[2],
            max_items=group_samples,
            max_bytes=group_bytes,
        )
        reader = SampleReader(ds, chunks)
        for group, datas in prefetched(
            groups,
            read,
            lambda g: sum(s[3] - s[2] for s in g),
            max_samples=max_samples,
            max_bytes=max_bytes,
            threads=GROUP_THREADS,
            count=len,
        ):
            for (pos, file, _, _), data in zip(group, datas, strict=True):
                item = self._item(self.files[file][0], data)
                self._position = pos + 1  # exact when this process is the only one iterating (workers=1)
                yield item

    def _one_by_one(self, ds: Dataset, sequence: array[int], positions: Iterator[int]) -> Iterator[Any]:
        """Samples read file by file through ``Dataset.read_bytes`` (datasets read from gateways)."""

        def spans_of(positions: Iterator[int]) -> Iterator[tuple[int, str, int, int]]:
            for pos in positions:
                yield (pos, *self._span(sequence[pos]))

        for (pos, path, _, _), data in prefetched(
            spans_of(positions),
            lambda s: ds.read_bytes(s[1], s[2], s[3]),
            lambda s: s[3] - s[2],
            max_samples=min(self.prefetch_samples, 32),
            max_bytes=self.prefetch_bytes,
            threads=PREFETCH_THREADS,
        ):
            item = self._item(path, data)
            self._position = pos + 1  # exact when this process is the only one iterating (workers=1)
            yield item

    # -- resuming ----------------------------------------------------------------

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """Where this rank is in the epoch, to resume from with :meth:`load_state_dict` (a plain dict).

        ``consumed``: the samples the training loop has taken from the current pass (since the epoch
        started, or since the position it resumed from) when a DataLoader of your own with workers
        iterates copies of this object; without it, the position this object knows (exact when
        iterated directly, with ``num_workers=0`` or through :meth:`loader`).
        """
        length = len(self)
        if consumed is None:
            position = self._position
        else:
            start = 0 if self._done else self._position
            if not 0 <= consumed <= length - start:
                raise ValueError(f"consumed={consumed}: this pass has {length - start} samples from {start}")
            position = start + consumed
        return {
            "version": STATE_VERSION,
            "cid": self.cid,
            "pattern": self.pattern,
            "tar": self.tar,
            "samples": self.samples,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "shuffle_block": self.shuffle_block,
            "shuffle_window": self.shuffle_window,
            "world_size": self.world_size,
            "drop_last": self.drop_last,
            "rank": self.rank,
            "epoch": self.epoch,
            "position": position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the epoch and position of ``state`` (from :meth:`state_dict`, of any rank)."""
        if state.get("version") == 1 and state.get("shuffle") in (True, False):  # before block shuffle
            state = {**state, "shuffle": "uniform" if state["shuffle"] else "none"}
            state.update(shuffle_block=self.shuffle_block, shuffle_window=self.shuffle_window)
        elif state.get("version") != STATE_VERSION:
            raise ValueError(f"not a SampleStream state of version {STATE_VERSION}: {state.get('version')!r}")
        mine = self.state_dict()
        keys = ["cid", "pattern", "tar", "samples", "seed", "shuffle", "world_size", "drop_last"]
        if mine["shuffle"] == "block":
            keys += ["shuffle_block", "shuffle_window"]
        differ = [k for k in keys if state.get(k) != mine[k]]
        if differ:
            raise ValueError(
                "the state is of another stream: " + ", ".join(f"{k} {state.get(k)!r} here {mine[k]!r}" for k in differ)
            )
        epoch, position = int(state["epoch"]), int(state["position"])
        if not 0 <= position <= self.order(epoch).length:
            raise ValueError(f"position {position} is not in an epoch of {self.order(epoch).length} samples")
        self.epoch, self._position, self._done = epoch, position, False

    def loader(self, batch_size: int | None = 1, **kwargs: Any) -> StreamLoader:
        """A DataLoader over this stream that keeps :meth:`state_dict` exact with workers (see StreamLoader)."""
        return StreamLoader(self, batch_size=batch_size, **kwargs)

    def close(self) -> None:
        self._opened.close()

    def __enter__(self) -> SampleStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamLoader(DataLoader[Any]):
    """A DataLoader over a :class:`SampleStream` that counts what the training loop consumed.

    It sets the stream's ``batch_size`` to its own, so its workers split the
    rank's sequence by whole batches and batches arrive in sequence order, and
    moves the stream's position by each batch the loop takes: the stream's
    ``state_dict()`` is then exact with any number of workers. Batches come in
    order (``in_order=False`` is refused) and workers are made for each pass
    (``persistent_workers=True`` is refused: a worker kept across epochs would
    never see ``set_epoch`` or ``load_state_dict``). Workers start as
    DataLoader starts them (``fork`` on Linux; dstore's native thread pool is
    made again in a forked child).
    """

    def __init__(self, stream: SampleStream, batch_size: int | None = 1, **kwargs: Any) -> None:
        if kwargs.get("in_order") is False:
            raise ValueError("a StreamLoader hands batches over in order: in_order=False would break resuming")
        if kwargs.get("persistent_workers"):
            raise ValueError("persistent workers would not see set_epoch or load_state_dict: make them per pass")
        stream.batch_size = batch_size or 1
        super().__init__(stream, batch_size=batch_size, **kwargs)
        self.stream = stream

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        stream = self.stream
        if self.num_workers == 0:  # the stream runs here and counts its own yields
            yield from super().__iter__()
            return
        start = 0 if stream._done else stream._position
        length = len(stream)
        taken = 0
        for batch in super().__iter__():
            taken = min(taken + stream.batch_size, length - start)
            stream._position, stream._done = start + taken, False
            yield batch
        stream._position, stream._done = length, True
