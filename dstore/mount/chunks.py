"""Verified chunks of one dataset, from the cheapest place that has them.

In order: the disk cache (checked against the chunk ID), the local store's
shard files (only the bytes covering the chunk), the peers' data shards by
HTTP ``Range`` (only those bytes), and last the whole pack through the
reader's fetch path (hedged, rebuilt from parity when a data shard is not to
be had). A dataset read from gateways has no packs: its chunks are fetched
by CID from the gateways instead. Every chunk is decoded and checked against its ID before a byte of
it is returned; range bytes that fail the check score their peer down and
the chunk is read again through the whole pack.

Reads of several consecutive chunks (:meth:`ChunkSource.read_run_into`, what
the file object asks for) read the stored bytes of the whole run at once (a
few ``pread`` calls or one range request per data shard) and decode and
verify every chunk of it in one native call, on all cores, straight into the
caller's buffer. A sequential reader of the local store passes its mapped
packs (:class:`~dstore.mount.mapped.MappedPacks`): its runs are decoded
straight from the mapped data shards, with no ``pread`` copy and before the
cache is asked.

Thread-safe: the read-ahead pool calls it from several threads. Network and
file reads run concurrently; the reader's metadata and pack reader (not
thread-safe) are used under one lock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Container, Sequence
from typing import TYPE_CHECKING, Any

from dstore import _native
from dstore.errors import DstoreError, IntegrityError
from dstore.fetch.packs import LocalShards
from dstore.fetch.reader import DatasetReader
from dstore.format.cid import HASH_CODES
from dstore.format.locator import CODEC_RAW, ChunkEntry
from dstore.format.pack import PackRecord
from dstore.mount.cache import ChunkCache, chunk_hasher
from dstore.mount.cachewriter import CacheWriter
from dstore.mount.mapped import MappedPacks
from dstore.net.protocol import PeerClient

if TYPE_CHECKING:
    from dstore.net.ranges import RangeCall, RangeRead

__all__ = ["ChunkSource"]

#: Taken by the first thread of a forked child that finds the dataset opened in another process, so the
#: others wait for its reopen instead of reopening too. Made anew in every child: a lock some thread of
#: the parent held at fork time would stay held in the child for ever.
_REOPEN_LOCK = threading.Lock()


def _new_reopen_lock() -> None:
    global _REOPEN_LOCK
    _REOPEN_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_reopen_lock)


class ChunkSource:
    """Chunk bytes by digest for the files of one open dataset."""

    def __init__(self, reader: DatasetReader, peers: PeerClient | None, cache: ChunkCache | None) -> None:
        self.cache = cache
        self.hash_name = reader.hash_name
        self.hash_code = HASH_CODES[reader.hash_name]  # chunks are checked with the dataset's own hash
        #: Called in a forked child before its first read (the dataset opens its store and peers again there).
        self.on_fork: Callable[[], None] | None = None
        self.rebind(reader, peers)
        #: Where chunks came from (counts, for tests and benchmarks).
        self.stats = {"cache": 0, "local": 0, "range": 0, "pack": 0, "bad_range": 0, "gateway": 0}
        #: Range requests sent to peers, and runs of several chunks read at once (locally or by range).
        self.stats |= {"range_requests": 0, "runs": 0}

    def rebind(self, reader: DatasetReader, peers: PeerClient | None) -> None:
        """Read through this reader and these peers from now on (in this process)."""
        self.reader = reader
        self.peers = peers
        self._local = LocalShards(reader.store, reader.hash_name)
        self._lock = threading.RLock()  # new: a lock held by a thread at fork time stays held in the child
        # New too: the parent's writer thread is not in this process, and its queue is the parent's to write.
        self._writer = CacheWriter(self.cache) if self.cache is not None else None
        #: Held around every use of the reader (metadata, pack reader): the dataset's calls take it too.
        self.lock = self._lock
        self._pid = os.getpid()

    @property
    def remote(self) -> bool:
        """Whether chunks the local store lacks can come from peers or gateways."""
        return self.peers is not None or self.reader.gateway is not None

    def check_process(self) -> None:
        """In a forked child, have the dataset reopen what does not survive a fork (threads, LMDB, sockets)."""
        if self._pid != os.getpid():
            with _REOPEN_LOCK:
                if self._pid == os.getpid():
                    return  # another thread of this child reopened it meanwhile
                if self.on_fork is None:
                    raise RuntimeError("this dataset was opened in another process: open it again in this one")
                self.on_fork()

    def read_into(self, digest: bytes, out: memoryview) -> None:
        """Fill ``out`` (exactly the chunk's size) with the chunk's verified bytes."""
        self.check_process()
        if self.cache is not None and self.cache.get_into(self.hash_name, digest, out):
            self.stats["cache"] += 1
            return
        if self.reader.gateway is not None:
            self._from_gateway(digest, out)
            return
        with self._lock:
            pack_id, record, ref = self.reader.chunk_ref(digest)
        if ref.size != len(out):
            raise IntegrityError(
                f"chunk {digest.hex()[:16]}… has size {ref.size} in the locator, {len(out)} in the file"
            )
        stored = bytearray(ref.stored_len)
        if self._local_range(record, ref, memoryview(stored)) and self._decode(stored, [ref], out):
            self.stats["local"] += 1
            return
        if self.peers is not None:
            served = self._peer_range(pack_id, record, ref, memoryview(stored))
            if served is not None:
                if self._decode(stored, [ref], out):
                    self.stats["range"] += 1
                    self._keep(digest, out)
                    return
                self.stats["bad_range"] += 1
                for peer_id in served:
                    self.peers.report_bad_range(peer_id)
        with self._lock:
            data = self.reader.read_chunk(digest)  # the whole pack, rebuilt from parity if need be
        out[:] = data
        self.stats["pack"] += 1
        if self.peers is not None:
            self._keep(digest, out)

    def _from_gateway(self, digest: bytes, out: memoryview) -> None:
        """The chunk by its CID from the reader's gateways (verified there), outside the lock."""
        gateway = self.reader.gateway
        assert gateway is not None
        with self._lock:
            where = self.reader.gateway_chunk(digest, len(out))
        data = where if isinstance(where, bytes) else gateway.get(where, len(out))
        if len(data) != len(out):
            raise IntegrityError(f"chunk {digest.hex()[:16]}… holds {len(data)} bytes, its file says {len(out)}")
        out[:] = data
        self.stats["gateway"] += 1
        self._keep(digest, out)

    def read(self, digest: bytes, size: int) -> bytes:
        buf = bytearray(size)
        self.read_into(digest, memoryview(buf))
        return bytes(buf)

    def read_run_into(
        self,
        leaves: list[tuple[bytes, int]],
        out: memoryview,
        maps: MappedPacks | None = None,
        *,
        ask_cache: bool = True,
    ) -> None:
        """Fill ``out`` with consecutive chunks of a file, verified, end to end (``out`` holds exactly their sizes).

        Cached chunks come from the cache; each run of the others that lies back to back in one pack is read at
        once (local shard files, else one range request per data shard) and decoded in one native call. A run that
        cannot be had that way, or fails its check, is read chunk by chunk (:meth:`read_into`: whole packs, parity).
        ``maps``: a sequential reader's mapped local packs; runs in local packs are decoded straight from them,
        before the cache is asked. ``ask_cache=False``: the caller has just asked it for these.
        """
        self.check_process()
        starts = []
        pos = 0
        for _, size in leaves:
            starts.append(pos)
            pos += size
        if pos != len(out):
            raise ValueError(f"a run of {pos} bytes asked into a buffer of {len(out)}")

        def piece(i: int) -> memoryview:
            return out[starts[i] : starts[i] + leaves[i][1]]

        missing = list(range(len(leaves)))
        # A sequential reader of the local store reads its mapped shards first: cheaper than asking the
        # cache, which holds what came from peers, for every chunk (a run that fails asks it chunk by chunk).
        if ask_cache and self.cache is not None and (maps is None or self.reader.gateway is not None):
            missing = [i for i in missing if not self.cache.get_into(self.hash_name, leaves[i][0], piece(i))]
            self.stats["cache"] += len(leaves) - len(missing)
        if not missing:
            return
        if self.reader.gateway is not None:
            for i in missing:
                self.read_into(leaves[i][0], piece(i))
            return
        with self._lock:
            places = dict(zip(missing, (self.reader.chunk_ref(leaves[i][0]) for i in missing), strict=True))
        run: list[int] = []  # indices of chunks back to back in the file, the pack and `out`

        def read(run: list[int]) -> None:
            whole = out[starts[run[0]] : starts[run[-1]] + leaves[run[-1]][1]]
            sizes = [leaves[i][1] for i in run]
            if (len(run) < 2 and maps is None) or not self._run_from_shards(
                [places[i] for i in run], sizes, whole, maps
            ):
                for i in run:
                    self.read_into(leaves[i][0], piece(i))

        for i in missing:
            if run and not (i == run[-1] + 1 and _follows(places[run[-1]], places[i])):
                read(run)
                run = []
            run.append(i)
        read(run)

    def _run_from_shards(
        self,
        places: list[tuple[bytes, PackRecord, ChunkEntry]],
        sizes: list[int],
        out: memoryview,
        maps: MappedPacks | None = None,
    ) -> bool:
        """Chunks back to back in one pack, from the local shard files (mapped, with ``maps``) or the peers'
        ranges, into ``out``."""
        pack_id, record, first = places[0]
        refs = [ref for _, _, ref in places]
        if any(ref.size != size for ref, size in zip(refs, sizes, strict=True)):
            return False  # a locator size that is not the file's: chunk by chunk says which
        span = first._replace(stored_len=refs[-1].offset + refs[-1].stored_len - first.offset)
        if maps is not None:
            mapped = self._run_from_maps(maps, pack_id, record, span, refs, out)
            if mapped is not None:
                return mapped
        if len(refs) < 2:
            return False  # one chunk: read_into (its own pread, then the whole pack)
        stored = bytearray(span.stored_len)
        if self._local_range(record, span, memoryview(stored)) and self._decode(stored, refs, out):
            self.stats["local"] += len(refs)
            self.stats["runs"] += 1
            return True
        if self.peers is None:
            return False
        served = self._peer_range(pack_id, record, span, memoryview(stored))
        if served is None:
            return False
        if not self._decode(stored, refs, out):
            self.stats["bad_range"] += 1
            for peer_id in served:
                self.peers.report_bad_range(peer_id)
            return False
        self.stats["range"] += len(refs)
        self.stats["runs"] += 1
        pos = 0
        for ref in refs:
            self._keep(ref.digest, out[pos : pos + ref.size])
            pos += ref.size
        return True

    def _run_from_maps(
        self,
        maps: MappedPacks,
        pack_id: bytes,
        record: PackRecord,
        span: ChunkEntry,
        refs: list[ChunkEntry],
        out: memoryview,
    ) -> bool | None:
        """The run decoded straight from the pack's mapped data shards into ``out``: True, or False if a chunk
        failed its check (the pack is unmapped; chunk by chunk says which), or None if the pack cannot be
        mapped here (a data shard missing or short: the pread path reads, and reports, it)."""
        end = span.offset + span.stored_len
        if end > record.size or record.shard_size <= 0:
            return None  # the locator points past the pack: let the whole-pack path say so
        parts = maps.parts(
            self._local, pack_id, record, span.offset // record.shard_size, (end - 1) // record.shard_size
        )
        if parts is None:
            return None
        try:
            _native.decode_chunks_into(
                out,
                parts,
                [r.offset for r in refs],
                [r.stored_len for r in refs],
                [r.size for r in refs],
                [r.codec for r in refs],
                b"".join(r.digest for r in refs),
                self.hash_code,
            )
        except (_native.IntegrityError, ValueError):
            maps.drop(pack_id)
            return False
        self.stats["local"] += len(refs)
        self.stats["runs"] += len(refs) > 1
        return True

    def _decode(self, stored: bytearray, refs: list[ChunkEntry], out: memoryview) -> bool:
        """Decode chunks stored back to back from ``refs[0].offset`` on into ``out``, each checked against its
        ID (one native call, all cores); False if any fails."""
        base = refs[0].offset
        try:
            return _native.decode_chunks_into(
                out,
                [stored],
                [r.offset - base for r in refs],
                [r.stored_len for r in refs],
                [r.size for r in refs],
                [r.codec for r in refs],
                b"".join(r.digest for r in refs),
                self.hash_code,
            ) == len(out)
        except (_native.IntegrityError, ValueError):
            return False

    def _keep(self, digest: bytes, data: memoryview) -> None:
        if self._writer is not None:
            self._writer.put(self.hash_name, digest, data)

    def flush(self) -> None:
        """Wait until the chunks read so far are in the cache (a closing dataset does)."""
        if self._writer is not None:
            self._writer.flush()

    def _segments(self, record: PackRecord, ref: ChunkEntry) -> list[tuple[int, int, int, int]]:
        """(data shard, offset in it, length, offset in the stored chunk) of the shard bytes holding ``ref``."""
        out = []
        pos, end = ref.offset, ref.offset + ref.stored_len
        if end > record.size or record.shard_size <= 0:
            return []  # the locator points past the pack: let the whole-pack path say so
        while pos < end:
            shard, within = divmod(pos, record.shard_size)
            n = min(record.shard_size - within, end - pos)
            out.append((shard, within, n, pos - ref.offset))
            pos += n
        return out

    def _local_range(self, record: PackRecord, ref: ChunkEntry, stored: memoryview) -> bool:
        segments = self._segments(record, ref)
        try:
            for shard, within, n, at in segments:
                self._local.read_range(record, shard, within, stored[at : at + n])
        except (DstoreError, OSError):
            return False
        return bool(segments)

    def _peer_range(
        self, pack_id: bytes, record: PackRecord, ref: ChunkEntry, stored: memoryview
    ) -> list[str | None] | None:
        """Fill ``stored`` from the peers' data shards; the IDs of the peers that served it, or None."""
        assert self.peers is not None
        with self._lock:
            hints = self.reader.placement(pack_id)
        segments = self._segments(record, ref)
        served: list[str | None] = []
        try:
            for shard, within, n, at in segments:
                self.stats["range_requests"] += 1
                answer = self.peers.fetch_range(record, pack_id, shard, within, n, hints)
                if len(answer.data) != n:
                    return None
                stored[at : at + n] = answer.data
                served.append(answer.peer_id)
        except DstoreError:
            return None  # a holder is down or lacks it: the whole pack, from parity if need be
        return served if segments else None

    # -- many chunks at once (a prefetcher's next samples) ------------------------

    def read_chunks(
        self, wants: Sequence[tuple[bytes, int]], keep: Container[bytes] | None = None, *, cache_now: bool = True
    ) -> dict[bytes, bytes | memoryview]:
        """Verified bytes of many chunks, by digest: a file object's read-ahead, a data loader's next samples.

        The disk cache is asked for all of them in one batch (:meth:`ChunkCache.get_many`). The rest are
        read pack by pack: one range request per stretch of a data shard that holds them (stretches
        less than ``RANGE_GAP_BYTES`` apart are one request, up to ``RANGE_MAX_BYTES``), the requests of
        every pack at once (:meth:`PeerClient.fetch_ranges`, concurrent on the network thread); a pack's
        chunks are then decoded and checked against their IDs in one native call and cached. A pack whose
        ranges cannot be had (a peer down) or whose bytes fail their check (their senders are scored
        down) is read whole through the reader's pack path (hedged, rebuilt from parity). Chunks in packs
        of the local store go through :meth:`read_run_into` (a pread per data shard for those back to
        back), and everything of a dataset read from gateways chunk by chunk. The caller bounds the
        bytes asked for at once: about that much (plus merged gaps) is in flight.

        ``keep``: return only these (the others are read for the cache, for other readers: those it
        already holds are left alone, unread). ``cache_now``: the chunks are in the cache when this
        returns (other processes may look for them next); else they are handed to this process's cache
        writer thread. Chunks read by range are views of the range answers (no copy), which stay in
        memory until the caller drops them.
        """
        self.check_process()
        need = dict(wants)
        got: dict[bytes, bytes | memoryview] = {}
        if self.cache is not None and need:
            if keep is None:
                got.update(self.cache.get_many(self.hash_name, list(need.items())))
            else:  # the others' chunks already cached are theirs to read (and check): not read here
                got.update(self.cache.get_many(self.hash_name, [(d, s) for d, s in need.items() if d in keep]))
                for digest in [d for d in need if d not in keep and self.cache.has(self.hash_name, d)]:
                    del need[digest]
            self.stats["cache"] += len(got)
        missing = [(d, s) for d, s in need.items() if d not in got]
        one_by_one: list[tuple[bytes, int]] = []
        packs: dict[bytes, tuple[PackRecord, list[ChunkEntry]]] = {}
        if self.peers is None or self.reader.gateway is not None:
            one_by_one = missing
        elif missing:
            with self._lock:
                places = [self.reader.chunk_ref(d) for d, _ in missing]
            local: dict[bytes, bool] = {}
            for (digest, size), (pack_id, record, ref) in zip(missing, places, strict=True):
                if ref.size != size:
                    raise IntegrityError(
                        f"chunk {digest.hex()[:16]}… has size {ref.size} in the locator, {size} in the file"
                    )
                if pack_id not in local:  # a stat per data shard: once per pack, not per chunk
                    local[pack_id] = self._local.has(record)
                if local[pack_id]:
                    one_by_one.append((digest, size))
                else:
                    packs.setdefault(pack_id, (record, []))[1].append(ref)
        if one_by_one:  # in runs where they lie back to back in a local pack (one pread per data shard)
            buf = memoryview(bytearray(sum(size for _, size in one_by_one)))
            self.read_run_into(one_by_one, buf, ask_cache=False)
            pos = 0
            for digest, size in one_by_one:
                got[digest] = buf[pos : pos + size]
                pos += size
        if packs:
            got.update(self._packs_by_range(packs, keep, cache_now))
        return got if keep is None else {d: v for d, v in got.items() if d in keep}

    def _packs_by_range(
        self,
        packs: dict[bytes, tuple[PackRecord, list[ChunkEntry]]],
        keep: Container[bytes] | None,
        cache_now: bool,
    ) -> dict[bytes, bytes | memoryview]:
        assert self.peers is not None
        plans: list[tuple[bytes, PackRecord, list[ChunkEntry], int, int, Any]] = []
        calls: list[RangeCall] = []
        for pack_id, (record, refs) in packs.items():
            refs = sorted(refs, key=lambda r: r.offset)
            with self._lock:
                hints = self.reader.placement(pack_id)
            ranges, pieces = _plan_ranges(record, refs, self._segments)
            mine = [(record, pack_id, shard, start, end - start, hints) for shard, start, end in ranges]
            self.stats["range_requests"] += len(mine)
            self.stats["range_bytes"] = self.stats.get("range_bytes", 0) + sum(c[4] for c in mine)
            plans.append((pack_id, record, refs, len(calls), len(mine), pieces))
            calls.extend(mine)
        answers_all = self.peers.fetch_ranges(calls) if calls else []
        out: dict[bytes, bytes | memoryview] = {}
        for pack_id, record, refs, at, n, pieces in plans:
            answers = answers_all[at : at + n]
            answers_all[at : at + n] = [None] * n  # the answers are freed once decoded (unless kept as views)
            views = None
            if pieces is not None and all(a is not None for a in answers):  # else: a holder is down or lacks it
                views = self._decode_ranges(refs, pieces, [a for a in answers if a is not None])
            if views is None:  # the whole pack, from parity if need be (the pack path says what is wrong)
                whole = self._whole_pack(pack_id, record, refs)
                views, pos = [], 0
                for ref in refs:
                    views.append(whole[pos : pos + ref.size])
                    pos += ref.size
            else:
                self.stats["range"] += len(refs)
            chunks = [(ref.digest, view) for ref, view in zip(refs, views, strict=True)]
            if self.cache is not None and cache_now:
                self.cache.put_many(self.hash_name, chunks)
            elif self._writer is not None:
                self._writer.put_many(self.hash_name, chunks, copy=False)  # views of fresh buffers, never written
            for digest, data in chunks:
                if keep is None or digest in keep:
                    out[digest] = data
            del answers, views, chunks
        return out

    def _decode_ranges(
        self, refs: list[ChunkEntry], pieces: list[list[tuple[int, int, int, int]]], answers: list[RangeRead]
    ) -> list[memoryview] | None:
        """Each chunk of ``refs``, decoded from the range answers and checked; None if one fails its check.

        Nothing is copied that need not be: a chunk stored raw (the codec of incompressible data) and
        lying whole in one answer is hashed where it lies and handed on as a view of the answer; the
        chunks of a run of compressed ones in one answer are decoded straight from it, one native call
        per run. Only a chunk split between two data shards is put together first.
        """
        short = [i for parts in pieces for i, within, n, _ in parts if len(answers[i].data) < within + n]
        if short:
            self._bad_ranges([answers[i].peer_id for i in short])
            return None
        hasher = chunk_hasher(self.hash_name)
        views: list[memoryview] = []
        for stored, first, end, offsets in _runs_by_answer(refs, pieces, answers):
            run = refs[first:end]
            source = memoryview(stored)
            if all(r.codec == CODEC_RAW for r in run):
                for i, (ref, at) in enumerate(zip(run, offsets, strict=True)):
                    view = source[at : at + ref.stored_len]
                    if hasher(view) != ref.digest:
                        self._bad_ranges([answers[a].peer_id for a, _, _, _ in pieces[first + i]])
                        return None
                    views.append(view)
                continue
            out = memoryview(bytearray(sum(r.size for r in run)))
            try:
                _native.decode_chunks_into(
                    out,
                    [stored],
                    offsets,
                    [r.stored_len for r in run],
                    [r.size for r in run],
                    [r.codec for r in run],
                    b"".join(r.digest for r in run),
                    self.hash_code,
                )
            except _native.IntegrityError as e:
                failed = e.args[0] if e.args and isinstance(e.args[0], int) and 0 <= e.args[0] < len(run) else None
                bad = pieces[first + failed] if failed is not None else [p for ps in pieces[first:end] for p in ps]
                self._bad_ranges([answers[i].peer_id for i, _, _, _ in bad])
                return None
            except ValueError:
                self._bad_ranges([answers[i].peer_id for ps in pieces[first:end] for i, _, _, _ in ps])
                return None
            pos = 0
            for ref in run:
                views.append(out[pos : pos + ref.size])
                pos += ref.size
        return views

    def _bad_ranges(self, peer_ids: list[str | None]) -> None:
        assert self.peers is not None
        self.stats["bad_range"] += 1
        for peer_id in dict.fromkeys(peer_ids):
            self.peers.report_bad_range(peer_id)
        return None

    def _whole_pack(self, pack_id: bytes, record: PackRecord, refs: list[ChunkEntry]) -> memoryview:
        """The chunks of ``refs`` (sorted by offset) decoded back to back from the whole pack, verified."""
        out = bytearray(sum(r.size for r in refs))
        with self._lock:
            view = self.reader.packs.read_run(pack_id, record, refs, out)
        self.stats["pack"] += len(refs)
        return view


def _follows(before: tuple[bytes, PackRecord, ChunkEntry], after: tuple[bytes, PackRecord, ChunkEntry]) -> bool:
    """Whether ``after`` is stored right after ``before`` in the same pack."""
    return before[0] == after[0] and before[2].offset + before[2].stored_len == after[2].offset


#: Stretches of one data shard closer than this are asked for in one range request (the bytes between
#: are read and dropped): fewer round trips for the samples of a window that other workers take.
RANGE_GAP_BYTES = 256 << 10
#: One range request asks for at most this much.
RANGE_MAX_BYTES = 4 << 20


def _plan_ranges(
    record: PackRecord,
    refs: list[ChunkEntry],
    segments: Callable[[PackRecord, ChunkEntry], list[tuple[int, int, int, int]]],
) -> tuple[list[tuple[int, int, int]], list[list[tuple[int, int, int, int]]] | None]:
    """Range requests ``(shard, start, end)`` covering the chunks of ``refs`` (sorted by offset), and for
    each chunk its pieces ``(request index, offset in the answer, length, offset in the stored chunk)``;
    ``None`` pieces if a chunk lies outside the pack."""
    ranges: list[list[int]] = []
    last: dict[int, int] = {}  # shard -> index of its latest range
    pieces: list[list[tuple[int, int, int, int]]] = []
    for ref in refs:
        segs = segments(record, ref)
        if not segs:
            return [], None
        mine = []
        for shard, within, n, at in segs:
            i = last.get(shard)
            if i is not None:
                r = ranges[i]
                if within - r[2] <= RANGE_GAP_BYTES and max(r[2], within + n) - r[1] <= RANGE_MAX_BYTES:
                    r[2] = max(r[2], within + n)
                else:
                    i = None
            if i is None:
                i = len(ranges)
                ranges.append([shard, within, within + n])
                last[shard] = i
            mine.append((i, within - ranges[i][1], n, at))
        pieces.append(mine)
    return [(s, a, b) for s, a, b in ranges], pieces


def _runs_by_answer(
    refs: list[ChunkEntry], pieces: list[list[tuple[int, int, int, int]]], answers: list[RangeRead]
) -> list[tuple[bytes | bytearray, int, int, list[int]]]:
    """The chunks ``refs[first:end]`` grouped into runs ``(stored bytes, first, end, offset of each chunk in
    them)``: consecutive chunks lying whole in the same answer share that answer's bytes; a chunk split
    between answers gets a buffer of its own. Every answer holds the pieces taken from it."""
    runs: list[tuple[bytes | bytearray, int, int, list[int]]] = []
    last = -1  # the answer the latest run is in, -1 for a split chunk's own buffer
    for i, (ref, parts) in enumerate(zip(refs, pieces, strict=True)):
        if len(parts) == 1:
            index, within, _, _ = parts[0]
            if index == last:
                stored, first, _, offsets = runs[-1]
                offsets.append(within)
                runs[-1] = (stored, first, i + 1, offsets)
            else:
                runs.append((answers[index].data, i, i + 1, [within]))
                last = index
            continue
        joined = bytearray(ref.stored_len)
        for index, within, n, into in parts:
            joined[into : into + n] = memoryview(answers[index].data)[within : within + n]
        runs.append((joined, i, i + 1, [0]))
        last = -1
    return runs
