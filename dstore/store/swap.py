"""Installing a rebuilt index: ``index-0.rebuilt/`` replaces ``index-0/`` by renames.

``fsck --rebuild`` writes a whole new LMDB environment beside the old one and
marks it complete (a ``complete`` file, written after LMDB's own sync). Only a
complete one is ever installed: ``index-0/`` → ``index-0.old/``, then
``index-0.rebuilt/`` → ``index-0/``. A crash between the two renames leaves no
``index-0/`` but a complete rebuild, which the next open of the store installs;
a crash before the mark leaves the old index in place and an unfinished
rebuild that the next fsck discards.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dstore.store.shards import fsync_dir

INDEX_DIR = "index-0"
REBUILT_DIR = "index-0.rebuilt"
OLD_DIR = "index-0.old"
COMPLETE = "complete"


def mark_complete(rebuilt: Path) -> None:
    fd = os.open(rebuilt / COMPLETE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(rebuilt)


def finish_swap(home: Path) -> None:
    """Install a complete rebuilt index if there is one; drop a replaced old one."""
    rebuilt, index, old = home / REBUILT_DIR, home / INDEX_DIR, home / OLD_DIR
    if (rebuilt / COMPLETE).exists():
        try:
            if index.exists():
                if old.exists():
                    shutil.rmtree(old)
                os.rename(index, old)
            os.rename(rebuilt, index)
            (index / COMPLETE).unlink(missing_ok=True)
            fsync_dir(home)
        except FileNotFoundError:
            pass  # another process installed it first
    if old.exists() and index.exists():
        shutil.rmtree(old, ignore_errors=True)
