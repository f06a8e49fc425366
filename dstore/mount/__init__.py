"""Reading datasets in place: ``dstore.open``, seekable file objects (later: fsspec, PyTorch, FUSE)."""
