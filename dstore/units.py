"""Sizes as people type them (``10G``, ``512M``), for options and environment variables of every layer."""

from __future__ import annotations

import re

from dstore.errors import UsageError

__all__ = ["parse_size"]

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``10G``, ``512M``, ``1.5K``, ``4096`` → bytes (binary units; a trailing ``B``/``iB`` is allowed)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise UsageError(f"not a size: {text!r} (expected e.g. 10G, 512M or a number of bytes)")
    number, unit = m.groups()
    return int(float(number) * _SIZE_UNITS[unit.upper()])
