"""Build and compare file trees in tests."""

from __future__ import annotations

import os
import random
from pathlib import Path


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Relative path -> file bytes (None for folders) of everything under ``root``."""
    out: dict[str, bytes | None] = {}
    if root.is_file():
        return {"": root.read_bytes()}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d))] = None
        for f in filenames:
            out[os.path.normpath(os.path.join(rel, f))] = Path(dirpath, f).read_bytes()
    return out


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def csv_like(n: int, seed: int = 0) -> bytes:
    """Compressible, CSV-shaped text of exactly ``n`` bytes."""
    rng = random.Random(seed)
    rows = []
    total = 0
    i = 0
    while total < n:
        row = f"{i},{rng.randint(0, 10**6)},{rng.choice(['cat', 'dog', 'bird', 'fish'])},{rng.random():.6f}\n"
        rows.append(row)
        total += len(row)
        i += 1
    return "".join(rows).encode()[:n]


# --------------------------------------------------------------------------- hostile datasets


def seed_chunks(home: Path, dstore: object, tmp: Path, pieces: list[bytes]) -> list[bytes]:
    """Store each piece (under the chunker's min: one chunk each) with the real ``dstore add``.

    Returns the chunk CIDs (binary). Forged datasets in the same store point at them.
    """
    from dstore.format.cid import RAW, make_cid

    src = tmp / "seed"
    src.mkdir()
    for i, piece in enumerate(pieces):
        assert len(piece) < 16384
        (src / f"{i}.bin").write_bytes(piece)
    dstore("add", src, "-q")  # type: ignore[operator]
    return [make_cid(RAW, piece).to_bytes() for piece in pieces]


def forge_dataset(
    home: Path,
    root: object,
    blocks: list[tuple[object, bytes]],
    *,
    size: int,
    entries: int,
    chunk_sizes: dict[bytes, int] | None = None,
) -> str:
    """Commit a hand-made dataset to the store at ``home`` through the index API; returns its ID.

    ``blocks`` are the UnixFS nodes (CID, block). The locator places every
    chunk this store holds (as ``dstore add`` stored them), with the sizes in
    ``chunk_sizes`` (chunk CID -> size) overriding the true ones, so the
    manifest, nodes and locator can each lie on their own.
    """
    from dstore.format.cid import CID
    from dstore.format.locator import Locator, build_locator
    from dstore.format.manifest import Manifest
    from dstore.store import Store

    assert isinstance(root, CID)
    with Store(home) as store:
        chunks: dict[bytes, tuple[bytes, int, int, int, int, int]] = {}
        packs: list = []
        pack_index: dict[bytes, int] = {}
        for dataset, locator_root in store.index.datasets_list():
            loc = Locator(lambda c: store.get_block(c.to_bytes()), CID.from_bytes(locator_root))
            for e in loc.chunks():
                pack_id, record = loc.pack(e.pack_index)
                key = pack_id.to_bytes()
                if key not in pack_index:
                    pack_index[key] = len(packs)
                    packs.append((pack_id, record))
                chunks[e.digest] = (e.digest, pack_index[key], e.offset, e.stored_len, e.size, e.codec)
        for cid, size in (chunk_sizes or {}).items():
            d, p, off, stored, _, codec = chunks[cid[4:]]
            chunks[cid[4:]] = (d, p, off, stored, size, codec)
        manifest = Manifest(root=root, size=size, entries=entries)
        ds = manifest.cid
        loc_root, loc_blocks = build_locator(ds, list(chunks.values()), packs)
        all_blocks = [(c.to_bytes(), b) for c, b in blocks]  # type: ignore[attr-defined]
        all_blocks += [(c.to_bytes(), b) for c, b in loc_blocks]
        all_blocks.append((ds.to_bytes(), manifest.encode()))
        store.index.commit_dataset(all_blocks, ds.to_bytes(), loc_root.to_bytes())
    return str(ds)


def pb_node(links: list[tuple[bytes, str, int]], data: bytes) -> tuple[object, bytes]:
    """A dag-pb node (BLAKE3 CID, block) from (cid bytes, name, tsize) links and a UnixFS Data message."""
    from dstore.format.cid import DAG_PB, make_cid
    from dstore.format.dagpb import PBLink, encode_node

    block = encode_node([PBLink(c, n, t) for c, n, t in links], data)
    return make_cid(DAG_PB, block), block


def file_node(children: list[tuple[bytes, int]]) -> tuple[object, bytes]:
    """A UnixFS File node over (child CID bytes, child bytes); reuse of one child is allowed."""
    from dstore.format.unixfs import T_FILE, UnixFSData, encode_data

    sizes = tuple(s for _, s in children)
    data = encode_data(UnixFSData(type=T_FILE, filesize=sum(sizes), blocksizes=sizes))
    return pb_node([(c, "", s) for c, s in children], data)


def dir_node(entries: list[tuple[str, bytes]]) -> tuple[object, bytes]:
    """A plain UnixFS Directory node, links in the given order, names unchecked (for hostile tests)."""
    from dstore.format.unixfs import T_DIRECTORY, UnixFSData, encode_data

    return pb_node([(c, n, 1) for n, c in entries], encode_data(UnixFSData(type=T_DIRECTORY)))
