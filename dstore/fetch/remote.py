"""A dataset's metadata from storage peers: pointers → metadata pack → verified blocks.

Peers are untrusted (docs/format.md, "Datasets on peers"). A pointer is only a
hint: every distinct pointer the ranked peers hold is tried, newest (highest
``seq``) first, until one leads to a metadata pack whose every block verifies
and which holds the manifest and the locator of this dataset; a read fails
only when none does. A pointer's sizes are checked against each other and
against :data:`MAX_METADATA_PACK_BYTES` before anything is fetched, and the
pack is spooled to an unnamed temporary file and parsed block by block, so a
peer's claim never decides how much a reader allocates.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import IO, BinaryIO, cast

from dstore import _native
from dstore.errors import DstoreError, FormatError, IntegrityError, NotFound
from dstore.format.car import CarReader
from dstore.format.cid import CID, cid_to_text
from dstore.format.locator import Locator
from dstore.format.pointer import Pointer, decode_placement
from dstore.limits import MAX_METADATA_PACK_BYTES
from dstore.net.protocol import PeerClient

__all__ = ["RemoteMetadata", "check_pointer", "load_from_peers"]


@dataclass
class RemoteMetadata:
    """What a verified metadata pack gave: the locator root, every block by CID bytes, placement hints."""

    pointer: Pointer
    locator: CID
    blocks: dict[bytes, bytes]
    hints: dict[bytes, list[str | None]]


def check_pointer(pointer: Pointer) -> None:
    """FormatError unless the pointer's metadata pack is within the documented bounds (before any fetch)."""
    record = pointer.metadata
    if record.size == 0:
        raise FormatError("dataset pointer names an empty metadata pack")
    if record.size > MAX_METADATA_PACK_BYTES:
        raise FormatError(
            f"dataset pointer claims a metadata pack of {record.size} bytes, over the limit of "
            f"{MAX_METADATA_PACK_BYTES} (docs/format.md)"
        )
    if len(pointer.hints) > record.k + record.m:
        raise FormatError("dataset pointer has more hints than metadata shards")


def load_from_peers(peers: PeerClient, dataset: CID) -> RemoteMetadata:
    """The dataset's metadata from the first pointer (newest first) that leads to metadata that verifies.

    NotFound when no peer has a pointer; otherwise, when every pointer fails,
    the error of the newest one, with what went wrong with each.
    """
    found = peers.get_pointers(dataset, validate=Pointer.from_json)
    if not found:
        raise NotFound(f"no storage peer knows dataset {cid_to_text(dataset)}")
    failures: list[DstoreError] = []
    for obj in found:
        try:
            pointer = Pointer.from_json(obj)
            check_pointer(pointer)
            return _load(peers, dataset, pointer)
        except DstoreError as e:
            failures.append(e)
    first = failures[0]
    if len(failures) == 1:
        raise first
    detail = "; ".join(f"pointer {i + 1}: {e}" for i, e in enumerate(failures))
    raise type(first)(
        f"dataset {cid_to_text(dataset)}: none of the {len(failures)} pointers the peers gave led to "
        f"metadata that verifies — {detail}"
    ) from first


def _load(peers: PeerClient, dataset: CID, pointer: Pointer) -> RemoteMetadata:
    record = pointer.metadata
    shards = peers.fetch_pack(record, dataset.to_bytes(), list(pointer.hints) or None)
    with tempfile.TemporaryFile(prefix="dstore-metadata-") as spool:
        _spool_data_region(spool, shards, record.k, record.m, record.shard_size, record.size)
        del shards  # the spool holds the pack now: memory is one block at a time from here
        spool.seek(0)
        blocks = _read_blocks(spool, dataset)
    key = pointer.locator.to_bytes()
    if key not in blocks:
        raise FormatError("the metadata pack lacks the locator its pointer names")
    locator = Locator(lambda c: blocks[c.to_bytes()], pointer.locator)
    if locator.dataset != dataset:
        raise IntegrityError(f"the locator found for {cid_to_text(dataset)} belongs to another dataset")
    hints: dict[bytes, list[str | None]] = {}
    if pointer.placement is not None:
        placement = blocks.get(pointer.placement.to_bytes())
        if placement is None:
            raise FormatError("the metadata pack lacks the placement block its pointer names")
        hints = decode_placement(placement)
    return RemoteMetadata(pointer, pointer.locator, blocks, hints)


def _spool_data_region(
    spool: IO[bytes], shards: list[bytes | bytearray | None], k: int, m: int, shard_size: int, size: int
) -> None:
    """Write the first ``size`` bytes of the pack's data region, rebuilt from parity where shards are missing."""
    if any(s is not None and len(s) != shard_size for s in shards):
        raise IntegrityError("a metadata shard has the wrong length for its pack")
    data = shards[:k]
    if any(s is None for s in data):
        data = list(_native.reconstruct(shards, k, m))
    left = size
    for part in data:
        assert part is not None
        n = min(left, shard_size)
        spool.write(memoryview(part)[:n])
        left -= n
        if not left:
            break


def _read_blocks(spool: IO[bytes], dataset: CID) -> dict[bytes, bytes]:
    """Every block of the metadata CAR, each checked against its CID; FormatError unless rooted at the dataset."""
    reader = CarReader(cast(BinaryIO, spool), verify=True)
    if [r.to_bytes() for r in reader.roots] != [dataset.to_bytes()]:
        raise FormatError("metadata pack is not rooted at the dataset ID")
    blocks: dict[bytes, bytes] = {}
    for cid, block in reader:
        blocks.setdefault(cid.to_bytes(), block)
    if dataset.to_bytes() not in blocks:
        raise FormatError("metadata pack lacks the manifest")
    return blocks
