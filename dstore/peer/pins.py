"""Pins: the datasets a peer promises to keep, and the shards each one needs.

A pin names a dataset ID. The peer learns what the dataset needs from the
dataset's own metadata: its pointer (the one this peer holds under
``/datasets/{id}``, else one asked of the ``--peers``) → the metadata pack's
shards (held here, else fetched from the ``--peers``) → the metadata CAR,
every block checked against its CID and the whole rooted at the dataset ID →
the locator's pack table → every pack's shard CIDs. That set, with the
metadata pack's own shards, is what the pin keeps. A pin whose metadata
cannot be had yet is kept *unresolved* and tried again before each
collection; while any pin is unresolved, nothing is collected (the peer
cannot know what it would be deleting).

Pins live in ``<home>/pins/<dataset>.json``: ``{"dataset", "pinned_at",
"shards": [CID text …] or null}`` (written atomically).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dstore.errors import DstoreError, FormatError, NotFound
from dstore.fetch.packs import data_region
from dstore.format.cid import CID, HASH_NAMES, cid_to_text, hash_digest
from dstore.format.locator import Locator
from dstore.format.pack import PackRecord
from dstore.format.pointer import Pointer, read_metadata_car
from dstore.net.client import PeerSet
from dstore.peer.storage import PeerStore

__all__ = ["Pin", "Pins", "resolve_shards"]

log = logging.getLogger("dstore.peer.pins")

PINS_DIR = "pins"


@dataclass
class Pin:
    dataset: str
    pinned_at: float
    #: Canonical CID texts of every shard the dataset needs; None until resolved.
    shards: frozenset[str] | None = None
    #: Why resolving failed last time (for GET /pins and the logs).
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "pinned_at": self.pinned_at,
            "shards": None if self.shards is None else sorted(self.shards),
        }


class Pins:
    """The pins of one peer, in memory and under ``<home>/pins/``."""

    def __init__(self, home: Path) -> None:
        self.dir = home / PINS_DIR
        self.dir.mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self.pins: dict[str, Pin] = {}
        for p in self.dir.glob("*.json"):
            try:
                raw = json.loads(p.read_bytes())
                shards = raw["shards"]
                self.pins[raw["dataset"]] = Pin(
                    raw["dataset"], float(raw["pinned_at"]), None if shards is None else frozenset(shards)
                )
            except (OSError, ValueError, KeyError, TypeError) as e:
                # A pin we cannot read must still keep its data: treat it as unresolved.
                log.error("cannot read pin %s (%s): kept as unresolved", p, e)
                self.pins[p.stem] = Pin(p.stem, p.stat().st_mtime)
        for p in self.dir.glob(".*.tmp"):
            p.unlink(missing_ok=True)

    def save(self, pin: Pin) -> None:
        """Record ``pin`` durably (tmp + fsync + rename), then in memory."""
        final = self.dir / f"{pin.dataset}.json"
        tmp = self.dir / f".{pin.dataset}.{os.getpid()}.{threading.get_ident()}.tmp"
        data = json.dumps(pin.to_json(), separators=(",", ":")).encode()
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        with self._lock:
            self.pins[pin.dataset] = pin

    def remove(self, dataset: str) -> bool:
        with self._lock:
            pin = self.pins.pop(dataset, None)
        (self.dir / f"{dataset}.json").unlink(missing_ok=True)
        return pin is not None

    def get(self, dataset: str) -> Pin | None:
        return self.pins.get(dataset)

    def unresolved(self) -> list[Pin]:
        return [p for p in list(self.pins.values()) if p.shards is None]

    def needed(self) -> set[str] | None:
        """Every shard some pin keeps; None while a pin is unresolved."""
        out: set[str] = set()
        for pin in list(self.pins.values()):
            if pin.shards is None:
                return None
            out |= pin.shards
        return out


def _verified_local(store: PeerStore, cid: CID) -> bytes | None:
    """The held block of ``cid`` if its bytes still match it."""
    hash_name = HASH_NAMES.get(cid.hash.code)
    if hash_name is None:
        return None
    try:
        data = store.files.read(cid_to_text(cid))
    except NotFound:
        return None
    return data if hash_digest(data, hash_name) == bytes(cid.hash.digest) else None


async def _metadata_shards(
    store: PeerStore, record: PackRecord, key: bytes, peerset: PeerSet | None
) -> list[bytes | bytearray | None]:
    local: list[bytes | bytearray | None] = [await asyncio.to_thread(_verified_local, store, c) for c in record.shards]
    if sum(s is not None for s in local) >= record.k:
        return local
    if peerset is None:
        raise NotFound(f"this peer holds {sum(s is not None for s in local)} of the {record.k} metadata shards needed")
    fetched: list[bytes | bytearray | None] = await peerset.fetch_pack(record, key)
    return [a if a is not None else b for a, b in zip(local, fetched, strict=True)]


async def _shards_of(store: PeerStore, dataset: CID, pointer: Pointer, peerset: PeerSet | None) -> frozenset[str]:
    """The shards ``pointer`` leads to: its metadata packs', and those of every pack of the locator."""
    packs = [
        (record, await _metadata_shards(store, record, dataset.to_bytes(), peerset))
        for record, _ in pointer.metadata_packs
    ]

    def walk() -> frozenset[str]:
        blocks: dict[bytes, bytes] = {}
        for i, (record, shards) in enumerate(packs):
            region = bytes(data_region(shards, record)[: record.size])
            # every block checked, rooted at the dataset
            blocks.update(read_metadata_car(region, dataset, first=i == 0))

        def block(cid: CID) -> bytes:
            try:
                return blocks[cid.to_bytes()]
            except KeyError:
                raise FormatError(f"metadata pack lacks block {cid_to_text(cid)}") from None

        locator = Locator(block, pointer.locator)
        if locator.dataset != dataset:
            raise FormatError("the pointer's locator belongs to another dataset")
        out = {cid_to_text(c) for record, _ in packs for c in record.shards}
        for i in range(locator.num_packs):
            out.update(cid_to_text(c) for c in locator.pack(i)[1].shards)
        return frozenset(out)

    return await asyncio.to_thread(walk)


async def resolve_shards(store: PeerStore, dataset: CID, peer_urls: list[str]) -> frozenset[str]:
    """Every shard CID text that ``dataset`` needs (see the module docstring).

    Raises DstoreError (NotFound, FormatError, IntegrityError, PeerError) when the metadata
    cannot be had or does not verify.
    """
    text = cid_to_text(dataset)
    peerset = await PeerSet.connect(peer_urls, None) if peer_urls else None
    try:
        candidates: list[Any] = []
        held = await asyncio.to_thread(store.read_pointer, text)
        if held is not None:
            candidates.append(held)
        if peerset is not None:
            found = await peerset.get_pointer(dataset, validate=Pointer.from_json)
            if found is not None and found != held:
                candidates.append(found)
        if not candidates:
            raise NotFound(f"no pointer for dataset {text} here or on the --peers")
        errors = []
        for raw in candidates:  # the first pointer whose metadata verifies wins
            try:
                return await _shards_of(store, dataset, Pointer.from_json(raw), peerset)
            except DstoreError as e:
                errors.append(str(e))
        raise FormatError(f"no pointer of dataset {text} leads to metadata that verifies: {'; '.join(errors)}")
    finally:
        if peerset is not None:
            await peerset.close()
