"""dstore: a content-addressed, erasure-coded, decentralized store for ML datasets.

`dstore.open(cid)` opens a dataset for reading in place; the command line is
`dstore` (see ``dstore --help``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from dstore.mount.dataset import Dataset


def open(cid: str, *, home: Any = None) -> Dataset:  # noqa: A001 - mirrors io.open / fsspec.open
    """Open dataset ``cid`` from the local store for reading in place (see :class:`dstore.mount.dataset.Dataset`)."""
    from dstore.mount.dataset import open_dataset

    return open_dataset(cid, home=home)
