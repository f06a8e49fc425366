"""dstore._native against the pure-Python reference, the shared vectors and third-party codecs."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import time
from pathlib import Path

import blake3 as blake3_py
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from dstore import _native as native

import reference_chunker as ref

VECTORS = Path(__file__).parent / "vectors"
SMALL = (64, 256, 1024)
DEFAULT = (16384, 65536, 262144)


def rand_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def csv_bytes(n: int) -> bytes:
    rows = []
    size = 0
    i = 0
    while size < n:
        row = f"{i},user{i * 7919 % 1000},{i * 31 % 997}.{i % 100:02d},{'ok' if i % 3 else 'fail'}\n"
        rows.append(row)
        size += len(row)
        i += 1
    return "".join(rows).encode()[:n]


# --- chunker -------------------------------------------------------------------


def test_gear_digest_matches_reference_and_vectors() -> None:
    vectors = json.loads((VECTORS / "chunker.json").read_text())
    assert native.GEAR_DIGEST == ref.gear_digest() == vectors["gear_digest"]


def test_chunker_vectors() -> None:
    vectors = json.loads((VECTORS / "chunker.json").read_text())
    for case in vectors["cases"]:
        data = ref.vector_input(case["seed"], case["length"])
        params = (case["min"], case["avg"], case["max"])
        assert native.chunk_lengths(data, True, *params) == case["lengths"], case["seed"]
    stream = vectors["stream"]
    data = ref.vector_input(stream["seed"], stream["length"])
    lengths = native.chunk_lengths(data, True, stream["min"], stream["avg"], stream["max"])
    assert len(lengths) == stream["chunks"]
    assert ref.boundaries_digest(lengths) == stream["boundaries_digest"]


@given(data=st.binary(max_size=5000), final=st.booleans())
def test_chunk_lengths_match_reference(data: bytes, final: bool) -> None:
    assert native.chunk_lengths(data, final, *SMALL) == ref.chunk_lengths(data, final, *SMALL)


@given(
    seed=st.integers(0, 2**32),
    params=st.sampled_from([(64, 128, 129), (64, 256, 1024), (100, 512, 700), (1000, 1024, 4096)]),
    length=st.integers(0, 12000),
)
def test_chunk_lengths_match_reference_random_params(seed: int, params: tuple[int, int, int], length: int) -> None:
    data = rand_bytes(length, seed)
    assert native.chunk_lengths(data, True, *params) == ref.chunk_lengths(data, True, *params)


def test_chunk_lengths_at_every_boundary() -> None:
    lo, avg, hi = SMALL
    sizes = sorted({x + d for x in (0, lo, avg, hi, 2 * hi, 3 * hi) for d in (-2, -1, 0, 1, 2) if x + d >= 0})
    for seed in range(4):
        base = rand_bytes(3 * hi + 10, seed)
        for n in sizes:
            data = base[:n]
            for final in (True, False):
                assert native.chunk_lengths(data, final, *SMALL) == ref.chunk_lengths(data, final, *SMALL), (seed, n)
    # Long runs of one byte value never cut early and end at max.
    zeros = bytes(5000)
    assert native.chunk_lengths(zeros, True, *SMALL) == ref.chunk_lengths(zeros, True, *SMALL)


def test_chunk_lengths_default_params_match_reference() -> None:
    data = rand_bytes(1_200_000, 7)
    assert native.chunk_lengths(data, True, *DEFAULT) == ref.chunk_lengths(data, True, *DEFAULT)


@pytest.mark.parametrize("final", [True, False])
def test_parallel_chunker_matches_reference(final: bool) -> None:
    """Inputs of 1 MiB and more take the parallel candidate scan: same boundaries."""
    low_entropy = bytes(b & 3 for b in rand_bytes(1_100_000, 8))
    for data in (rand_bytes((1 << 20) + 333, 9), low_entropy):
        for params in (SMALL, (100, 128, 4096)):
            got = native.chunk_lengths(data, final, *params)
            assert got == ref.chunk_lengths(data, final, *params)


def stream_chunks(data: bytes, cuts: list[int], params: tuple[int, int, int]) -> list[int]:
    """Feed ``data`` split at ``cuts`` with final=False, carrying the tail."""
    out: list[int] = []
    tail = b""
    pieces = [data[a:b] for a, b in itertools.pairwise([0, *sorted(cuts), len(data)])]
    for i, piece in enumerate(pieces):
        buf = tail + piece
        final = i == len(pieces) - 1
        lengths = native.chunk_lengths(buf, final, *params)
        out.extend(lengths)
        tail = buf[sum(lengths) :]
    assert tail == b""
    return out


@given(
    data=st.binary(min_size=0, max_size=8000),
    cuts=st.lists(st.integers(0, 8000), max_size=12),
)
def test_streaming_equals_one_call(data: bytes, cuts: list[int]) -> None:
    cuts = [c for c in cuts if c <= len(data)]
    assert stream_chunks(data, cuts, SMALL) == native.chunk_lengths(data, True, *SMALL)


def test_streaming_keeps_tail_below_max() -> None:
    data = rand_bytes(10_000, 3)
    lengths = native.chunk_lengths(data, False, *SMALL)
    assert 0 <= len(data) - sum(lengths) < SMALL[2]
    assert native.chunk_lengths(data[: SMALL[2] - 1], False, *SMALL) == []


@pytest.mark.parametrize(
    "params",
    [
        (63, 256, 1024),
        (64, 250, 1024),
        (64, 64, 1024),
        (64, 256, 256),
        (64, 256, 16 * 2**20 + 1),
        (-1, 256, 1024),
        (0, 0, 0),
    ],
)
def test_bad_chunker_params_raise_value_error(params: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        native.chunk_lengths(b"x" * 100, True, *params)
    with pytest.raises(ValueError):
        native.process_segment(b"x" * 100, True, *params, 3)
    with pytest.raises(ValueError):
        ref.chunk_lengths(b"x" * 100, True, *params)


# --- blake3 --------------------------------------------------------------------


@pytest.mark.parametrize(
    "n",
    sorted({b + d for b in (0, 64, 1024, 2048, 16384, 65536, 256 * 1024, 1 << 20) for d in (-1, 0, 1) if b + d >= 0}),
)
def test_blake3_matches_reference(n: int) -> None:
    data = rand_bytes(n, n)
    assert native.blake3(data) == blake3_py.blake3(data).digest()


def test_blake3_accepts_any_buffer() -> None:
    data = rand_bytes(5000)
    want = blake3_py.blake3(data).digest()
    assert native.blake3(bytearray(data)) == want
    assert native.blake3(memoryview(data)) == want
    assert native.blake3(memoryview(data).cast("I", (1250,))) == want
    with pytest.raises(TypeError):
        native.blake3("text")  # type: ignore[arg-type]
    # A non-contiguous view is rejected, not read wrongly.
    with pytest.raises((TypeError, ValueError)):
        native.blake3(memoryview(data)[::2])


# --- process_segment -----------------------------------------------------------


def check_segment(data: bytes, seg: native.Segment, final: bool, params: tuple[int, int, int]) -> None:
    assert seg.lengths == native.chunk_lengths(data, final, *params)
    assert seg.consumed == sum(seg.lengths)
    assert len(seg.digests) == 32 * len(seg.lengths)
    assert len(seg.codecs) == len(seg.stored_lengths) == len(seg.lengths)
    dctx = zstandard.ZstdDecompressor()
    pos = 0
    for i, n in enumerate(seg.lengths):
        chunk = data[pos : pos + n]
        assert seg.digests[32 * i : 32 * i + 32] == blake3_py.blake3(chunk).digest()
        stored = seg.stored(i)
        assert isinstance(stored, memoryview)
        assert len(stored) == seg.stored_lengths[i]
        if seg.codecs[i] == 1:
            assert len(stored) <= n - (n + 19) // 20  # saves at least 5%
            assert dctx.decompress(bytes(stored)) == chunk
        else:
            assert seg.codecs[i] == 0
            assert stored == chunk
        pos += n


@given(
    data=st.binary(max_size=6000) | st.builds(lambda n: csv_bytes(n), st.integers(0, 6000)),
    final=st.booleans(),
    level=st.sampled_from([0, 1, 3, 19, -5]),
)
def test_process_segment_consistent(data: bytes, final: bool, level: int) -> None:
    seg = native.process_segment(data, final, *SMALL, level)
    check_segment(data, seg, final, SMALL)
    if level == 0:
        assert set(seg.codecs) <= {0}


def test_process_segment_large_mixed() -> None:
    data = rand_bytes(3 << 20, 1) + csv_bytes(3 << 20) + rand_bytes(1 << 20, 2)
    for final in (True, False):
        seg = native.process_segment(data, final, *DEFAULT, 3)
        check_segment(data, seg, final, DEFAULT)
        assert 0 in seg.codecs and 1 in seg.codecs
    # Random data is stored raw, text compressed.
    assert set(native.process_segment(rand_bytes(1 << 20, 3), True, *DEFAULT, 3).codecs) == {0}
    assert set(native.process_segment(csv_bytes(1 << 20), True, *DEFAULT, 3).codecs) == {1}


def test_segment_views_input_without_copy() -> None:
    data = bytearray(rand_bytes(100_000))
    seg = native.process_segment(data, True, *SMALL, 3)
    view = seg.stored(0)
    assert view.obj is not None
    data[0] ^= 0xFF  # the view shows the caller's buffer
    assert view[0] == data[0]
    with pytest.raises(IndexError):
        seg.stored(len(seg.lengths))
    with pytest.raises(IndexError):
        seg.stored(-1)
    assert len(seg) == len(seg.lengths)


def test_process_segment_bad_level() -> None:
    with pytest.raises(ValueError):
        native.process_segment(b"abc", True, *SMALL, 23)
    with pytest.raises(ValueError):
        native.process_segment(b"abc", True, *SMALL, -(10**6))


# --- erasure coding ------------------------------------------------------------


def pad_pack(pack: bytes, k: int) -> tuple[bytes, int]:
    """Pad as docs/format.md says: shard_size = max(64, ceil(size / k) rounded up to 64)."""
    shard = max(64, (-(-len(pack) // k) + 63) // 64 * 64)
    return pack + bytes(k * shard - len(pack)), shard


def check_encode(padded: bytes, k: int, m: int, shard: int) -> tuple[list[bytes], bytes]:
    parity, digests = native.encode_pack(padded, k, m)
    assert len(parity) == m * shard
    shards = [padded[i * shard : (i + 1) * shard] for i in range(k)] + [
        parity[j * shard : (j + 1) * shard] for j in range(m)
    ]
    assert digests == b"".join(blake3_py.blake3(s).digest() for s in shards)
    return shards, parity


@given(
    pack=st.binary(min_size=1, max_size=3000),
    k=st.integers(1, 5),
    m=st.integers(0, 3),
)
def test_reconstruct_every_erasure_set(pack: bytes, k: int, m: int) -> None:
    padded, shard = pad_pack(pack, k)
    shards, _ = check_encode(padded, k, m, shard)
    for lost in itertools.combinations(range(k + m), m):
        given_shards = [None if i in lost else s for i, s in enumerate(shards)]
        rebuilt = native.reconstruct(given_shards, k, m)
        assert b"".join(rebuilt) == padded, lost


@given(
    seed=st.integers(0, 2**32),
    k=st.integers(1, 48),
    m=st.integers(0, 16),
    shard_blocks=st.integers(1, 8),
)
def test_reconstruct_random_sets_up_to_64(seed: int, k: int, m: int, shard_blocks: int) -> None:
    rng = random.Random(seed)
    shard = 64 * shard_blocks
    padded = rng.randbytes(k * shard)
    shards, _ = check_encode(padded, k, m, shard)
    for _ in range(3):
        lost = set(rng.sample(range(k + m), rng.randint(0, m)))
        rebuilt = native.reconstruct([None if i in lost else s for i, s in enumerate(shards)], k, m)
        assert b"".join(rebuilt) == padded


@given(
    seed=st.integers(0, 2**32),
    k=st.integers(1, 70),
    m=st.integers(1, 12),
    shard_bytes=st.sampled_from([64, 128, 2 * 64 * 33, 16 * 1024 + 192, 130, 1000]),
)
def test_reconstruct_missing_gives_exactly_the_lost_data_shards(seed: int, k: int, m: int, shard_bytes: int) -> None:
    """The degraded read's rebuild: only the lost data shards, in index order, byte-exact, from any
    buffer type; 64-byte multiples take the combination path (k above 32 needs several coefficient
    blocks), other even sizes the decoder's."""
    rng = random.Random(seed)
    padded = rng.randbytes(k * shard_bytes)
    shards, _ = check_encode(padded, k, m, shard_bytes)
    kinds = [bytes, bytearray, memoryview]
    for _ in range(3):
        lost = set(rng.sample(range(k + m), rng.randint(0, m)))
        given_shards = [None if i in lost else rng.choice(kinds)(s) for i, s in enumerate(shards)]
        rebuilt = native.reconstruct_missing(given_shards, k, m)
        assert rebuilt == [shards[i] for i in sorted(lost) if i < k]


