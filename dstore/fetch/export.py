"""``dstore export``: the dataset's blocks as a CAR v1 file.

Roots: the UnixFS root, so stock IPFS tools (``ipfs-car unpack``, ``ipfs dag
import``) read the tree. Blocks: the UnixFS DAG depth first (each block once,
however often the DAG reuses it; raw leaves read and verified from packs),
then the manifest. Written under a temporary name and renamed when complete,
never over a file that appeared meanwhile (dstore/fetch/output.py).
"""

from __future__ import annotations

from pathlib import Path

from dstore.fetch.output import check_output, publish, temporary_name, write_error
from dstore.fetch.reader import DatasetReader
from dstore.format.car import CarWriter
from dstore.net.gateways import GatewayClient
from dstore.net.protocol import PeerClient
from dstore.store import Store


def export_car(
    store: Store,
    dataset: str,
    output: Path,
    *,
    peers: PeerClient | None = None,
    gateways: GatewayClient | None = None,
) -> int:
    """Write the CAR; returns its size in bytes."""
    shown = Path(output)
    with DatasetReader(store, dataset, peers=peers, gateways=gateways) as reader:
        output = check_output(shown)
        if reader.exact_totals:
            reader.check_totals()  # the CAR holds each block once; the manifest must still tell the truth
        tmp = temporary_name(output)
        try:
            try:
                f = open(tmp, "xb")
            except OSError as e:
                raise write_error(shown, e) from e
            with f:

                def write(data: bytes) -> None:
                    try:
                        f.write(data)
                    except OSError as e:
                        raise write_error(shown, e) from e

                car = CarWriter(write, [reader.root])
                for cid, node in reader.dag_blocks():
                    block = reader.read_chunk(cid.hash.digest) if node is None else reader.block(cid)
                    car.put(cid, block)
                if reader.cid != reader.root:  # a dataset's manifest (a plain UnixFS root is its own)
                    car.put(reader.cid, reader.block(reader.cid))
                try:
                    f.flush()
                except OSError as e:
                    raise write_error(shown, e) from e
            publish(tmp, output, shown, "nothing was written")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return car.bytes_written
