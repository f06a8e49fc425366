"""Each dataset's metadata, recoverable from shard files alone (docs/lifetime.md).

Next to the index, every add keeps the dataset's **metadata pack** — the same
erasure-coded CAR that goes to peers (docs/format.md, "Datasets on peers") —
as shard files in ``metadata/``, and its **pointer** (the JSON that lists the
pack's k, m, size and shard CIDs) as ``pointers/<dataset ID>.json``, written
twice (``pointers/copy/``) and atomically. A damaged or lost index is rebuilt
from these (``dstore fsck --rebuild``); a block that no longer matches its CID
is taken back from them while reading.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dstore import _native
from dstore.errors import DstoreError, FormatError, NotFound, StoreError
from dstore.format import dagpb
from dstore.format.car import car_block, car_header
from dstore.format.cid import (
    CID,
    DAG_CBOR,
    HASH_NAMES,
    RAW,
    cid_from_digest,
    cid_to_text,
    hash_digest,
    inline_block,
    parse_cid,
)
from dstore.format.locator import Locator
from dstore.format.manifest import Manifest
from dstore.format.pack import MAX_SHARDS, PackRecord, shard_size
from dstore.format.pointer import Pointer, encode_placement, next_seq, read_metadata_car
from dstore.limits import MAX_METADATA_PACKS, MAX_POINTER_BYTES
from dstore.store.shards import ShardFiles, fsync_dir, write_atomically

METADATA_DIR = "metadata"  # the metadata packs' shard files, laid out like shards/
POINTER_DIRS = ("pointers", "pointers/copy")
_SUFFIX = ".json"
MAX_METADATA_SHARD_BYTES = 16 << 20
#: What an add puts in one metadata pack: a pack is encoded in memory, so this bounds the memory it takes.
METADATA_PACK_BYTES = 16 << 20


# -- the metadata pack --------------------------------------------------------


@dataclass
class MetadataPack:
    """One erasure-coded metadata pack: its record and all k + m shards (views of its buffers)."""

    record: PackRecord
    shards: list[tuple[CID, memoryview]]
    has_manifest: bool


def encode_metadata_packs(
    dataset: CID,
    blocks: Iterable[tuple[bytes, bytes]],
    k: int,
    m: int,
    *,
    pack_bytes: int = METADATA_PACK_BYTES,
) -> Iterator[MetadataPack]:
    """The dataset's metadata packs, one at a time: CARs rooted at the dataset, in block order.

    A pack is closed before the next block would take it past ``pack_bytes``
    (a pack holds at least one block), so memory is one pack whatever the
    dataset's size. The same bytes go to peers and to the local store.
    """
    header = car_header([dataset])
    car = bytearray(header)
    has_manifest = False
    manifest_key = dataset.to_bytes()
    for cid, block in blocks:
        section = car_block(cid, block)
        if len(car) > len(header) and len(car) + len(section) > pack_bytes:
            yield _encode_car(dataset, car, k, m, has_manifest)
            car, has_manifest = bytearray(header), False
        car += section
        has_manifest = has_manifest or cid == manifest_key
    yield _encode_car(dataset, car, k, m, has_manifest)


def _encode_car(dataset: CID, car: bytearray, k: int, m: int, has_manifest: bool) -> MetadataPack:
    hash_name = HASH_NAMES[dataset.hash.code]  # every CID of a dataset uses the dataset's hash
    size = len(car)
    # Shards are bounded (MAX_SHARD_BYTES); the metadata of a huge dataset at a small k gets more data shards.
    k = max(k, -(-size // MAX_METADATA_SHARD_BYTES))
    if k + m > MAX_SHARDS:
        raise StoreError(f"the metadata of {cid_to_text(dataset)} is too large to keep ({size} bytes in one pack)")
    ss = shard_size(size, k)
    car.extend(bytes(k * ss - size))  # the padded data region, in place
    parity, digests = _native.encode_pack(car, k, m, dataset.hash.code)
    cids = [cid_from_digest(RAW, digests[32 * i : 32 * i + 32], hash_name) for i in range(k + m)]
    record = PackRecord(k=k, m=m, size=size, shard_size=ss, shards=tuple(cids))
    record.validate()
    data, par = memoryview(car), memoryview(parity)
    parts = [data[i * ss : (i + 1) * ss] for i in range(k)] + [par[j * ss : (j + 1) * ss] for j in range(m)]
    return MetadataPack(record, list(zip(cids, parts, strict=True)), has_manifest)


def metadata_pointer(
    locator: CID,
    packs: list[tuple[MetadataPack, tuple[str | None, ...]]],
    placement: CID | None,
    seq: int | None = None,
) -> Pointer:
    """The pointer to these packs (with the peers holding each shard): the manifest's pack first."""
    first = next((i for i, (p, _) in enumerate(packs) if p.has_manifest), None)
    if first is None:
        raise StoreError("no metadata pack holds the manifest")
    rest = tuple((p.record, h) for i, (p, h) in enumerate(packs) if i != first)
    head, hints = packs[first]
    pointer = Pointer(locator, head.record, hints, placement, next_seq(seq), rest)
    if len(rest) + 1 > MAX_METADATA_PACKS or len(json.dumps(pointer.to_json())) > MAX_POINTER_BYTES:
        raise StoreError(
            f"the dataset's metadata takes {len(packs)} metadata packs, more than one pointer may list; "
            "split the dataset into several"
        )
    return pointer


