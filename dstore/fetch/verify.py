"""``dstore verify`` and ``dstore repair``: every shard's presence and integrity, and rebuilding what is lost.

Verify reads every shard of every pack of a dataset and checks it against its
CID. Repair rebuilds a pack from any k good shards, re-encodes it (the code is
deterministic, so the shards come out under the same CIDs, checked before
anything is written) and writes back the shards that were missing or bad. IDs
never change: not the dataset's, not the packs', not the shards'.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dstore.errors import IntegrityError, NotEnoughShards, NotFound
from dstore.fetch.reader import DatasetReader
from dstore.format.cid import CID, cid_to_text, hash_digest
from dstore.format.pack import PackRecord
from dstore.ingest.packer import encode_pack


@dataclass(frozen=True)
class ShardStatus:
    """One shard as verify found it."""

    index: int
    cid: CID
    ok: bool
    where: str  # "local", or the peer asked
    problem: str | None = None  # "missing", "corrupt", or the peer's failure


@dataclass(frozen=True)
class PackReport:
    """A pack's shards: how many are good, how many are needed."""

    pack_id: CID
    record: PackRecord
    shards: list[ShardStatus]

    @property
    def good(self) -> int:
        return sum(s.ok for s in self.shards)

    @property
    def needed(self) -> int:
        return self.record.k

    @property
    def healthy(self) -> bool:
        return self.good == len(self.shards)

    def to_json(self) -> dict[str, object]:
        return {
            "pack": cid_to_text(self.pack_id),
            "good": self.good,
            "needed": self.needed,
            "total": len(self.shards),
            "bad": [
                {"shard": s.index, "cid": cid_to_text(s.cid), "where": s.where, "problem": s.problem}
                for s in self.shards
                if not s.ok
            ],
        }


def packs_of(reader: DatasetReader) -> list[tuple[CID, PackRecord]]:
    """Every pack the dataset's locator names."""
    return [reader.locator.pack(i) for i in range(reader.locator.num_packs)]


def check_local(reader: DatasetReader, pack_id: CID, record: PackRecord) -> PackReport:
    """Each shard of the pack in the local store: present, right size, matching its CID."""
    statuses = []
    for i, cid in enumerate(record.shards):
        try:
            data = reader.store.shards.read(cid.encode("base32"))
        except NotFound:
            statuses.append(ShardStatus(i, cid, False, "local", "missing"))
            continue
        ok = len(data) == record.shard_size and hash_digest(data, reader.hash_name) == cid.hash.digest
        statuses.append(ShardStatus(i, cid, ok, "local", None if ok else "corrupt"))
    return PackReport(pack_id, record, statuses)


def verify_local(reader: DatasetReader, progress: Callable[[int], None] | None = None) -> list[PackReport]:
    reports = []
    for pack_id, record in packs_of(reader):
        reports.append(check_local(reader, pack_id, record))
        if progress:
            progress(1)
    return reports


def repair_local(reader: DatasetReader, reports: list[PackReport]) -> int:
    """Rewrite the missing or bad shards of every damaged pack; returns how many were written.

    NotEnoughShards names the first pack with fewer than k good shards (nothing
    can rebuild it here), after the packs that could be repaired were.
    """
    written = 0
    lost: list[PackReport] = []
    for report in reports:
        if report.healthy:
            continue
        if report.good < report.needed:
            lost.append(report)
            continue
        shards = regenerate(reader, report)
        for status in report.shards:
            if not status.ok:
                reader.store.shards.write(status.cid.encode("base32"), (shards[status.index],))
                written += 1
    reader.store.shards.sync_dirs()
    if lost:
        names = ", ".join(cid_to_text(r.pack_id) for r in lost[:3])
        raise NotEnoughShards(
            f"{len(lost)} pack(s) have fewer than k good shards and cannot be rebuilt from this store: {names}"
        )
    return written


def regenerate(reader: DatasetReader, report: PackReport) -> list[memoryview]:
    """All k + m shards of a pack, rebuilt from its good shards and checked against their CIDs."""
    record = report.record
    region = reader.packs.source.rebuild(report.pack_id.to_bytes(), record)
    buf = bytearray(region)
    encoded = encode_pack(buf, record.size, record.k, record.m, reader.hash_name)
    if [c for c, _ in encoded.shards] != list(record.shards):
        raise IntegrityError(
            f"re-encoding pack {cid_to_text(report.pack_id)} does not give its shard CIDs back; nothing written"
        )
    return [part for _, part in encoded.shards]
