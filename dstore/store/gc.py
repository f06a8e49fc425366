"""``dstore rm`` and ``dstore gc``: forget datasets, then delete what none needs (docs/lifetime.md).

``rm`` only forgets (the dataset's index entry, then its pointer files). ``gc``
marks everything the remaining datasets need — their metadata blocks, their
data packs' shards and their metadata packs' shards — and sweeps the rest:
index entries first, in one transaction, then files. So a gc killed at any
point leaves every kept dataset whole, and dedup never finds a chunk whose
shard files are gone; files whose index entries went are orphans that the
next gc deletes. It holds the gc lock exclusive (no add runs meanwhile) and
never deletes a file modified after it started.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dstore.errors import DstoreError, NotFound, StoreError
from dstore.format.cid import CID, cid_to_text, parse_cid
from dstore.format.pointer import Pointer
from dstore.store import Store
from dstore.store.index import FSCK_HINT
from dstore.store.metadata import (
    POINTER_DIRS,
    DatasetMeta,
    collect_dataset,
    pointer_datasets,
    read_metadata_pack,
    read_pointer,
    remove_pointer,
)
from dstore.store.shards import ShardFiles, fsync_dir, pid_alive
from dstore.store.swap import COMPLETE, REBUILT_DIR


def remove_dataset(store: Store, dataset: CID) -> None:
    """Forget a dataset: its ``datasets-0`` entry, then its pointer files. NotFound if it has neither.

    A crash between the two leaves the pointer: gc keeps the dataset and
    ``fsck --rebuild`` lists it again (nothing is lost; run rm again).
    """
    with store.adding():
        in_index = store.index.forget_dataset(dataset.to_bytes())
        had_pointer = remove_pointer(store.home, dataset)
    if not (in_index or had_pointer):
        raise NotFound(f"dataset {cid_to_text(dataset)} is not in this store")


@dataclass
class GcReport:
    datasets_kept: int = 0
    packs_removed: int = 0
    blocks_removed: int = 0
    chunks_removed: int = 0
    shard_files_removed: int = 0  # of packs no dataset needs
    orphan_files_removed: int = 0  # shard files the index never knew (a crashed add)
    metadata_files_removed: int = 0  # shards of removed datasets' metadata packs
    tmp_files_removed: int = 0
    bytes_freed: int = 0
    dry_run: bool = False

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class _Marks:
    blocks: set[bytes]
    packs: set[bytes]
    shard_names: set[str]  # data shards, base32 text as the files are named
    metadata_names: set[str]  # metadata pack shards


def live_datasets(store: Store) -> dict[bytes, tuple[CID, CID]]:
    """Datasets gc keeps: every index entry, and every pointer file (an add or rm cut short).

    Dataset ID bytes -> (dataset ID, locator root).
    """
    try:
        out = {ds: (parse_cid(ds), parse_cid(loc)) for ds, loc in store.index.datasets_list()}
    except DstoreError as e:
        raise StoreError(f"gc deleted nothing: the index lists a dataset that is not a CID ({e}); {FSCK_HINT}") from e
    for dataset in pointer_datasets(store.home):
        if dataset.to_bytes() in out:
            continue
        pointer = read_pointer(store.home, dataset)
        if pointer is None:
            raise StoreError(
                f"the pointer file of dataset {cid_to_text(dataset)} is unreadable, so gc cannot tell what it "
                f"needs; {FSCK_HINT} or `dstore rm {cid_to_text(dataset)}`"
            )
        out[dataset.to_bytes()] = (dataset, pointer.locator)
    return out


def dataset_meta(store: Store, dataset: CID, locator: CID) -> DatasetMeta:
    """A dataset's metadata from the index, blocks missing there from its metadata pack."""
    pack: dict[bytes, bytes] | None = None

    def get(key: bytes) -> bytes | None:
        nonlocal pack
        block = store.get_block(key)
        if block is not None:
            return block
        if pack is None:
            pointer = read_pointer(store.home, dataset)
            pack = {} if pointer is None else _try_pack(store, dataset, pointer)
        return pack.get(key)

    return collect_dataset(get, dataset, locator)


def _try_pack(store: Store, dataset: CID, pointer: Pointer) -> dict[bytes, bytes]:
    try:
        return read_metadata_pack(store.metadata_shards, dataset, pointer)
    except DstoreError:
        return {}


