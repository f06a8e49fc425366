"""Helpers for the fuzz tests: byte mutations of valid encodings, and a bounded-memory decode check.

A decoder under fuzz may only raise the errors its module documents, and may not allocate more
than ``ALLOC_FACTOR × len(input) + ALLOC_SLACK_BYTES`` while it decodes (tracemalloc's peak).
The factor is what one CBOR byte can cost as a Python object: an empty list or map is one input
byte and some 72 bytes of object, so a block of 2 MiB of them needs about 150 MiB; every other
item costs less. A decoder that trusts a claimed length blows far past it.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

ALLOC_FACTOR = 96
ALLOC_SLACK_BYTES = 1 << 20


def decode_bounded(decode: Callable[[bytes], Any], data: bytes, allowed: tuple[type[BaseException], ...]) -> Any:
    """Run ``decode(data)``: return its result or the allowed exception; fail on anything else or on a big peak."""
    tracemalloc.start()
    try:
        try:
            result: Any = decode(data)
        except allowed as e:
            result = e
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    limit = ALLOC_FACTOR * len(data) + ALLOC_SLACK_BYTES
    assert peak <= limit, f"decoding {len(data)} bytes peaked at {peak} bytes (limit {limit})"
    return result


@st.composite
def mutated(draw: st.DrawFn, valid: bytes, max_edits: int = 4) -> bytes:
    """``valid`` with a few bytes flipped, inserted, deleted, or cut off at the end."""
    b = bytearray(valid)
    for _ in range(draw(st.integers(1, max_edits))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup"]))
        if op == "insert" or not b:
            b.insert(draw(st.integers(0, len(b))), draw(st.integers(0, 255)))
            continue
        i = draw(st.integers(0, len(b) - 1))
        if op == "flip":
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            b[i] = draw(st.sampled_from([0x00, 0x17, 0x18, 0x1B, 0x5B, 0x7F, 0x80, 0x9B, 0xBB, 0xFF]))
        elif op == "delete":
            del b[i]
        elif op == "truncate":
            del b[i:]
        else:  # repeat a slice: a second copy of a field, a section, a map entry
            j = draw(st.integers(i, min(len(b), i + 40)))
            b[j:j] = b[i:j]
    return bytes(b)
