"""Gateway streams of a peer holding every shard of a dataset: runs read straight from its shard files.

``_native.read_run_files`` (native/src/gwsolo.rs) reads a run of chunks from a pack's data shard files,
checks every chunk and lays the run out as file bytes or CAR sections; here it is checked against the
Python definitions (property tests), then through a real peer over HTTP: a 12 MiB file, part of it
compressible (zstd chunks), added with ``--shards 2+2`` (several packs of two data shards, all on one
peer), its file bytes and CAR checked against the source and the DAG, also with data shards damaged
(rebuilt from parity) and beyond repair (a broken stream, never a wrong byte).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from peerutil import running_peers
from test_gateway import check_block, fetch
from test_gateway_streams import _car, _car_order, _walk

from dstore import _native
from dstore.errors import FormatError
from dstore.format.car import car_section_head
from dstore.format.cid import HASH_CODES, RAW, cid_bytes_from_digest, cid_to_text, hash_digest, parse_cid
from dstore.format.dagpb import decode_varint
from dstore.format.locator import CODEC_ZSTD
from dstore.limits import PACK_UNIT_BYTES

from treeutil import csv_like, random_bytes

TOKEN = "held-token"
MIB = 1 << 20
UNIT = PACK_UNIT_BYTES
BLAKE3 = HASH_CODES["blake3"]
PREFIX = cid_bytes_from_digest(RAW, bytes(32))[:-32]


# -- the native call against its definition ---------------------------------------------------------


def _pack_files(tmp: Path, pack: bytes, shard_size: int) -> list[int]:
    fds = []
    for i in range(0, len(pack), shard_size):
        path = tmp / f"shard{i // shard_size}"
        path.write_bytes(pack[i : i + shard_size].ljust(shard_size, b"\0"))
        fds.append(os.open(path, os.O_RDONLY))
    return fds


@st.composite
def _runs(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int, int, int]], list[bytes], int]:
    """A pack of stored chunks (raw or zstd, with gaps), the chunks' (offset, stored, size, codec),
    the chunks' bytes, and a shard size cutting the pack anywhere."""
    chunks = draw(st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=8))
    pack, refs = b"", []
    for chunk in chunks:
        pack += draw(st.binary(max_size=50))  # another chunk's bytes, not read
        stored = zstandard.ZstdCompressor().compress(chunk) if draw(st.booleans()) else chunk
        refs.append((len(pack), len(stored), len(chunk), CODEC_ZSTD if stored is not chunk else 0))
        pack += stored
    return pack, refs, chunks, draw(st.integers(1, max(1, len(pack))))


def _read(fds: list[int], shard_size: int, refs, chunks: list[bytes], prefix: bytes, digests: bytes | None = None):
    out = bytearray(sum(len(c) + 60 for c in chunks))
    n = _native.read_run_files(
        out,
        fds,
        shard_size,
        [r[0] for r in refs],
        [r[1] for r in refs],
        [r[2] for r in refs],
        [r[3] for r in refs],
        digests if digests is not None else b"".join(hash_digest(c) for c in chunks),
        BLAKE3,
        prefix,
    )
    return bytes(out[:n])


@settings(max_examples=60, deadline=None)
@given(_runs())
def test_a_run_read_from_shard_files_is_its_chunks_or_their_car_sections(tmp_path_factory, run) -> None:
    pack, refs, chunks, shard_size = run
    fds = _pack_files(tmp_path_factory.mktemp("run"), pack, shard_size)
    try:
        assert _read(fds, shard_size, refs, chunks, b"") == b"".join(chunks)
        sections = b"".join(car_section_head(PREFIX + hash_digest(c), len(c)) + c for c in chunks)
        assert _read(fds, shard_size, refs, chunks, PREFIX) == sections
        bad = bytearray(b"".join(hash_digest(c) for c in chunks))
        bad[-1] ^= 1  # the last chunk's ID does not match its bytes
        with pytest.raises(_native.IntegrityError) as e:
            _read(fds, shard_size, refs, chunks, PREFIX, bytes(bad))
        assert e.value.args[0] == len(chunks) - 1
    finally:
        for fd in fds:
            os.close(fd)


