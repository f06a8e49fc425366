"""Deterministic benchmark inputs, generated once and cached.

Every file is a pure function of (kind, seed, size): the same environment
variables give byte-identical files on any machine. A small JSON sidecar
(`<file>.meta.json`) records how a file was made; a file whose sidecar does
not match the request is regenerated.

- incompressible: BLAKE3 extendable output keyed by the seed (prefix-stable,
  ~1.3 GB/s single-threaded), so nothing compresses and nothing repeats.
- CSV: realistic event-log rows (sequential ids, ISO timestamps, skewed
  categorical strings, floats with fixed decimals), cut on a row boundary at
  or just below the requested size.
- CSV v2 variants (derived from v1, not cached: they are cheap byte edits):
  scattered row edits, appended rows, bytes inserted at the start.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import blake3
import numpy as np

GENERATOR_VERSION = 1
BLOCK = 64 << 20  # generation block for incompressible data
CSV_BLOCK_ROWS = 100_000

CSV_HEADER = (
    "event_id,timestamp,user_id,session_id,country,device,event_type,"
    "category,price,quantity,rating,latency_ms,lat,lon\n"
)
_COUNTRIES = [
    "US",
    "DE",
    "GB",
    "FR",
    "IN",
    "BR",
    "JP",
    "CA",
    "ES",
    "IT",
    "NL",
    "PL",
    "SE",
    "MX",
    "KR",
    "AU",
    "TR",
    "ID",
    "NG",
    "ZA",
]
_DEVICES = ["android", "ios", "web-desktop", "web-mobile", "tablet", "smart-tv"]
_EVENTS = ["page_view", "click", "search", "add_to_cart", "remove_from_cart", "checkout_start", "purchase", "review"]
_CATEGORIES = [
    "electronics/phones",
    "electronics/laptops",
    "home/kitchen",
    "home/furniture",
    "books/fiction",
    "books/non-fiction",
    "clothing/men",
    "clothing/women",
    "toys/games",
    "sports/outdoor",
    "beauty/skincare",
    "grocery/snacks",
    "garden/tools",
    "automotive/parts",
    "music/instruments",
    "office/supplies",
]
_ROW_FMT = "%d,%sZ,%d,%08x,%s,%s,%s,%s,%.2f,%d,%.1f,%d,%.4f,%.4f\n"
_T0_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def _skewed(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Indices in [0, k) with a Zipf-like skew (real categorical columns are skewed)."""
    w = 1.0 / np.arange(1, k + 1) ** 1.1
    return rng.choice(k, size=n, p=w / w.sum())


def csv_rows(first_id: int, n: int, rng: np.random.Generator) -> bytes:
    """n CSV rows with ids first_id.. (timestamps are a function of the id plus jitter)."""
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    ts_ms = _T0_MS + ids * 350 + rng.integers(0, 350, n)
    ts = np.datetime_as_string(ts_ms.astype("datetime64[ms]"), unit="ms")
    user = (rng.pareto(1.2, n) * 1000).astype(np.int64) % 2_000_000 + 1
    session = rng.integers(0, 1 << 32, n, dtype=np.int64)
    country = np.array(_COUNTRIES, dtype=object)[_skewed(rng, n, len(_COUNTRIES))]
    device = np.array(_DEVICES, dtype=object)[_skewed(rng, n, len(_DEVICES))]
    event = np.array(_EVENTS, dtype=object)[_skewed(rng, n, len(_EVENTS))]
    cat = np.array(_CATEGORIES, dtype=object)[_skewed(rng, n, len(_CATEGORIES))]
    price = np.round(rng.lognormal(3.0, 1.0, n), 2)
    qty = rng.geometric(0.6, n)
    rating = np.round(np.clip(rng.normal(4.1, 0.8, n), 1.0, 5.0), 1)
    latency = rng.gamma(2.0, 40.0, n).astype(np.int64)
    lat = rng.uniform(-60.0, 70.0, n)
    lon = rng.uniform(-180.0, 180.0, n)
    cols = zip(
        ids.tolist(),
        ts.tolist(),
        user.tolist(),
        session.tolist(),
        country.tolist(),
        device.tolist(),
        event.tolist(),
        cat.tolist(),
        price.tolist(),
        qty.tolist(),
        rating.tolist(),
        latency.tolist(),
        lat.tolist(),
        lon.tolist(),
    )
    return "".join([_ROW_FMT % row for row in cols]).encode()


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def _cached(path: Path, meta: dict) -> bool:
    mp = _meta_path(path)
    if not (path.exists() and mp.exists()):
        return False
    try:
        old = json.loads(mp.read_text())
    except ValueError:
        return False
    return all(old.get(k) == v for k, v in meta.items()) and path.stat().st_size == old.get("bytes")


