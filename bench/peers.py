"""The `peers` section: dstore add / get against 14 real storage peers on loopback.

Peers are `python -m dstore.peer serve` processes started by tests/peerutil.py, with
their homes on tmpfs ($BENCH_SHM/work/peers). References for the get:

- curl --parallel --parallel-max 16 fetching the same volume as 1 MiB plain files
  from 14 aiohttp `web.static` servers (one process each, files round-robin);
- one raw TCP stream over loopback (socket.sendfile -> recv_into a reused buffer).

Called from run.py as `Bench.peers`; returns the section dict of results.json.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import measure as M

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from peerutil import PeerProcess  # noqa: E402

N_PEERS = 14
N_KILLED = 4
SHARDS = "10+4"
TOKEN = "dstore-bench-token"
CURL_PARALLEL = 16
FILE_SIZE = M.MiB  # the plain files curl fetches
START_TIMEOUT_S = 60.0


class Fleet:
    """N peers with homes under root; `fresh()` wipes the homes and starts new peers."""

    def __init__(self, root: Path, n: int):
        self.root, self.n = root, n
        self.peers: list[PeerProcess] = []

    def fresh(self) -> None:
        self.close()
        M.rm(self.root)
        self.root.mkdir(parents=True)
        self.peers = [PeerProcess(self.root / f"peer{i}", token=TOKEN) for i in range(self.n)]
        self.start(range(self.n))

    def start(self, idx) -> None:
        idx = list(idx)
        for i in idx:  # all at once: each takes a moment to import
            self.peers[i]._spawn()
        for i in idx:
            self.peers[i]._wait_started(START_TIMEOUT_S)

    def kill(self, idx) -> None:
        for i in idx:
            self.peers[i].kill()

    @property
    def urls(self) -> str:
        return ",".join(p.url for p in self.peers)

    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.peers if p.proc is not None]

    def close(self) -> None:
        for p in self.peers:
            p.kill()


class RssPoller:
    """Polls VmRSS / RssAnon of a set of processes every `interval` s in a thread;
    keeps each process's peak (KiB)."""

    def __init__(self, pids: list[int], interval: float = 0.01):
        self.pids, self.interval = pids, interval
        self.peak = {pid: dict.fromkeys(("VmRSS", "RssAnon", "RssFile", "RssShmem"), 0) for pid in pids}
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                st = M._status_kib(pid)
                pk = self.peak[pid]
                for k, v in st.items():
                    if v > pk[k]:
                        pk[k] = v
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssPoller:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()

    def summary(self) -> dict:
        per = [self.peak[p]["VmRSS"] / 1024 for p in self.pids]
        return {
            "max_peer_rss_mib": max(per) if per else None,
            "max_peer_rss_anon_mib": max((self.peak[p]["RssAnon"] / 1024 for p in self.pids), default=None),
            "max_peer_rss_shmem_mib": max((self.peak[p]["RssShmem"] / 1024 for p in self.pids), default=None),
            "per_peer_rss_mib": [round(x, 1) for x in per],
            "samples": self.samples,
            "poll_interval_s": self.interval,
        }


class Server:
    """A `python bench/netrefs.py ...` process that prints its URL first."""

    def __init__(self, args: list[str]):
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "netrefs.py"), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening on "):
            self.proc.kill()
            raise RuntimeError(f"netrefs {args} did not start (exit {self.proc.wait()})")
        self.url = line.split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1])

    def result(self, timeout: float = 60) -> dict:
        out, _ = self.proc.communicate(timeout=timeout)
        return M.last_json(out.decode())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def split_files(src: Path, dst: Path, n_servers: int) -> int:
    """src cut into FILE_SIZE files f00000.bin…, file j in dst/s{j % n_servers}/."""
    M.rm(dst)
    for k in range(n_servers):
        (dst / f"s{k}").mkdir(parents=True)
    j = 0
    with open(src, "rb") as f:
        while block := f.read(FILE_SIZE):
            (dst / f"s{j % n_servers}" / f"f{j:05d}.bin").write_bytes(block)
            j += 1
    return j


