"""`dstore mount`: a real FUSE mount served by the real CLI, read with ordinary file calls."""

from __future__ import annotations

import errno
import filecmp
import mmap
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from peerutil import added_on_peers

from treeutil import csv_like, random_bytes

if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
    pytest.skip("FUSE is not available here: /dev/fuse or fusermount3 is missing", allow_module_level=True)
pytest.importorskip("mfusepy", reason="mfusepy is not installed (pip install 'dstore[fuse]')")

pytestmark = pytest.mark.slow

TOKEN = "fuse-token"
BIG = random_bytes(6 << 20, 11)
CSV = csv_like(1 << 20)
MOUNT_WAIT_S = 60.0


def make_tree(root: Path) -> Path:
    src = root / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "big.bin").write_bytes(BIG)
    (src / "sub" / "table.csv").write_bytes(CSV)
    (src / "sub" / "deeper" / "note.txt").write_bytes(b"hello")
    (src / "empty").write_bytes(b"")
    return src


@contextmanager
def mounted(cid: str, mnt: Path, env: dict[str, str], *args: str):
    """Run `dstore mount CID MNT`, wait for its line and the mount; on leaving, SIGTERM it and check it unmounted."""
    mnt.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dstore", "mount", cid, str(mnt), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        try:
            line = lines.get(timeout=MOUNT_WAIT_S)
        except queue.Empty:
            proc.kill()
            raise AssertionError(f"no mounted line; stderr: {proc.stderr.read()}") from None
        assert line.strip() == f"mounted {cid} at {mnt} (Ctrl-C to unmount)"
        while not os.path.ismount(mnt):  # the line comes from libfuse's init; the kernel may show it a moment later
            if proc.poll() is not None:
                pytest.fail(f"dstore mount ended (code {proc.returncode}) before the mount appeared")
            time.sleep(0.05)
        yield proc
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=MOUNT_WAIT_S)
        assert not os.path.ismount(mnt)
        assert code == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        proc.stdout.close()
        proc.stderr.close()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """A dataset added to a local store: (source tree, CID, environment)."""
    root = tmp_path_factory.mktemp("fuselocal")
    src = make_tree(root)
    env = {"DSTORE_HOME": str(root / "home"), "DSTORE_CACHE": str(root / "cache")}
    env.pop("DSTORE_PEERS", None)
    add = subprocess.run(
        [sys.executable, "-m", "dstore", "add", str(src), "-q"],
        capture_output=True,
        text=True,
        env={**{k: v for k, v in os.environ.items() if k != "DSTORE_PEERS"}, **env},
        check=True,
    )
    return src, add.stdout.strip(), env


def test_mounted_tree_is_the_source_tree(local, tmp_path):
    src, cid, env = local
    mnt = tmp_path / "mnt"
    with mounted(cid, mnt, env):
        cmp = filecmp.dircmp(src, mnt)

        def same(c: filecmp.dircmp) -> None:
            assert not c.left_only and not c.right_only and not c.funny_files
            _, mismatch, errors = filecmp.cmpfiles(c.left, c.right, c.common_files, shallow=False)
            assert not mismatch and not errors
            for sub in c.subdirs.values():
                same(sub)

        same(cmp)
        assert subprocess.run(["diff", "-r", str(src), str(mnt)]).returncode == 0
        copy = tmp_path / "copy"
        shutil.copytree(mnt, copy)
        assert (copy / "big.bin").read_bytes() == BIG
        top = os.stat(mnt)
        for path in [
            mnt,
            mnt / "sub",
            mnt / "sub" / "deeper",
            mnt / "big.bin",
            mnt / "empty",
            mnt / "sub" / "table.csv",
        ]:
            st = os.stat(path)
            assert st.st_mtime_ns == top.st_mtime_ns
            if path.is_dir():
                assert st.st_mode & 0o777 == 0o555
            else:
                assert st.st_mode & 0o777 == 0o444
                assert st.st_size == (src / path.relative_to(mnt)).stat().st_size


