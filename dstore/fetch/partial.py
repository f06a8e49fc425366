"""Records of ``dstore get`` runs in progress, so interrupted ones are cleaned up or resumed.

Each get writes ``$DSTORE_HOME/gets/<key>.get`` (key: a hash of the absolute
output path). The first line, written atomically (temporary file, then
``link`` to the final name, which fails if a record already exists), names the
dataset, the part of it, the output, the temporary tree, the pid and the boot.
Every file completely written to the temporary tree then appends one line
``{"done": REL, "cid": CID, "size": N}`` (one ``write`` on an ``O_APPEND``
descriptor: a kill mid-line leaves a torn last line, which is ignored).

A get holds an exclusive ``flock`` on its record for as long as it runs; the
kernel drops it when the process dies, however it dies (SIGKILL, OOM). So a
record nobody holds is stale: :func:`clean_stale_gets` (``dstore gc`` and every
``get``) removes its temporary tree and the record. No pid liveness guessing,
no pid reuse problem; the pid is in the record for people.

Resume trusts a "done" line only if the file in the temporary tree is a
regular file of the recorded size and the machine has not rebooted since (the
record's boot ID): files are not fsynced, so after a power loss their bytes may
not have reached the disk even though the record line did.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from dstore.errors import StoreError, UsageError

GETS_DIR = "gets"
RECORD_SUFFIX = ".get"
# What a temporary tree beside an output is called; nothing else is ever removed from a record's say-so.
TMP_NAME = re.compile(r"^\..*\.dstore-\d+\.tmp$", re.DOTALL)


def gets_dir(home: Path) -> Path:
    return Path(home) / GETS_DIR


def record_path(home: Path, output: Path) -> Path:
    key = hashlib.sha256(os.fsencode(os.path.abspath(output))).hexdigest()[:32]
    return gets_dir(home) / f"{key}{RECORD_SUFFIX}"


def boot_id() -> str:
    """This boot's ID (Linux); empty where unknown, which never matches a recorded one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass
class Header:
    dataset: str
    path: str
    output: str
    tmp: str
    pid: int
    boot: str

    def same_get(self, other: Header) -> bool:
        """Same dataset part to the same output: the temporary tree can be resumed."""
        return (self.dataset, self.path, self.output) == (other.dataset, other.path, other.output)


def done_line(file: tuple[str, str, int]) -> str:
    """The record's line for a completed file: ``json.dumps({"done": rel, "cid": cid, "size": size})``'s
    bytes (ensure_ascii off), built without the generic encoder (a get of small files writes one per file)."""
    rel, cid, size = file
    return f'{{"done": {_json_string(rel)}, "cid": {_json_string(cid)}, "size": {int(size)}}}\n'


_json_string = json.encoder.encode_basestring  # what json.dumps(..., ensure_ascii=False) writes for a str


