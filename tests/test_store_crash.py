"""kill -9 in the middle of `dstore add`: no index entry without its shard, no bad shard, and the next add completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import blake3
import pytest

from dstore.format.cid import parse_cid
from dstore.format.pack import PackRecord
from dstore.limits import PACK_UNIT_BYTES
from dstore.store import ChunkLoc, Store

from treeutil import random_bytes, snapshot


def check_store_consistent(home: Path) -> int:
    """Every shard file hashes to its name; every indexed chunk's pack has all its shards."""
    shards = [p for p in (home / "shards").rglob("*") if p.is_file()]
    for p in shards:
        cid = parse_cid(p.name)
        assert blake3.blake3(p.read_bytes()).digest() == cid.hash.digest, p
    store = Store(home)
    try:
        with store.index.env.begin(db=store.index.chunks) as txn:
            locs = [ChunkLoc.decode(v) for _, v in txn.cursor()]
        for pack_id in {loc.pack_id for loc in locs}:
            record = PackRecord.decode(store.get_block(pack_id))
            for s in record.shards:
                assert store.shards.has(s.encode("base32"))
        return len(locs)
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("after_part", [0.0, 0.2, 0.5])
def test_kill_during_add(tmp_path, home, after_part):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"part{i}.bin").write_bytes(random_bytes(48 << 20, 100 + i))
    env = {**os.environ, "DSTORE_HOME": str(home)}
    cmd = [sys.executable, "-m", "dstore", "add", str(src), "-q", "--shards", "4+2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill once some of the shards are written, so the crash lands mid-add.
    packs = 4 * (48 << 20) // (4 * PACK_UNIT_BYTES)
    after_shards = max(1, int(after_part * packs * 6))
    while proc.poll() is None and sum(1 for _ in (home / "shards").glob("*/b*")) < after_shards:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "add finished before it could be killed"
    if home.exists():
        check_store_consistent(home)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    cid = done.stdout.strip()
    assert check_store_consistent(home) > 0
    assert not list((home / "tmp").iterdir())
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "dstore", "get", cid, "-o", str(out), "-q"], env=env, check=True)
    assert snapshot(out) == snapshot(src)