def test_a_short_shard_file_or_a_chunk_outside_the_pack_is_refused(tmp_path: Path) -> None:
    chunk = random_bytes(5000, 3)
    fds = _pack_files(tmp_path, chunk, 2500)
    try:
        os.truncate(tmp_path / "shard1", 1000)  # the chunk's end is not in the file any more
        with pytest.raises(OSError):
            _read(fds, 2500, [(0, 5000, 5000, 0)], [chunk], b"")
        with pytest.raises(ValueError, match="outside"):
            _read(fds, 2500, [(1, 5000, 5000, 0)], [chunk], b"")
    finally:
        for fd in fds:
            os.close(fd)


# -- a peer holding every shard ---------------------------------------------------------------------


def _source() -> bytes:
    # In pack units, so that the file's chunks make several 2+2 packs whatever the unit.
    repeated = random_bytes(4 * UNIT, 21)
    return repeated + csv_like(3 * UNIT, 22) + random_bytes(1 * UNIT, 23) + repeated


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("held")
    data = _source()
    (tmp / "big.bin").write_bytes(data)
    with running_peers(tmp, 1, token=TOKEN) as peers:
        env = {**os.environ, "DSTORE_HOME": str(tmp / "store"), "DSTORE_PEERS": peers[0].url, "DSTORE_TOKEN": TOKEN}
        add = subprocess.run(
            [sys.executable, "-m", "dstore", "add", str(tmp / "big.bin"), "--shards", "2+2", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert add.returncode == 0, add.stderr
        yield {"peer": peers[0], "dataset": json.loads(add.stdout)["cid"], "data": data}


def _packs(held: dict) -> list[tuple[list[Path], int]]:
    """Each data pack of the dataset: its shard files on the peer (data shards first), and k."""
    from dstore.peer.blockindex import BlockIndex
    from dstore.peer.storage import PeerStore

    peer = held["peer"]
    index = BlockIndex(PeerStore(Path(peer.home)), [])
    try:
        (meta,) = index.find(parse_cid(held["dataset"]))
        reader = index.reader(meta)
        try:
            packs: dict[bytes, tuple[list[Path], int]] = {}
            codecs = set()
            for digest, _ in reader.leaves(reader.root, reader.node(reader.root)):
                pack_id, record, ref = reader.chunk_ref(digest)
                codecs.add(ref.codec)
                paths = [reader.store.shards.path(c.encode("base32")) for c in record.shards]
                packs[pack_id] = (paths, record.k)
        finally:
            reader.close()
    finally:
        index.close()
    assert CODEC_ZSTD in codecs and 0 in codecs, "the file must have raw and compressed chunks"
    assert len(packs) > 2
    return list(packs.values())


def _file_cid(held: dict):
    status, headers, _ = fetch(f"{held['peer'].url}/ipfs/{held['dataset']}", "HEAD")
    assert status == 200
    return parse_cid(headers["X-Ipfs-Roots"].split(",")[1])


def _check_answers(held: dict) -> None:
    """The file's bytes (whole and a range over several runs) and its CAR (dups or not) are right."""
    url, data = f"{held['peer'].url}/ipfs/{held['dataset']}", held["data"]
    status, headers, body = fetch(url)
    assert status == 200 and int(headers["Content-Length"]) == len(data) and body == data
    first, last = 2 * UNIT + 17, 9 * UNIT + 5
    status, _, body = fetch(url, headers={"Range": f"bytes={first}-{last}"})
    assert status == 206 and body == data[first : last + 1]
    file_cid = _file_cid(held)
    car_url = f"{held['peer'].url}/ipfs/{cid_to_text(file_cid)}?format=car"
    status, _, body = fetch(car_url + "&car-dups=y")
    assert status == 200
    _, blocks, _ = _car(body)  # every block checked against its CID
    walk = _walk(blocks, file_cid)
    assert [c.to_bytes() for c in _car_order(body, file_cid)] == [c.to_bytes() for c in walk]
    assert b"".join(blocks[c.to_bytes()] for c in walk if c.codec == RAW) == data
    status, _, body = fetch(car_url)
    assert status == 200
    once = list({c.to_bytes(): c for c in walk}.values())
    assert len(once) < len(walk), "the file must repeat chunks"
    assert [c.to_bytes() for c in _car_order(body, file_cid)] == [c.to_bytes() for c in once]


def test_file_bytes_and_car_from_the_shard_files(held) -> None:
    _packs(held)  # raw and zstd chunks, several packs
    _check_answers(held)


def test_damaged_and_short_data_shards_are_rebuilt_from_parity(held) -> None:
    """One data shard of every pack has a flipped byte, another is cut short: each pack is rebuilt from
    its verified shards and every answer is still right."""
    saved: dict[Path, bytes] = {}
    try:
        for n, (paths, k) in enumerate(_packs(held)):
            damaged = paths[n % k]
            saved[damaged] = damaged.read_bytes()
            flipped = bytearray(saved[damaged])
            flipped[len(flipped) // 2] ^= 0x40
            damaged.write_bytes(flipped)
            if n == 1:
                short = paths[(n + 1) % k]
                saved[short] = short.read_bytes()
                short.write_bytes(saved[short][: len(saved[short]) // 3])
        _check_answers(held)
    finally:
        for path, original in saved.items():
            path.write_bytes(original)
    assert "Traceback" not in held["peer"].stderr_text()


def _get_raw(held: dict, path: str) -> tuple[int, dict[str, str], bytes, bool]:
    """Status, headers, the body bytes that arrived, and whether the body ended early."""
    port = int(held["peer"].url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        got, broken = b"", False
        try:
            while chunk := resp.read1(1 << 20):
                got += chunk
        except (http.client.IncompleteRead, ConnectionError) as e:
            got += getattr(e, "partial", b"")
            broken = True
        if resp.length:  # Content-Length not reached: the peer closed the connection
            broken = True
        return resp.status, dict(resp.headers), got, broken
    finally:
        conn.close()


def _whole_sections(car: bytes) -> int:
    """How many whole sections the start of a CAR stream holds, each block checked against its CID."""
    pos, count = 0, -1  # the header comes first
    while True:
        try:
            length, start = decode_varint(car, pos)
        except FormatError:  # cut inside a section's varint
            return count
        if start + length > len(car):
            return count
        if count >= 0:
            cid = parse_cid(car[start : start + 36])  # CIDv1 with a 32-byte BLAKE3 digest, as dstore writes
            check_block(cid, car[start + 36 : start + length])
        pos, count = start + length, count + 1


def test_a_pack_beyond_repair_breaks_the_stream_after_right_bytes_only(held) -> None:
    """Three of a pack's four shards damaged: the answer stops there (a broken connection); the bytes
    that came before are the file's (a CAR's are verified blocks), never a wrong one."""
    paths, _ = _packs(held)[1]
    saved = {p: p.read_bytes() for p in paths[:3]}
    try:
        for p, original in saved.items():
            flipped = bytearray(original)
            flipped[len(flipped) // 2] ^= 0x01
            p.write_bytes(flipped)
        data = held["data"]
        status, _, got, broken = _get_raw(held, f"/ipfs/{held['dataset']}")
        assert status == 200 and broken
        assert len(got) < len(data) and got == data[: len(got)]
        status, headers, got, broken = _get_raw(held, f"/ipfs/{cid_to_text(_file_cid(held))}?format=car")
        assert status == 200 and broken
        assert headers["Content-Type"].startswith("application/vnd.ipld.car")
        assert _whole_sections(got) > 1  # what came before the damaged pack: verified blocks
    finally:
        for p, original in saved.items():
            p.write_bytes(original)
    _check_answers(held)  # the shards restored: answered whole again
    assert held["peer"].running


def _open_shard_files(peer) -> int:
    """How many files under the peer's shards/ folder its process has open."""
    shards = str(Path(peer.home) / "shards")
    count = 0
    for fd in Path(f"/proc/{peer.proc.pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith(shards)
        except OSError:
            continue  # closed meanwhile
    return count


def test_a_client_leaving_mid_stream_leaves_no_shard_file_open(held) -> None:
    peer = held["peer"]
    port = int(peer.url.rsplit(":", 1)[1])
    for query in ("?format=car", ""):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(f"GET /ipfs/{held['dataset']}{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            got = b""
            while len(got) < 3 * MIB:
                got += sock.recv(1 << 16)
    status, _, body = fetch(f"{peer.url}/ipfs/{held['dataset']}")  # answered after the streams ended
    assert status == 200 and body == held["data"]
    deadline = time.monotonic() + 30
    while _open_shard_files(peer) and time.monotonic() < deadline:
        time.sleep(0.1)  # the streams' handlers end once they notice the clients left
    assert _open_shard_files(peer) == 0
