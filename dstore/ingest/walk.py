"""Walk the input of ``dstore add`` into a tree of files and folders.

Symlinks are followed (the bytes they point to are stored, like ``cp -rL``);
a symlink loop, a special file (socket, FIFO, device) or a name that is not
valid UTF-8 is an error naming the path. Entries are sorted by the UTF-8 bytes
of their names, the order UnixFS directories use.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from dstore.errors import InputError


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
        return _walk_dir(name, path, set())
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


def _walk_dir(name: str, path: Path, ancestors: set[tuple[int, int]]) -> DirEntry:
    try:
        st = os.stat(path)
        names = os.listdir(path)
    except OSError as e:
        raise InputError(f"cannot read folder {path}: {e.strerror}") from e
    key = (st.st_dev, st.st_ino)
    if key in ancestors:
        raise InputError(f"symlink loop: {path} leads back to a folder above it")
    ancestors = ancestors | {key}
    node = DirEntry(name, path)
    for child in names:
        _check_name(child, path)
    for child in sorted(names, key=lambda n: n.encode("utf-8")):
        child_path = path / child
        try:
            cst = os.stat(child_path)
        except FileNotFoundError as e:
            raise InputError(f"broken symlink or vanished file: {child_path}") from e
        except OSError as e:
            raise InputError(f"cannot read {child_path}: {e.strerror}") from e
        if stat.S_ISDIR(cst.st_mode):
            node.children.append(_walk_dir(child, child_path, ancestors))
        else:
            node.children.append(_file_entry(child, child_path, cst))
    return node


def total_size(node: FileEntry | DirEntry) -> int:
    if isinstance(node, FileEntry):
        return node.size
    return sum(total_size(c) for c in node.children)
