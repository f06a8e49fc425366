"""``dstore get``: write a dataset, or a folder or file of it, back as files, atomically and resumably.

Everything is written under a temporary name next to the output and renamed
to it only once every chunk has been verified, with a rename that never
replaces: if something appeared at the output meanwhile, it is left alone.

The get is recorded in the store (dstore/fetch/partial.py). When it fails or
is interrupted after completing some files, the temporary tree is kept: run
the same get (same dataset part, same ``-o``) again and those files are kept,
only the rest is fetched; any other get, or ``dstore gc``, removes it. When
nothing was completed, the temporary tree is removed at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dstore.errors import DstoreError, FormatError
from dstore.fetch import partial
from dstore.fetch.batch import BatchWriter
from dstore.fetch.output import check_output, publish, temporary_name, write_error
from dstore.fetch.reader import DatasetReader
from dstore.format import unixfs
from dstore.format.cid import CID, cid_to_text
from dstore.net.protocol import PeerClient
from dstore.store import Store

if TYPE_CHECKING:  # a local get does not import the gateway client (HTTP, TLS)
    from dstore.fetch.gateway import GatewayWriter
    from dstore.net.gateways import GatewayClient


def get(
    store: Store,
    target: str,
    output: Path,
    *,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    peers: PeerClient | None = None,
    gateways: GatewayClient | None = None,
) -> dict[str, object]:
    """Write ``target`` (``CID`` or ``CID/path``) to ``output`` (from peers where the store lacks it, else from
    gateways); a summary."""
    dataset, _, path = target.partition("/")
    path = "/".join(p for p in path.split("/") if p)
    shown = Path(output)
    with DatasetReader(store, dataset, peers=peers, gateways=gateways) as reader:
        cid, node = reader.resolve(path)
        output = check_output(shown)
        total = reader.manifest.size if not path else node.filesize
        if on_start and total is not None:
            on_start(total)
        header = partial.Header(
            dataset=cid_to_text(reader.cid),
            path=path,
            output=str(output),
            tmp=str(temporary_name(output)),
            pid=os.getpid(),
            boot=partial.boot_id(),
        )
        record = partial.begin(store.home, header)
        tree = _TreeWriter(reader, Path(record.header.tmp), shown, record, progress)
        try:
            tree.write(path)
            publish(tree.tmp, output, shown, f"the data is kept: remove {shown} and run the same get to finish")
        except BaseException as e:
            # A malformed dataset will not get better on a re-run: leave nothing behind.
            # Anything else (interrupted, peers down, OUT appeared) keeps finished files to resume from.
            if not tree.completed or isinstance(e, FormatError):
                partial.remove_tree(tree.tmp)
                record.finish()
            else:
                record.close()  # the record stays: the next run of this get resumes
            raise
        record.finish()
    return {
        "cid": header.dataset,
        "path": path,
        "output": str(shown),
        "files": tree.files,
        "bytes": tree.bytes,
        "resumed_files": tree.resumed_files,
        "resumed_bytes": tree.resumed_bytes,
    }


class _TreeWriter:
    """Writes one file or folder of a dataset at ``tmp``, keeping what an earlier run of the same get completed."""

    def __init__(
        self,
        reader: DatasetReader,
        tmp: Path,
        shown: Path,
        record: partial.PartialGet,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.reader = reader
        self.tmp = tmp
        self.shown = shown
        self.record = record
        self.progress = progress or (lambda n: None)
        self.files = self.bytes = self.resumed_files = self.resumed_bytes = 0
        self.completed = bool(record.done)  # some file of this tree is complete (in this run or an earlier one)
        # Nothing of an earlier run to keep or clear: files need no look before they are written.
        self.fresh = not record.done and not os.path.lexists(tmp)

    def write(self, path: str) -> None:
        # The reader's walk refuses unsafe names and stops at what the manifest declares; folders are
        # made as the walk reaches them, before the batch that holds their files is written.
        try:
            writer: type[BatchWriter | GatewayWriter] = BatchWriter
            if self.reader.gateway is not None:
                from dstore.fetch.gateway import GatewayWriter

                writer = GatewayWriter  # no packs behind gateways
            with writer(self.reader, self.tmp.parent, self.progress, on_done=self._written) as out:
                for rel, cid, node in self.reader.walk(path):
                    if node.is_dir:
                        self._dir(self.tmp / rel if rel else self.tmp, rel)
                    else:
                        self._file(rel, cid, node, out)
        except OSError as e:
            if isinstance(e, DstoreError):
                raise
            raise write_error(self._shown_path(e.filename), e) from e

    def _shown_path(self, filename: object) -> Path:
        """The output path a failed write names: ``OUT/…`` for a file under the temporary tree."""
        if isinstance(filename, (str, bytes)):
            path = Path(os.fsdecode(filename))
            if path == self.tmp or self.tmp in path.parents:
                return self.shown / path.relative_to(self.tmp)
        return self.shown

    def _dir(self, target: Path, rel: str) -> None:
        try:
            target.mkdir()
        except FileExistsError:
            self.fresh = False
            if target.is_dir() and not target.is_symlink():
                return  # made by an earlier run of this get
            partial.remove_tree(target)
            self._dir(target, rel)
        except OSError as e:
            raise write_error(self.shown / rel, e) from e

    def _file(self, rel: str, cid: CID, node: unixfs.Node, out: BatchWriter | GatewayWriter) -> None:
        cid_text = cid_to_text(cid)
        size = node.filesize or 0
        where = f"{self.tmp.name}/{rel}" if rel else self.tmp.name  # relative to the output's folder
        if not self.fresh:
            target = self.tmp.parent / where
            if self.record.trusted(rel, cid_text, size, target):
                self.resumed_files += 1
                self.resumed_bytes += size
                self.progress(size)
                self.files += 1
                self.bytes += size
                return
            if os.path.lexists(target):
                partial.remove_tree(target)  # an earlier run's unfinished file
        out.add(where, cid, node, name=rel or str(self.shown), done=(rel, cid_text, size))

    def _written(self, done: list[tuple[str, str, int]]) -> None:
        """Files whose every chunk is written and verified: recorded, so a re-run after an interruption keeps them."""
        self.record.mark_done(done)
        self.completed = True
        self.files += len(done)
        self.bytes += sum(size for _, _, size in done)
