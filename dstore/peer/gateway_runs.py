"""A file's chunks read in runs for gateway streams, the packs of the next runs fetched meanwhile.

A gateway stream (a file's bytes, its CAR, a TAR) reads chunks in file order.
Read chunk by chunk, every chunk is a round trip to the native decoder and,
when its pack lives on other peers, packs come one at a time. Here consecutive
chunks of one pack form a run (at most ``RUN_BYTES``) that one native call
decodes and verifies against the chunks' IDs; while a run is in use, the packs
of the runs after it (at most ``AHEAD_PACKS``) are fetched from the
``--peers`` concurrently, as ``dstore get`` fetches them. Memory stays bounded:
two run buffers and the packs in flight; a pack is dropped as soon as the last
planned run that needs it is decoded.

Runs are decoded into two buffers in turn: the bytes of a run stay valid until
the run after the next one is decoded, so a consumer may hold one run while it
pulls the next (a stream writes run n while run n + 1 is read), not more.

A pack whose k data shards this peer holds is read straight from the shard files: one native call
per run reads every chunk into its place in the run buffer, checks it against its ID, and, for a
CAR, writes each chunk's section head before it (``cid_prefix``), so the run buffer is the piece
the stream sends. Any failure there (a damaged or shortened shard) reads the run again through the
dataset's pack reader, which rebuilds the pack from verified shards; nothing unverified is returned.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from dstore import _native
from dstore.errors import IntegrityError
from dstore.fetch.packs import LocalShards, LocalThenPeers
from dstore.fetch.reader import DatasetReader
from dstore.format.car import car_section_head
from dstore.format.cid import DIGEST_BYTES
from dstore.format.locator import ChunkEntry
from dstore.format.pack import PackRecord

__all__ = ["AHEAD_PACKS", "RUN_BYTES", "Leaf", "Run", "chunk_runs"]

#: A run holds at most this many chunk bytes (unless one chunk is larger).
RUN_BYTES = 2 << 20
#: Chunks looked up in the locator in one pass, the walk's items pulled this many ahead.
LOOKUP_BATCH = 512
#: Packs of the runs after the current one fetched from peers meanwhile (each about 10 MiB in memory).
AHEAD_PACKS = 1

Other = TypeVar("Other")  # items passed through in order


@dataclass(frozen=True, slots=True)
class Leaf:
    """A chunk to read: its digest, its size as its verified parent declares it, and the caller's tag."""

    digest: bytes
    size: int
    tag: Any  # what the caller needs back with the bytes (a CID, an offset in the file)


@dataclass(frozen=True, slots=True)
class Run:
    """Chunks of one pack, verified, ``leaves`` in their order in ``data``: the chunks back to back, or
    (``chunk_runs`` given a ``cid_prefix``) each as its CAR section.

    ``data`` is valid until the run after the next one is decoded (see the module's docstring).
    """

    leaves: list[Leaf]
    data: memoryview


@dataclass(slots=True)
class _Planned:
    pack_id: bytes
    record: PackRecord
    leaves: list[Leaf]
    refs: list[ChunkEntry]
    nbytes: int


def chunk_runs(
    reader: DatasetReader, items: Iterable[Leaf | Other], *, cid_prefix: bytes = b""
) -> Iterator[Run | Other]:
    """``items`` in order, each stretch of consecutive leaves replaced by the verified runs of their bytes.

    Anything that is not a :class:`Leaf` (a node block a CAR sends between chunks) passes through and
    ends the run before it. A leaf must be the chunk its locator entry names, of the same size
    (IntegrityError otherwise). With ``cid_prefix`` (a chunk CID's bytes before its digest), each
    run's ``data`` is its chunks' CAR sections, ``varint(len) || cid_prefix || digest || chunk``.
    """
    held = _HeldShards(reader)
    try:
        yield from _runs(reader, _looked_up(reader, iter(items)), held, cid_prefix)
    finally:
        held.close()