def test_reconstruct_missing_bad_arguments() -> None:
    s = bytes(64)
    with pytest.raises(ValueError):
        native.reconstruct_missing([s, None, None], 2, 1)  # too few shards
    with pytest.raises(ValueError):
        native.reconstruct_missing([s, bytes(128), None], 2, 1)  # sizes differ
    with pytest.raises(ValueError):
        native.reconstruct_missing([s, None], 2, 1)  # wrong count
    assert native.reconstruct_missing([s, s, None], 2, 1) == []


def test_erasure_vectors_and_large_shards() -> None:
    vectors = json.loads((VECTORS / "erasure.json").read_text())
    for case in vectors["cases"]:
        k, m, shard = case["k"], case["m"], case["shard_size"]
        padded = blake3_py.blake3(case["seed"].encode()).digest(length=k * shard)
        parity, digests = native.encode_pack(padded, k, m)
        assert blake3_py.blake3(parity).hexdigest() == case["parity_blake3"]
        assert blake3_py.blake3(digests).hexdigest() == case["shard_digests_blake3"]
    # Large shards are coded in column ranges on several threads: still exact.
    k, m, shard = 10, 4, 1 << 20
    padded = rand_bytes(k * shard, 9)
    shards, _ = check_encode(padded, k, m, shard)
    lost = {0, 3, 7, 9}
    rebuilt = native.reconstruct([None if i in lost else s for i, s in enumerate(shards)], k, m)
    assert b"".join(rebuilt) == padded


