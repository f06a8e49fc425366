"""``dstore.open(cid)``: a dataset handle, from the local store or from peers, and its files.

Metadata comes from the local store, else from the peers (``peers=``, else
``$DSTORE_PEERS``), else from trustless gateways (``gateways=``, else
``$DSTORE_GATEWAYS``), which also read a plain UnixFS root CID. File bytes come chunk by chunk through a
:class:`~dstore.mount.chunks.ChunkSource` (the disk cache, local shards,
ranged reads of peers' data shards, the whole pack as a last resort), every
chunk checked against its ID. Listing and walking read metadata only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dstore.fetch.reader import DatasetReader, Entry, TreeBudget
from dstore.mount.cache import ChunkCache, cache_from_env
from dstore.mount.chunks import ChunkSource
from dstore.mount.fileobj import DatasetFile
from dstore.net.gateways import GatewayClient
from dstore.net.protocol import PeerClient
from dstore.store import Store

__all__ = ["READAHEAD_THREADS", "Dataset", "connect_gateways", "connect_peers", "open_dataset"]

#: What a dataset opens again in a forked child: the store, the peers, the gateways, and what it must close.
Opened = tuple[Store, PeerClient | None, GatewayClient | None, list[Any]]

#: Threads reading chunks ahead of sequential readers, per open dataset.
READAHEAD_THREADS = 8


class Dataset:
    """An open dataset: list its folders, walk it, open its files (read-only)."""

    def __init__(
        self,
        store: Store,
        cid: str,
        *,
        peers: PeerClient | None = None,
        cache: ChunkCache | None = None,
        owns: Sequence[Any] = (),
        reopen: Callable[[], Opened] | None = None,
        gateways: GatewayClient | None = None,
    ) -> None:
        """``owns``: closed with the dataset (the store, a peer set opened for it); ``reopen``: makes them
        again in a forked child (DataLoader workers), which cannot use its parent's."""
        self._owns = list(owns)
        self._reopen = reopen
        self.reader = DatasetReader(store, cid, peers=peers, gateways=gateways)
        self.cid = self.reader.cid.encode("base32")
        self.manifest = self.reader.manifest
        self.chunks = ChunkSource(self.reader, peers, cache)
        self.chunks.on_fork = self._after_fork if reopen is not None else None
        self._pool: ThreadPoolExecutor | None = None
        self.closed = False

    def _after_fork(self) -> None:
        """In a forked child: the parent's LMDB handle, event-loop thread and read-ahead threads are not
        ours. Open the store and the peers again, and leave the parent's to the parent."""
        assert self._reopen is not None
        for thing in self._owns:
            if isinstance(thing, Store):
                # LMDB refuses a second handle on one index in a process, and an inherited handle must not
                # be used: close the child's copy (this touches only the child's reader slots and
                # descriptors; the parent's handle and locks stay as they are).
                thing.close()
        store, peers, gateways, owns = self._reopen()
        try:
            # The parent's verified metadata from peers is read in place (a read-only view of its blocks
            # file), not fetched and checked again by every worker.
            remote = self.reader.remote_view() if peers is not None else None
            reader = DatasetReader(store, self.cid, peers=peers, gateways=gateways, remote=remote)
        except BaseException:
            for thing in reversed(owns):
                thing.close()
            raise
        self._parents = [self._owns, self.reader, self._pool]  # kept, never closed here: they are the parent's
        self.reader, self._owns, self._pool = reader, owns, None
        self.chunks.rebind(reader, peers)

    # -- metadata ------------------------------------------------------------

    def ls(self, path: str = "") -> list[Entry]:
        """Entries of the folder at ``path`` (or the file itself), sorted by name."""
        self.chunks.check_process()
        with self.chunks.lock:
            return self.reader.ls(path)

    def listdir(self, path: str = "") -> list[str]:
        """Names in the folder at ``path``; NotADirectoryError for a file."""
        self.chunks.check_process()
        with self.chunks.lock:
            _, node = self.reader.resolve(path)
            if not node.is_dir:
                raise NotADirectoryError(path)
            return [name for name, _ in self.reader.entries(node)]

    def info(self, path: str = "") -> Entry:
        """Name, kind (``"file"``/``"dir"``), size (files) and CID of ``path``, from metadata only."""
        self.chunks.check_process()
        with self.chunks.lock:
            cid, node = self.reader.resolve(path)
        name = path.strip("/").rsplit("/", 1)[-1]
        return Entry(name, "dir" if node.is_dir else "file", None if node.is_dir else node.filesize or 0, cid)

    def walk(self, path: str = "") -> Iterator[tuple[str, list[str], list[str]]]:
        """Like :func:`os.walk`: ``(folder path, folder names, file names)`` top down, metadata only.

        Bounded by what the manifest declares, like every walk of the reader.
        """
        self.chunks.check_process()
        with self.chunks.lock:
            _, node = self.reader.resolve(path)
        if not node.is_dir:
            raise NotADirectoryError(path)
        budget = TreeBudget(self.manifest)
        budget.take(node)
        stack = [(path.strip("/"), node)]
        while stack:
            prefix, node = stack.pop(0)
            dirs, files = [], []
            with self.chunks.lock:
                for name, cid in self.reader.entries(node):
                    child = self.reader.node(cid)
                    budget.take(child)
                    if child.is_dir:
                        dirs.append(name)
                        stack.append((f"{prefix}/{name}" if prefix else name, child))
                    else:
                        files.append(name)
            yield prefix, dirs, files

    # -- files ---------------------------------------------------------------

    def open(self, path: str, mode: str = "rb") -> DatasetFile:
        """A seekable, read-only binary file object for the file at ``path``."""
        self.chunks.check_process()
        if any(c in mode for c in "wax+"):
            raise PermissionError(f"datasets are read-only: cannot open {path!r} with mode {mode!r}")
        if mode not in ("r", "rb"):
            raise ValueError(f"invalid mode {mode!r}: open dataset files with 'rb'")
        with self.chunks.lock:
            cid, node = self.reader.resolve(path)
            if node.is_dir:
                raise IsADirectoryError(path)
            leaves = list(self.reader.leaves(cid, node))
        # The dataset's read-ahead threads are for peers and gateways: a local reader decodes its runs from the
        # mapped data shards on all cores itself, and at most one helper thread of its own decodes a small
        # reader's next run (docs/training.md, "A sequential reader of the local store").
        pool = self._readahead_pool if self.chunks.remote else None
        return DatasetFile(self.chunks, leaves, path, pool)

    def read_bytes(self, path: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``start:end`` of a file (slice semantics for negative or missing bounds)."""
        with self.open(path) as f:
            lo, hi, _ = slice(start, end).indices(f.size)
            f.seek(lo)
            return f.read(max(0, hi - lo))

    def _readahead_pool(self) -> ThreadPoolExecutor:
        self.chunks.check_process()
        with self.chunks.lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(READAHEAD_THREADS, thread_name_prefix="dstore-readahead")
            return self._pool

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.chunks.flush()
        self.reader.close()
        for thing in reversed(self._owns):
            thing.close()

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<dstore.Dataset {self.cid}>"


def connect_peers(peers: object, token: str | None) -> tuple[PeerClient | None, bool]:
    """The peers to read from: ``peers`` (URLs as a list or ``"u1,u2"``, or a PeerClient), else ``$DSTORE_PEERS``.

    Returns (client or None, whether the caller owns it and must close it).
    The token, for completeness, follows the CLI (``token=``, ``$DSTORE_TOKEN``,
    ``$DSTORE_TOKEN_FILE``); reads need none.
    """
    from dstore.net.config import peers_from_env, token_from_env

    if peers is not None and not isinstance(peers, str | list | tuple):
        return peers, False  # type: ignore[return-value]  # a PeerClient the caller keeps
    text = ",".join(peers) if isinstance(peers, list | tuple) else peers
    urls = peers_from_env(text)
    if not urls:
        return None, False
    from dstore.net.sync import SyncPeerSet

    return SyncPeerSet.connect(urls, token_from_env(token)), True


def connect_gateways(gateways: object) -> GatewayClient | None:
    """The gateways to read from: ``gateways`` (URLs as a list or ``"u1,u2"``), else ``$DSTORE_GATEWAYS``."""
    from dstore.net.config import gateways_from_env

    text = ",".join(gateways) if isinstance(gateways, list | tuple) else gateways
    if text is not None and not isinstance(text, str):
        raise TypeError("gateways= takes URLs: a list, or one string 'http://a,http://b'")
    urls = gateways_from_env(text)
    return GatewayClient(urls) if urls else None


def open_dataset(
    cid: str,
    *,
    peers: object = None,
    token: str | None = None,
    cache: str | os.PathLike[str] | bool | ChunkCache | None = None,
    home: str | Path | None = None,
    gateways: object = None,
) -> Dataset:
    """Open dataset ``cid``: see :func:`dstore.open`."""
    disk_cache = cache_from_env(cache)

    def make() -> Opened:
        client, owned = connect_peers(peers, token)
        owns: list[Any] = [client] if owned else []
        try:
            gateway_client = connect_gateways(gateways)
            if gateway_client is not None:
                owns.append(gateway_client)
            store = Store(home)
        except BaseException:
            for thing in owns:
                thing.close()
            raise
        return store, client, gateway_client, [store, *owns]

    store, client, gateway_client, owns = make()
    # A PeerClient the caller gave cannot be made again in a forked child; URLs (or the environment) can.
    caller_client = peers is not None and not isinstance(peers, str | list | tuple)
    try:
        return Dataset(
            store,
            cid,
            peers=client,
            cache=disk_cache,
            owns=owns,
            reopen=None if caller_client else make,
            gateways=gateway_client,
        )
    except BaseException:
        for thing in reversed(owns):
            thing.close()
        raise
