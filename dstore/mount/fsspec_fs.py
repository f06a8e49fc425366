"""``dstore://`` for fsspec: datasets as a read-only filesystem (docs/training.md, "fsspec").

Paths are ``dstore://<dataset ID>/<path in the dataset>``; the dataset ID is
the first component, like a bucket. Registered by the ``fsspec.specs``
entry point, so ``fsspec.open("dstore://…")``, ``pandas.read_csv`` and
``pyarrow`` through fsspec find it with no code. Storage options are those
of :func:`dstore.open`: ``peers``, ``token``, ``cache``, ``home`` (else the
environment, as for the CLI). Errors are Python's own: FileNotFoundError,
IsADirectoryError, NotADirectoryError, and PermissionError for any write.
"""

from __future__ import annotations

import threading
from typing import Any

from fsspec.spec import AbstractFileSystem

from dstore.errors import BadCID, NotFound
from dstore.fetch.reader import Entry
from dstore.format.cid import parse_cid
from dstore.mount.dataset import Dataset, open_dataset
from dstore.mount.fileobj import DatasetFile

__all__ = ["DstoreFileSystem"]

PROTOCOL = "dstore"


def _read_only(*args: Any, **kwargs: Any) -> Any:
    raise PermissionError("dstore:// is read-only: datasets never change (add a new one with `dstore add`)")


class DstoreFileSystem(AbstractFileSystem):
    """Datasets of dstore, read in place: ``ls``, ``info``, ``glob``, ``find``, ``cat``, ``open`` (rb)."""

    protocol = PROTOCOL
    root_marker = ""

    def __init__(
        self, peers: Any = None, token: str | None = None, cache: Any = None, home: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(peers=peers, token=token, cache=cache, home=home, **kwargs)
        self._options = {"peers": peers, "token": token, "cache": cache, "home": home}
        self._datasets: dict[str, Dataset] = {}
        self._lock = threading.Lock()

    # -- paths ------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith(f"{PROTOCOL}://"):
            path = path[len(PROTOCOL) + 3 :]
        elif path.startswith(f"{PROTOCOL}:"):
            path = path[len(PROTOCOL) + 1 :]
        return "/".join(p for p in path.split("/") if p not in ("", "."))

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        return {}

    def _split(self, path: str) -> tuple[Dataset, str, str]:
        """(open dataset, its ID as written, path inside it) for a stripped or full path."""
        path = self._strip_protocol(path)
        cid, _, rest = path.partition("/")
        if not cid:
            raise FileNotFoundError("dstore:// paths start with a dataset ID: dstore://<dataset ID>/<path>")
        return self._dataset(cid), cid, rest

    def _dataset(self, cid: str) -> Dataset:
        try:
            key = parse_cid(cid).encode("base32")
        except BadCID as e:
            raise FileNotFoundError(f"{cid}: not a dataset ID ({e})") from None
        with self._lock:
            ds = self._datasets.get(key)
            if ds is None:
                try:
                    ds = open_dataset(key, **self._options)
                except BadCID as e:
                    raise FileNotFoundError(f"{cid}: {e}") from None
                self._datasets[key] = ds
            return ds

    # -- reading ----------------------------------------------------------------

    def _info(self, cid: str, rest: str, entry: Entry) -> dict[str, Any]:
        name = f"{cid}/{rest}" if rest else cid
        return {
            "name": name,
            "size": entry.size or 0,
            "type": "directory" if entry.kind == "dir" else "file",
            "cid": entry.cid_text,
        }

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        ds, cid, rest = self._split(path)
        return self._info(cid, rest, ds.info(rest))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        ds, cid, rest = self._split(path)
        me = ds.info(rest)
        if me.kind != "dir":
            out = [self._info(cid, rest, me)]
        else:
            prefix = f"{cid}/{rest}" if rest else cid
            out = [self._info(prefix, e.name, e) for e in ds.ls(rest)]
        return out if detail else [o["name"] for o in out]

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> DatasetFile:
        if mode != "rb":
            _read_only()
        ds, _, rest = self._split(path)
        return ds.open(rest)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        ds, _, rest = self._split(path)
        if ds.info(rest).kind == "dir":
            raise IsADirectoryError(path)
        return ds.read_bytes(rest, start or 0, end)

    def ukey(self, path: str) -> str:
        return str(self.info(path)["cid"])

    def isdir(self, path: str) -> bool:
        try:
            return bool(self.info(path)["type"] == "directory")
        except (FileNotFoundError, NotADirectoryError, NotFound):
            return False

    def close(self) -> None:
        """Close every dataset opened (also done when the process exits)."""
        with self._lock:
            for ds in self._datasets.values():
                ds.close()
            self._datasets.clear()

    # -- writing: never -----------------------------------------------------------

    mkdir = makedirs = rmdir = _rm = rm = rm_file = touch = _read_only
    pipe_file = put_file = cp_file = mv = copy = put = pipe = _read_only