def test_erasure_bad_arguments() -> None:
    with pytest.raises(ValueError):
        native.encode_pack(bytes(128), 0, 1)
    with pytest.raises(ValueError):
        native.encode_pack(bytes(130), 2, 1)  # not k equal shards
    with pytest.raises(ValueError):
        native.encode_pack(bytes(3), 1, 1)  # odd shard size
    with pytest.raises(ValueError):
        native.encode_pack(bytes(64 * 200), 200, 57)  # k + m > 256
    with pytest.raises(ValueError):
        native.encode_pack(bytes(128), 2, -1)
    with pytest.raises(ValueError):
        native.encode_pack(b"", 1, 1)
    s = bytes(64)
    with pytest.raises(ValueError):
        native.reconstruct([s, None, None], 2, 1)  # too few shards
    with pytest.raises(ValueError):
        native.reconstruct([s, None], 2, 1)  # wrong count
    with pytest.raises(ValueError):
        native.reconstruct([s, bytes(128), None], 2, 1)  # sizes differ
    with pytest.raises(ValueError):
        native.reconstruct([None, None, None], 2, 1)
    assert native.encode_pack(bytes(64 * 255), 255, 1)[0] == bytes(64)


# --- decode_chunks -------------------------------------------------------------


def build_pack(data: bytes, level: int = 3) -> tuple[bytes, list[int], native.Segment]:
    seg = native.process_segment(data, True, *SMALL, level)
    pack = bytearray()
    offsets = []
    for i in range(len(seg.lengths)):
        offsets.append(len(pack))
        pack += seg.stored(i)
    return bytes(pack), offsets, seg


