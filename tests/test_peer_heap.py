"""A peer reuses the memory of the uploads it has finished (dstore/peer/heap.py).

Counted, never timed: the peer process's minor page faults (``/proc/PID/stat``) while it takes
shard-sized uploads, four at a time as a client's add sends them. Without the heap settings most
bodies are faulted in anew (~1,100 faults per 4 MiB upload, a body being 1,024 pages: the growing
receive buffer, its copy into ``bytes``, the parser's pieces); with them, ~60.
"""

from __future__ import annotations

import os
import platform
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from peerutil import running_peers
from test_peer import block, request

from dstore.peer.heap import keep_freed_buffers

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the heap settings are glibc's")

BODY_BYTES = 4 << 20
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _minor_faults(pid: int) -> int:
    # Field 10 of /proc/PID/stat; the fields after the ")" closing the command name start at field 3.
    after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(after_name[10 - 3])


def test_keep_freed_buffers_takes_effect_on_glibc() -> None:
    assert keep_freed_buffers()


def test_uploads_reuse_the_memory_of_earlier_ones(tmp_path: Path) -> None:
    with running_peers(tmp_path, 1) as (peer,):
        assert peer.proc is not None
        pid = peer.proc.pid

        def upload(_: int) -> None:
            data = os.urandom(BODY_BYTES)
            assert request(f"{peer.url}/shards/{block(data)}", "PUT", data, peer.auth)[0] == 201

        uploads = 24
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(upload, range(8)))  # the heap grows to what four bodies at once need
            before = _minor_faults(pid)
            list(pool.map(upload, range(uploads)))
            per_upload = (_minor_faults(pid) - before) / uploads
    # A quarter of one body's pages: the bodies' memory came back from the heap, not from the kernel.
    assert per_upload < BODY_BYTES / PAGE_BYTES / 4, per_upload