def _looked_up(reader: DatasetReader, items: Iterator[Leaf | Other]) -> Iterator[Leaf | Other]:
    """``items`` in order, the chunks among each LOOKUP_BATCH of them looked up in the locator in one pass
    first (``chunk_ref`` is then a dictionary hit; an entry it would refuse is looked up again and refused)."""
    while batch := list(itertools.islice(items, LOOKUP_BATCH)):
        reader.prime([item.digest for item in batch if isinstance(item, Leaf)])
        yield from batch


def _runs(
    reader: DatasetReader, source: Iterator[Leaf | Other], held: _HeldShards, prefix: bytes
) -> Iterator[Run | Other]:
    window: deque[_Planned | Other] = deque()  # planned runs and passed-through items, in order
    packs: deque[list[Any]] = deque()  # [pack ID, its runs in the window] of the planned runs, in order
    last_planned: _Planned | None = None  # the newest planned run (still in the window or not)
    asked: set[bytes] = set()  # packs whose fetch has been started
    size = max(RUN_BYTES, reader.manifest.chunker.max)
    head_room = len(prefix) + _MAX_HEAD_BYTES if prefix else 0  # a CAR section's head, at most
    buffers: list[bytearray] = []  # made on the first run
    scratch: list[bytearray] = []  # a run's chunks before they are framed, when not read here (made on need)
    turn = 0
    exhausted = False

    while True:
        # Plan until the window's runs reach AHEAD_PACKS packs past the first one (or the items end).
        while not exhausted and len(packs) <= AHEAD_PACKS:
            item = next(source, None)
            if item is None:
                exhausted = True
                break
            if not isinstance(item, Leaf):
                window.append(item)
                last_planned = None
                continue
            pack_id, record, ref = reader.chunk_ref(item.digest)
            if ref.digest != item.digest:
                raise IntegrityError(f"the locator's entry for chunk {item.digest.hex()[:16]}… names another chunk")
            if ref.size != item.size:
                raise IntegrityError(
                    f"chunk {item.digest.hex()[:16]}… has size {ref.size} in the locator, {item.size} in the file"
                )
            run = last_planned
            if (
                run is not None
                and run.pack_id == pack_id
                and run.nbytes + item.size + head_room * (len(run.leaves) + 1) <= size  # heads count too
            ):
                run.leaves.append(item)
                run.refs.append(ref)
                run.nbytes += item.size
                continue
            if packs and packs[-1][0] == pack_id:
                packs[-1][1] += 1
            else:
                packs.append([pack_id, 1])
            last_planned = _Planned(pack_id, record, [item], [ref], item.size)
            window.append(last_planned)
        if not window:
            return
        head = window.popleft()
        if head is last_planned:
            last_planned = None  # a leaf after this must not join a run already handed out
        if not isinstance(head, _Planned):
            yield head
            continue
        packs[0][1] -= 1
        if not packs[0][1]:
            packs.popleft()
        fresh: dict[bytes, PackRecord] = {}
        for p in (head, *window):
            if isinstance(p, _Planned) and p.pack_id not in asked and len(fresh) <= AHEAD_PACKS:
                fresh[p.pack_id] = p.record
        if fresh:
            reader.packs.source.prefetch(list(fresh.items()))  # peers' packs: several in flight at once
            asked.update(fresh)
        later = next((p for p in window if isinstance(p, _Planned) and p.pack_id != head.pack_id), None)
        if later is not None and held.fds(later.pack_id, later.record) is None:
            reader.packs.prefetch(later.pack_id, later.record)  # mapped (or awaited) on the helper thread
        need = head.nbytes + head_room * len(head.leaves)  # more than size only for one chunk of max size
        if not buffers:
            buffers = [bytearray(max(size, need)), bytearray(max(size, need))]
        elif len(buffers[turn]) < need:
            buffers[turn] = bytearray(need)
        data = _read_run(reader, held, head, buffers[turn], prefix, scratch)
        turn ^= 1
        if not any(isinstance(p, _Planned) and p.pack_id == head.pack_id for p in window):
            reader.packs.forget(head.pack_id)  # its chunks are in the run buffer: the pack's memory goes now
            held.forget(head.pack_id)
            asked.discard(head.pack_id)  # should a later chunk need it again, it is fetched again
        yield Run(head.leaves, data)


