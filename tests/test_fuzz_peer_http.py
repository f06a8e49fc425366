"""Fuzzing the peer's own HTTP parsing, against a real peer process: Range headers and pointer bodies.

A Range header is answered 200, 206 with exactly the bytes RFC 9110 selects, or 416 with a JSON
error; a pointer body is stored (200) or refused 400 ``bad_pointer`` as JSON; never a 500.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from peerutil import PeerProcess, running_peers

from dstore.format.cid import DAG_CBOR, RAW, cid_to_text, make_cid
from dstore.peer.app import ApiError, _validate_pointer

SHARD = bytes(range(256)) * 4 + b"tail"
SHARD_CID = cid_to_text(make_cid(RAW, SHARD))
DATASET = cid_to_text(make_cid(DAG_CBOR, b"dataset"))
LOCATOR = cid_to_text(make_cid(DAG_CBOR, b"locator"))
ONE_PEER = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    with running_peers(tmp_path_factory.mktemp("fuzzpeer"), 1, token="t") as peers:
        r = requests.put(f"{peers[0].url}/shards/{SHARD_CID}", data=SHARD, headers=peers[0].auth, timeout=10)
        assert r.status_code == 201, r.text
        yield peers[0]


def _expected(header: str, size: int) -> slice | None:
    """The bytes RFC 9110 selects for one ``bytes=`` range, or None if none (416)."""
    spec = header.strip()
    if not spec.lower().startswith("bytes=") or "," in spec:
        return None
    first, sep, last = spec[6:].partition("-")
    if not sep or not (first.isascii() and last.isascii()) or not (first.isdigit() or last.isdigit()):
        return None
    if (first and not first.isdigit()) or (last and not last.isdigit()) or len(first) > 64 or len(last) > 64:
        return None
    if not first:
        n = int(last)
        return slice(max(0, size - n), size) if n > 0 and size > 0 else None
    a = int(first)
    b = int(last) if last else size - 1
    return slice(a, min(b, size - 1) + 1) if a < size and b >= a else None


def _get_range(peer: PeerProcess, header: str) -> requests.Response:
    return requests.get(f"{peer.url}/shards/{SHARD_CID}", headers={"Range": header}, timeout=10)


range_headers = st.one_of(
    st.builds(
        lambda a, b: f"bytes={a}-{b}",
        st.sampled_from(["", "0", "1", "1023", "1027", "1028", "99999"]) | st.integers(0, 2000).map(str),
        st.sampled_from(["", "0", "5", "1027", "1028", "9" * 30]) | st.integers(0, 2000).map(str),
    ),
    st.text(alphabet="bytes=0123456789-, ", max_size=30),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40),
)


@ONE_PEER
@given(header=range_headers)
@example(header="bytes=" + "9" * 5000 + "-")  # int() of > 4300 digits raised: 500
@example(header="bytes=0-" + "9" * 5000)
@example(header="bytes=-" + "9" * 5000)
@example(header="bytes=\u0661-")  # an Arabic-Indic digit passed \d, then aiohttp answered 416 without JSON
@example(header="BYTES=0-1")  # the unit is case-insensitive (RFC 9110)
def test_any_range_header_is_served_exactly_or_refused_as_json(peer: PeerProcess, header: str) -> None:
    try:
        header.encode("latin-1")
    except UnicodeEncodeError:
        header = header.encode("utf-8").decode("latin-1")  # what a client puts on the wire
    header = header.lstrip()  # a header value cannot start with white space on the wire
    r = _get_range(peer, header)
    want = _expected(header, len(SHARD))
    if r.status_code == 206:
        assert want is not None and r.content == SHARD[want], header
    elif r.status_code == 416:
        assert r.json()["code"] == "range_not_satisfiable", header
        assert want is None, header
    elif r.status_code == 400:  # a header HTTP forbids (a control character): refused by the HTTP parser
        assert r.json()["code"] == "bad_request" and any(c < " " or c == "\x7f" for c in header), header
    else:
        assert r.status_code == 200 and r.content == SHARD, (header, r.status_code, r.text)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"[" * 60_000, "nested too deeply"),  # RecursionError: answered 500
        (f'{{"locator": "{LOCATOR}", "seq": NaN}}'.encode(), "NaN"),  # stored and served as NaN
        (f'{{"locator": "{LOCATOR}", "seq": 1e999}}'.encode(), "out of range"),  # stored as Infinity
        (f'{{"locator": "{LOCATOR}", "x": -Infinity}}'.encode(), "Infinity"),
    ],
    ids=["deep", "nan", "inf-number", "infinity"],
)
def test_pointers_that_are_not_json_are_refused_400(peer: PeerProcess, body: bytes, why: str) -> None:
    url = f"{peer.url}/datasets/{DATASET}"
    r = requests.put(url, data=body, headers={**peer.auth, "Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "bad_pointer" and why in r.json()["error"]
    assert requests.get(url, timeout=10).status_code == 404  # nothing stored


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
pointer_bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["locator", "metadata", "seq", "hints"]), json_values | st.just(LOCATOR)).map(
        lambda d: json.dumps(d).encode()
    ),
    st.builds(
        lambda pre, post: (pre + json.dumps({"locator": LOCATOR}) + post).encode(),
        st.sampled_from(["", " ", "[", "\ufeff"]),
        st.sampled_from(["", " ", "]", "x", "NaN"]),
    ),
)


@given(pointer_bodies)
@example(b"[" * 60_000)
@example(b'{"locator": "\\ud800"}')
@example(f'{{"locator": "{LOCATOR}", "seq": 1{"0" * 5000}}}'.encode())
def test_pointer_validator_answers_a_pointer_or_400(body: bytes) -> None:
    try:
        pointer = _validate_pointer(body)
    except ApiError as e:
        assert e.status == 400 and e.code == "bad_pointer"
        return
    assert isinstance(pointer, dict)
    json.dumps(pointer, allow_nan=False)  # what the peer stores and serves is JSON
    assert pointer["locator"] == LOCATOR


def test_long_but_valid_ranges_still_work(peer: PeerProcess) -> None:
    r = _get_range(peer, "bytes=1000-" + "9" * 30)  # past the end is clamped (RFC 9110)
    assert r.status_code == 206 and r.content == SHARD[1000:]
    r = _get_range(peer, "bytes=-" + "9" * 30)
    assert r.status_code == 206 and r.content == SHARD


def test_peer_logs_no_unexpected_error(peer: PeerProcess) -> None:
    # Runs after the fuzz tests above (file order): none of them made the peer log a traceback.
    assert "unexpected error" not in peer.stderr_text()
