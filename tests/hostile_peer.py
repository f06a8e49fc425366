"""A hostile storage peer for tests: one aiohttp app, run as a real process, that lies as told.

It answers ``GET /health`` like a real peer (``{"peer_id": "12D3KooW…", "version", "bytes_stored",
"bytes_reserved", "shards", "capacity", "last_scrub"}``), so clients rank it like any other, and
accepts the writes of the real API (``PUT /shards/{cid}``, ``PUT /datasets/{id}``: kept in memory,
answered 201/200 without any check; ``PUT``/``DELETE /pins/{id}``: answered yes, nothing kept).
What it answers to reads depends on its ``mode``:

=============  ====================================================================================
``honest``     serves what it holds: the ``shards`` it was given and what was uploaded (404 else)
``pointer``    the same; named for its use with ``pointer=``/``pointers=`` (lying pointers)
``wrong-bytes``  ``GET /shards/{cid}`` answers 200 with bytes that do not hash to the CID (the held
               bytes with every byte flipped, or 1 KiB of junk when it holds nothing)
``huge``       reads of shards and pointers claim ``Content-Length: 2**40``, send ``huge_bytes``
               (1 MiB) of junk and hang up
``hang``       accepts every read and never answers (``/health`` still answers)
``slow``       serves what it holds, one byte every ``slow_interval_s`` (0.5 s): a slow-loris server
``short-range``  a ranged ``GET /shards/{cid}`` of a held shard answers 206 with the ``Content-Range``
               asked for and half its bytes (a read without ``Range`` is served honestly)
=============  ====================================================================================

In every mode, ``pointer=`` (served for *every* dataset ID) and ``pointers={dataset ID: pointer}``
take precedence over uploaded pointers for ``GET /datasets/{id}``: give a real pointer with a wrong
locator, a huge ``metadata.size``, a bad ``seq``… (any JSON value is served as given).

Usage from a test::

    from hostile_peer import hostile_peer

    def test_lying_pointer(tmp_path):
        with hostile_peer(tmp_path, mode="pointer", pointer={"locator": "bafy…"},
                          shards={cid_text: b"bytes"}) as hp:
            hp.url          # "http://127.0.0.1:40123": put it among DSTORE_PEERS
            hp.peer_id      # "12D3KooW…" (random, or peer_id= to impersonate a real peer)
            hp.configure(mode="wrong-bytes")     # change mode/pointer/pointers while running
            hp.stats()      # {"requests": {"GET /shards": 3, …}, "lies": 2}: what it was asked

``stats()["lies"]`` counts answers it falsified (wrong bytes, huge claims, hangs, lying pointers),
so a test can check the client really met the lie. From a shell (for poking by hand)::

    python tests/hostile_peer.py --port 0 --config cfg.json   # prints "hostile peer <id> listening on <url>"

where ``cfg.json`` holds the same keys as :func:`hostile_peer` (``mode``, ``pointer``, ``pointers``,
``peer_id``, ``slow_interval_s``, ``huge_bytes``) and shards are files ``<config dir>/shards/<cid>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["MODES", "HostilePeer", "hostile_peer"]

MODES = ("honest", "pointer", "wrong-bytes", "huge", "hang", "slow", "short-range")
START_LINE = re.compile(r"^hostile peer (?P<peer_id>12D3KooW\w+) listening on (?P<url>http://\S+)$")
ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 20.0
HUGE_CLAIM_BYTES = 1 << 40


# -- the server (runs in its own process) ------------------------------------------------------------


def _canonical(cid_text: str) -> str | None:
    from dstore.errors import BadCID
    from dstore.format.cid import cid_to_text, parse_cid

    try:
        return cid_to_text(parse_cid(cid_text))
    except BadCID:
        return None


def make_app(config: dict[str, Any], shards: dict[str, bytes]) -> Any:
    from aiohttp import web

    from dstore.peer.identity import peer_id_from_public_key

    state: dict[str, Any] = {
        "mode": "honest",
        "pointer": None,
        "pointers": {},
        "slow_interval_s": 0.5,
        "huge_bytes": 1 << 20,
        **config,
    }
    state["peer_id"] = config.get("peer_id") or peer_id_from_public_key(os.urandom(32))
    uploaded_pointers: dict[str, Any] = {}
    requests: Counter[str] = Counter()
    lies = [0]
    never = asyncio.Event()

    def lie() -> None:
        lies[0] += 1

    async def misbehave(request: web.Request, body: bytes | None) -> web.StreamResponse | None:
        """The mode's answer to a read, or None to answer honestly (``body``: the true bytes)."""
        mode = state["mode"]
        if mode == "hang":
            lie()
            await never.wait()
        if mode == "huge":
            lie()
            resp = web.StreamResponse(headers={"Content-Length": str(HUGE_CLAIM_BYTES)})
            await resp.prepare(request)
            junk = os.urandom(64 * 1024)
            for _ in range(max(1, state["huge_bytes"] // len(junk))):
                await resp.write(junk)
            assert request.transport is not None
            request.transport.close()
            return resp
        if mode == "slow" and body is not None:
            resp = web.StreamResponse(headers={"Content-Length": str(len(body))})
            await resp.prepare(request)
            for i in range(len(body)):
                await resp.write(body[i : i + 1])
                await asyncio.sleep(state["slow_interval_s"])
            await resp.write_eof()
            return resp
        return None

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        route = request.match_info.route.resource
        name = "/" + request.path.strip("/").split("/")[0]
        if route is not None and not name.startswith("/_hostile"):
            requests[f"{request.method} {name}"] += 1
        return await handler(request)

    async def health(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "peer_id": state["peer_id"],
                "version": "hostile",
                "bytes_stored": sum(map(len, shards.values())),
                "bytes_reserved": 0,
                "shards": len(shards),
                "capacity": None,
                "last_scrub": None,
            }
        )

    def not_found(what: str) -> web.Response:
        return web.json_response({"error": f"no {what}", "code": "not_found"}, status=404)

    async def get_shard(request: web.Request) -> web.StreamResponse:
        cid = _canonical(request.match_info["cid"])
        if cid is None:
            return web.json_response({"error": "bad CID", "code": "bad_cid"}, status=400)
        held = shards.get(cid)
        if state["mode"] == "wrong-bytes":
            lie()
            wrong = bytes(b ^ 0xFF for b in held) if held else os.urandom(1024)
            return web.Response(body=wrong, content_type="application/octet-stream")
        answer = await misbehave(request, held)
        if answer is not None:
            return answer
        if held is None:
            return not_found(cid)
        wanted = re.match(r"^bytes=(\d+)-(\d+)$", request.headers.get("Range", ""))
        if state["mode"] == "short-range" and wanted:  # a 206 that claims the range asked and sends half of it
            lie()
            a, b = int(wanted.group(1)), int(wanted.group(2))
            headers = {"Content-Range": f"bytes {a}-{b}/{len(held)}"}
            return web.Response(status=206, body=held[a : a + (b - a + 1) // 2], headers=headers)
        return web.Response(body=held, content_type="application/octet-stream")

    async def put_shard(request: web.Request) -> web.Response:
        cid = _canonical(request.match_info["cid"])
        data = await request.read()
        if cid is None:
            return web.json_response({"error": "bad CID", "code": "bad_cid"}, status=400)
        new = cid not in shards
        shards[cid] = data
        return web.json_response({"cid": cid, "size": len(data), "stored": new}, status=201 if new else 200)

    async def get_dataset(request: web.Request) -> web.StreamResponse:
        dataset = _canonical(request.match_info["dataset"]) or request.match_info["dataset"]
        given = state["pointers"].get(dataset, state["pointer"])
        if given is not None:
            lie()
            return web.json_response(given)
        pointer = uploaded_pointers.get(dataset)
        answer = await misbehave(request, None if pointer is None else json.dumps(pointer).encode())
        if answer is not None:
            return answer
        return not_found(dataset) if pointer is None else web.json_response(pointer)

    async def put_dataset(request: web.Request) -> web.Response:
        dataset = _canonical(request.match_info["dataset"]) or request.match_info["dataset"]
        pointer = json.loads(await request.read())
        uploaded_pointers[dataset] = pointer
        return web.json_response(pointer)

    pins: set[str] = set()

    async def put_pin(request: web.Request) -> web.Response:
        # Says yes, as a real peer does, and keeps nothing for it.
        dataset = request.match_info["dataset"]
        status = 200 if dataset in pins else 201
        pins.add(dataset)
        return web.json_response({"dataset": dataset, "resolved": True, "shards": 0, "error": None}, status=status)

    async def delete_pin(request: web.Request) -> web.Response:
        dataset = request.match_info["dataset"]
        if dataset not in pins:
            return not_found(f"pin of {dataset}")
        pins.discard(dataset)
        return web.json_response({"dataset": dataset, "pinned": False})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"requests": dict(requests), "lies": lies[0]})

    async def configure(request: web.Request) -> web.Response:
        change = json.loads(await request.read())
        if "mode" in change and change["mode"] not in MODES:
            return web.json_response({"error": f"mode must be one of {MODES}", "code": "bad_request"}, status=400)
        state.update(change)
        return web.json_response({k: v for k, v in state.items()})

    app = web.Application(middlewares=[count], client_max_size=64 << 20)
    app.router.add_get("/health", health)
    app.router.add_get("/shards/{cid}", get_shard)
    app.router.add_put("/shards/{cid}", put_shard)
    app.router.add_get("/datasets/{dataset}", get_dataset)
    app.router.add_put("/datasets/{dataset}", put_dataset)
    app.router.add_put("/pins/{dataset}", put_pin)
    app.router.add_delete("/pins/{dataset}", delete_pin)
    app.router.add_get("/_hostile/stats", stats)
    app.router.add_put("/_hostile/config", configure)
    app["state"] = state
    return app


async def _serve(port: int, config_path: Path) -> None:
    from aiohttp import web

    config = json.loads(config_path.read_text())
    if config.get("mode", "honest") not in MODES:
        raise SystemExit(f"hostile_peer: mode must be one of {MODES}")
    shard_dir = config_path.parent / "shards"
    shards = {}
    if shard_dir.is_dir():
        for p in shard_dir.iterdir():
            cid = _canonical(p.name)
            if cid is not None:
                shards[cid] = p.read_bytes()
    app = make_app(config, shards)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"hostile peer {app['state']['peer_id']} listening on http://127.0.0.1:{bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="A storage peer that lies, for tests.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args.port, args.config))
    except KeyboardInterrupt:
        pass