def encode_metadata_pack(
    dataset: CID,
    locator: CID,
    blocks: list[tuple[bytes, bytes]],
    placement: dict[bytes, list[str | None]],
    k: int,
    m: int,
) -> tuple[Pointer, list[tuple[CID, memoryview]]]:
    """The pointer and the shards of every metadata pack of a dataset whose blocks are in hand (fsck)."""
    hash_name = HASH_NAMES[dataset.hash.code]
    placement_cid, placement_block = encode_placement(placement, hash_name)
    packs = list(encode_metadata_packs(dataset, [*blocks, (placement_cid.to_bytes(), placement_block)], k, m))
    pointer = metadata_pointer(locator, [(p, ()) for p in packs], placement_cid)
    return pointer, [shard for p in packs for shard in p.shards]


def read_metadata_pack(shards: ShardFiles, dataset: CID, pointer: Pointer) -> dict[bytes, bytes]:
    """Blocks of a dataset's metadata packs (all of them) from local shards, each checked against its CID.

    NotFound if a pack has fewer than k intact shards; FormatError if a CAR is bad.
    """
    out: dict[bytes, bytes] = {}
    for i, (record, _) in enumerate(pointer.metadata_packs):
        out.update(read_metadata_car(_local_region(shards, dataset, record), dataset, first=i == 0))
    return out


def _local_region(shards: ShardFiles, dataset: CID, record: PackRecord) -> bytes:
    """A metadata pack's CAR bytes from any k good local shards."""
    found: list[bytes | None] = []
    for cid in record.shards:
        try:
            data = shards.read(cid.encode("base32"))
        except (NotFound, OSError):
            found.append(None)
            continue
        name = HASH_NAMES.get(cid.hash.code)
        ok = name is not None and len(data) == record.shard_size and hash_digest(data, name) == cid.hash.digest
        found.append(data if ok else None)
    good = sum(s is not None for s in found)
    if good < record.k:
        raise NotFound(f"metadata pack of {cid_to_text(dataset)} has {good} good shards of the {record.k} needed")
    data_shards: list[bytes | None] | list[bytes] = found[: record.k]
    if any(s is None for s in data_shards):
        data_shards = _native.reconstruct(found, record.k, record.m)
    return b"".join(s for s in data_shards if s is not None)[: record.size]


# -- pointer files --------------------------------------------------------------


def pointer_paths(home: Path, dataset: CID) -> list[Path]:
    name = cid_to_text(dataset) + _SUFFIX
    return [home / d / name for d in POINTER_DIRS]


def write_pointer(home: Path, dataset: CID, pointer: Pointer) -> None:
    """Write both copies of the pointer file atomically (tmp, fsync, rename, folder fsync)."""
    body = json.dumps({"dataset": cid_to_text(dataset), "pointer": pointer.to_json()}, sort_keys=True).encode()
    for path in pointer_paths(home, dataset):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, path.with_name(f".{path.name}.{os.getpid()}.tmp"), (body,), 0o644)
        fsync_dir(path.parent)


