"""Pins on storage peers: ``PUT /pins/{dataset}`` and ``DELETE /pins/{dataset}`` (docs/http-api.md).

A pin is a peer's promise to keep a dataset's shards past its gc grace
period. The client pins on the peers that hold some shard of the dataset
(after an add or a repair) and unpins on every peer (``dstore rm --peers``).
Each peer answers for itself; the outcome of every peer is reported, so the
caller decides what a failure means.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import aiohttp

from dstore.format.cid import CID, cid_to_text
from dstore.net.peers import Peer
from dstore.net.tasks import run_all
from dstore.net.transport import Miss, Transport

__all__ = ["PIN_TIMEOUT_S", "PinReport", "pin_on", "unpin_on"]

#: A pin makes the peer resolve the dataset's metadata (maybe fetching it from its --peers): allow for that.
PIN_TIMEOUT_S = 60.0
#: An answer to a pin request is a small JSON object.
MAX_PIN_ANSWER_BYTES = 4096


@dataclass
class PinReport:
    """What each peer asked said, by peer name (:attr:`dstore.net.peers.Peer.name`)."""

    #: Pinned (201, 200, 202) or unpinned (200) by these peers.
    done: list[str] = field(default_factory=list)
    #: Pinned, but the peer could not learn the dataset's shards yet (202): it keeps everything meanwhile.
    unresolved: list[str] = field(default_factory=list)
    #: Unpin only: these peers had no pin of the dataset (404).
    absent: list[str] = field(default_factory=list)
    #: (peer name, why): down, unreachable, token refused, an error answer.
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def failures(self) -> str:
        """``"peer: why; peer: why"`` for a message."""
        return "; ".join(f"{name}: {why}" for name, why in self.failed)


def _reason(peer: Peer, e: Miss) -> str:
    text = str(e)
    prefix = f"{peer.name}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


async def _ask(transport: Transport, peer: Peer, method: str, path: str) -> tuple[int | None, str]:
    """(status, error text) of one pin request; status None when the peer could not be reached."""
    if not peer.alive:
        return None, "down"
    try:
        ans = await transport.call(
            peer,
            method,
            path,
            body=b"" if method == "PUT" else None,
            auth=True,
            limit=MAX_PIN_ANSWER_BYTES,
            retries=1,
            timeout=aiohttp.ClientTimeout(total=PIN_TIMEOUT_S),
        )
    except Miss as e:
        return None, _reason(peer, e)
    if ans.status in (401, 403):
        hint = "no token given" if not transport.token else "token refused"
        return ans.status, f"HTTP {ans.status}{ans.error}: {hint} (--token / DSTORE_TOKEN)"
    return ans.status, f"HTTP {ans.status}{ans.error}"


async def pin_on(transport: Transport, peers: Iterable[Peer], dataset: CID) -> PinReport:
    """``PUT /pins/{dataset}`` on each of ``peers`` at once (a peer not alive counts as failed)."""
    path = f"/pins/{cid_to_text(dataset)}"
    targets = list(dict.fromkeys(peers))
    answers = await run_all(_ask(transport, p, "PUT", path) for p in targets)
    report = PinReport()
    for peer, (status, why) in zip(targets, answers, strict=True):
        if status in (200, 201, 202):
            report.done.append(peer.name)
            if status == 202:
                report.unresolved.append(peer.name)
        else:
            report.failed.append((peer.name, why))
    return report


async def unpin_on(transport: Transport, peers: Iterable[Peer], dataset: CID) -> PinReport:
    """``DELETE /pins/{dataset}`` on each of ``peers`` at once; 404 (no pin there) is not a failure."""
    path = f"/pins/{cid_to_text(dataset)}"
    targets = list(dict.fromkeys(peers))
    answers = await run_all(_ask(transport, p, "DELETE", path) for p in targets)
    report = PinReport()
    for peer, (status, why) in zip(targets, answers, strict=True):
        if status == 200:
            report.done.append(peer.name)
        elif status == 404:
            report.absent.append(peer.name)
        else:
            report.failed.append((peer.name, why))
    return report
