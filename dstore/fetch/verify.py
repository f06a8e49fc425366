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

from dstore.errors import IntegrityError, NotEnoughShards, NotFound, PeerError
from dstore.fetch.packs import data_region
from dstore.fetch.reader import DatasetReader
from dstore.fetch.remote import load_from_peers
from dstore.format.cid import CID, cid_to_text, hash_digest
from dstore.format.pack import PackRecord
from dstore.format.pointer import Pointer
from dstore.ingest.packer import encode_pack
from dstore.net.protocol import PeerClient


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


# -- on storage peers ---------------------------------------------------------


def check_peers(peers: PeerClient, pack_id: CID, record: PackRecord, holders: list[str | None] | None) -> PackReport:
    """Each shard of the pack from the peer that should hold it, verified against its CID."""
    ranked = peers.rank(pack_id.to_bytes())
    statuses = []
    for i, cid in enumerate(record.shards):
        hint = holders[i] if holders and i < len(holders) else None
        peer = peers.peer_by_id(hint) if hint else (ranked[i % len(ranked)] if ranked else None)
        where = hint or ((peer.peer_id or peer.url) if peer is not None else "no live peer")
        if peer is None or not peer.alive:
            statuses.append(ShardStatus(i, cid, False, where, "peer down"))
            continue
        try:
            peers.get_from(peer, cid)
        except PeerError as e:
            statuses.append(ShardStatus(i, cid, False, where, str(e)))
            continue
        statuses.append(ShardStatus(i, cid, True, where))
    return PackReport(pack_id, record, statuses)


def verify_peers(reader: DatasetReader, peers: PeerClient) -> list[PackReport]:
    """Every data pack of the dataset, then its metadata pack, as found on peers."""
    reports = [
        check_peers(peers, pack_id, record, reader.placement(pack_id.to_bytes()))
        for pack_id, record in packs_of(reader)
    ]
    pointer = _pointer(reader, peers)
    reports.append(check_peers(peers, reader.cid, pointer.metadata, list(pointer.hints)))
    return reports


def repair_peers(reader: DatasetReader, peers: PeerClient, reports: list[PackReport]) -> int:
    """Rebuild damaged packs onto live peers, then republish the metadata with the new placement.

    Returns the number of shards written. Every pack ends with k+m good shards
    on distinct peers when there are at least k+m live peers.
    """
    data_reports, written = reports[:-1], 0
    placement: dict[bytes, list[str | None]] = {}
    lost = [r for r in data_reports if r.good < r.needed]
    for report in data_reports:
        key = report.pack_id.to_bytes()
        holders: list[str | None] = [s.where if s.ok else None for s in report.shards]
        if not report.healthy and report.good >= report.needed:
            shards = regenerate_from(peers, reader.hash_name, report)
            written += _place_missing(peers, key, report, shards, holders)
            reader.store.index.commit_packs(
                [(key, report.record.encode(), [c.to_bytes() for c in report.record.shards], holders)], []
            )
        placement[key] = holders
    if lost:
        names = ", ".join(cid_to_text(r.pack_id) for r in lost[:3])
        raise NotEnoughShards(f"{len(lost)} pack(s) have fewer than k good shards on the peers: {names}")
    from dstore.ingest.add import ShardSpec, publish_metadata  # the same publication as add

    meta = reports[-1].record
    publish_metadata(
        peers,
        reader.cid,
        reader.locator.root_cid,
        reader.metadata_blocks(),
        placement,
        ShardSpec(meta.k, meta.m),
        reader.hash_name,
        replaces_seq=_pointer(reader, peers).seq,
    )
    return written


def regenerate_from(peers: PeerClient, hash_name: str, report: PackReport) -> list[memoryview]:
    """All k + m shards of a pack from any k verified ones on peers, checked against their CIDs."""
    record = report.record
    shards = peers.fetch_pack(record, report.pack_id.to_bytes(), [s.where if s.ok else None for s in report.shards])
    buf = bytearray(data_region(shards, record))
    encoded = encode_pack(buf, record.size, record.k, record.m, hash_name)
    if [c for c, _ in encoded.shards] != list(record.shards):
        raise IntegrityError(f"re-encoding pack {cid_to_text(report.pack_id)} does not give its shard CIDs back")
    return [part for _, part in encoded.shards]


def _place_missing(
    peers: PeerClient, key: bytes, report: PackReport, shards: list[memoryview], holders: list[str | None]
) -> int:
    """Put each missing shard on the best-ranked live peer not already holding one of this pack's shards."""
    written = 0
    for status in report.shards:
        if status.ok:
            continue
        used = {h for h in holders if h}
        ranked = peers.rank(key)
        candidates = [p for p in ranked if p.peer_id not in used] or ranked
        for peer in candidates:
            try:
                peers.put_to(peer, status.cid, shards[status.index])
            except PeerError:
                continue
            holders[status.index] = peer.peer_id
            written += 1
            break
        else:
            raise PeerError(f"no live peer took shard {status.index} of pack {cid_to_text(report.pack_id)}")
    return written


def _pointer(reader: DatasetReader, peers: PeerClient) -> Pointer:
    """The pointer whose metadata verifies (a newer one that leads nowhere is a lie, not damage to report)."""
    if reader.pointer is not None:
        return reader.pointer
    return load_from_peers(peers, reader.cid).pointer