def test_decode_chunks_roundtrip() -> None:
    data = rand_bytes(20_000, 4) + csv_bytes(20_000)
    pack, offsets, seg = build_pack(data)
    assert 0 in seg.codecs and 1 in seg.codecs
    out = native.decode_chunks(pack, offsets, seg.stored_lengths, seg.lengths, seg.codecs, seg.digests)
    assert out == data
    # A subset, out of order.
    idx = [3, 0, len(offsets) - 1]
    out = native.decode_chunks(
        pack,
        [offsets[i] for i in idx],
        [seg.stored_lengths[i] for i in idx],
        [seg.lengths[i] for i in idx],
        [seg.codecs[i] for i in idx],
        b"".join(seg.digests[32 * i : 32 * i + 32] for i in idx),
    )
    starts = [sum(seg.lengths[:i]) for i in range(len(seg.lengths) + 1)]
    assert out == b"".join(data[starts[i] : starts[i + 1]] for i in idx)
    assert native.decode_chunks(pack, [], [], [], [], b"") == b""


def test_segment_copy_into() -> None:
    data = rand_bytes(20_000, 9) + csv_bytes(20_000)
    seg = native.process_segment(data, True, *SMALL, 3)
    picks = [len(seg) - 1, 0, 2]
    dest = bytearray(b"\xee" * 100_000)
    end = seg.copy_into(picks, dest, 7)
    expected = b"".join(bytes(seg.stored(i)) for i in picks)
    assert end == 7 + len(expected)
    assert dest[7:end] == expected and dest[:7] == b"\xee" * 7
    assert seg.copy_into([], dest, 5) == 5
    with pytest.raises(IndexError):
        seg.copy_into([len(seg)], dest, 0)
    with pytest.raises(ValueError):
        seg.copy_into(picks, bytearray(len(expected) - 1), 0)
    with pytest.raises(ValueError):
        seg.copy_into(picks, bytes(100_000), 0)