def mark(store: Store, live: dict[bytes, tuple[CID, CID]]) -> _Marks:
    """Everything the live datasets need. StoreError (and nothing swept) if any dataset cannot be read."""
    marks = _Marks(set(), set(), set(), set())
    for dataset, locator in live.values():
        try:
            meta = dataset_meta(store, dataset, locator)
        except DstoreError as e:
            raise StoreError(
                f"gc deleted nothing: cannot read what dataset {cid_to_text(dataset)} needs ({e}); {FSCK_HINT}"
            ) from e
        marks.blocks.update(meta.blocks)
        for pack_id, record in meta.packs:
            marks.packs.add(pack_id.to_bytes())
            marks.shard_names.update(s.encode("base32") for s in record.shards)
        pointer = read_pointer(store.home, dataset)
        if pointer is not None:
            for record, _ in pointer.metadata_packs:
                marks.metadata_names.update(s.encode("base32") for s in record.shards)
    return marks


def collect_garbage(store: Store, *, dry_run: bool = False) -> GcReport:
    """Delete the shards, index entries and temporary files no remaining dataset needs."""
    store.lock.exclusive("collect garbage")
    try:
        return _collect(store, dry_run)
    finally:
        store.lock.release()


def _collect(store: Store, dry_run: bool) -> GcReport:
    started = time.time()
    report = GcReport(dry_run=dry_run)
    live = live_datasets(store)
    report.datasets_kept = len(live)
    marks = mark(store, live)
    index = store.index

    shard_entries = index.shard_packs()
    dead_pack_shards: dict[bytes, list[bytes]] = {}
    for shard, pack in shard_entries:
        if pack not in marks.packs:
            dead_pack_shards.setdefault(pack, []).append(shard)
    # Belt and braces next to the lock: a pack with a shard file newer than this gc stays.
    young = {
        pack
        for pack, shards in dead_pack_shards.items()
        if any(_mtime(store.shards.path(parse_cid(s).encode("base32"))) >= started for s in shards)
    }
    keep_packs = marks.packs | young
    dead_blocks = [b for b in index.block_keys() if b not in marks.blocks and b not in young]
    dead_chunks = [c for c, pack in index.chunk_packs() if pack not in keep_packs]
    dead_shards = [s for s, pack in shard_entries if pack not in keep_packs]
    dead_placed = [p for p in index.placed_packs() if p not in keep_packs]
    report.packs_removed = len(set(dead_pack_shards) - young)
    report.blocks_removed = len(dead_blocks)
    report.chunks_removed = len(dead_chunks)
    young_names = {parse_cid(s).encode("base32") for p in young for s in dead_pack_shards[p]}
    dead_names = {parse_cid(s).encode("base32") for s in dead_shards}
    if not dry_run:
        index.sweep(dead_blocks, dead_chunks, dead_shards, dead_placed)  # entries before files

    for path, size in _sweep_files(store.shards, marks.shard_names | young_names, started, dry_run):
        if path.name in dead_names:
            report.shard_files_removed += 1
        else:
            report.orphan_files_removed += 1
        report.bytes_freed += size
    for _path, size in _sweep_files(store.metadata_shards, marks.metadata_names, started, dry_run):
        report.metadata_files_removed += 1
        report.bytes_freed += size
    report.tmp_files_removed = _clean_temporaries(store.home, started, dry_run)
    return report


def _sweep_files(folder: ShardFiles, keep: set[str], started: float, dry_run: bool) -> list[tuple[Path, int]]:
    """Delete (unless ``dry_run``) the files of ``folder`` not in ``keep`` and older than ``started``."""
    gone = []
    touched: set[Path] = set()
    for path in list(folder):
        if path.name in keep:
            continue
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if st.st_mtime >= started:
            continue
        gone.append((path, st.st_size))
        if not dry_run:
            path.unlink(missing_ok=True)
            touched.add(path.parent)
    for d in touched:
        fsync_dir(d)
    return gone


def _clean_temporaries(home: Path, started: float, dry_run: bool) -> int:
    """Temporary files of processes that no longer run (shards, pointers) and an unfinished rebuild."""
    removed = 0
    candidates = [*(home / "tmp").glob("*.tmp")]
    for d in POINTER_DIRS:
        candidates += (home / d).glob(".*.tmp")
    for p in candidates:
        try:
            pid = int(p.name.split(".")[-2 if p.name.startswith(".") else -3])
        except (ValueError, IndexError):
            pid = -1
        if pid == os.getpid() or pid_alive(pid) or _mtime(p) >= started:
            continue
        removed += 1
        if not dry_run:
            p.unlink(missing_ok=True)
    rebuilt = home / REBUILT_DIR
    if rebuilt.is_dir() and not (rebuilt / COMPLETE).exists():
        removed += 1  # a rebuild cut short (fsck holds the same lock, so none is running)
        if not dry_run:
            shutil.rmtree(rebuilt, ignore_errors=True)
    return removed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
