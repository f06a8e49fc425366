"""The `gateway` section: a big file read with curl through a peer's IPFS gateway (issue 9's targets).

Two cases, each against its reference in the same run:

- one peer holding every shard of the dataset itself: `curl /ipfs/{dataset}` (the file's bytes, the
  deserialized path) and `curl /ipfs/{dataset}?format=car` (a CAR of every block) against curl fetching
  the same file as a static file from a plain aiohttp server;
- the shards spread over 14 peers (10+4): the same two requests to one of them that holds the dataset's pointer,
  which reads the other peers' shards, against `dstore get` from those peers.

Called from run.py as `Bench.gateway`; returns the section dict of results.json.
"""

from __future__ import annotations

import shutil
import urllib.request
from typing import Any

import measure as M
import psutil
from peers import N_PEERS, SHARDS, TOKEN, Fleet, RssPoller, Server

#: (item, reference) pairs and the target ratio of each.
PAIRS = {
    "solo_file/static": 0.7,
    "solo_car/static": 0.7,
    "fleet_file/dstore_get": 0.7,
    "fleet_car/dstore_get": 0.7,
}


def _pointer_holder(fleet: Fleet, cid: str) -> tuple[str, int]:
    """A peer that holds the dataset's pointer (a peer's gateway serves the datasets it has pointers for):
    its URL and process ID."""
    for p in fleet.peers:
        req = urllib.request.Request(f"{p.url}/datasets/{cid}", headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                if r.status == 200 and p.proc is not None:
                    return p.url, p.proc.pid
        except OSError:
            continue
    raise RuntimeError(f"no peer of the fleet holds the pointer of {cid}")


def _cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def section(b: Any) -> dict:
    if not b.dstore_ok:
        raise RuntimeError(f"dstore unavailable: {b.dstore_error}")
    f, size = b.random_path, b.size
    base = b.tmp / "gateway"
    M.rm(base)
    (base / "static").mkdir(parents=True)
    shutil.copyfile(f, base / "static" / "file.bin")
    solo, fleet = Fleet(base / "solo", 1), Fleet(base / "fleet", N_PEERS)
    out = base / "out.bin"
    server = None
    checked: dict[str, bool] = {}
    try:
        server = Server(["serve", str(base / "static")])
        solo.fresh()
        fleet.fresh()
        # A peer's gateway reads the shards it lacks from its --peers: restart each knowing the others
        # (a restart keeps its port).
        urls = [p.url for p in fleet.peers]
        fleet.close()
        for p in fleet.peers:
            p.options["peers"] = ",".join(u for u in urls if u != p.url)
        fleet.start(range(fleet.n))
        cids = {}
        for name, peers in (("solo", solo), ("fleet", fleet)):
            env = {"DSTORE_HOME": str(base / f"home-{name}"), "DSTORE_PEERS": peers.urls, "DSTORE_TOKEN": TOKEN}
            r = M.run_timed(b.dstore_cmd() + ["add", str(f), "--shards", SHARDS, "--json", "-q"], env=env)
            cids[name] = M.last_json(r["stdout"])["cid"]
            M.rm(base / f"home-{name}")  # the get and the gateways read from the peers only

        def curl(url: str, label: str, same: bool, peer_pid: int | None = None):
            def run(i):
                M.rm(out)
                peer_cpu = _cpu_s(peer_pid) if peer_pid else 0.0
                with RssPoller([peer_pid] if peer_pid else []) as rss:
                    r = M.run_timed(["curl", "-sSf", "-o", str(out), url])
                res = {"seconds": r["seconds"], "cpu_s": r["cpu_s"]}
                if peer_pid:  # the serving peer's core-seconds per GiB and its peak RSS
                    res["peer_cpu_s_per_gib"] = (_cpu_s(peer_pid) - peer_cpu) * (1 << 30) / size
                    res["peer_rss_mib"] = rss.summary()["max_peer_rss_mib"]
                if label not in checked:
                    checked[label] = b.same_bytes(f, out) if same else out.stat().st_size >= size
                    if not checked[label]:
                        raise RuntimeError(f"{label}: curl got the wrong bytes")
                M.rm(out)
                return res

            return run

        def dstore_get(i):
            home = base / "home-get"
            M.rm(home)
            M.rm(out)
            env = {"DSTORE_HOME": str(home), "DSTORE_PEERS": fleet.urls, "DSTORE_TOKEN": TOKEN}
            r = M.run_timed(b.dstore_cmd() + ["get", cids["fleet"], "-o", str(out), "-q"], env=env)
            if "dstore_get" not in checked:
                checked["dstore_get"] = b.same_bytes(f, out)
            M.rm(out)
            M.rm(home)
            return {"seconds": r["seconds"], "cpu_s": r["cpu_s"]}

        solo_url, solo_pid = solo.peers[0].url, solo.pids()[0]
        fleet_url, fleet_pid = _pointer_holder(fleet, cids["fleet"])
        items = {
            "static": curl(f"{server.url}/file.bin", "static", True),
            "solo_file": curl(f"{solo_url}/ipfs/{cids['solo']}", "solo_file", True, solo_pid),
            "solo_car": curl(f"{solo_url}/ipfs/{cids['solo']}?format=car", "solo_car", False, solo_pid),
            "fleet_file": curl(f"{fleet_url}/ipfs/{cids['fleet']}", "fleet_file", True, fleet_pid),
            "fleet_car": curl(f"{fleet_url}/ipfs/{cids['fleet']}?format=car", "fleet_car", False, fleet_pid),
            "dstore_get": dstore_get,
        }
        runs = b.interleaved(items, size)
    finally:
        if server is not None:
            server.kill()
        solo.close()
        fleet.close()
        M.rm(base)
    served = [n for n in items if n.startswith(("solo", "fleet"))]  # answered by a peer's gateway
    ratio_runs = {k: b.ratios(runs, *k.split("/")) for k in PAIRS}
    ratio = {k: M.median(v) for k, v in ratio_runs.items()}
    return {
        "description": f"{size >> 20} MiB incompressible, added --shards {SHARDS}: curl of a peer's /ipfs/{{dataset}} "
        "(the file) and ?format=car, from one peer holding every shard (vs curl of the file from a plain aiohttp "
        f"static server) and from one of {N_PEERS} peers holding the shards spread (vs dstore get from them)",
        "bytes": size,
        "verified": checked,
        "runs": runs,
        "median_gbps": {n: b.med(runs, n) for n in items},
        "median_peer_cpu_s_per_gib": {n: b.med(runs, n, "peer_cpu_s_per_gib") for n in served},
        "max_peer_rss_mib": {n: max(r[n].get("peer_rss_mib") or 0 for r in runs) for n in served},
        "ratio_runs": ratio_runs,
        "ratio": ratio,
        "target": {k: f">= {v}" for k, v in PAIRS.items()},
        "pass": {k: None if ratio[k] is None else ratio[k] >= v for k, v in PAIRS.items()},
        "errors": b.errors(runs),
    }


LABELS = {
    "solo_file/static": ("peer holding every shard: /ipfs/{dataset} with curl", "curl of the static file"),
    "solo_car/static": ("peer holding every shard: ?format=car with curl", "curl of the static file"),
    "fleet_file/dstore_get": (f"shards over {N_PEERS} peers: /ipfs/{{dataset}} from one", "dstore get"),
    "fleet_car/dstore_get": (f"shards over {N_PEERS} peers: ?format=car from one", "dstore get"),
}


def rows(S: dict, row: Any, fmt: Any) -> None:
    s = S.get("gateway")
    if not s:
        return
    if "error" in s and "runs" not in s:
        row("gateway reads", "ERROR", str(s["error"])[:80], "n/a", "", "n/a")
        return
    g = s["median_gbps"]
    cpu, rss = s.get("median_peer_cpu_s_per_gib", {}), s.get("max_peer_rss_mib", {})
    for key, (what, ref) in LABELS.items():
        a, r = key.split("/")
        ratio = s["ratio"].get(key)
        peer = f"; peer {cpu[a]:.2f} core-s/GiB, peak {rss.get(a) or 0:.0f} MiB" if cpu.get(a) is not None else ""
        row(
            f"{s['bytes'] >> 20:,} MiB through a gateway, {what} (GB/s{peer})",
            fmt(g.get(a)),
            f"{ref} {fmt(g.get(r))}",
            fmt(ratio, "{:.2f}"),
            s["target"][key],
            "n/a" if ratio is None else ("PASS" if s["pass"][key] else "FAIL"),
        )