def _commit(tmp: Path, path: Path, meta: dict) -> dict:
    os.replace(tmp, path)
    meta = dict(meta, bytes=path.stat().st_size)
    _meta_path(path).write_text(json.dumps(meta, indent=1))
    return meta


def incompressible(path: Path, size: int, seed: int, kind: str = "random") -> dict:
    meta = {"generator": GENERATOR_VERSION, "kind": kind, "seed": seed, "size": size}
    if _cached(path, meta):
        return json.loads(_meta_path(path).read_text())
    key = blake3.blake3(f"dstore-bench/{kind}/{seed}".encode()).digest()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.writelines(
            blake3.blake3(key).digest(length=min(BLOCK, size - off), seek=off) for off in range(0, size, BLOCK)
        )
    return _commit(tmp, path, meta)


def csv_v1(path: Path, size: int, seed: int) -> dict:
    meta = {"generator": GENERATOR_VERSION, "kind": "csv", "seed": seed, "size": size}
    if _cached(path, meta):
        return json.loads(_meta_path(path).read_text())
    tmp = path.with_name(path.name + ".tmp")
    written = rows = 0
    with open(tmp, "wb") as f:
        head = CSV_HEADER.encode()
        f.write(head)
        written = len(head)
        block = 0
        while written < size:
            rng = np.random.default_rng([seed, 0xC5, block])
            data = csv_rows(block * CSV_BLOCK_ROWS, CSV_BLOCK_ROWS, rng)
            block += 1
            if written + len(data) > size:  # cut on the last whole row that fits
                data = data[: data.rfind(b"\n", 0, size - written) + 1]
                if not data:
                    break
                rows += data.count(b"\n")
                f.write(data)
                written += len(data)
                break
            rows += CSV_BLOCK_ROWS
            f.write(data)
            written += len(data)
    return _commit(tmp, path, dict(meta, rows=rows))


# ---- v2 variants -------------------------------------------------------------


def _edit_rows(v1: bytes, n_edits: int, seed: int) -> tuple[bytes, int]:
    """Replace n_edits rows spread evenly over the file by freshly generated rows
    (same event_id, other values). Returns (v2, bytes changed-ish)."""
    rng = np.random.default_rng([seed, 0xED])
    pieces, pos = [], 0
    header_end = v1.index(b"\n") + 1
    span = (len(v1) - header_end) / n_edits
    for i in range(n_edits):
        target = header_end + int(span * i + rng.uniform(0, span * 0.9))
        start = v1.rfind(b"\n", 0, target) + 1
        start = max(start, header_end, pos)
        end = v1.find(b"\n", start) + 1
        if end <= 0:
            break
        row_id = int(v1[start : v1.index(b",", start)])
        new = csv_rows(row_id, 1, np.random.default_rng([seed, 0xED, i]))
        pieces += [v1[pos:start], new]
        pos = end
    pieces.append(v1[pos:])
    return b"".join(pieces), n_edits