#: A CAR section head beyond its CID prefix: the varint of its length (at most 10 bytes) and the digest.
_MAX_HEAD_BYTES = 10 + DIGEST_BYTES


def _read_run(
    reader: DatasetReader, held: _HeldShards, run: _Planned, out: bytearray, prefix: bytes, scratch: list[bytearray]
) -> memoryview:
    """The run's verified chunks (as CAR sections with ``prefix``) at the start of ``out``; chunks read
    through the pack reader are framed from ``scratch`` (one reused buffer, made on first need)."""
    refs = run.refs
    fds = held.fds(run.pack_id, run.record)
    if fds is not None:
        try:
            n = _native.read_run_files(
                out,
                fds,
                run.record.shard_size,
                [r.offset for r in refs],
                [r.stored_len for r in refs],
                [r.size for r in refs],
                [r.codec for r in refs],
                b"".join(r.digest for r in refs),
                reader.packs.hash_code,
                prefix,
            )
            return memoryview(out)[:n]
        except (ValueError, OSError):  # a damaged or short shard (IntegrityError is a ValueError)
            held.refuse(run.pack_id)  # this pack is read the careful way from now on: rebuilt if need be
    if not prefix:
        return reader.packs.read_run(run.pack_id, run.record, refs, out)
    if not scratch or len(scratch[0]) < run.nbytes:
        scratch[:] = [bytearray(max(run.nbytes, RUN_BYTES))]
    chunks = reader.packs.read_run(run.pack_id, run.record, refs, scratch[0])
    view, pos, at = memoryview(out), 0, 0
    for ref in refs:
        head = car_section_head(prefix + ref.digest, ref.size)
        view[pos : pos + len(head)] = head
        pos += len(head)
        view[pos : pos + ref.size] = chunks[at : at + ref.size]
        pos += ref.size
        at += ref.size
    return view[:pos]


class _HeldShards:
    """Open data shard files of the packs this peer holds whole (at most the packs of the window).

    A pack is held when each of its k data shards has a file here of the shard's size; its bytes are
    still checked chunk by chunk when read.
    """

    def __init__(self, reader: DatasetReader) -> None:
        source = reader.packs.source
        self._local = source.local if isinstance(source, LocalThenPeers) else source
        self._fds: dict[bytes, list[int] | None] = {}

    def fds(self, pack_id: bytes, record: PackRecord) -> list[int] | None:
        """The pack's k data shard files, open; None when one is not held here whole."""
        if pack_id not in self._fds:
            self._fds[pack_id] = self._open(record) if isinstance(self._local, LocalShards) else None
        return self._fds[pack_id]

    def _open(self, record: PackRecord) -> list[int] | None:
        assert isinstance(self._local, LocalShards)
        fds: list[int] = []
        try:
            for cid in record.shards[: record.k]:
                fds.append(os.open(self._local.store.shards.path(cid.encode("base32")), os.O_RDONLY | os.O_CLOEXEC))
                if os.fstat(fds[-1]).st_size != record.shard_size:
                    raise FileNotFoundError("a shard file of the wrong size")
        except OSError:
            _close(fds)
            return None
        return fds

    def refuse(self, pack_id: bytes) -> None:
        """Read this pack through the pack reader from now on (its shards failed here)."""
        _close(self._fds.get(pack_id) or [])
        self._fds[pack_id] = None

    def forget(self, pack_id: bytes) -> None:
        _close(self._fds.pop(pack_id, None) or [])

    def close(self) -> None:
        for fds in self._fds.values():
            _close(fds or [])
        self._fds.clear()


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
