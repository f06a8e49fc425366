#!/usr/bin/env python3
"""Network references for the peers section (run as separate processes).

python bench/netrefs.py serve DIR            aiohttp static-file server for DIR
                                             (`web.static`, 127.0.0.1, free port);
                                             prints "listening on http://127.0.0.1:PORT"
python bench/netrefs.py tcp-recv             accept one TCP connection on 127.0.0.1
                                             (free port, printed like serve), read it
                                             to EOF into one reused 4 MiB buffer
                                             (discarded), answer one byte, print JSON
python bench/netrefs.py tcp-send PORT FILE   socket.sendfile(FILE) to 127.0.0.1:PORT,
                                             then wait for the receiver's answer (so the
                                             timing covers every byte read); print JSON
"""

from __future__ import annotations

import json
import socket
import sys
import time

BUF = 4 << 20


def serve(root: str) -> None:
    import asyncio

    from aiohttp import web

    app = web.Application()
    app.router.add_static("/", root, show_index=False, follow_symlinks=False)

    runner = web.AppRunner(app, access_log=None)

    async def main() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the only way to learn port 0's choice
        print(f"listening on http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def tcp_recv() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    print(f"listening on http://127.0.0.1:{srv.getsockname()[1]}", flush=True)
    conn, _ = srv.accept()
    buf = bytearray(BUF)
    view = memoryview(buf)
    total = 0
    t0 = None
    while True:
        n = conn.recv_into(view)
        if t0 is None:
            t0 = time.perf_counter()
        if n == 0:
            break
        total += n
    seconds = time.perf_counter() - (t0 or time.perf_counter())
    conn.sendall(b"k")
    conn.close()
    srv.close()
    print(json.dumps({"bytes": total, "seconds_after_first_byte": seconds}), flush=True)


def tcp_send(port: int, path: str) -> None:
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port))
    with open(path, "rb") as f:
        sent = s.sendfile(f)
    s.shutdown(socket.SHUT_WR)
    ack = s.recv(1)
    s.close()
    print(json.dumps({"bytes": sent, "ack": ack.decode(), "seconds": time.perf_counter() - t0}), flush=True)


def main() -> None:
    what = sys.argv[1]
    if what == "serve":
        serve(sys.argv[2])
    elif what == "tcp-recv":
        tcp_recv()
    elif what == "tcp-send":
        tcp_send(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
