"""``dstore get``: write a dataset back as files, atomically.

Everything is written under a temporary name next to the output and renamed
to it only once every chunk has been verified; on any error the temporary
tree is removed, so nothing is ever left under the output name.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dstore.errors import FormatError, UsageError
from dstore.fetch.batch import BatchWriter, walk
from dstore.fetch.reader import DatasetReader
from dstore.format import unixfs
from dstore.store import Store


def get(
    store: Store,
    dataset: str,
    output: Path,
    *,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    peers: Any | None = None,
) -> dict[str, object]:
    """Write dataset ``dataset`` to ``output`` (from peers where the local store lacks it); returns a summary."""
    output = Path(output)
    with DatasetReader(store, dataset, peers=peers) as reader:
        if os.path.lexists(output):
            raise UsageError(f"{output} already exists; remove it or choose another -o")
        parent = output.absolute().parent
        if not parent.is_dir():
            raise UsageError(f"folder {parent} does not exist")
        if on_start:
            on_start(reader.manifest.size)
        tmp = parent / f".{output.name}.dstore-{os.getpid()}.tmp"
        try:
            files = _write_tree(reader, tmp, output.name, progress)
            os.rename(tmp, output)
        except BaseException:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            raise
    return {"cid": dataset, "output": str(output), "files": files, "bytes": reader.manifest.size}


def _write_tree(reader: DatasetReader, tmp: Path, name: str, progress: Callable[[int], None] | None) -> int:
    """Write the whole dataset at ``tmp``; returns the number of files."""
    root = reader.node(reader.root)
    if not root.is_dir:
        with BatchWriter(reader, tmp.parent, progress) as out:
            out.add(tmp.name, reader.root, root, name=name)
        return 1
    files = 0
    tmp.mkdir()
    # Folders are made here as the walk reaches them, before any batch holding their files is written.
    with BatchWriter(reader, tmp, progress) as out:
        for rel, cid, node in walk(reader, root):
            try:
                # Each folder of the path was checked when the walk reached it.
                unixfs.validate_name(rel.rpartition("/")[2])
            except ValueError as e:
                raise FormatError(f"unsafe name in dataset: {rel!r}") from e
            if node is not None and node.is_dir:
                (tmp / rel).mkdir()
            else:
                out.add(rel, cid, node)
                files += 1
    return files
