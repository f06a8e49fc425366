"""Writing a command's output (``get -o``, ``export -o``): check it up front, name the temporary, never replace.

Errors about the ``-o`` path itself (exists, folder missing, name too long,
no permission) are :class:`UsageError` (exit 2, fix the command line); errors
while writing the data (disk full, I/O error) are :class:`OutputError` (exit 4).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path

from dstore.errors import OutputError, UsageError

AT_FDCWD = -100
RENAME_NOREPLACE = 1  # linux/fs.h
DEFAULT_NAME_MAX = 255


def check_output(output: Path) -> Path:
    """The absolute output path, once it is known not to exist and to be creatable."""
    output = Path(output)
    if os.path.lexists(output):
        raise UsageError(f"{output} already exists; remove it or choose another -o")
    absolute = output.absolute()
    parent = absolute.parent
    if not parent.is_dir():
        raise UsageError(f"folder {parent} does not exist")
    name_bytes = len(os.fsencode(absolute.name))
    if name_bytes > name_max(parent):
        raise UsageError(f"{output}: name too long ({name_bytes} bytes; the filesystem allows {name_max(parent)})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write in folder {parent}: permission denied")
    return absolute


def name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return DEFAULT_NAME_MAX


def temporary_name(output: Path, pid: int | None = None) -> Path:
    """``.OUT.dstore-PID.tmp`` beside ``output``, OUT shortened so the name stays within the filesystem's limit."""
    suffix = f".dstore-{os.getpid() if pid is None else pid}.tmp"
    room = name_max(output.parent) - 1 - len(suffix)
    stem = os.fsencode(output.name)[:room].decode("utf-8", "ignore") if room > 0 else ""
    return output.with_name(f".{stem}{suffix}")


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; :class:`FileExistsError` if ``dst`` exists (never replaces it).

    Uses ``renameat2(RENAME_NOREPLACE)`` (Linux ≥ 3.15, glibc ≥ 2.28). Where
    that is missing or the filesystem refuses the flag: a file is hard-linked
    then unlinked (``link`` never replaces either); a folder is checked, then
    renamed, so a ``dst`` created in between those two steps is replaced if it
    is an empty folder (the only race left, and only on such systems).
    """
    fn = _renameat2()
    if fn is not None:
        if fn(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    if not os.path.isdir(src) or os.path.islink(src):
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError:
            raise
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
        else:
            os.unlink(src)
            return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


@cache
def _renameat2() -> Callable[..., int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def publish(tmp: Path, output: Path, shown: Path, kept: str) -> None:
    """Move the finished temporary ``tmp`` to ``output``; exit 2 if ``output`` appeared meanwhile.

    ``kept`` says, in the error, what became of ``tmp`` then (the caller decides).
    """
    try:
        rename_noreplace(tmp, output)
    except FileExistsError:
        raise UsageError(f"{shown} appeared while this command ran and was left untouched; {kept}") from None
    except OSError as e:
        raise OutputError(f"cannot rename {tmp} to {shown}: {e.strerror or e}") from e


def write_error(what: Path | str, e: OSError) -> OutputError:
    return OutputError(f"cannot write {what}: {e.strerror or e}")
