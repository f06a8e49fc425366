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
python bench/netrefs.py client-cpu DIR [N]   the network client alone: start 14 peers
                                             (homes under DIR), put_pack then fetch_pack N
                                             (default 40) random 10+4 packs of 1 MiB shards,
                                             two packs in flight; print the client's
                                             CPU-seconds (all threads) per GiB of data as JSON
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


def client_cpu(root: str, n_packs: int) -> None:
    import random
    import resource
    from pathlib import Path

    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here.parent), str(here.parent / "tests")]
    from peerutil import PeerProcess

    from dstore import _native
    from dstore.format.cid import RAW, cid_from_digest
    from dstore.format.pack import PackRecord
    from dstore.net import SyncPeerSet

    k, m, ss, depth, token = 10, 4, 1 << 20, 2, "netrefs-token"

    def cpu_s() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def pack(seed: int) -> tuple:
        padded = random.Random(seed).randbytes(k * ss)
        parity, digests = _native.encode_pack(padded, k, m)
        views = [memoryview(padded)[i * ss : (i + 1) * ss] for i in range(k)]
        views += [memoryview(parity)[j * ss : (j + 1) * ss] for j in range(m)]
        cids = [cid_from_digest(RAW, digests[32 * i : 32 * i + 32]) for i in range(k + m)]
        record = PackRecord(k, m, k * ss, ss, tuple(cids))
        return record, record.cid().to_bytes(), list(zip(cids, views, strict=True))

    packs = [pack(s) for s in range(n_packs)]
    gib = n_packs * k * ss / (1 << 30)
    Path(root).mkdir(parents=True, exist_ok=True)
    peers = [PeerProcess(Path(root) / f"peer{i}", token=token) for i in range(14)]
    out: dict = {"gib": gib}
    try:
        for p in peers:
            p._spawn()
        for p in peers:
            p._wait_started(120.0)
        with SyncPeerSet.connect([p.url for p in peers], token) as net:
            hints: dict = {}
            for what in ("put", "get", "get_again"):
                c0, t0 = cpu_s(), time.perf_counter()
                queue: list = []
                for record, key, pairs in packs:
                    if what == "put":
                        queue.append((key, net.submit_put_pack(key, pairs)))
                    else:
                        queue.append((key, net.submit_fetch_pack(record, key, hints[key])))
                    while len(queue) > depth or (queue and key == packs[-1][1]):
                        done_key, fut = queue.pop(0)
                        got = fut.result()
                        if what == "put":
                            hints[done_key] = got
                seconds = time.perf_counter() - t0
                out[what] = {"cpu_s_per_gib": round((cpu_s() - c0) / gib, 3), "gib_per_s": round(gib / seconds, 3)}
    finally:
        for p in peers:
            p.kill()
    print(json.dumps(out), flush=True)


def main() -> None:
    what = sys.argv[1]
    if what == "serve":
        serve(sys.argv[2])
    elif what == "tcp-recv":
        tcp_recv()
    elif what == "tcp-send":
        tcp_send(int(sys.argv[2]), sys.argv[3])
    elif what == "client-cpu":
        client_cpu(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 40)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
