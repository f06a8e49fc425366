"""Walk the input of ``dstore add`` as a stream of files and folders.

Symlinks are followed (the bytes they point to are stored, like ``cp -rL``);
a symlink loop, a special file (socket, FIFO, device) or a name that is not
valid UTF-8 is an error naming the path, and so are folders nested deeper than
MAX_TREE_DEPTH (docs/format.md). Entries are sorted by the UTF-8 bytes of their
names, the order UnixFS directories use. Iterative: depth costs no stack, and
the number of files costs no memory (a stream, not a tree).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from dstore.errors import InputError
from dstore.format.unixfs import MAX_TREE_DEPTH


@dataclass
class FileEntry:
    """A regular file to add."""

    name: str
    path: str  # a string, not a Path: pathlib interns every name it parses, which grows with the tree
    size: int


def _file_entry(name: str, path: str, st: os.stat_result) -> FileEntry:
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"cannot add special file (not a regular file or folder): {path}")
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read {path}: permission denied")
    return FileEntry(name, path, st.st_size)


def _check_name(name: str, parent: str) -> None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as e:
        shown = os.fsencode(name).decode("utf-8", "backslashreplace")
        raise InputError(f"file name is not valid UTF-8: {os.path.join(parent, shown)}") from e


def _sorted_children(path: str) -> list[str]:
    try:
        names = os.listdir(path)
    except OSError as e:
        raise InputError(f"cannot read folder {path}: {e.strerror}") from e
    for child in names:
        _check_name(child, path)
    return sorted(names, key=lambda n: n.encode("utf-8"))


class Enter(NamedTuple):
    """A folder begins: its entries follow, then its :class:`Leave`."""

    name: str
    path: str


class Leave(NamedTuple):
    """The folder opened last is complete."""


LEAVE = Leave()
Event = FileEntry | Enter | Leave


def walk(path: Path) -> Iterator[Event]:
    """The tree under ``path`` as a stream: a file, or Enter, its entries (depth first, by name bytes), Leave.

    Only the open folders' name lists are held, whatever the number of files.
    Errors (InputError) come when the stream reaches the faulty path.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise InputError(f"no such file or folder: {path}") from e
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from e
    name = path.resolve().name or "root"
    top = os.fspath(path)
    if not stat.S_ISDIR(st.st_mode):
        yield _file_entry(name, top, st)
        return
    yield Enter(name, top)
    # One frame per open folder: (its path, its children still to visit, its (dev, inode)).
    stack = [(top, iter(_sorted_children(top)), (st.st_dev, st.st_ino))]
    ancestors = {stack[0][2]}
    while stack:
        folder, pending, key = stack[-1]
        child = next(pending, None)
        if child is None:
            stack.pop()
            ancestors.discard(key)
            yield LEAVE
            continue
        child_path = os.path.join(folder, child)
        try:
            cst = os.stat(child_path)
        except FileNotFoundError as e:
            raise InputError(f"broken symlink or vanished file: {child_path}") from e
        except OSError as e:
            raise InputError(f"cannot read {child_path}: {e.strerror}") from e
        if not stat.S_ISDIR(cst.st_mode):
            yield _file_entry(child, child_path, cst)
            continue
        child_key = (cst.st_dev, cst.st_ino)
        if child_key in ancestors:
            raise InputError(f"symlink loop: {child_path} leads back to a folder above it")
        if len(stack) >= MAX_TREE_DEPTH:
            raise InputError(f"folders nest deeper than {MAX_TREE_DEPTH} levels at {child_path}")
        yield Enter(child, child_path)
        stack.append((child_path, iter(_sorted_children(child_path)), child_key))
        ancestors.add(child_key)


def survey(path: Path) -> tuple[int, int]:
    """(file bytes, files and folders) of the tree under ``path``: one walk that keeps nothing.

    ``dstore add`` surveys first, so that a faulty tree fails before anything is stored.
    """
    size = entries = 0
    for event in walk(path):
        if isinstance(event, FileEntry):
            size += event.size
            entries += 1
        elif isinstance(event, Enter):
            entries += 1
    return size, entries
