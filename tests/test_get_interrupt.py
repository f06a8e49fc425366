"""`dstore get` interrupted (SIGTERM, SIGKILL) or raced: nothing left for long, a re-run resumes, OUT never replaced.

A real `dstore get` subprocess on a 200 MB dataset; signals are sent once the
get's record shows completed files (polled, never slept on).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dstore.fetch import partial

from treeutil import random_bytes

SMALL_FILES = 20
SMALL_BYTES = 5 << 20
BIG_BYTES = 100 << 20
POLL_S = 0.005


def run(home: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DSTORE_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "dstore", *map(str, args)], capture_output=True, text=True, env=env, timeout=600
    )


def start(home: Path, *args: str | Path) -> subprocess.Popen[str]:
    env = {**os.environ, "DSTORE_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "dstore", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for(condition, proc: subprocess.Popen[str], what: str) -> None:
    """Poll until ``condition`` holds while the get runs (it ends on its own, so this ends too)."""
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"get ended (code {proc.returncode}) before {what} (if it succeeded: dataset too small)")
        time.sleep(POLL_S)


def temps(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.dstore-*.tmp"))


def records(home: Path) -> list[Path]:
    return sorted(partial.gets_dir(home).glob("*.get"))


def done_files(home: Path) -> list[str]:
    """The files the one record of ``home`` says are complete."""
    (record,) = records(home)
    rels = []
    for line in record.read_bytes().split(b"\n")[1:-1]:
        obj = json.loads(line)
        if "done" in obj:
            rels.append(obj["done"])
    return rels


def digests(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def big():
    """(home, src, dataset ID): 20 files of 5 MiB and one of 100 MiB, on /dev/shm where there is one."""
    where = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    top = Path(tempfile.mkdtemp(prefix="dstore-get-interrupt-", dir=where))
    try:
        src = top / "src"
        src.mkdir()
        for i in range(SMALL_FILES):
            (src / f"f{i:02d}.bin").write_bytes(random_bytes(SMALL_BYTES, 100 + i))
        (src / "zz-big.bin").write_bytes(random_bytes(BIG_BYTES, 99))
        home = top / "store"
        added = run(home, "add", src, "-q", "--shards", "4+0")
        assert added.returncode == 0, added.stderr
        yield home, src, added.stdout.strip()
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def outdir(big):
    home, _, _ = big
    out = home.parent / "outs"
    out.mkdir()
    yield out
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(partial.gets_dir(home), ignore_errors=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_interrupted_get_resumes_keeping_completed_files(big, outdir, sig):
    home, src, cid = big
    out = outdir / "out"
    proc = start(home, "get", cid, "-o", out, "-q")
    wait_for(lambda: records(home) and len(done_files(home)) >= 2, proc, "two completed files")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, err
        assert err.strip().splitlines() == ["dstore: error: terminated"]
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    (tmp,) = temps(out)
    done = done_files(home)
    assert len(done) >= 2
    kept = {rel: (os.stat(tmp / rel).st_ino, os.stat(tmp / rel).st_mtime_ns) for rel in done}

    again = run(home, "get", cid, "-o", out, "-q", "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["files"] == SMALL_FILES + 1
    assert summary["resumed_files"] == len(done)
    assert summary["resumed_bytes"] == sum((src / rel).stat().st_size for rel in done)
    # The completed files were kept as they were, not written again.
    assert {rel: (os.stat(out / rel).st_ino, os.stat(out / rel).st_mtime_ns) for rel in done} == kept
    assert digests(out) == digests(src)
    assert temps(out) == [] and records(home) == []


def test_killed_get_is_cleaned_by_the_next_get_of_something_else(big, outdir):
    home, src, cid = big
    out = outdir / "out"
    proc = start(home, "get", cid, "-o", out, "-q")
    wait_for(lambda: records(home) and done_files(home), proc, "a completed file")
    proc.kill()
    proc.communicate()
    assert len(temps(out)) == 1

    other = run(home, "get", f"{cid}/f00.bin", "-o", outdir / "one.bin")
    assert other.returncode == 0, other.stderr
    assert temps(out) == [] and records(home) == []
    assert (outdir / "one.bin").read_bytes() == (src / "f00.bin").read_bytes()


def test_clean_stale_gets_spares_a_running_get(big, outdir):
    """What `dstore gc` calls: it removes dead gets' trees, never a running one's."""
    home, src, cid = big
    out = outdir / "out"
    proc = start(home, "get", cid, "-o", out, "-q")
    wait_for(lambda: records(home) and done_files(home), proc, "a completed file")
    assert partial.clean_stale_gets(home) == []
    assert len(temps(out)) == 1, "the running get's tree must stay"
    proc.kill()
    proc.communicate()
    (tmp,) = temps(out)
    assert partial.clean_stale_gets(home) == [str(tmp)]
    assert temps(out) == [] and records(home) == []
    assert not out.exists()


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_output_created_while_get_runs_is_left_untouched(big, outdir, kind):
    home, src, cid = big
    out = outdir / "out"
    target = cid if kind == "folder" else f"{cid}/zz-big.bin"
    proc = start(home, "get", target, "-o", out, "-q")
    wait_for(lambda: bool(temps(out)), proc, "the temporary tree")
    if kind == "folder":
        out.mkdir()  # an empty folder: a plain rename() would silently replace it
    else:
        out.write_bytes(b"someone else's file")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and "appeared while" in err
    if kind == "folder":
        assert out.is_dir() and list(out.iterdir()) == []
        out.rmdir()
    else:
        assert out.read_bytes() == b"someone else's file"
        out.unlink()
    # The data was kept: the same get finishes without fetching anything again.
    again = run(home, "get", target, "-o", out, "-q", "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["resumed_files"] == summary["files"] == (SMALL_FILES + 1 if kind == "folder" else 1)
    if kind == "folder":
        assert digests(out) == digests(src)
    else:
        assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256((src / "zz-big.bin").read_bytes()).digest()
    assert temps(out) == [] and records(home) == []


def test_a_second_get_to_the_same_output_is_refused_while_the_first_runs(big, outdir):
    home, src, cid = big
    out = outdir / "out"
    proc = start(home, "get", cid, "-o", out, "-q")
    wait_for(lambda: bool(records(home)), proc, "the get's record")
    # Hold the first get still (its lock stays held) so it cannot finish before the second asks.
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        second = run(home, "get", cid, "-o", out)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    _, first_err = proc.communicate(timeout=120)
    assert proc.returncode == 0, first_err
    assert second.returncode == 2, second.stderr
    assert len(second.stderr.strip().splitlines()) == 1 and "another dstore get" in second.stderr
    assert digests(out) == digests(src)
