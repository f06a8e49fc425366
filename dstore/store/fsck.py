"""``dstore fsck``: check the index against the shard files, and rebuild it from them.

The check reads every dataset's metadata from the index (each block against
its CID), looks for every shard file the index names, and reads every
dataset's metadata pack. The rebuild writes a new LMDB environment from the
metadata packs (any k good shards each) — falling back to blocks of the old
index that still match their CIDs — and installs it by renames
(dstore.store.swap): a crash mid-rebuild leaves the old index as it was.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dstore.errors import DstoreError, FormatError, StoreError
from dstore.format.cid import CID, cid_to_text, parse_cid, raw_cid_bytes
from dstore.format.pointer import decode_placement
from dstore.store.index import ChunkLoc, Index
from dstore.store.locks import GcLock
from dstore.store.metadata import (
    METADATA_DIR,
    DatasetMeta,
    collect_dataset,
    encode_metadata_pack,
    pointer_datasets,
    read_metadata_pack,
    read_pointer,
    write_pointer,
)
from dstore.store.shards import ShardFiles
from dstore.store.swap import INDEX_DIR, REBUILT_DIR, finish_swap, mark_complete

# k + m of a metadata pack fsck writes for a dataset that has no data pack to copy it from.
DEFAULT_K, DEFAULT_M = 10, 2


@dataclass
class FsckReport:
    datasets: int = 0
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"datasets": self.datasets, "ok": not self.problems, "problems": self.problems}


@dataclass
class RebuildReport:
    datasets: int = 0
    lost: list[str] = field(default_factory=list)  # "dataset ID: why"
    metadata_packs_written: int = 0

    def to_json(self) -> dict[str, object]:
        return {"datasets": self.datasets, "lost": self.lost, "metadata_packs_written": self.metadata_packs_written}


def _open_index(home: Path) -> tuple[Index | None, str | None]:
    """The current index, or None and why it cannot be used."""
    data_mdb = home / INDEX_DIR / "data.mdb"
    if not data_mdb.exists() or data_mdb.stat().st_size == 0:
        return None, f"the store index {data_mdb} is missing"
    try:
        return Index(home / INDEX_DIR), None
    except StoreError as e:
        return None, str(e)


def check(home: Path) -> FsckReport:
    """Every problem of the index, the shard files and the pointer files (read only)."""
    finish_swap(home)
    report = FsckReport()
    shards = ShardFiles(home)
    metadata = ShardFiles(home, METADATA_DIR)
    index, why = _open_index(home)
    pointers = {d.to_bytes(): d for d in pointer_datasets(home)}
    if index is None:
        report.problems.append(f"{why}")
        report.datasets = len(pointers)
        return report
    try:
        _check_index(home, index, shards, metadata, pointers, report)
    except StoreError as e:
        report.problems.append(str(e))
    finally:
        index.close()
    return report


def _check_index(
    home: Path, index: Index, shards: ShardFiles, metadata: ShardFiles, pointers: dict[bytes, CID], report: FsckReport
) -> None:
    entries = index.datasets_list()
    report.datasets = len(entries)
    placed = index.placements()
    for ds, loc in entries:
        try:
            dataset = parse_cid(ds)
        except DstoreError:
            report.problems.append(f"the index lists a dataset ID that is not a CID ({ds.hex()})")
            continue
        name = cid_to_text(dataset)
        try:
            meta = collect_dataset(index.get_block, dataset, parse_cid(loc))
        except DstoreError as e:
            report.problems.append(f"dataset {name}: {e}")
        else:
            for pack_id, record in meta.packs:
                if index.get_block(pack_id.to_bytes()) != record.encode():
                    report.problems.append(f"pack record {cid_to_text(pack_id)} of dataset {name} is missing or bad")
        pointer = read_pointer(home, dataset)
        if pointer is None:
            report.problems.append(f"dataset {name} has no readable pointer file (its metadata is only in the index)")
        else:
            try:
                read_metadata_pack(metadata, dataset, pointer)
            except DstoreError as e:
                report.problems.append(f"dataset {name}: {e}")
    for ds, dataset in pointers.items():
        if index.dataset_locator(ds) is None:
            report.problems.append(
                f"dataset {cid_to_text(dataset)} has a pointer file but no index entry (an add or rm cut short)"
            )
    for shard, pack in index.shard_packs():
        if pack in placed:
            continue  # shards on storage peers
        text = parse_cid(shard).encode("base32")
        if not shards.has(text):
            report.problems.append(f"shard {text} of pack {cid_to_text(pack)} is missing (see `dstore repair`)")


def rebuild(home: Path) -> RebuildReport:
    """Write a new index from the shard and pointer files (plus what still verifies in the old one), install it."""
    lock = GcLock(home)
    lock.exclusive("rebuild the index")
    try:
        return _rebuild(home)
    finally:
        lock.release()


def _rebuild(home: Path) -> RebuildReport:
    finish_swap(home)
    report = RebuildReport()
    shards = ShardFiles(home)
    metadata = ShardFiles(home, METADATA_DIR)
    old, _ = _open_index(home)
    old_datasets: dict[bytes, bytes] = {}
    old_placed: dict[bytes, list[str | None]] = {}
    if old is not None:
        try:
            old_datasets = dict(old.datasets_list())
            old_placed = old.placements()
        except (StoreError, DstoreError):
            pass
    candidates = {d.to_bytes(): d for d in pointer_datasets(home)}
    for ds in old_datasets:
        try:
            candidates.setdefault(ds, parse_cid(ds))
        except DstoreError:
            continue
    target = home / REBUILT_DIR
    shutil.rmtree(target, ignore_errors=True)
    new = Index(target)
    try:
        for key in sorted(candidates):
            dataset = candidates[key]
            try:
                written = _rebuild_dataset(home, shards, metadata, old, old_datasets.get(key), old_placed, new, dataset)
            except DstoreError as e:
                report.lost.append(f"{cid_to_text(dataset)}: {e}")
                continue
            report.datasets += 1
            report.metadata_packs_written += written
        new.env.sync(True)
    finally:
        new.close()
        if old is not None:
            old.close()
    mark_complete(target)
    finish_swap(home)
    return report


def _rebuild_dataset(
    home: Path,
    shards: ShardFiles,
    metadata: ShardFiles,
    old: Index | None,
    old_locator: bytes | None,
    old_placed: dict[bytes, list[str | None]],
    new: Index,
    dataset: CID,
) -> int:
    """Put one dataset into ``new``; returns 1 if its metadata pack had to be written. DstoreError if lost."""
    pointer = read_pointer(home, dataset)
    pack_blocks: dict[bytes, bytes] = {}
    if pointer is not None:
        try:
            pack_blocks = read_metadata_pack(metadata, dataset, pointer)
        except DstoreError:
            pointer = None  # its pack is lost; the old index may still hold the blocks

    def get(key: bytes) -> bytes | None:
        block = pack_blocks.get(key)
        if block is None and old is not None:
            try:
                block = old.get_block(key)
            except StoreError:
                return None
        return block

    meta = _first_good(get, dataset, [pointer.locator if pointer else None, _cid(old_locator)])
    placement = dict(old_placed)
    if pointer is not None and pointer.placement is not None and pointer.placement.to_bytes() in pack_blocks:
        placement.update(decode_placement(pack_blocks[pointer.placement.to_bytes()]))
    packs = []
    usable: set[bytes] = set()  # packs a later add may dedup against
    for pack_id, record in meta.packs:
        key = pack_id.to_bytes()
        where = placement.get(key)
        packs.append((key, record.encode(), [s.to_bytes() for s in record.shards], where))
        local = sum(shards.has(s.encode("base32")) for s in record.shards)
        if where is not None or local >= record.k:
            usable.add(key)
    chunks = []
    for entry in meta.locator.chunks():
        if entry.pack_index >= len(meta.packs):
            raise FormatError(f"the locator of {cid_to_text(dataset)} names pack {entry.pack_index} of {len(packs)}")
        pack_key = packs[entry.pack_index][0]
        if pack_key in usable:
            loc = ChunkLoc(pack_key, entry.offset, entry.stored_len, entry.size, entry.codec)
            chunks.append((raw_cid_bytes(entry.digest, meta.hash_name), loc))
    new.commit_packs(packs, chunks)
    written = 0
    if pointer is None:
        # Written before the index entry, as add does.
        k, m = (meta.packs[0][1].k, meta.packs[0][1].m) if meta.packs else (DEFAULT_K, DEFAULT_M)
        blocks = [(c, b) for c, b in meta.blocks.items() if c not in {p[0] for p in packs}]
        pointer_new, pack_shards = encode_metadata_pack(
            dataset, meta.locator.root_cid, blocks, {p: placement[p] for p, *_ in packs if p in placement}, k, m
        )
        for shard_cid, part in pack_shards:
            metadata.write(shard_cid.encode("base32"), (part,))
        metadata.sync_dirs()
        write_pointer(home, dataset, pointer_new)
        written = 1
    new.commit_dataset(meta.blocks.items(), dataset.to_bytes(), meta.locator.root_cid.to_bytes())
    return written


def _first_good(get: Callable[[bytes], bytes | None], dataset: CID, locators: list[CID | None]) -> DatasetMeta:
    error: DstoreError | None = None
    for locator in dict.fromkeys(loc for loc in locators if loc is not None):
        try:
            return collect_dataset(get, dataset, locator)
        except DstoreError as e:
            error = error or e
    raise error or StoreError("no metadata pack and no index entry")


def _cid(raw: bytes | None) -> CID | None:
    return None if raw is None else parse_cid(raw)
