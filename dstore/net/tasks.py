"""Running coroutines together so that one failure cancels the rest (no orphaned transfers)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any

__all__ = ["run_all"]


async def run_all(aws: Iterable[Awaitable[Any]]) -> list[Any]:
    """Run concurrently; on the first exception cancel the others (and wait for them) and raise it."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