def read_pointer(home: Path, dataset: CID) -> Pointer | None:
    """The first copy of the pointer file that parses and names this dataset; None if neither does."""
    for path in pointer_paths(home, dataset):
        try:
            raw = path.read_bytes()
            if len(raw) > MAX_POINTER_BYTES:
                continue
            obj = json.loads(raw)
            if obj.get("dataset") != cid_to_text(dataset):
                continue
            return Pointer.from_json(obj["pointer"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, DstoreError):
            continue
    return None


def pointer_datasets(home: Path) -> list[CID]:
    """Every dataset that has a pointer file (either copy), sorted."""
    out: dict[bytes, CID] = {}
    for d in POINTER_DIRS:
        folder = home / d
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.endswith(_SUFFIX) and not p.name.startswith("."):
                try:
                    cid = parse_cid(p.name[: -len(_SUFFIX)])
                except DstoreError:
                    continue
                out[cid.to_bytes()] = cid
    return [out[k] for k in sorted(out)]


def remove_pointer(home: Path, dataset: CID) -> bool:
    removed = False
    for path in pointer_paths(home, dataset):
        try:
            path.unlink()
            removed = True
            fsync_dir(path.parent)
        except FileNotFoundError:
            pass
    return removed


# -- what a dataset needs ----------------------------------------------------


@dataclass
class DatasetMeta:
    """Every metadata block a dataset needs (verified) and its packs."""

    dataset: CID
    locator: Locator
    hash_name: str
    blocks: dict[bytes, bytes] = field(default_factory=dict)  # CID bytes -> block, pack records included
    packs: list[tuple[CID, PackRecord]] = field(default_factory=list)


def collect_dataset(get_block: Callable[[bytes], bytes | None], dataset: CID, locator: CID) -> DatasetMeta:
    """Walk a dataset's metadata through ``get_block``, checking every block against its CID.

    Manifest → UnixFS nodes (every non-raw link of every dag-pb node) →
    locator root, chunk pages, pack pages → pack records. NotFound or
    FormatError (with the block's CID) on the first missing or bad block.
    """
    blocks: dict[bytes, bytes] = {}

    def get(cid: CID) -> bytes:
        inline = inline_block(cid)
        if inline is not None:
            return inline  # an identity CID (in an imported DAG) is its own block
        key = (cid.to_v1() if cid.version == 0 else cid).to_bytes()  # stored under CIDv1
        hit = blocks.get(key)
        if hit is not None:
            return hit
        name = HASH_NAMES.get(cid.hash.code)
        data = get_block(key)
        if data is None:
            raise NotFound(f"block {cid_to_text(cid)} of dataset {cid_to_text(dataset)} is missing")
        if name is None or hash_digest(data, name) != cid.hash.digest:
            raise FormatError(f"block {cid_to_text(cid)} of dataset {cid_to_text(dataset)} does not match its ID")
        blocks[key] = data
        return data

    manifest = Manifest.decode(get(dataset))
    stack = [manifest.root]
    while stack:
        cid = stack.pop()
        if cid.codec == RAW or (cid.to_v1() if cid.version == 0 else cid).to_bytes() in blocks:
            continue
        node = dagpb.decode_node(get(cid))
        stack.extend(CID.from_bytes(link.hash) for link in node.links)
    loc = Locator(get, locator)
    if loc.dataset != dataset:
        raise FormatError(f"the locator of {cid_to_text(dataset)} belongs to another dataset")
    for page in loc.chunk_page_cids:
        get(page)
    packs = [loc.pack(i) for i in range(loc.num_packs)]
    for pack_id, record in packs:
        if pack_id.codec != DAG_CBOR:
            raise FormatError(f"pack ID {cid_to_text(pack_id)} is not dag-cbor")
        blocks[pack_id.to_bytes()] = record.encode()
    return DatasetMeta(dataset, loc, manifest.hash_name, blocks, packs)
