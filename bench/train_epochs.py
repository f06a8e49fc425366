#!/usr/bin/env python3
"""DataLoader epochs only (the epoch rows of section `train`, quicker): samples/s and CPU seconds.

    python bench/train_epochs.py ROUNDS [dstore] [local] [webdataset] [mosaic]

Starts 14 peers (tests/peerutil.py, scrubbing off) on tmpfs, adds the first 10,000 files of the
`images` tree (hard links from $BENCH_SHM/data/tree-images, which `bench/run.py` makes) at 10+4, and
runs each loader's epoch through `python bench/train.py epoch` as section `train` does: dstore cold
(fresh home and cache) then warm (same cache). Prints one JSON line per epoch: samples/s, the epoch's
CPU seconds (loop process + workers, and each), the whole process's CPU seconds and the peers' CPU
seconds. Each run works in a folder of its own under $BENCH_SHM/work, so several may run at once.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from peerutil import PeerProcess  # noqa: E402

SHM = Path(os.environ.get("BENCH_SHM", "/dev/shm/dstore-bench"))
WORK = SHM / "work" / f"train-epochs-{os.getpid()}"  # one per run: several may run at once
FILES = 10_000
TOKEN = "dstore-bench-token"


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    kinds = sys.argv[2:] or ["dstore", "local", "webdataset", "mosaic"]
    shutil.rmtree(WORK, ignore_errors=True)
    tree, total = WORK / "tree", 0
    for i in range(FILES):
        rel = Path(f"class_{i % 100:03d}") / f"{i:06d}.jpg"
        (tree / rel.parent).mkdir(parents=True, exist_ok=True)
        os.link(SHM / "data" / "tree-images" / rel, tree / rel)
        total += (tree / rel).stat().st_size
    env0 = dict(os.environ, PYTHONPATH=str(HERE.parent))
    peers = [PeerProcess(WORK / f"peer{i}", token=TOKEN, scrub_rate=0) for i in range(14)]
    server = None
    try:
        for p in peers:
            p._spawn()
        for p in peers:
            p._wait_started(60)
        urls = ",".join(p.url for p in peers)
        env = dict(env0, DSTORE_HOME=str(WORK / "adder"), DSTORE_PEERS=urls, DSTORE_TOKEN=TOKEN)
        add = [sys.executable, "-m", "dstore", "add", str(tree), "--shards", "10+4", "--json", "-q"]
        added = subprocess.run(add, env=env, capture_output=True, text=True, check=True)
        cid = json.loads(added.stdout.strip().splitlines()[-1])["cid"]
        train = [sys.executable, str(HERE / "train.py")]
        if "webdataset" in kinds:
            out = subprocess.run(
                [*train, "wds-write", json.dumps({"tree": str(tree), "out": str(WORK / "wds"), "seed": 1})],
                env=env0,
                capture_output=True,
                text=True,
                check=True,
            )
            sys.path.insert(0, str(HERE))
            import peers as P

            server = P.Server(["serve", str(WORK / "wds")])
            wds_urls = [f"{server.url}/{n}" for n in json.loads(out.stdout.splitlines()[-1])["shards"]]
        if "mosaic" in kinds:
            mds = {"tree": str(tree), "out": str(WORK / "mds")}
            subprocess.run([*train, "mds-write", json.dumps(mds)], env=env0, capture_output=True, check=True)

        def epoch(label: str, args: dict, env: dict) -> None:
            peers0 = sum(_cpu_s(p.proc.pid) for p in peers)
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            r = subprocess.run([*train, "epoch", json.dumps(args)], env=env, capture_output=True, text=True)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if r.returncode:
                print(json.dumps({"label": label, "error": r.stderr[-2000:]}), flush=True)
                return
            out = json.loads(r.stdout.strip().splitlines()[-1])
            row = {
                "label": label,
                "samples_per_s": round(out["samples_per_s"]),
                "epoch_s": round(out["seconds"], 2),
                "epoch_cpu_s": round(out["main_cpu_s"] + out["workers_cpu_s"], 2),
                "workers_cpu_s": round(out["workers_cpu_s"], 2),
                "main_cpu_s": round(out["main_cpu_s"], 2),
                "process_cpu_s": round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 2),
                "peers_cpu_s": round(sum(_cpu_s(p.proc.pid) for p in peers) - peers0, 2),
                "worker_pss_mib": round(out["worker_pss_mib"] or 0),
                "load": round(os.getloadavg()[0], 1),
            }
            print(json.dumps(row), flush=True)

        for rnd in range(rounds):
            base = {"seed": rnd, "files": FILES, "bytes": total}
            d = WORK / "epoch"
            for kind in kinds:
                shutil.rmtree(d, ignore_errors=True)
                d.mkdir()
                if kind == "dstore":
                    args = base | {"kind": "dstore", "cid": cid, "peers": urls, "cache": str(d / "cache")}
                    env = dict(env0, DSTORE_HOME=str(d / "home"), DSTORE_PEERS="")
                    epoch("dstore cold", args, env)
                    epoch("dstore warm", args, env)
                elif kind == "local":
                    epoch(kind, base | {"kind": "local", "root": str(tree)}, env0)
                elif kind == "webdataset":
                    epoch(kind, base | {"kind": "webdataset", "urls": wds_urls}, env0)
                elif kind == "mosaic":
                    mosaic = {"kind": "mosaic", "remote": str(WORK / "mds"), "local": str(d / "mds-local")}
                    epoch(kind, base | mosaic, env0)
    finally:
        for p in peers:
            p.kill()
        if server is not None:
            server.kill()
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
