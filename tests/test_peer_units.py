"""Pure pieces of the storage peer: sizes, listen addresses, peer IDs, tokens, identity files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from multiformats import multibase

from dstore.errors import StoreError, UsageError
from dstore.peer.config import parse_listen, parse_peer_urls, parse_size, resolve_token
from dstore.peer.identity import b58encode, load_or_create_identity, peer_id_from_public_key


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("4096", 4096), ("1K", 1024), ("512M", 512 << 20), ("10G", 10 << 30), ("1t", 1 << 40), ("1.5K", 1536)]
    + [("2GiB", 2 << 30), ("3MB", 3 << 20), (" 7 ", 7)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "-1", "10X", "1e9", "ten"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8081") == ("127.0.0.1", 8081)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen(":9000") == ("0.0.0.0", 9000)
    for bad in ("8081", "host:", "host:99999", "host:x"):
        with pytest.raises(UsageError):
            parse_listen(bad)


def test_parse_peer_urls() -> None:
    assert parse_peer_urls(None) == []
    assert parse_peer_urls("http://a:1/, https://b ,") == ["http://a:1", "https://b"]
    with pytest.raises(UsageError):
        parse_peer_urls("ftp://a")


@pytest.mark.parametrize("data", [b"", b"\0", b"\0\0\1", bytes(range(40)), os.urandom(36), b"\xff" * 10])
def test_b58encode_matches_multibase(data: bytes) -> None:
    assert b58encode(data) == multibase.encode("base58btc", data)[1:]


def test_peer_id_is_libp2p_identity_multihash() -> None:
    key = bytes(range(32))
    peer_id = peer_id_from_public_key(key)
    assert peer_id.startswith("12D3KooW")
    raw = multibase.decode("z" + peer_id)[1]
    # identity multihash (0x00, 36 bytes) of protobuf PublicKey{Type: Ed25519 (1), Data: key}
    assert raw == bytes([0x00, 36, 0x08, 0x01, 0x12, 0x20]) + key
    with pytest.raises(ValueError):
        peer_id_from_public_key(b"short")


def test_identity_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path)
    assert stat.S_IMODE((tmp_path / "identity.key").stat().st_mode) == 0o600
    again = load_or_create_identity(tmp_path)
    assert again.peer_id == first.peer_id
    assert peer_id_from_public_key(again.public_key_bytes) == first.peer_id
    assert [p.name for p in tmp_path.iterdir()] == ["identity.key"]


def test_bad_identity_file(tmp_path: Path) -> None:
    (tmp_path / "identity.key").write_text("not a key")
    with pytest.raises(StoreError, match="identity.key"):
        load_or_create_identity(tmp_path)


def test_token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSTORE_TOKEN", "from-env")
    assert resolve_token(tmp_path, "given") == ("given", "--token")
    assert resolve_token(tmp_path, None) == ("from-env", "$DSTORE_TOKEN")
    monkeypatch.delenv("DSTORE_TOKEN")
    token, source = resolve_token(tmp_path, None)
    assert source == str(tmp_path / "token") and len(token) >= 32
    assert stat.S_IMODE((tmp_path / "token").stat().st_mode) == 0o600
    assert resolve_token(tmp_path, None) == (token, source)


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dstore.peer", "serve", *args], capture_output=True, text=True, timeout=60
    )


def test_serve_startup_errors_are_one_line(tmp_path: Path) -> None:
    for args, code in [
        (["--home", str(tmp_path / "h"), "--listen", "nope"], 2),
        (["--home", str(tmp_path / "h"), "--capacity", "10X"], 2),
        (["--home", str(tmp_path / "file" / "h"), "--listen", "127.0.0.1:0"], 8),
    ]:
        (tmp_path / "file").write_text("")
        result = _serve(*args)
        assert result.returncode == code, result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""


def test_serve_port_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = _serve("--home", str(tmp_path / "h"), "--listen", f"127.0.0.1:{port}", "--token", "t")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if line.startswith("dstore: error: cannot listen on")
    ]


def test_scrub_pause_keeps_under_the_rate() -> None:
    from dstore.peer.scrub import pause_s

    assert pause_s(50_000, 100_000, 0.0) == 0.5
    assert pause_s(50_000, 100_000, 0.2) == pytest.approx(0.3)
    assert pause_s(50_000, 100_000, 0.9) == 0.0  # behind the rate already: no pause


def test_scrub_pass_rate_and_results(tmp_path: Path) -> None:
    import asyncio

    from dstore.format.cid import RAW, cid_to_text, make_cid
    from dstore.peer.metrics import PeerMetrics
    from dstore.peer.scrub import Scrubber
    from dstore.peer.storage import PeerStore

    store = PeerStore(tmp_path)
    blocks = [os.urandom(25_000) for _ in range(4)]
    for data in blocks:
        store.reserve(len(data))
        assert store.write_reserved(cid_to_text(make_cid(RAW, data)), data, len(data))
    bad = cid_to_text(make_cid(RAW, blocks[0]))
    store.path(bad).write_bytes(b"rotten")
    (store.files.root / "zz").mkdir(exist_ok=True)
    (store.files.root / "zz" / "not-a-cid").write_bytes(b"ignored")
    metrics = PeerMetrics(lambda: store.bytes_stored, lambda: store.shards, None)
    scrubber = Scrubber(store, metrics, rate_bytes_s=100_000, interval_s=3600)
    # A clock that only the pacing's sleeps move: the pass must sleep exactly bytes / rate in all.
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    scrubber.clock = lambda: now[0]  # type: ignore[method-assign]
    scrubber.sleep = sleep  # type: ignore[method-assign]
    report = asyncio.run(scrubber.run_pass())
    assert (report.checked, report.bad) == (4, 1)
    assert len(slept) == 4  # after each block checked
    assert sum(slept) == pytest.approx(75_006 / 100_000)  # 3 x 25 000 + b"rotten" at 100 kB/s
    assert metrics.registry.get_sample_value("dstore_peer_scrub_checked_bytes_total") == 75_006
    assert not store.path(bad).exists()
    # Accounting subtracts the size found on disk: a block that rotted to another size leaves the
    # count off by the difference until the next start (which walks shards/ again).
    assert (store.shards, store.bytes_stored) == (3, 100_000 - len(b"rotten"))
    assert PeerStore(tmp_path).bytes_stored == 75_000 + len(b"ignored")
    # the pass is remembered across restarts
    again = Scrubber(PeerStore(tmp_path), metrics, rate_bytes_s=100_000, interval_s=3600)
    assert again.last == report