def csv_v2(kind: str, v1_path: Path, out: Path, seed: int, v1_meta: dict) -> dict:
    """Write a v2 of the CSV next to v1: kind is 'edit', 'append' or 'insert'."""
    v1 = v1_path.read_bytes()
    if kind == "edit":
        data, n = _edit_rows(v1, 100, seed)
        desc = f"{n} rows spread evenly over the file rewritten with new values"
    elif kind == "append":
        extra = bytearray()
        first = v1_meta["rows"]
        rng = np.random.default_rng([seed, 0xAA])
        want = len(v1) // 100
        while len(extra) < want:
            extra += csv_rows(first, 10_000, rng)
            first += 10_000
        extra = extra[: extra.rfind(b"\n", 0, want) + 1]
        data = v1 + bytes(extra)
        desc = f"{len(extra)} bytes of new rows appended (+1% of v1)"
    elif kind == "insert":
        line = b"# dataset v2: 100 bytes inserted before the header"
        ins = line + b"." * (99 - len(line)) + b"\n"
        assert len(ins) == 100
        data = ins + v1
        desc = "100 bytes (a comment line) inserted at the start"
    else:
        raise ValueError(kind)
    del v1
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return {"kind": kind, "bytes": len(data), "description": desc}


# ---- small-file trees --------------------------------------------------------

TREE_VERSION = 1
# name: (files, folders, min bytes, max bytes, sampler(rng) -> size, labels.csv, file suffix)
TREES = {
    # like an image-classification set: log-normal around 48 KiB (sigma 0.5), clipped to 20-200 KB
    "images": (20_000, 100, 20_000, 200_000, "lognormal(ln 48 KiB, 0.5)", True, ".jpg"),
    "tiny": (100_000, 100, 200, 2_000, "uniform", False, ".bin"),
}


def _tree_sizes(name: str, seed: int) -> list[int]:
    files, _, lo, hi, law, _, _ = TREES[name]
    rng = np.random.default_rng([seed, 0x5F, files])
    if law == "uniform":
        return rng.integers(lo, hi, files, endpoint=True).tolist()
    return np.clip(rng.lognormal(np.log(48 << 10), 0.5, files), lo, hi).astype(np.int64).tolist()


def small_tree(path: Path, name: str, seed: int) -> dict:
    """The small-file tree ``name`` (TREES) at ``path``, made once and cached.

    Every file is incompressible and distinct (BLAKE3 extendable output of one
    key, each file a different stretch of it), like JPEGs: nothing dedups or
    compresses. Files go to folders ``class_000`` .. round-robin; the
    ``images`` tree also has ``labels.csv`` (path,label). The sidecar
    ``<path>.meta.json`` is written last, so a tree cut short is remade.
    """
    files, folders, lo, hi, law, labels, suffix = TREES[name]
    meta = {"generator": TREE_VERSION, "kind": f"tree-{name}", "seed": seed, "files": files, "folders": folders}
    mp = _meta_path(path)
    if path.is_dir() and mp.exists():
        try:
            old = json.loads(mp.read_text())
        except ValueError:
            old = {}
        if all(old.get(k) == v for k, v in meta.items()):
            return old
    mp.unlink(missing_ok=True)
    if path.exists():
        import shutil

        shutil.rmtree(path)
    sizes = _tree_sizes(name, seed)
    xof = blake3.blake3(blake3.blake3(f"dstore-bench/tree-{name}/{seed}".encode()).digest())
    names = [f"class_{i % folders:03d}/{i:06d}{suffix}" for i in range(files)]
    for d in range(min(folders, files)):
        (path / f"class_{d:03d}").mkdir(parents=True, exist_ok=True)
    off = 0
    for rel, size in zip(names, sizes, strict=True):
        with open(path / rel, "wb") as f:
            f.write(xof.digest(length=size, seek=off))
        off += size
    total = off
    if labels:
        text = "path,label\n" + "".join(f"{rel},{i % folders}\n" for i, rel in enumerate(names))
        (path / "labels.csv").write_text(text)
        total += len(text)
    meta = dict(meta, bytes=total, file_bytes=(lo, hi), size_law=law, labels_csv=labels)
    mp.write_text(json.dumps(meta, indent=1))
    return meta
