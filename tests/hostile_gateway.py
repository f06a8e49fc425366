"""A hostile trustless gateway for tests: a real process in front of a real peer's gateway, lying as told.

Every ``GET /ipfs/…`` is passed to the ``upstream`` gateway (a dstore peer) and its answer changed by ``mode``:

================  ==================================================================================
``honest``        passed through unchanged
``wrong-bytes``   200 with the upstream's bytes, every byte flipped (same length, wrong hash)
``extra-bytes``   200 with the upstream's bytes and a KiB of junk after them (``Content-Length`` says so)
``huge``          claims ``Content-Length: 2**40``, sends ``huge_bytes`` (1 MiB) of junk and hangs up
``endless``       no ``Content-Length`` (chunked), junk until the client stops reading (at most 64 MiB)
``missing``       404 for everything
``wrong-raw``     ``wrong-bytes`` for raw blocks (chunks: ``bafk…`` CIDs) only, the metadata passed through
``wrong-car``     ``wrong-bytes`` for CAR streams (``format=car``) only, single blocks passed through
================  ==================================================================================

``GET /_stats`` answers ``{"requests": n, "car_requests": n, "lies": n}``, so a test can check the client
really met the lie.

Usage from a test::

    with hostile_gateway(tmp_path, upstream=peer.url, mode="wrong-bytes") as hg:
        hg.url       # "http://127.0.0.1:40123": put it among DSTORE_GATEWAYS
        hg.stats()   # {"requests": 3, "lies": 3}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MODES = ("honest", "wrong-bytes", "extra-bytes", "huge", "endless", "missing", "wrong-raw", "wrong-car")


def _serve(upstream: str, mode: str, port: int, huge_bytes: int) -> None:
    from aiohttp import ClientSession, web

    counts = {"requests": 0, "car_requests": 0, "lies": 0}

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counts)

    async def ipfs(request: web.Request) -> web.StreamResponse:
        counts["requests"] += 1
        car = request.query.get("format") == "car"
        counts["car_requests"] += car
        if mode == "missing":
            counts["lies"] += 1
            return web.json_response({"error": "not here"}, status=404)
        session: ClientSession = request.app["session"]
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("accept", "range")}
        async with session.get(upstream + request.path_qs, headers=headers) as up:
            body = await up.read()
            status, content_type = up.status, up.headers.get("Content-Type", "application/octet-stream")
        honest = (
            mode == "honest"
            or (mode == "wrong-raw" and not request.match_info["rest"].startswith("bafk"))
            or (mode == "wrong-car" and not car)
        )
        if status != 200 or honest:
            return web.Response(body=body, status=status, headers={"Content-Type": content_type})
        counts["lies"] += 1
        if mode in ("wrong-bytes", "wrong-raw", "wrong-car"):
            return web.Response(body=bytes(b ^ 0xFF for b in body) or b"junk", headers={"Content-Type": content_type})
        if mode == "extra-bytes":
            return web.Response(body=body + b"\x00" * 1024, headers={"Content-Type": content_type})
        response = web.StreamResponse(headers={"Content-Type": content_type})
        if mode == "huge":
            response.content_length = 1 << 40
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        sent = 0
        limit = huge_bytes if mode == "huge" else 64 << 20
        try:
            while sent < limit:
                await response.write(b"\xab" * 65536)
                sent += 65536
        except (ConnectionResetError, RuntimeError):
            return response
        if mode == "huge":
            request.transport.close()  # hang up before the claimed length
        return response

    async def start_session(app: web.Application) -> None:
        app["session"] = ClientSession()

    async def stop_session(app: web.Application) -> None:
        await app["session"].close()

    app = web.Application()
    app.on_startup.append(start_session)
    app.on_cleanup.append(stop_session)
    app.router.add_get("/_stats", stats)
    app.router.add_get("/ipfs/{rest:.*}", ipfs)

    async def main() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # the port 0 chose
        print(f"hostile gateway listening on http://127.0.0.1:{bound}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


class HostileGateway:
    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc = proc
        self.url = url

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.url}/_stats", timeout=10) as r:
            return json.loads(r.read())


@contextmanager
def hostile_gateway(
    tmp_path: Path, *, upstream: str, mode: str = "wrong-bytes", huge_bytes: int = 1 << 20
) -> Iterator[HostileGateway]:
    """Run a hostile gateway in front of ``upstream`` until the block ends."""
    assert mode in MODES, mode
    log = open(tmp_path / f"hostile-gateway-{mode}.stderr", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, __file__, "--upstream", upstream, "--mode", mode, "--huge-bytes", str(huge_bytes)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the start line, or "" if it died
        if not line.startswith("hostile gateway listening on "):
            raise RuntimeError(f"hostile gateway did not start: {line!r}")
        yield HostileGateway(proc, line.split()[-1])
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--mode", choices=MODES, default="wrong-bytes")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--huge-bytes", type=int, default=1 << 20)
    args = parser.parse_args()
    _serve(args.upstream.rstrip("/"), args.mode, args.port, args.huge_bytes)
