"""Red-team findings against the real CLI and real peers: each test is one hostile input that once
went wrong (a traceback, a dataset that add reported stored but no reader could read...).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import pty
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from peerutil import running_peers

from dstore.fetch.reader import DatasetReader
from dstore.fetch.verify import packs_of
from dstore.store import Store

from treeutil import dir_node, forge_dataset, snapshot

TOKEN = "redteam-token"


@contextmanager
def odd_peer(health_body: bytes, other_body: bytes | None = None) -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server on 127.0.0.1 that answers ``/health`` with ``health_body``, and every other
    request 404, or 200 with ``other_body`` if given (a peer claiming to hold everything).
    Yields its URL and the list of "METHOD path" it was asked."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            asked.append(f"{self.command} {self.path}")
            ok = self.path == "/health" or other_body is not None
            body = health_body if self.path == "/health" else other_body
            if body is None:
                body = b'{"error": "no", "code": "not_found"}'
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def assert_one_line_error(result, code: int) -> None:  # noqa: ANN001
    assert result.code == code, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err, result.err


@pytest.mark.parametrize(
    "health",
    [
        b"[" * 60_000,  # json.loads raised RecursionError: a traceback, for add and get alike
        json.dumps({"peer_id": "12D3KooW" + "x" * 60_000}).encode(),
        json.dumps({"peer_id": "12D3KooW\u202eevil"}).encode(),
        json.dumps({"peer_id": ["12D3KooW"]}).encode(),
        b"",
    ],
    ids=["nested", "huge-id", "bidi-id", "list-id", "empty"],
)
def test_one_peer_with_an_odd_health_answer_is_skipped(dstore, tmp_path: Path, health: bytes) -> None:  # noqa: ANN001
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"hello " * 1000)
    with running_peers(tmp_path, 2, token=TOKEN) as peers, odd_peer(health) as (odd, asked):
        env = {"DSTORE_PEERS": ",".join([odd] + [p.url for p in peers]), "DSTORE_TOKEN": TOKEN}
        cid = dstore("add", src, "--shards", "1+1", "-q", env=env).out.strip().splitlines()[-1]
        fresh = {**env, "DSTORE_HOME": str(tmp_path / "fresh")}
        dstore("get", cid, "-o", tmp_path / "out", "-q", env=fresh)
        assert snapshot(tmp_path / "out") == snapshot(src)
        assert "GET /health" in asked


# Files whose size as listed is not what reading them gives: the kernel's own, deterministic
# stand-ins for a file written to while add reads it (one grows from 0, one shrinks from 4096).
GROWS = Path("/proc/self/status")
SHRINKS = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.mark.parametrize("path", [GROWS, SHRINKS], ids=["grows", "shrinks"])
def test_add_of_a_file_that_changes_while_read_fails_cleanly(dstore, tmp_path: Path, path: Path) -> None:  # noqa: ANN001
    if not path.exists() or path.stat().st_size == len(path.read_bytes()):
        pytest.skip(f"{path}: no such kernel file here")
    # Add used to exit 0 with a manifest size from the listing: every get of it then failed (exit 5).
    assert_one_line_error(dstore("add", path, check=False), 4)
    assert "changed while being added" in dstore("add", path, check=False).err
    stat = dstore("stat", "--json").out
    assert json.loads(stat)["datasets"] == 0
    assert dstore("fsck").code == 0


def test_add_of_a_folder_holding_a_changing_file_stores_no_dataset(dstore, tmp_path: Path) -> None:  # noqa: ANN001
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.txt").write_bytes(b"fine")
    (src / "status").symlink_to(GROWS)  # symlinks are followed: the kernel file is read as a file
    assert_one_line_error(dstore("add", src, check=False), 4)
    assert json.loads(dstore("stat", "--json").out)["datasets"] == 0


def _holds_a_data_shard(home: Path, cid: str, peer_id: str) -> bool:
    with Store(home) as store, DatasetReader(store, cid) as reader:
        for pack_id, record in packs_of(reader):
            if peer_id in (store.index.placement(pack_id.to_bytes()) or [])[: record.k]:
                return True
    return False


@pytest.mark.parametrize("body", [b"", b"x", b"{}"], ids=["empty", "one-byte", "json"])
def test_one_peer_answering_200_with_junk_for_every_read_does_not_fail_a_get(
    dstore,  # noqa: ANN001
    home: Path,
    tmp_path: Path,
    body: bytes,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"f{i}.bin").write_bytes(bytes([i]) * 300_000 + b"%d" % i)
    with running_peers(tmp_path, 3, token=TOKEN) as peers:
        env = {"DSTORE_PEERS": ",".join(p.url for p in peers), "DSTORE_TOKEN": TOKEN}
        cid = dstore("add", src, "--shards", "2+1", "-q", env=env).out.strip().splitlines()[-1]
        # The liar holds a data shard, which a healthy get asks for (placement follows random peer IDs).
        liar = next(p for p in peers if _holds_a_data_shard(home, cid, p.peer_id))
        liar.stop()
        # Under the stopped peer's ID (so the pointer's hints send readers to it), it answers 200
        # with junk to every shard, pointer and HEAD: a reader must verify and go on.
        with odd_peer(json.dumps({"peer_id": liar.peer_id}).encode(), other_body=body) as (odd, asked):
            others = [p.url for p in peers if p is not liar]
            fresh = {"DSTORE_PEERS": ",".join([odd, *others]), "DSTORE_HOME": str(tmp_path / "fresh")}
            dstore("get", cid, "-o", tmp_path / "out", "-q", env=fresh)
            assert snapshot(tmp_path / "out") == snapshot(src)
            assert any(a.startswith("GET /shards/") for a in asked), asked  # the lie was met


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MiB tmpfs (needs root: skipped elsewhere)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_add_onto_a_full_disk_fails_cleanly_and_gc_frees_the_rest(dstore, tmp_path: Path, small_disk: Path) -> None:  # noqa: ANN001
    env = {"DSTORE_HOME": str(small_disk / "store")}
    small = tmp_path / "small.txt"
    small.write_bytes(b"fits")
    kept = dstore("add", small, "-q", env=env).out.strip().splitlines()[-1]
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(30 << 20))
    assert_one_line_error(dstore("add", big, "-q", check=False, env=env), 8)  # StoreError: disk full
    assert json.loads(dstore("stat", "--json", env=env).out)["datasets"] == 1
    assert dstore("fsck", env=env).code == 0  # no index entry without its shard
    dstore("gc", env=env)
    used = shutil.disk_usage(small_disk).used
    assert used < 2 << 20, used  # what the failed add wrote is gone
    assert dstore("cat", kept, env=env).out == "fits"
    out = tmp_path / "again"
    dstore("get", dstore("add", small, "-q", env=env).out.strip().splitlines()[-1], "-o", out, env=env)
    assert out.read_bytes() == b"fits"


def _dataset_with_names(home: Path, names: list[str]) -> str:
    from dstore.format.cid import RAW, make_cid

    empty = make_cid(RAW, b"").to_bytes()  # the empty file: no chunk needed
    root = dir_node([(n, empty) for n in names])
    return forge_dataset(home, root[0], [root], size=0, entries=1 + len(names))


def test_an_error_naming_a_hostile_file_name_stays_one_line(dstore, home: Path, tmp_path: Path) -> None:  # noqa: ANN001
    # 300 bytes is too long a name for Linux: the error names the file, newline and escape included.
    ds = _dataset_with_names(home, ["a" * 300 + "\nfake: second line\x1b]0;title\x07"])
    out = tmp_path / "out"
    result = dstore("get", ds, "-o", out, check=False)
    assert_one_line_error(result, 4)
    assert "\x1b" not in result.err and "\\n" in result.err
    assert not out.exists()


def test_ls_on_a_terminal_shows_control_characters_escaped(home: Path) -> None:
    ds = _dataset_with_names(home, ["evil\x1b]52;c;cHduZWQ=\x07", "plain.txt", "rtl\u202etxt.exe"])
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dstore", "ls", ds],
            stdout=follower,
            stderr=subprocess.PIPE,
            env={**os.environ, "DSTORE_HOME": str(home)},
            timeout=60,
        )
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                piece = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not piece:
                break
            shown += piece
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == 0, proc.stderr
    assert b"\x1b" not in shown and b"\xe2\x80\xae" not in shown, shown  # no escape, no bidi override
    assert b"evil\\x1b]52;c;cHduZWQ=\\x07" in shown and b"plain.txt" in shown and b"rtl\\u202etxt.exe" in shown


def test_ls_into_a_pipe_keeps_names_as_they_are(dstore, home: Path) -> None:  # noqa: ANN001
    names = ["tab\there", "plain.txt"]
    ds = _dataset_with_names(home, names)
    assert dstore("ls", ds).out.splitlines() == sorted(names, key=str.encode)


def test_a_peer_polls_listed_peers_health_bounded(tmp_path: Path) -> None:
    good_id = "12D3KooWGoodPeerAnsweringItsHealthLikeAnyOther1"
    answers = {
        "good": json.dumps({"peer_id": good_id}).encode(),
        # resp.json() read any size: here 1 MiB of padding before a valid ID (it was learned).
        "padded": json.dumps({"pad": "x" * (1 << 20), "peer_id": "12D3KooWPadded"}).encode(),
        "huge-id": json.dumps({"peer_id": "12D3KooW" + "y" * 100_000}).encode(),  # served on /peers as given
        "nested": b"[" * 60_000,
    }
    with contextlib.ExitStack() as stack:
        urls = {name: stack.enter_context(odd_peer(body))[0] for name, body in answers.items()}
        (peer,) = stack.enter_context(
            running_peers(tmp_path, 1, token=TOKEN, peers=",".join(urls.values()), peer_poll_interval=0.2)
        )
        for _ in range(200):
            with urllib.request.urlopen(f"{peer.url}/peers", timeout=10) as resp:
                listed = {p["url"]: p["peer_id"] for p in json.load(resp)["peers"]}
            if listed[urls["good"]] is not None:
                break
            time.sleep(0.05)
        assert listed[urls["good"]] == good_id
        assert [listed[urls[name]] for name in ("padded", "huge-id", "nested")] == [None, None, None]
        with urllib.request.urlopen(f"{peer.url}/health", timeout=10) as resp:
            assert resp.status == 200