@dataclass
class PartialGet:
    """The record of the get this process runs; holds its lock until :meth:`close`."""

    path: Path
    fd: int
    header: Header
    # rel path -> (file CID text, size): files completely written by an earlier run of this get.
    done: dict[str, tuple[str, int]] = field(default_factory=dict)

    def mark_done(self, files: list[tuple[str, str, int]]) -> None:
        """Record files as completely written: (rel path, file CID text, size) each, one line each, one write."""
        lines = "".join(map(done_line, files)).encode()
        try:
            while lines:
                lines = lines[os.write(self.fd, lines) :]
        except OSError as e:
            raise StoreError(f"cannot write {self.path}: {e.strerror or e}") from e

    def trusted(self, rel: str, cid: str, size: int, target: Path) -> bool:
        """Whether ``target`` is a file an earlier run completed: recorded with this CID and size, and that size now."""
        if self.done.get(rel) != (cid, size):
            return False
        try:
            st = os.lstat(target)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == size

    def finish(self) -> None:
        """The get is over (done, or its temporary tree removed): drop the record."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the lock
            self.fd = -1


def begin(home: Path, header: Header) -> PartialGet:
    """Claim the record for ``header.output``: resume a stale record of the same get, else start afresh.

    Raises :class:`UsageError` when another running get writes the same output.
    Removes stale records of other outputs on the way (their processes are gone).
    """
    directory = gets_dir(home)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create {directory}: {e.strerror or e}") from e
    path = record_path(home, Path(header.output))
    for _ in range(100):  # only loops while other processes race for the same record
        fd = _lock_existing(path)
        if fd is None:
            claimed = _create(path, header)
            if claimed is not None:
                clean_stale_gets(home)
                return claimed
            continue
        if fd < 0:
            old = _read_header(path)
            who = f" (pid {old.pid})" if old else ""
            raise UsageError(f"another dstore get{who} is writing {header.output}; wait for it or stop it")
        old_header, done = _read(fd)
        if old_header is not None and old_header.same_get(header) and os.path.lexists(old_header.tmp):
            header.tmp = old_header.tmp
            if old_header.boot != header.boot or not header.boot:
                done = {}  # rebooted: unsynced file bytes may be lost
            _append(fd, path, {"pid": header.pid, "boot": header.boot})
            clean_stale_gets(home)
            return PartialGet(path, fd, header, done)
        _remove_stale(path, fd, old_header)
    raise StoreError(f"cannot claim {path}: other processes keep changing it")


def clean_stale_gets(home: Path) -> list[str]:
    """Remove the temporary trees and records of gets whose process is gone; returns the trees removed.

    Safe to call at any time from any process (``dstore gc``): a record whose
    get still runs is locked and skipped.
    """
    removed: list[str] = []
    directory = gets_dir(home)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return removed
    except OSError as e:
        raise StoreError(f"cannot read {directory}: {e.strerror or e}") from e
    for name in names:
        path = directory / name
        if name.endswith(RECORD_SUFFIX) and not name.startswith("."):
            fd = _lock_existing(path)
            if fd is None or fd < 0:
                continue
            header, _ = _read(fd)
            if header is not None and os.path.lexists(header.tmp):
                removed.append(header.tmp)
            _remove_stale(path, fd, header)
        elif name.startswith("."):
            # A record being created (see _create); stale once its creator died before linking it.
            fd = _lock_existing(path)
            if fd is not None and fd >= 0:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                os.close(fd)
    return removed


def remove_tree(tmp: str | Path) -> None:
    """Remove a temporary tree (a folder or a file), whatever is left of it."""
    tmp = Path(tmp)
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


# -- internals ----------------------------------------------------------------


def _lock_existing(path: Path) -> int | None:
    """fd of ``path`` locked by us; -1 if another process holds it; None if there is no such file."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot open {path}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return -1
        # The holder may have unlinked it between our open and our lock: then it is not the record any more.
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _create(path: Path, header: Header) -> PartialGet | None:
    """Write a new record atomically; None if another process created one first."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    line = json.dumps(header.__dict__, ensure_ascii=False) + "\n"
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # locked before it has its name: never seen unlocked
        os.write(fd, line.encode())
        try:
            os.link(tmp, path)
        except FileExistsError:
            os.close(fd)
            return None
        finally:
            os.unlink(tmp)
    except OSError as e:
        raise StoreError(f"cannot write {path}: {e.strerror or e}") from e
    return PartialGet(path, fd, header)


def _append(fd: int, path: Path, obj: dict[str, object]) -> None:
    try:
        os.write(fd, (json.dumps(obj, ensure_ascii=False) + "\n").encode())
    except OSError as e:
        raise StoreError(f"cannot write {path}: {e.strerror or e}") from e


def _read(fd: int) -> tuple[Header | None, dict[str, tuple[str, int]]]:
    """The header (None if unreadable) and the completed files of a record."""
    with os.fdopen(os.dup(fd), "rb") as f:
        f.seek(0)
        lines = f.read().split(b"\n")
    header: Header | None = None
    done: dict[str, tuple[str, int]] = {}
    for i, raw in enumerate(lines[:-1]):  # the last piece is "" or a torn line
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        if i == 0:
            header = _header(obj)
            if header is None:
                break
        elif header is not None and "done" in obj:
            rel, cid, size = obj.get("done"), obj.get("cid"), obj.get("size")
            if isinstance(rel, str) and isinstance(cid, str) and type(size) is int and size >= 0:
                done[rel] = (cid, size)
        elif header is not None and "pid" in obj:
            if type(obj["pid"]) is int:
                header.pid = obj["pid"]
            if isinstance(obj.get("boot"), str):
                header.boot = obj["boot"]
    return header, done


def _header(obj: dict[str, object]) -> Header | None:
    try:
        header = Header(**{k: obj[k] for k in Header.__dataclass_fields__})  # type: ignore[arg-type]
    except (KeyError, TypeError):
        return None
    if not all(isinstance(getattr(header, k), str) for k in ("dataset", "path", "output", "tmp", "boot")):
        return None
    if type(header.pid) is not int or not TMP_NAME.match(os.path.basename(header.tmp)):
        return None
    return header


def _read_header(path: Path) -> Header | None:
    try:
        with open(path, "rb") as f:
            first = f.readline()
        obj = json.loads(first)
    except (OSError, ValueError):
        return None
    return _header(obj) if isinstance(obj, dict) else None


def _remove_stale(path: Path, fd: int, header: Header | None) -> None:
    """Remove a stale record we hold locked, and its temporary tree."""
    try:
        if header is not None:
            remove_tree(header.tmp)
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StoreError(f"cannot remove stale get {path}: {e.strerror or e}") from e
    finally:
        os.close(fd)
