"""dstore: a content-addressed, erasure-coded, decentralized store for ML datasets.

`dstore.open(cid)` opens a dataset for reading in place; the command line is
`dstore` (see ``dstore --help``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from dstore.mount.dataset import Dataset


def open(  # noqa: A001 - mirrors io.open / fsspec.open
    cid: str,
    *,
    peers: Any = None,
    token: str | None = None,
    cache: Any = None,
    home: Any = None,
    gateways: Any = None,
) -> Dataset:
    """Open dataset ``cid`` for reading in place (see :class:`dstore.mount.dataset.Dataset`).

    The dataset's metadata comes from the local store at ``home`` (default
    ``$DSTORE_HOME``), else from the storage peers: ``peers`` (URLs, as a list
    or ``"http://a:1,http://b:2"``, or a :class:`dstore.net.PeerClient`), else
    ``$DSTORE_PEERS``; ``token`` as the CLI takes it (``$DSTORE_TOKEN``,
    ``$DSTORE_TOKEN_FILE``; reads need none); a dataset no peer knows is read
    from trustless IPFS gateways: ``gateways`` (URLs, as for ``peers``), else
    ``$DSTORE_GATEWAYS`` (a plain UnixFS root CID reads too). File bytes read from peers are
    kept in the machine's chunk cache: ``cache`` is a folder, ``False`` for
    none, or None for ``$DSTORE_CACHE`` capped at ``$DSTORE_CACHE_SIZE``
    (docs/training.md).
    """
    from dstore.mount.dataset import open_dataset

    return open_dataset(cid, peers=peers, token=token, cache=cache, home=home, gateways=gateways)
