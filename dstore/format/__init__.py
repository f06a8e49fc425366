"""dstore's byte formats (docs/format.md): pure functions, bytes in, bytes out.

Modules: :mod:`cid` (CIDs), :mod:`dagpb` and :mod:`unixfs` (the IPFS file
tree), :mod:`cbor` (DAG-CBOR), :mod:`manifest` (the dataset ID),
:mod:`pack` (pack records), :mod:`locator` (where chunks live) and
:mod:`car` (CAR v1 export/import). Nothing here touches disks or sockets.
"""
