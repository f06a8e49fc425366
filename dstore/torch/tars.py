"""Samples of tar shards laid out as WebDataset lays them out.

A sample is a run of consecutive regular files of one tar whose names share
a key: the path up to the first ``.`` of the file name (``train/0001.jpg`` and
``train/0001.cls`` make the sample ``train/0001`` with ``jpg`` and ``cls``).
Extensions are lower-cased; names without one, and ``__name__`` metadata files
at the top, are skipped, as webdataset does. A shard is indexed once, reading
only its headers; a sample is then one byte span of its shard (first header to
last member's end), read with one request and parsed again from those bytes.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterable, Iterator
from typing import IO, cast

from dstore.errors import FormatError

__all__ = ["Span", "index_tar", "sample_from_span"]

_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")

#: (start, end) of a sample in its shard: from its first member's header to its last member's padded end.
Span = tuple[int, int]
#: (name, header offset, data offset, size) of a tar member.
Member = tuple[str, int, int, int]


def _members(tar: tarfile.TarFile) -> Iterator[Member]:
    """(name, header offset, data offset, size) of the tar's regular files that can be part of a sample."""
    for info in tar:
        if not info.isreg():
            continue
        if "/" not in info.name and info.name.startswith("__") and info.name.endswith("__"):
            continue
        yield info.name, info.offset, info.offset_data, info.size


def _groups(members: Iterable[Member], where: str) -> Iterator[tuple[str, list[Member]]]:
    """Runs of members sharing a key, as (key, [(extension, header offset, data offset, size), …])."""
    key = ""
    group: list[Member] = []
    exts: set[str] = set()
    for member in members:
        m = _KEY_EXT.match(member[0])
        if m is None:
            continue
        name_key, ext = m.group(1), m.group(2).lower()
        if name_key != key:
            if group:
                yield key, group
            key, group, exts = name_key, [], set()
        if ext in exts:
            raise FormatError(f"{where}: sample {key!r} has two {ext!r} files")
        exts.add(ext)
        group.append((ext, *member[1:]))
    if group:
        yield key, group


def _padded_end(data_offset: int, size: int) -> int:
    return data_offset + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _open(fileobj: io.BufferedIOBase, where: str) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=cast(IO[bytes], fileobj), mode="r:")
    except (tarfile.TarError, EOFError, ValueError) as e:
        raise FormatError(f"{where}: not a tar file ({e})") from None


def index_tar(fileobj: io.BufferedIOBase, where: str) -> list[Span]:
    """The span of every sample of the (seekable) tar ``fileobj``, in order; reads headers only."""
    spans = []
    with _open(fileobj, where) as tar:
        try:
            for _, group in _groups(_members(tar), where):
                _, start, _, _ = group[0]
                _, _, data_offset, size = group[-1]
                spans.append((start, _padded_end(data_offset, size)))
        except (tarfile.TarError, EOFError) as e:
            raise FormatError(f"{where}: damaged tar ({e})") from None
    return spans


def sample_from_span(data: bytes, key_prefix: str = "") -> dict[str, object]:
    """The sample ``{"__key__": key, ext: bytes, …}`` whose span bytes are ``data``."""
    where = key_prefix or "tar sample"
    with _open(io.BytesIO(data), where) as tar:
        try:
            groups = list(_groups(_members(tar), where))
        except (tarfile.TarError, EOFError) as e:
            raise FormatError(f"{where}: damaged tar ({e})") from None
    if len(groups) != 1:
        raise FormatError(f"{where}: a sample's bytes hold {len(groups)} samples")
    key, group = groups[0]
    sample: dict[str, object] = {"__key__": key}
    view = memoryview(data)
    for ext, _, data_offset, size in group:
        if data_offset + size > len(data):
            raise FormatError(f"{where}: member {key}.{ext} runs past its sample")
        sample[ext] = bytes(view[data_offset : data_offset + size])
    return sample