def test_decode_chunks_into_reused_buffer() -> None:
    data = rand_bytes(20_000, 8) + csv_bytes(20_000)
    pack, offsets, seg = build_pack(data)
    args = ([pack], offsets, seg.stored_lengths, seg.lengths, seg.codecs, seg.digests)
    out = bytearray(b"\xee" * (len(data) + 10))
    assert native.decode_chunks_into(out, *args) == len(data)
    assert out[: len(data)] == data and out[len(data) :] == b"\xee" * 10
    with pytest.raises(ValueError):
        native.decode_chunks_into(bytearray(len(data) - 1), *args)
    with pytest.raises(ValueError):
        native.decode_chunks_into(bytes(len(data)), *args)  # read-only
    bad = bytearray(pack)
    bad[offsets[1]] ^= 1
    with pytest.raises(native.IntegrityError) as info:
        native.decode_chunks_into(out, [bad], *args[1:])
    assert info.value.args == (1,)


@given(st.integers(1, 9), st.binary(min_size=1, max_size=6000))
def test_decode_chunks_into_from_parts(nparts: int, data: bytes) -> None:
    """A pack split into equal parts (shards) decodes like the whole, straddling chunks included."""
    pack, offsets, seg = build_pack(data + csv_bytes(3000))
    part_len = -(-len(pack) // nparts)
    padded = pack + bytes(part_len * nparts - len(pack))
    parts = [padded[i * part_len : (i + 1) * part_len] for i in range(nparts)]
    out = bytearray(len(data) + 3000)
    args = (offsets, seg.stored_lengths, seg.lengths, seg.codecs, seg.digests)
    assert native.decode_chunks_into(out, parts, *args) == len(out)
    assert out == data + csv_bytes(3000)
    if nparts > 1:
        with pytest.raises(ValueError):
            native.decode_chunks_into(out, [*parts[:-1], parts[-1] + b"x"], *args)


def test_decode_chunks_flipped_byte_raises_integrity_error() -> None:
    data = rand_bytes(20_000, 5) + csv_bytes(20_000)
    pack, offsets, seg = build_pack(data)
    args = (offsets, seg.stored_lengths, seg.lengths, seg.codecs, seg.digests)
    for i in range(len(offsets)):
        for where in (0, seg.stored_lengths[i] // 2, seg.stored_lengths[i] - 1):
            bad = bytearray(pack)
            bad[offsets[i] + where] ^= 0x01
            with pytest.raises(native.IntegrityError) as info:
                native.decode_chunks(bad, *args)
            assert info.value.args[0] == i
            assert isinstance(info.value, ValueError)
    # Wrong digest for one chunk.
    digests = bytearray(seg.digests)
    digests[32 * 2] ^= 1
    with pytest.raises(native.IntegrityError) as info:
        native.decode_chunks(pack, offsets, seg.stored_lengths, seg.lengths, seg.codecs, bytes(digests))
    assert info.value.args == (2,)


def test_decode_chunks_wrong_length_is_integrity_error() -> None:
    data = csv_bytes(5000)
    pack, offsets, seg = build_pack(data)
    assert seg.codecs == [1] * len(seg.codecs)
    lengths = list(seg.lengths)
    lengths[1] += 1
    with pytest.raises(native.IntegrityError) as info:
        native.decode_chunks(pack, offsets, seg.stored_lengths, lengths, seg.codecs, seg.digests)
    assert info.value.args == (1,)


def test_decode_chunks_bad_arguments() -> None:
    pack, offsets, seg = build_pack(rand_bytes(3000, 6))
    good = (offsets, seg.stored_lengths, seg.lengths, seg.codecs, seg.digests)
    n = len(offsets)
    cases = [
        (offsets[:-1], *good[1:]),  # lists differ in length
        ([len(pack)] * n, *good[1:]),  # out of the pack
        ([-1] * n, *good[1:]),
        (
            offsets,
            seg.stored_lengths,
            seg.lengths,
            [2] * n,
            seg.digests,
        ),  # unknown codec
        (offsets, seg.stored_lengths, seg.lengths, seg.codecs, seg.digests[:-1]),
        (
            offsets,
            seg.stored_lengths,
            [x + 1 for x in seg.lengths],
            seg.codecs,
            seg.digests,
        ),  # raw size mismatch
        ([0], [1], [16 * 2**20 + 1], [1], bytes(32)),  # too large to decompress
        ([0], [2**63 - 1], [1], [0], bytes(32)),  # offset overflow
    ]
    for args in cases:
        with pytest.raises(ValueError) as info:
            native.decode_chunks(pack, *args)
        assert not isinstance(info.value, native.IntegrityError), args[:1]


def test_native_calls_work_in_a_forked_child() -> None:
    """A process forked after the native thread pool ran (a DataLoader worker) gets a pool of its own.

    The child inherits the parent's pool without its threads; before the fix its first
    multithreaded call waited for them forever. The parent waits for the child with a bound
    on the wait (a hang guard, not a timing assertion) and kills it if it hangs.
    """
    big = os.urandom(4 << 20)
    want = native.blake3(big)  # runs on the parent's pool
    seg_want = native.process_segment(big, True, 16384, 65536, 262144, 1).digests
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if both multithreaded calls come back right
        ok = (
            native.blake3(big) == want
            and native.process_segment(big, True, 16384, 65536, 262144, 1).digests == seg_want
        )
        os._exit(0 if ok else 1)
    deadline = 60  # seconds of polling, generous for a loaded machine
    for _ in range(deadline * 10):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the forked child hung in a native call (the parent's thread pool)")
