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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from dstore.errors import IntegrityError
from dstore.fetch.reader import DatasetReader
from dstore.format.locator import ChunkEntry
from dstore.format.pack import PackRecord

__all__ = ["AHEAD_PACKS", "RUN_BYTES", "Leaf", "Run", "chunk_runs"]

#: A run holds at most this many chunk bytes (unless one chunk is larger).
RUN_BYTES = 2 << 20
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
    """Chunks of one pack, decoded back to back into ``data`` and verified, ``leaves`` in the same order.

    ``data`` is valid until the run after the next one is decoded (see the module's docstring).
    """

    leaves: list[Leaf]
    data: memoryview

    def views(self) -> Iterator[tuple[Leaf, memoryview]]:
        """Each chunk's bytes within the run."""
        pos = 0
        for leaf in self.leaves:
            yield leaf, self.data[pos : pos + leaf.size]
            pos += leaf.size


@dataclass(slots=True)
class _Planned:
    pack_id: bytes
    record: PackRecord
    leaves: list[Leaf]
    refs: list[ChunkEntry]
    nbytes: int


def chunk_runs(reader: DatasetReader, items: Iterable[Leaf | Other]) -> Iterator[Run | Other]:
    """``items`` in order, each stretch of consecutive leaves replaced by the verified runs of their bytes.

    Anything that is not a :class:`Leaf` (a node block a CAR sends between chunks) passes through and
    ends the run before it. A leaf must be the chunk its locator entry names, of the same size
    (IntegrityError otherwise).
    """
    source = iter(items)
    window: deque[_Planned | Other] = deque()  # planned runs and passed-through items, in order
    packs: deque[list[Any]] = deque()  # [pack ID, its runs in the window] of the planned runs, in order
    last_planned: _Planned | None = None  # the newest planned run (still in the window or not)
    asked: set[bytes] = set()  # packs whose fetch has been started
    size = max(RUN_BYTES, reader.manifest.chunker.max)
    buffers: list[bytearray] = []  # made on the first run
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
            if run is not None and run.pack_id == pack_id and run.nbytes + item.size <= size:
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
        if later is not None:
            reader.packs.prefetch(later.pack_id, later.record)  # mapped (or awaited) on the helper thread
        if not buffers:
            buffers = [bytearray(size), bytearray(size)]
        data = reader.packs.read_run(head.pack_id, head.record, head.refs, buffers[turn])
        turn ^= 1
        if not any(isinstance(p, _Planned) and p.pack_id == head.pack_id for p in window):
            reader.packs.forget(head.pack_id)  # its chunks are in the run buffer: the pack's memory goes now
            asked.discard(head.pack_id)  # should a later chunk need it again, it is fetched again
        yield Run(head.leaves, data)