def section(b) -> dict:
    """b: the run.py Bench (runs, size, random_path, tmp, dstore_cmd, log, attempt, …)."""
    if not b.dstore_ok:
        raise RuntimeError(f"dstore unavailable: {b.dstore_error}")
    f, size = b.random_path, b.size
    base = b.tmp / "peers"
    M.rm(base)
    base.mkdir(parents=True)
    fleet = Fleet(base / "fleet", N_PEERS)
    servers: list[Server] = []
    dcmd = b.dstore_cmd()
    static, curl_out, out = base / "static", base / "curl-out", base / "get-out.bin"
    killed = list(range(N_KILLED))
    info: dict = {"cids": set()}

    def env(home: Path) -> dict:
        M.rm(home)
        return {"DSTORE_HOME": str(home), "DSTORE_PEERS": fleet.urls, "DSTORE_TOKEN": TOKEN}

    def add_cmd(path: Path) -> list[str]:
        return dcmd + ["add", str(path), "--shards", SHARDS, "--json", "-q"]

    def get_cmd(cid: str, dst: Path) -> list[str]:
        return dcmd + ["get", cid, "-o", str(dst), "-q"]

    def check_add(stdout: str) -> dict:
        j = M.last_json(stdout)
        if j.get("bytes_in") != size:
            raise RuntimeError(f"add reported bytes_in {j.get('bytes_in')} != {size}")
        info["cids"].add(j["cid"])
        info["cid"] = j["cid"]
        return j

    def check_get(label: str) -> None:
        if label not in info:
            info[label] = b.same_bytes(f, out)
            if not info[label]:
                raise RuntimeError(f"{label}: dstore get returned different bytes")

    try:
        # ---- setup: static servers, files, warm-up -----------------------------------
        t = time.perf_counter()
        n_files = split_files(f, static, N_PEERS)
        servers = [Server(["serve", str(static / f"s{k}")]) for k in range(N_PEERS)]
        curl_cfg = base / "curl.cfg"
        lines = []
        for j in range(n_files):
            lines.append(f'url = "{servers[j % N_PEERS].url}/f{j:05d}.bin"')
            lines.append(f'output = "{curl_out / f"f{j:05d}.bin"}"')
        curl_cfg.write_text("\n".join(lines) + "\n")
        curl = ["curl", "--parallel", "--parallel-max", str(CURL_PARALLEL), "--fail", "--silent", "--show-error"]
        curl_version = M._cmd_out(["curl", "--version"])
        fleet.fresh()
        b.log(f"  {N_PEERS} peers and {N_PEERS} static servers up, {n_files} files ({time.perf_counter() - t:.1f} s)")
        warm = base / "warm.bin"
        warm.write_bytes(os.urandom(4 << 20))
        w = M.run_timed(add_cmd(warm), env=env(base / "home-warm"))
        M.run_timed(get_cmd(M.last_json(w["stdout"])["cid"], base / "warm-out"), env=env(base / "home-warm"))
        M.run_timed(curl + ["-o", str(base / "warm-curl"), f"{servers[0].url}/f00000.bin"])
        for p in (warm, base / "warm-out", base / "warm-curl", base / "home-warm"):
            M.rm(p)

        # ---- add: fresh peers and fresh DSTORE_HOME every run --------------------------
        def dstore_add(i):
            fleet.fresh()
            r = M.run_timed(add_cmd(f), env=env(base / "home-add"))
            j = check_add(r["stdout"])
            M.rm(base / "home-add")
            return {"seconds": r["seconds"], "new_bytes_stored": j.get("new_bytes_stored")}

        b.log("  add to peers")
        add_runs = b.interleaved({"dstore_add": dstore_add}, size)

        add_rss = []
        for i in range(b.runs):
            fleet.fresh()
            with RssPoller(fleet.pids()) as poll:
                r = b.attempt(M.run_peak_rss, add_cmd(f), env=env(base / "home-add"), maxrss_file=base / "maxrss.txt")
            if "error" not in r:
                check_add(r.pop("stdout"))
                r.pop("stderr", None)
                r["gbps"] = size / r["seconds"] / M.GB
            r["peers"] = poll.summary()
            b.log(
                f"  rss run {i + 1}/{b.runs} add: client {r.get('peak_rss_mib', float('nan')):.0f} MiB, "
                f"max peer {r['peers']['max_peer_rss_mib']:.0f} MiB"
            )
            add_rss.append(r)
            M.rm(base / "home-add")
        # The fleet now holds the dataset of the last add.
        cid = info.get("cid")
        if cid is None:
            raise RuntimeError("no add to the peers succeeded")

        # ---- get: healthy, 4 of 14 killed, curl, raw TCP -------------------------------
        def dstore_get(i):
            M.rm(out)
            r = M.run_timed(get_cmd(cid, out), env=env(base / "home-get"))
            check_get("healthy_identical")
            M.rm(out)
            M.rm(base / "home-get")
            return {"seconds": r["seconds"]}

        def dstore_get_degraded(i):
            fleet.kill(killed)
            try:
                M.rm(out)
                r = M.run_timed(get_cmd(cid, out), env=env(base / "home-get"))
                check_get("degraded_identical")
                M.rm(out)
                M.rm(base / "home-get")
            finally:
                fleet.start(killed)
            return {"seconds": r["seconds"]}

        def curl_get(i):
            M.rm(curl_out)
            curl_out.mkdir()
            r = M.run_timed(curl + ["-K", str(curl_cfg)])
            got = sum(p.stat().st_size for p in curl_out.iterdir())
            M.rm(curl_out)
            if got != size:
                raise RuntimeError(f"curl fetched {got} bytes, expected {size}")
            return {"seconds": r["seconds"]}

        def tcp(i):
            recv = Server(["tcp-recv"])
            try:
                r = M.run_timed([sys.executable, str(HERE / "netrefs.py"), "tcp-send", str(recv.port), str(f)])
                got = recv.result()
            finally:
                recv.kill()
            if got["bytes"] != size:
                raise RuntimeError(f"receiver got {got['bytes']} bytes, expected {size}")
            return {"seconds": r["seconds"], "inner": M.last_json(r["stdout"]), "receiver": got}

        items = {"dstore": dstore_get, "dstore_4_killed": dstore_get_degraded, "curl": curl_get, "raw_tcp": tcp}
        b.log("  get from peers")
        get_runs = b.interleaved(items, size)

        get_rss = []
        for i in range(b.runs):
            M.rm(out)
            with RssPoller(fleet.pids()) as poll:
                r = b.attempt(
                    M.run_peak_rss, get_cmd(cid, out), env=env(base / "home-get"), maxrss_file=base / "maxrss.txt"
                )
            for k in ("stdout", "stderr"):
                r.pop(k, None)
            if "error" not in r:
                r["gbps"] = size / r["seconds"] / M.GB
            r["peers"] = poll.summary()
            b.log(
                f"  rss run {i + 1}/{b.runs} get: client {r.get('peak_rss_mib', float('nan')):.0f} MiB, "
                f"max peer {r['peers']['max_peer_rss_mib']:.0f} MiB"
            )
            get_rss.append(r)
            M.rm(out)
            M.rm(base / "home-get")
        peer_logs = {p.home.name: p.stderr_text()[-2000:] for p in fleet.peers if p.stderr_text().strip()}
    finally:
        fleet.close()
        for s in servers:
            s.kill()
        M.rm(base)

    def peak(rs, key):
        xs = [r[key] for r in rs if "error" not in r and r.get(key) is not None]
        return max(xs) if xs else None

    def peer_peak(rs):
        xs = [r["peers"]["max_peer_rss_mib"] for r in rs if r["peers"]["max_peer_rss_mib"] is not None]
        return max(xs) if xs else None

    runs = [{**a, **g} for a, g in zip(add_runs, get_runs)]
    sec = {
        "description": f"{N_PEERS} local dstore peers (homes on tmpfs), {size // M.MiB} MiB incompressible "
        f"file added with --shards {SHARDS}; dstore get with a fresh DSTORE_HOME, output on tmpfs",
        "bytes": size,
        "peers": N_PEERS,
        "killed": N_KILLED,
        "shards": SHARDS,
        "cids": sorted(info["cids"]),
        "output_verified_identical": {k: info.get(k) for k in ("healthy_identical", "degraded_identical")},
        "references": {
            "curl": f"{curl_version}: curl --parallel --parallel-max {CURL_PARALLEL} -K <config> fetching "
            f"{n_files} x {FILE_SIZE // M.MiB} MiB plain files (the same bytes) from {N_PEERS} aiohttp "
            "web.static servers on 127.0.0.1 (one process each, files round-robin), outputs on tmpfs",
            "raw_tcp": "one TCP stream over loopback: python socket.sendfile of the file to a python receiver "
            "doing recv_into a reused 4 MiB buffer (discarded); timed: the sender process until the "
            "receiver acknowledges EOF",
            "dstore_4_killed": f"peers 0..{N_KILLED - 1} SIGKILLed just before the get, restarted after it",
        },
        "method": "add: a fresh fleet (new peer homes) and a fresh DSTORE_HOME every run. get items "
        "interleaved per run, order rotated. RSS: separate runs of add (fresh fleet) and get under "
        "GNU time + a 10 ms poll of the client's process tree (measure.run_peak_rss), while a "
        "thread polls VmRSS of every peer process every 10 ms.",
        "runs": runs,
        "median_gbps": {n: b.med(runs, n) for n in ("dstore_add", *items)},
        "ratio_runs": {
            "dstore/curl": b.ratios(runs, "dstore", "curl"),
            "dstore/raw_tcp": b.ratios(runs, "dstore", "raw_tcp"),
            "dstore_4_killed/dstore": b.ratios(runs, "dstore_4_killed", "dstore"),
        },
        "rss_runs": {"add": add_rss, "get": get_rss},
        "client_peak_rss_mib": {"add": peak(add_rss, "peak_rss_mib"), "get": peak(get_rss, "peak_rss_mib")},
        "peer_peak_rss_mib": {"add": peer_peak(add_rss), "get": peer_peak(get_rss)},
        "rss_run_median_gbps": {
            "add": M.median([r.get("gbps") for r in add_rss]),
            "get": M.median([r.get("gbps") for r in get_rss]),
        },
        "peer_stderr_tail": peer_logs,
        "target": {
            "dstore/curl": ">= 1.0",
            "dstore_4_killed/dstore": ">= 0.75",
            "add_gbps": ">= 0.35",
            "peer_rss_mib": "<= 150",
            "client_rss_mib": "<= 400",
        },
    }
    sec["ratio"] = {k: M.median(v) for k, v in sec["ratio_runs"].items()}
    r, g = sec["ratio"], sec["median_gbps"]

    def ok(x, cond):
        return None if x is None else cond(x)

    sec["pass"] = {
        "dstore/curl": ok(r["dstore/curl"], lambda x: x >= 1.0),
        "dstore_4_killed/dstore": ok(r["dstore_4_killed/dstore"], lambda x: x >= 0.75),
        "add_gbps": ok(g["dstore_add"], lambda x: x >= 0.35),
        "peer_rss_add": ok(sec["peer_peak_rss_mib"]["add"], lambda x: x <= 150),
        "peer_rss_get": ok(sec["peer_peak_rss_mib"]["get"], lambda x: x <= 150),
        "client_rss_add": ok(sec["client_peak_rss_mib"]["add"], lambda x: x <= 400),
        "client_rss_get": ok(sec["client_peak_rss_mib"]["get"], lambda x: x <= 400),
    }
    sec["errors"] = b.errors(runs)
    for k, rs in sec["rss_runs"].items():
        for x in rs:
            if "error" in x:
                sec["errors"].setdefault(f"rss_{k}", x["error"])
    return sec


if __name__ == "__main__":
    sys.exit("run through bench/run.py: BENCH_ONLY=peers python bench/run.py")
