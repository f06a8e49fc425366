"""``dstore get``: write a dataset back as files, atomically.

Everything is written under a temporary name next to the output and renamed
to it only once every chunk has been verified; on any error the temporary
tree is removed, so nothing is ever left under the output name.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from dstore.errors import FormatError, IntegrityError, UsageError
from dstore.fetch.reader import DatasetReader
from dstore.format import unixfs
from dstore.format.cid import CID
from dstore.net.protocol import PeerClient
from dstore.store import Store


def get(
    store: Store,
    dataset: str,
    output: Path,
    *,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    peers: PeerClient | None = None,
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
    with ThreadPoolExecutor(1, thread_name_prefix="dstore-write") as writer:
        return _write_nodes(reader, tmp, name, progress, writer)


def _write_nodes(
    reader: DatasetReader, tmp: Path, name: str, progress: Callable[[int], None] | None, writer: ThreadPoolExecutor
) -> int:
    root = reader.node(reader.root)
    if not root.is_dir:
        _write_file(reader, reader.root, root, tmp, name, progress, writer)
        return 1
    files = 0
    tmp.mkdir()
    for rel, cid, node in reader.walk_under(root):
        for part in rel.split("/"):
            try:
                unixfs.validate_name(part)
            except ValueError as e:
                raise FormatError(f"unsafe name in dataset: {rel!r}") from e
        target = tmp / rel
        if node.is_dir:
            target.mkdir()
        else:
            _write_file(reader, cid, node, target, rel, progress, writer)
            files += 1
    return files


def _write_file(
    reader: DatasetReader,
    cid: CID,
    node: unixfs.Node,
    target: Path,
    name: str,
    progress: Callable[[int], None] | None,
    writer: ThreadPoolExecutor,
) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    # One write in flight on the writer thread while the next run is decoded;
    # a run's view stays valid until the generator has moved on twice.
    pending: Future[None] | None = None
    try:
        for piece in reader.iter_file_cid(cid, node):
            if pending is not None:
                pending.result()
            pending = writer.submit(_write_all, fd, piece)
            if progress:
                progress(len(piece))
        if pending is not None:
            pending.result()
            pending = None
    except IntegrityError as e:
        # Name what is lost: the file, not only the pack.
        raise type(e)(f"{name}: {e}") from e
    finally:
        if pending is not None:
            pending.exception()  # never close the fd under a running write
        os.close(fd)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]