def test_random_pread_and_mmap(local, tmp_path):
    _, cid, env = local
    mnt = tmp_path / "mnt"
    with mounted(cid, mnt, env):
        fd = os.open(mnt / "big.bin", os.O_RDONLY)
        try:
            for offset, size in [(5 << 20, 4096), (17, 1 << 20), (len(BIG) - 10, 100), (3 << 20, 3), (len(BIG), 5)]:
                assert os.pread(fd, size, offset) == BIG[offset : offset + size]
        finally:
            os.close(fd)
        with open(mnt / "sub" / "table.csv", "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            assert len(m) == len(CSV)
            assert m[1000:5000] == CSV[1000:5000]
            assert m[-77:] == CSV[-77:]
            assert bytes(m) == CSV


def test_handles_read_at_once_each_get_their_own_bytes(local, tmp_path):
    """Two handles of one file read by two threads at once (the local mount serves them on one thread, without
    locks): one goes on through the file, the other jumps about; pages are dropped after each read so every
    read reaches the mount."""
    _, cid, env = local
    mnt = tmp_path / "mnt"
    piece = 128 << 10
    with mounted(cid, mnt, env):
        errors: list[BaseException] = []

        def read(offsets: list[int]) -> None:
            fd = os.open(mnt / "big.bin", os.O_RDONLY)
            try:
                for offset in offsets:
                    assert os.pread(fd, piece, offset) == BIG[offset : offset + piece]
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except BaseException as e:
                errors.append(e)
            finally:
                os.close(fd)

        on = list(range(0, len(BIG), piece))
        about = [(i * 2_654_435_761) % (len(BIG) - piece) for i in range(len(on))]
        threads = [threading.Thread(target=read, args=(offsets,)) for offsets in (on, about)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors


def test_reads_across_windows_get_the_files_bytes(local, tmp_path):
    """A local mount answers a sequential reader from windows of the file (WINDOW_BYTES, the next one read
    meanwhile): reads that start off the kernel's usual boundaries, run across a window's end, jump back into
    an earlier window and go on to the file's end all get the file's bytes (pages dropped before each read, so
    every read reaches the mount)."""
    from dstore.mount.fuse import WINDOW_BYTES

    assert len(BIG) > WINDOW_BYTES + (1 << 20)  # the reads below cross a window's end
    _, cid, env = local
    mnt = tmp_path / "mnt"
    start = 3 * 4096  # a window that starts off 128 KiB boundaries: the kernel's reads straddle its end
    reads = [(start, 4096), *((o, 200_003) for o in range(start + 4096, len(BIG), 200_003))]
    reads += [(start + WINDOW_BYTES - 5000, 10_000), (100, 1 << 20), (len(BIG) - 300_000, 1 << 20)]
    with mounted(cid, mnt, env):
        fd = os.open(mnt / "big.bin", os.O_RDONLY)
        try:
            for offset, size in reads:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                assert os.pread(fd, size, offset) == BIG[offset : offset + size], (offset, size)
        finally:
            os.close(fd)


def test_writes_are_refused_with_erofs(local, tmp_path):
    _, cid, env = local
    mnt = tmp_path / "mnt"
    with mounted(cid, mnt, env):
        attempts = [
            lambda: open(mnt / "big.bin", "r+b"),
            lambda: open(mnt / "new.txt", "wb"),
            lambda: os.mkdir(mnt / "newdir"),
            lambda: os.unlink(mnt / "big.bin"),
            lambda: os.rmdir(mnt / "sub" / "deeper"),
            lambda: os.rename(mnt / "empty", mnt / "moved"),
        ]
        for attempt in attempts:
            with pytest.raises(OSError) as e:
                attempt()
            assert e.value.errno == errno.EROFS
        assert (mnt / "big.bin").read_bytes() == BIG


def test_bad_mountpoints_and_unknown_cid(local, tmp_path, dstore):
    _, cid, env = local
    missing = dstore("mount", cid, tmp_path / "nowhere", check=False, env=env)
    assert missing.code == 2 and len(missing.err.strip().splitlines()) == 1
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_bytes(b"")
    busy = dstore("mount", cid, full, check=False, env=env)
    assert busy.code == 2 and "not empty" in busy.err and len(busy.err.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "other.txt"
    other.write_bytes(b"a dataset this store never saw")
    unknown = dstore("add", other, "-q", env={**env, "DSTORE_HOME": str(tmp_path / "elsewhere")}).out.strip()
    gone = dstore("mount", unknown, empty, check=False, env=env)
    assert gone.code == 3 and len(gone.err.strip().splitlines()) == 1
    assert not os.path.ismount(empty)


@pytest.fixture(scope="module")
def six(tmp_path_factory):
    """Six peers holding one 4+2 dataset added by another store."""
    root = tmp_path_factory.mktemp("fusepeers")
    src = make_tree(root)
    with added_on_peers(root, src, TOKEN) as found:
        yield found


def peer_env(tmp_path: Path) -> dict[str, str]:
    return {"DSTORE_HOME": str(tmp_path / "fresh"), "DSTORE_CACHE": str(tmp_path / "cache"), "DSTORE_PEERS": ""}


def test_mount_over_peers_survives_one_dead_peer(six, tmp_path):
    peers, cid = six
    mnt = tmp_path / "mnt"
    try:
        with mounted(cid, mnt, peer_env(tmp_path), "--peers", ",".join(p.url for p in peers)):
            assert sorted(os.listdir(mnt)) == ["big.bin", "empty", "sub"]
            fd = os.open(mnt / "big.bin", os.O_RDONLY)
            try:
                half = len(BIG) // 2
                assert os.pread(fd, 65536, 0) == BIG[:65536]
                peers[0].kill()
                got = bytearray()
                for offset in range(65536, len(BIG), 1 << 20):
                    got += os.pread(fd, 1 << 20, offset)
                assert bytes(got) == BIG[65536:]
                assert os.pread(fd, 10, half) == BIG[half : half + 10]
            finally:
                os.close(fd)
            assert (mnt / "sub" / "table.csv").read_bytes() == CSV
    finally:
        if peers[0].proc is None or peers[0].proc.poll() is not None:
            peers[0].start()


def test_mount_with_every_peer_gone_gives_eio_and_unmounts(six, tmp_path):
    peers, cid = six
    mnt = tmp_path / "mnt"
    try:
        with mounted(cid, mnt, peer_env(tmp_path), "--peers", ",".join(p.url for p in peers)):
            assert os.stat(mnt / "sub" / "table.csv").st_size == len(CSV)  # metadata read while peers live
            for peer in peers:
                peer.kill()
            with pytest.raises(OSError) as e:
                with open(mnt / "sub" / "table.csv", "rb") as f:
                    f.read()
            assert e.value.errno == errno.EIO
    finally:
        for peer in peers:
            if peer.proc is None or peer.proc.poll() is not None:
                peer.start()
