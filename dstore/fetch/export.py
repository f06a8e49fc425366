"""``dstore export``: the dataset's blocks as a CAR v1 file.

Roots: the UnixFS root, so stock IPFS tools (``ipfs-car unpack``, ``ipfs dag
import``) read the tree. Blocks: the UnixFS DAG depth first (each block once,
raw leaves read and verified from packs), then the manifest. Written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from dstore.errors import UsageError
from dstore.fetch.reader import DatasetReader
from dstore.format.car import CarWriter
from dstore.format.cid import CID, RAW
from dstore.net.protocol import PeerClient
from dstore.store import Store


def export_car(store: Store, dataset: str, output: Path, *, peers: PeerClient | None = None) -> int:
    """Write the CAR; returns its size in bytes."""
    with DatasetReader(store, dataset, peers=peers) as reader:
        output = Path(output)
        if os.path.lexists(output):
            raise UsageError(f"{output} already exists; remove it or choose another -o")
        tmp = output.with_name(f".{output.name}.dstore-{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                car = CarWriter(f.write, [reader.root])
                for cid, block in _dag_blocks(reader, reader.root):
                    car.put(cid, block)
                car.put(reader.cid, reader.block(reader.cid))
            os.rename(tmp, output)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return car.bytes_written


def _dag_blocks(reader: DatasetReader, cid: CID) -> Iterator[tuple[CID, bytes]]:
    if cid.codec == RAW:
        yield cid, reader.read_chunk(cid.hash.digest)
        return
    block = reader.block(cid)
    yield cid, block
    for link in reader.node(cid).links:
        yield from _dag_blocks(reader, link.cid)