# -- the test side ------------------------------------------------------------------------------------


class HostilePeer:
    """A running hostile peer process (see the module docstring)."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, peer_id: str, home: Path) -> None:
        self.proc = proc
        self.url = url
        self.peer_id = peer_id
        self.home = home

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def configure(self, **change: Any) -> dict[str, Any]:
        """Change ``mode``, ``pointer``, ``pointers``, ``slow_interval_s`` or ``huge_bytes`` now."""
        return self._call("PUT", "/_hostile/config", change)

    def stats(self) -> dict[str, Any]:
        """``{"requests": {"GET /shards": n, "GET /datasets": n, …}, "lies": n}``."""
        return self._call("GET", "/_hostile/stats")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def stderr_text(self) -> str:
        path = self.home / "stderr"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def hostile_peer(
    tmp_path: Path,
    mode: str = "honest",
    *,
    pointer: Any = None,
    pointers: dict[str, Any] | None = None,
    shards: dict[str, bytes] | None = None,
    peer_id: str | None = None,
    slow_interval_s: float = 0.5,
    huge_bytes: int = 1 << 20,
    name: str = "hostile",
) -> Iterator[HostilePeer]:
    """Run a hostile peer in a subprocess (home ``tmp_path/name``) until the block ends."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    home = tmp_path / name
    (home / "shards").mkdir(parents=True, exist_ok=True)
    for cid, data in (shards or {}).items():
        (home / "shards" / cid).write_bytes(data)
    config = {
        "mode": mode,
        "pointer": pointer,
        "pointers": pointers or {},
        "peer_id": peer_id,
        "slow_interval_s": slow_interval_s,
        "huge_bytes": huge_bytes,
    }
    (home / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(home / "stdout", "wb") as out, open(home / "stderr", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--port", "0", "--config", str(home / "config.json")],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            m = START_LINE.match((home / "stdout").read_text(errors="replace").strip())
            if m:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"hostile peer did not start: {(home / 'stderr').read_text()[-2000:]}")
            time.sleep(0.02)
        yield HostilePeer(proc, m["url"], m["peer_id"], home)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
