"""Walk the input of ``dstore add`` into a tree of files and folders.

Symlinks are followed (the bytes they point to are stored, like ``cp -rL``);
a symlink loop, a special file (socket, FIFO, device) or a name that is not
valid UTF-8 is an error naming the path, and so are folders nested deeper than
MAX_TREE_DEPTH (docs/format.md). Entries are sorted by the UTF-8 bytes of their
names, the order UnixFS directories use. Iterative: depth costs no stack.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dstore.errors import InputError
from dstore.format.unixfs import MAX_TREE_DEPTH


@dataclass
class FileEntry:
    """A regular file to add."""

    name: str
    path: Path
    size: int


@dataclass
class DirEntry:
    """A folder to add; ``children`` sorted by name bytes."""

    name: str
    path: Path
    children: list[FileEntry | DirEntry] = field(default_factory=list)


def walk(path: Path) -> FileEntry | DirEntry:
    """The tree under ``path`` (a file or a folder)."""
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise InputError(f"no such file or folder: {path}") from e
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from e
    name = path.resolve().name or "root"
    if stat.S_ISDIR(st.st_mode):
        return _walk_dir(name, path, st)
    return _file_entry(name, path, st)


def _file_entry(name: str, path: Path, st: os.stat_result) -> FileEntry:
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"cannot add special file (not a regular file or folder): {path}")
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read {path}: permission denied")
    return FileEntry(name, path, st.st_size)


def _check_name(name: str, parent: Path) -> None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as e:
        shown = os.fsencode(name).decode("utf-8", "backslashreplace")
        raise InputError(f"file name is not valid UTF-8: {parent / shown}") from e


def _sorted_children(path: Path) -> list[str]:
    try:
        names = os.listdir(path)
    except OSError as e:
        raise InputError(f"cannot read folder {path}: {e.strerror}") from e
    for child in names:
        _check_name(child, path)
    return sorted(names, key=lambda n: n.encode("utf-8"))


def _walk_dir(name: str, path: Path, st: os.stat_result) -> DirEntry:
    """Iterative (no recursion limit); folders nest at most MAX_TREE_DEPTH deep."""
    root = DirEntry(name, path)
    # One frame per open folder: (its entry, its children still to visit, its (dev, inode)).
    stack = [(root, iter(_sorted_children(path)), (st.st_dev, st.st_ino))]
    ancestors = {stack[0][2]}
    while stack:
        node, pending, key = stack[-1]
        child = next(pending, None)
        if child is None:
            stack.pop()
            ancestors.discard(key)
            continue
        child_path = node.path / child
        try:
            cst = os.stat(child_path)
        except FileNotFoundError as e:
            raise InputError(f"broken symlink or vanished file: {child_path}") from e
        except OSError as e:
            raise InputError(f"cannot read {child_path}: {e.strerror}") from e
        if not stat.S_ISDIR(cst.st_mode):
            node.children.append(_file_entry(child, child_path, cst))
            continue
        child_key = (cst.st_dev, cst.st_ino)
        if child_key in ancestors:
            raise InputError(f"symlink loop: {child_path} leads back to a folder above it")
        if len(stack) >= MAX_TREE_DEPTH:
            raise InputError(f"folders nest deeper than {MAX_TREE_DEPTH} levels at {child_path}")
        sub = DirEntry(child, child_path)
        node.children.append(sub)
        stack.append((sub, iter(_sorted_children(child_path)), child_key))
        ancestors.add(child_key)
    return root


def _nodes(node: FileEntry | DirEntry) -> Iterator[FileEntry | DirEntry]:
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        if isinstance(n, DirEntry):
            stack.extend(n.children)


def total_size(node: FileEntry | DirEntry) -> int:
    """Bytes of all files in the tree (the manifest's ``size``)."""
    return sum(n.size for n in _nodes(node) if isinstance(n, FileEntry))


def count_entries(node: FileEntry | DirEntry) -> int:
    """Files and folders in the tree, the root included (the manifest's ``entries``)."""
    return sum(1 for _ in _nodes(node))
