"""The gateway's pure parts: Range and entity-bytes against a model, type guessing, inline CIDs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dstore.errors import BadCID
from dstore.format import unixfs
from dstore.format.cid import RAW, make_cid
from dstore.peer import gateway_files as files
from dstore.peer.gateway import GatewayError, Target, Want, _entity_bytes, _resolve_range, gateway_cid
from dstore.peer.gateway_car import Resolved


def _model_range(first: int | None, last: int | None, size: int) -> tuple[int, int] | None | str:
    """RFC 9110 for one range: what a byte slice of the file should be."""
    if first is None:
        if last is None:
            return None
        if last == 0 or size == 0:
            return "416"
        return max(0, size - last), size - 1
    if last is not None and last < first:
        return None
    if first >= size:
        return "416"
    return first, size - 1 if last is None else min(last, size - 1)


@given(
    st.one_of(st.none(), st.integers(0, 5000)),
    st.one_of(st.none(), st.integers(0, 5000)),
    st.integers(0, 3000),
)
def test_parse_range_matches_the_model(first: int | None, last: int | None, size: int) -> None:
    header = f"bytes={'' if first is None else first}-{'' if last is None else last}"
    expected = _model_range(first, last, size)
    if expected == "416":
        with pytest.raises(files.Unsatisfiable):
            files.parse_range(header, size)
        return
    got = files.parse_range(header, size)
    assert got == expected
    if got is not None:
        assert 0 <= got[0] <= got[1] < size


@given(st.integers(0, 200), st.integers(0, 200), st.integers(0, 200), st.integers(1, 150))
def test_of_several_ranges_the_first_is_answered(a: int, b: int, c: int, size: int) -> None:
    first = f"bytes={a}-{b}"
    try:
        expected = files.parse_range(first, size)
    except files.Unsatisfiable:
        with pytest.raises(files.Unsatisfiable):
            files.parse_range(f"{first},{c}-", size)
        return
    assert files.parse_range(f"{first},{c}-,-{c}", size) == expected


@pytest.mark.parametrize("header", [None, "items=0-3", "bytes=x-y", "bytes 0-3", "bytes=x-y,0-3"])
def test_whole_file_for_what_is_not_one_byte_range(header: str | None) -> None:
    assert files.parse_range(header, 100) is None


def _file_target(size: int) -> Target:
    node = unixfs.Node(kind="file", filesize=size)
    return Target(None, Resolved(make_cid(RAW, b"x"), node))


@given(st.integers(-5000, 5000), st.one_of(st.none(), st.integers(-5000, 5000)), st.integers(1, 3000))
def test_entity_bytes_resolve_inside_the_file(start: int, end: int | None, size: int) -> None:
    text = f"{start}:{'*' if end is None else end}"
    try:
        parsed = _entity_bytes(text)
    except GatewayError as e:
        assert e.status == 400 and 0 <= start and end is not None and 0 <= end < start
        return
    rng = _resolve_range(Want("car", "entity", parsed), _file_target(size))
    first = start if start >= 0 else max(0, size + start)
    last = size - 1 if end is None else min(end if end >= 0 else size + end, size - 1)
    if first > last:
        assert rng is None or rng == (size, size - 1)  # no byte of the file: only its root block
    else:
        assert rng == (first, last)


@pytest.mark.parametrize("text", ["", "5", "a:b", "1:", ":3", "1.5:2"])
def test_bad_entity_bytes_are_400(text: str) -> None:
    with pytest.raises(GatewayError) as e:
        _entity_bytes(text)
    assert e.value.status == 400


@pytest.mark.parametrize(
    ("name", "head", "mime"),
    [
        ("x.csv", b"", "text/csv; charset=utf-8"),
        ("x.parquet", b"", "application/vnd.apache.parquet"),
        ("x.csv.gz", b"", "application/gzip"),
        ("noext", b"\x89PNG\r\n\x1a\n....", "image/png"),
        ("noext", b"hello world\n", "text/plain; charset=utf-8"),
        ("noext", b"\x00\x01\x02", "application/octet-stream"),
        ("noext", "日本語のテキスト".encode()[:-1], "text/plain; charset=utf-8"),  # a character cut at the end
    ],
)
def test_content_type(name: str, head: bytes, mime: str) -> None:
    assert (files.type_by_name(name) or files.sniff(head)) == mime


def test_inline_cids() -> None:
    probe = gateway_cid("bafkqaaa")
    assert probe.hash.code == 0 and bytes(probe.hash.digest) == b""
    with pytest.raises(BadCID):
        gateway_cid("bafkqaaaz")
    with pytest.raises(BadCID):
        gateway_cid("nope")
