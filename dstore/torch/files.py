"""Which files of a dataset a pattern names: a file, a folder (everything under it) or a glob.

Globs match whole paths inside the dataset (``/``-separated, no leading ``/``):
``*`` and ``?`` and ``[...]`` stay inside one path segment, and a segment that
is exactly ``**`` matches any number of segments (none included). Only the
folders under the pattern's literal prefix are walked, metadata only.
"""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatchcase

from dstore.errors import NotFound
from dstore.format.cid import CID
from dstore.format.unixfs import Node
from dstore.mount.dataset import Dataset

__all__ = ["GLOB_CHARS", "match_files", "match_nodes", "matcher"]

GLOB_CHARS = frozenset("*?[")


def _split(path: str) -> list[str]:
    return [p for p in path.strip("/").split("/") if p not in ("", ".")]


def matcher(pattern: str) -> Callable[[str], bool]:
    """Whether a path matches the glob ``pattern``: segment by segment with fnmatch's rules, ``**`` for any run."""
    parts = _split(pattern)

    def match(path: str) -> bool:
        names = _split(path)
        # reach[j]: the pattern's segments so far can match the first j names. One pass per pattern segment.
        reach = [True] + [False] * len(names)
        for seg in parts:
            if seg == "**":
                for j in range(1, len(names) + 1):
                    reach[j] = reach[j] or reach[j - 1]
            else:
                reach = [False] + [reach[j] and fnmatchcase(names[j], seg) for j in range(len(names))]
        return reach[-1]

    return match


def match_files(ds: Dataset, pattern: str = "**") -> list[tuple[str, int]]:
    """``(path, size)`` of the files ``pattern`` names, sorted by path; FileNotFoundError naming it if none.

    A pattern with no glob character is a path: a file names itself, a folder every file under it.
    """
    return [(path, size) for path, size, _, _ in match_nodes(ds, pattern)]


def match_nodes(ds: Dataset, pattern: str = "**") -> list[tuple[str, int, CID, Node]]:
    """:func:`match_files` with each file's CID and UnixFS node (what its chunk list is read from)."""
    parts = _split(pattern)
    literal: list[str] = []
    for seg in parts:
        if GLOB_CHARS & set(seg):
            break
        literal.append(seg)
    base = "/".join(literal)
    matches = None if len(literal) == len(parts) else matcher(pattern)
    try:
        entry = ds.info(base)  # FileNotFoundError naming the path
    except FileNotFoundError:
        if matches is None:
            raise
        entry = None
    if entry is not None and entry.kind == "file" and matches is None:
        with ds.chunks.lock:
            cid, node = ds.reader.resolve(base)
        return [(base, entry.size or 0, cid, node)]
    found = []
    if entry is not None and entry.kind == "dir":
        ds.chunks.check_process()
        with ds.chunks.lock:  # the reader's walk: paths and sizes in one pass, bounded by the manifest
            nodes = [(rel, cid, node) for rel, cid, node in ds.reader.walk(base) if rel and not node.is_dir]
        for rel, cid, node in nodes:
            path = f"{base}/{rel}" if base else rel
            if matches is None or matches(path):
                found.append((path, node.filesize or 0, cid, node))
    if not found:
        raise NotFound(f"no file of dataset {ds.cid} matches {pattern!r}")
    return sorted(found, key=lambda f: f[0])
