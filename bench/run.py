#!/usr/bin/env python3
"""dstore benchmark harness (`make bench`).

Generates deterministic inputs once (cached under $BENCH_SHM/data, tmpfs),
then measures dstore against reference tools, each measurement repeated
BENCH_RUNS times with dstore and its references interleaved in the same run,
and writes bench/results/{results.json,results.md,throughput.png}.

Environment:
  BENCH_SIZE_MIB  size of the incompressible and CSV inputs (default 1024)
  BENCH_RSS_MIB   size of the incompressible input for the peak-RSS check (default 3072)
  BENCH_RUNS      repetitions of every timed measurement (default 3)
  BENCH_SEED      seed of the generated data (default 1)
  BENCH_SHM       tmpfs folder for data, stores and outputs (default /dev/shm/dstore-bench)
  BENCH_DISK      disk folder for the durable-store case (default bench/work)
  BENCH_RESULTS   where results go (default bench/results)
  BENCH_DISK_SETTLE_S pause before each timed disk write (default 10)
  BENCH_TIMEOUT_S per-command timeout in seconds (default 1800)
  BENCH_MAX_LOAD  if set, wait before each section until the 1-min load average is below it
                  (at most BENCH_MAX_WAIT_S, default 600 s)
  BENCH_ONLY      comma-separated subset of:
                  add_tmpfs,add_disk,get_tmpfs,get_disk,rss,csv,dedup,small,scaling,stages,get_stages,peers,kubo,gateway,train
                  and, only when named: files1m (peak RSS of add/get of 1,000,000 files on disk)
  BENCH_CHECKOUT  run `python -m dstore` from this checkout (default: the one holding bench/)
  BENCH_MERGE     1 (default): sections not run keep their results from BENCH_RESULTS/results.json;
                  0: results.json holds only this run's sections

See bench/README.md for the method.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import datagen
import gateway
import get_stages
import kubo
import measure as M
import peers
import report
import small
import train

SECTIONS = [
    "add_tmpfs",
    "add_disk",
    "get_tmpfs",
    "get_disk",
    "rss",
    "csv",
    "dedup",
    "small",
    "scaling",
    "stages",
    "get_stages",
    "peers",
    "kubo",
    "gateway",
    "train",
]
# Run only when named in BENCH_ONLY (too long for every `make bench`).
OPT_IN_SECTIONS = ["files1m"]
SHARDS = "10+4"
SHARDS_NO_PARITY = "10+0"


class Bench:
    def __init__(self, args: argparse.Namespace):
        env = os.environ
        self.size = int(env.get("BENCH_SIZE_MIB", "1024")) * M.MiB
        self.rss_size = int(env.get("BENCH_RSS_MIB", "3072")) * M.MiB
        self.runs = max(1, int(env.get("BENCH_RUNS", "3")))
        self.seed = int(env.get("BENCH_SEED", "1"))
        self.shm = Path(env.get("BENCH_SHM", "/dev/shm/dstore-bench"))
        self.disk = Path(env.get("BENCH_DISK", str(HERE / "work")))
        self.results_dir = Path(env.get("BENCH_RESULTS", str(HERE / "results")))
        only = args.only or env.get("BENCH_ONLY", "")
        self.only = [s.strip() for s in only.split(",") if s.strip()] or SECTIONS
        bad = set(self.only) - set(SECTIONS) - set(OPT_IN_SECTIONS)
        if bad:
            sys.exit(f"unknown section(s) {sorted(bad)}; choose from {SECTIONS + OPT_IN_SECTIONS}")
        self.here = HERE
        # Every dstore (and peer) process imports dstore from this checkout, whatever
        # the editable install points to: results.json records this checkout's commit.
        self.checkout = Path(env.get("BENCH_CHECKOUT", str(REPO))).resolve()
        os.environ["PYTHONPATH"] = os.pathsep.join([str(self.checkout), *filter(None, [env.get("PYTHONPATH")])])
        self.data = self.shm / "data"
        self.tmp = self.shm / "work"
        for d in (self.data, self.tmp, self.disk, self.results_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.results: dict = {}
        self.dstore_ok = False
        self.dstore_error: str | None = None

    # ---- commands -------------------------------------------------------------

    @staticmethod
    def dstore_cmd() -> list[str]:
        return [sys.executable, "-m", "dstore"]

    def dstore_add(self, path: Path, home: Path, shards: str) -> dict:
        if not self.dstore_ok:
            raise RuntimeError(f"dstore unavailable: {self.dstore_error}")
        r = M.run_timed(
            self.dstore_cmd() + ["add", str(path), "--shards", shards, "--json", "-q"], env={"DSTORE_HOME": str(home)}
        )
        return {"seconds": r["seconds"], "cpu_s": r["cpu_s"], "json": M.last_json(r["stdout"])}

    def dstore_get(self, cid: str, out: Path, home: Path) -> dict:
        if not self.dstore_ok:
            raise RuntimeError(f"dstore unavailable: {self.dstore_error}")
        r = M.run_timed(self.dstore_cmd() + ["get", cid, "-o", str(out), "-q"], env={"DSTORE_HOME": str(home)})
        return {"seconds": r["seconds"], "cpu_s": r["cpu_s"]}

    @staticmethod
    def ref(what: str, path: Path) -> dict:
        r = M.run_timed([sys.executable, str(HERE / "refs.py"), what, str(path)])
        return {"seconds": r["seconds"], "cpu_s": r["cpu_s"], "inner": M.last_json(r["stdout"])}

    @staticmethod
    def same_bytes(a: Path, b: Path) -> bool:
        return subprocess.run(["cmp", "-s", str(a), str(b)], check=False).returncode == 0

    # ---- plumbing -------------------------------------------------------------

    def log(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def attempt(self, fn, *a, **kw) -> dict:
        try:
            return fn(*a, **kw)
        except Exception as e:  # noqa: BLE001 - one failing item must not lose the others
            self.log(f"  error: {e}")
            return {"error": f"{type(e).__name__}: {e}"}

    def interleaved(self, items: dict, nbytes: int) -> list[dict]:
        """BENCH_RUNS runs; in each, every item once, order rotated by run."""
        names = list(items)
        runs = []
        for i in range(self.runs):
            order = names[i % len(names) :] + names[: i % len(names)]
            run = {}
            for name in order:
                res = self.attempt(items[name], i)
                if "seconds" in res and "error" not in res:
                    res["gbps"] = nbytes / res["seconds"] / M.GB
                    self.log(f"  run {i + 1}/{self.runs} {name}: {res['seconds']:.3f} s, {res['gbps']:.3f} GB/s")
                run[name] = res
            runs.append(run)
        return runs

    @staticmethod
    def med(runs: list[dict], name: str, key: str = "gbps") -> float | None:
        return M.median([r[name].get(key) for r in runs if name in r and "error" not in r[name]])

    @staticmethod
    def ratios(runs: list[dict], a: str, b: str, key: str = "gbps", invert: bool = False) -> list:
        out = []
        for r in runs:
            x, y = r.get(a, {}).get(key), r.get(b, {}).get(key)
            if x is None or y is None or "error" in r[a] or "error" in r[b]:
                out.append(None)
            else:
                out.append(y / x if invert else x / y)
        return out

    def errors(self, runs: list[dict]) -> dict:
        errs = {}
        for r in runs:
            for name, res in r.items():
                if "error" in res:
                    errs.setdefault(name, res["error"])
        return errs

    # ---- setup ----------------------------------------------------------------

    def smoke(self) -> None:
        """Does `dstore add`/`get` work at all? (1 MiB file, exact round trip.)"""
        src = self.tmp / "smoke.bin"
        home, out = self.tmp / "smoke-home", self.tmp / "smoke-out"
        for p in (home, out):
            M.rm(p)
        src.write_bytes(os.urandom(1 << 20))
        # The measured checkout's bytecode, as an installed package has it: with PYTHONDONTWRITEBYTECODE
        # set, each command would otherwise compile dstore again (about 0.5 s of every run).
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(self.checkout / "dstore")], check=False)
        self.dstore_ok = True
        try:
            r = self.dstore_add(src, home, SHARDS)
            j = r["json"]
            missing = [k for k in ("cid", "bytes_in", "new_bytes_stored") if k not in j]
            if missing:
                raise RuntimeError(f"add --json lacks {missing}: {j}")
            self.dstore_get(j["cid"], out, home)
            if not self.same_bytes(src, out):
                raise RuntimeError("get returned different bytes")
            self.dstore_error = None
        except Exception as e:  # noqa: BLE001 - any failure means "dstore not usable yet"
            self.dstore_ok = False
            self.dstore_error = f"{type(e).__name__}: {e}"
        finally:
            for p in (home, out, src):
                M.rm(p)
        self.results["dstore_smoke"] = {
            "ok": self.dstore_ok,
            "error": self.dstore_error,
            "command": self.dstore_cmd(),
            "checkout": str(self.checkout),
        }
        self.log(f"dstore smoke test: {'ok' if self.dstore_ok else self.dstore_error}")

    def generate(self) -> None:
        t0 = time.perf_counter()
        need = set(self.only)
        self.inputs = {}
        big_file_sections = {"add_tmpfs", "add_disk", "get_tmpfs", "get_disk", "scaling", "stages", "get_stages"}
        if need & (big_file_sections | {"peers", "kubo", "gateway", "train"}):
            self.random_path = self.data / f"random-{self.size // M.MiB}MiB.bin"
            self.log(f"data: {self.random_path}")
            self.inputs["random"] = dict(
                datagen.incompressible(self.random_path, self.size, self.seed), path=str(self.random_path)
            )
        if need & {"csv", "dedup"}:
            self.csv_path = self.data / f"events-{self.size // M.MiB}MiB.csv"
            self.log(f"data: {self.csv_path}")
            self.csv_meta = datagen.csv_v1(self.csv_path, self.size, self.seed)
            self.inputs["csv"] = dict(self.csv_meta, path=str(self.csv_path))
        if "rss" in need:
            self.rss_path = self.data / f"random-rss-{self.rss_size // M.MiB}MiB.bin"
            self.log(f"data: {self.rss_path}")
            self.inputs["rss"] = dict(
                datagen.incompressible(self.rss_path, self.rss_size, self.seed, kind="random-rss"),
                path=str(self.rss_path),
            )
        self.results["inputs"] = self.inputs
        self.results["data_seconds"] = time.perf_counter() - t0

    def warm_up(self) -> None:
        """One untimed run of every program on a small file, so the first timed
        run does not pay for loading binaries and Python modules from disk."""
        src = self.tmp / "warm.bin"
        src.write_bytes(os.urandom(4 << 20))
        home = self.tmp / "warm-home"
        M.rm(home)
        if self.dstore_ok:
            self.attempt(self.dstore_add, src, home, SHARDS)
        for what in ("xet", "cdc", "floor"):
            self.attempt(self.ref, what, src)
        M.rm(home)
        M.rm(src)

    # ---- measurements ---------------------------------------------------------

    def startup(self) -> dict:
        """Fixed cost of one command (interpreter, imports, store creation): `dstore add`
        of a 4 KiB file to a fresh store, and the xet reference on the same file.
        Informational: it is part of every whole-command timing."""
        src, home = self.tmp / "tiny.bin", self.tmp / "home-tiny"
        src.write_bytes(os.urandom(4096))
        out: dict = {"dstore_add_4KiB_s": [], "xet_4KiB_s": []}
        for _ in range(self.runs):
            M.rm(home)
            r = self.attempt(self.dstore_add, src, home, SHARDS)
            out["dstore_add_4KiB_s"].append(r.get("seconds"))
            out["xet_4KiB_s"].append(self.attempt(self.ref, "xet", src).get("seconds"))
        M.rm(home)
        M.rm(src)
        out["median"] = {k: M.median(v) for k, v in list(out.items())}
        self.log(f"  startup (4 KiB input): {out['median']}")
        return out

    def add_tmpfs(self) -> dict:
        f, home = self.random_path, self.tmp / "home"

        def dstore(i):
            M.rm(home)
            r = self.dstore_add(f, home, SHARDS)
            M.rm(home)
            return r

        items = {
            "dstore": dstore,
            "xet": lambda i: self.ref("xet", f),
            "cdc_loop": lambda i: self.ref("cdc", f),
            "floor": lambda i: self.ref("floor", f),
        }
        runs = self.interleaved(items, self.size)
        sec = {
            "startup": self.startup(),
            "description": f"dstore add --shards {SHARDS} of {self.size // M.MiB} MiB incompressible, "
            "input and store on tmpfs, fresh DSTORE_HOME per run",
            "bytes": self.size,
            "store_fs": M.fs_type(home.parent),
            "references": {
                "xet": "hf_xet.hash_files([path]) (Xet Rust chunking + hashing), whole python process",
                "cdc_loop": "Python loop: pyfastcdc.FastCDC(avg 64 KiB, min 16 KiB, max 256 KiB, NC 2)"
                ".cut_file + blake3 per chunk, whole python process",
                "floor": "read file in 16 MiB blocks + blake3(max_threads=AUTO), whole python process",
            },
            "runs": runs,
            "median_gbps": {n: self.med(runs, n) for n in items},
            "ratio_runs": {f"dstore/{n}": self.ratios(runs, "dstore", n) for n in ("xet", "cdc_loop", "floor")},
            "target": {"dstore/xet": ">= 1.0"},
        }
        sec["ratio"] = {k: M.median(v) for k, v in sec["ratio_runs"].items()}
        r = sec["ratio"]["dstore/xet"]
        sec["pass"] = None if r is None else r >= 1.0
        sec["errors"] = self.errors(runs)
        return sec

    def add_disk(self) -> dict:
        f, home = self.random_path, self.disk / "home"
        dd_file = self.disk / "dd.bin"
        block = 4 * M.MiB
        count = math.ceil(self.size * 1.4 / block)

        settle = float(os.environ.get("BENCH_DISK_SETTLE_S", "10"))

        def quiesce():
            # The previous run's files are deleted and synced; with the `discard` mount
            # option the freed blocks are then discarded asynchronously, and a write
            # right after that lands on not-yet-discarded blocks of the virtual disk,
            # which measured up to 4x faster here. Waiting puts every timed write
            # (dstore's and dd's) on the same footing.
            M.sync()
            time.sleep(settle)
            M.sync()

        def dstore(i):
            M.rm(home)
            quiesce()
            r = self.dstore_add(f, home, SHARDS)
            r["home_bytes"] = M.du_bytes(home)
            M.rm(home)
            M.sync()
            return r

        def dd(i):
            M.rm(dd_file)
            quiesce()
            r = M.run_timed(
                ["dd", "if=/dev/zero", f"of={dd_file}", f"bs={block}", f"count={count}", "conv=fsync", "status=none"]
            )
            M.rm(dd_file)
            M.sync()
            return {
                "seconds": r["seconds"],
                "bytes_written": count * block,
                "write_gbps": count * block / r["seconds"] / M.GB,
            }

        items = {"dstore": dstore, "dd": dd}
        runs = self.interleaved(items, self.size)
        sec = {
            "description": f"dstore add --shards {SHARDS} of {self.size // M.MiB} MiB incompressible "
            "from tmpfs, store on disk (durable: dstore fsyncs shards)",
            "bytes": self.size,
            "store_fs": M.fs_type(self.disk),
            "references": {
                "dd": f"dd if=/dev/zero of=<disk file> bs=4M count={count} conv=fsync "
                f"({count * block} bytes = input x 1.4, what {SHARDS} stores); "
                "gbps = input bytes / dd time",
            },
            "cache_note": "The input is on tmpfs (no page-cache distinction). Before every timed "
            "command the store / dd file of the previous run is deleted, `sync` runs, then a "
            f"{settle:g} s pause (BENCH_DISK_SETTLE_S) lets the discard of the freed blocks finish "
            "(the disk is mounted with `discard`; writes right after a delete were up to 4x faster), "
            "then `sync` again; page cache is not dropped (writes are the cost measured, and both "
            "sides fsync).",
            "mount": M.mount_options(self.disk),
            "settle_s": settle,
            "runs": runs,
            "median_gbps": {n: self.med(runs, n) for n in items},
            "median_dd_write_gbps": self.med(runs, "dd", "write_gbps"),
            "ratio_runs": {"dstore/dd": self.ratios(runs, "dstore", "dd")},
            "target": {"dstore/dd": ">= 0.8"},
        }
        sec["ratio"] = {k: M.median(v) for k, v in sec["ratio_runs"].items()}
        r = sec["ratio"]["dstore/dd"]
        sec["pass"] = None if r is None else r >= 0.8
        sec["errors"] = self.errors(runs)
        return sec

    def get_tmpfs(self) -> dict:
        f, home = self.random_path, self.tmp / "home-get"
        out, cp_out = self.tmp / "get-out.bin", self.tmp / "cp-out.bin"
        M.rm(home)
        setup = self.attempt(self.dstore_add, f, home, SHARDS)
        cid = setup.get("json", {}).get("cid")
        verified: dict = {}

        def dstore(i):
            if cid is None:
                raise RuntimeError(f"setup add failed: {setup.get('error')}")
            M.rm(out)
            r = self.dstore_get(cid, out, home)
            if "identical" not in verified:
                verified["identical"] = self.same_bytes(f, out)
                if not verified["identical"]:
                    raise RuntimeError("dstore get returned different bytes")
            M.rm(out)
            return r

        def cp(i):
            M.rm(cp_out)
            r = M.run_timed(["cp", str(f), str(cp_out)])
            M.rm(cp_out)
            return {"seconds": r["seconds"]}

        items = {"dstore": dstore, "cp": cp}
        try:
            runs = self.interleaved(items, self.size)
        finally:
            M.rm(home)
        sec = {
            "description": f"dstore get of the {self.size // M.MiB} MiB incompressible dataset "
            f"(added with --shards {SHARDS}); store and output on tmpfs",
            "bytes": self.size,
            "setup_add": setup,
            "output_verified_identical": verified.get("identical"),
            "references": {"cp": "cp <original> <tmpfs file>"},
            "runs": runs,
            "median_gbps": {n: self.med(runs, n) for n in items},
            "ratio_runs": {"dstore/cp": self.ratios(runs, "dstore", "cp")},
            "target": {"dstore/cp": ">= 0.7"},
        }
        sec["ratio"] = {k: M.median(v) for k, v in sec["ratio_runs"].items()}
        r = sec["ratio"]["dstore/cp"]
        sec["pass"] = None if r is None else r >= 0.7
        sec["errors"] = self.errors(runs)
        return sec

    def rss(self) -> dict:
        f, home, out = self.rss_path, self.tmp / "home-rss", self.tmp / "rss-out.bin"
        runs = []
        verified = None
        for i in range(self.runs):
            run = {}
            M.rm(home)
            M.rm(out)
            if not self.dstore_ok:
                run = {"add": {"error": f"dstore unavailable: {self.dstore_error}"}}
                runs.append(run)
                continue
            run["add"] = self.attempt(
                M.run_peak_rss,
                self.dstore_cmd() + ["add", str(f), "--shards", SHARDS, "--json", "-q"],
                env={"DSTORE_HOME": str(home)},
                maxrss_file=self.tmp / "maxrss.txt",
            )
            cid = None
            if "error" not in run["add"]:
                cid = self.attempt(M.last_json, run["add"].pop("stdout")).get("cid")
                run["add"].pop("stderr", None)
            if cid:
                run["get"] = self.attempt(
                    M.run_peak_rss,
                    self.dstore_cmd() + ["get", cid, "-o", str(out), "-q"],
                    env={"DSTORE_HOME": str(home)},
                    maxrss_file=self.tmp / "maxrss.txt",
                )
                for k in ("stdout", "stderr"):
                    run["get"].pop(k, None)
                if verified is None and "error" not in run["get"]:
                    verified = self.same_bytes(f, out)
            for k in ("add", "get"):
                if k in run and "error" not in run[k]:
                    run[k]["gbps"] = self.rss_size / run[k]["seconds"] / M.GB
                    self.log(
                        f"  run {i + 1}/{self.runs} {k}: peak RSS {run[k]['peak_rss_mib']:.0f} MiB "
                        f"(tree anon {run[k]['peak_tree_rss_anon_mib']:.0f}, "
                        f"file {run[k]['peak_tree_rss_file_mib']:.0f}, "
                        f"shmem {run[k]['peak_tree_rss_shmem_mib']:.0f}), {run[k]['gbps']:.3f} GB/s"
                    )
            M.rm(out)
            M.rm(home)
            runs.append(run)

        def peak(k):
            xs = [r[k]["peak_rss_mib"] for r in runs if k in r and "error" not in r[k]]
            return max(xs) if xs else None

        sec = {
            "description": f"peak RSS of dstore add --shards {SHARDS} and dstore get of a "
            f"{self.rss_size // M.MiB} MiB incompressible file (tmpfs)",
            "bytes": self.rss_size,
            "method": "the command runs under GNU time (/usr/bin/time -f %M: the kernel's maximum "
            "RSS of the dstore process) while psutil polls its process tree every 10 ms, "
            "summing VmRSS (and RssAnon/RssFile/RssShmem) over dstore and all descendants; "
            "peak_rss_mib = max of the two; the reported value is the max over runs. "
            "Pages of a tmpfs file the process maps count in its RSS (RssShmem).",
            "output_verified_identical": verified,
            "runs": runs,
            "peak_rss_mib": {"add": peak("add"), "get": peak("get")},
            "median_gbps": {
                k: M.median([r[k]["gbps"] for r in runs if k in r and "error" not in r[k]]) for k in ("add", "get")
            },
            "target": {"add": "<= 400 MiB", "get": "<= 400 MiB"},
        }
        sec["pass"] = {k: (None if v is None else v <= 400) for k, v in sec["peak_rss_mib"].items()}
        sec["errors"] = self.errors(runs)
        return sec

    def csv(self) -> dict:
        f, home = self.csv_path, self.tmp / "home-csv"
        zout = self.tmp / "csv.zst"

        def dstore(shards):
            def go(i):
                M.rm(home)
                r = self.dstore_add(f, home, shards)
                r["new_bytes_stored"] = r["json"].get("new_bytes_stored")
                M.rm(home)
                return r

            return go

        def zstd(i):
            M.rm(zout)
            r = M.run_timed(["zstd", "-3", "-q", "-f", str(f), "-o", str(zout)])
            size = zout.stat().st_size
            M.rm(zout)
            return {"seconds": r["seconds"], "compressed_bytes": size}

        items = {"dstore": dstore(SHARDS), "dstore_no_parity": dstore(SHARDS_NO_PARITY), "zstd": zstd}
        runs = self.interleaved(items, f.stat().st_size)
        stored = M.median(
            [
                r["dstore_no_parity"].get("new_bytes_stored")
                for r in runs
                if "error" not in r.get("dstore_no_parity", {"error": 1})
            ]
        )
        zsize = M.median([r["zstd"].get("compressed_bytes") for r in runs if "error" not in r["zstd"]])
        size_ratios = [
            None
            if (
                "error" in r["dstore_no_parity"]
                or "error" in r["zstd"]
                or r["dstore_no_parity"].get("new_bytes_stored") is None
            )
            else r["dstore_no_parity"]["new_bytes_stored"] / r["zstd"]["compressed_bytes"]
            for r in runs
        ]
        gbps = self.med(runs, "dstore")
        sec = {
            "description": f"CSV ({f.stat().st_size} bytes, {self.csv_meta.get('rows')} rows) on tmpfs: "
            f"dstore add throughput (--shards {SHARDS}) and stored bytes "
            f"(--shards {SHARDS_NO_PARITY}: new_bytes_stored, no parity) vs zstd -3",
            "bytes": f.stat().st_size,
            "references": {"zstd": "zstd -3 -q -f <csv> -o <tmpfs>.zst (whole file, zstd CLI defaults)"},
            "runs": runs,
            "median_gbps": {n: self.med(runs, n) for n in items},
            "dstore_stored_bytes": stored,
            "zstd_bytes": zsize,
            "ratio_runs": {"stored/zstd": size_ratios},
            "target": {"stored/zstd": "<= 1.15", "dstore_gbps": ">= 0.45"},
        }
        sec["ratio"] = {"stored/zstd": M.median(size_ratios)}
        sec["pass"] = {
            "stored/zstd": None if sec["ratio"]["stored/zstd"] is None else sec["ratio"]["stored/zstd"] <= 1.15,
            "dstore_gbps": None if gbps is None else gbps >= 0.45,
        }
        sec["errors"] = self.errors(runs)
        return sec

    def dedup(self) -> dict:
        v1 = self.csv_path
        v2 = self.tmp / "v2.csv"
        home = self.tmp / "home-dedup"
        repo, stage = self.tmp / "restic-repo", self.tmp / "restic-stage"
        pw = self.tmp / "restic-password"
        pw.write_text("dstore-bench\n")
        restic = ["restic", "--repo", str(repo), "--password-file", str(pw), "--no-cache"]
        restic_info: dict = {}

        def dstore_case():
            M.rm(home)
            a = self.dstore_add(v1, home, SHARDS_NO_PARITY)
            du0 = M.du_bytes(home)
            b = self.dstore_add(v2, home, SHARDS_NO_PARITY)
            du1 = M.du_bytes(home)
            M.rm(home)
            return {
                "v1": a,
                "v2": b,
                "new_bytes_stored": b["json"].get("new_bytes_stored"),
                "new_metadata_bytes": b["json"].get("new_metadata_bytes"),
                "home_growth_bytes": du1 - du0,
                "v1_home_bytes": du0,
            }

        def restic_backup() -> dict:
            r = M.run_timed(restic + ["backup", "--json", "--host", "bench", str(stage)])
            summary = {}
            for line in r["stdout"].splitlines():
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if msg.get("message_type") == "summary":
                    summary = msg
            return {"seconds": r["seconds"], "summary": summary}

        def restic_case():
            M.rm(repo)
            M.rm(stage)
            stage.mkdir()
            M.run_timed(restic + ["init"])
            if not restic_info:
                cfg = M.run_timed(restic + ["cat", "config"], check=False)
                try:
                    restic_info["repo_config"] = json.loads(cfg["stdout"])
                except ValueError:
                    restic_info["repo_config"] = cfg["stdout"].strip()
            os.link(v1, stage / "data.csv")
            a = restic_backup()
            du0 = M.du_bytes(repo)
            (stage / "data.csv").unlink()
            os.link(v2, stage / "data.csv")
            b = restic_backup()
            du1 = M.du_bytes(repo)
            M.rm(repo)
            M.rm(stage)
            return {"v1": a, "v2": b, "repo_growth_bytes": du1 - du0, "v1_repo_bytes": du0}

        cases = {}
        for kind in ("edit", "append", "insert"):
            self.log(f"  dedup case {kind}")
            M.rm(v2)
            info = datagen.csv_v2(kind, v1, v2, self.seed, self.csv_meta)
            runs = []
            for i in range(self.runs):
                # restic picks a random chunker polynomial per repository, so its
                # numbers vary from run to run; dstore's chunking is fixed.
                sides = [("dstore", dstore_case), ("restic", restic_case)]
                run = {name: self.attempt(fn) for name, fn in (sides if i % 2 == 0 else sides[::-1])}
                d, r = run["dstore"], run["restic"]
                run["ratio"] = None
                if "error" not in d and "error" not in r and d.get("new_bytes_stored") is not None:
                    run["ratio"] = d["new_bytes_stored"] / max(1, r["repo_growth_bytes"])
                self.log(
                    f"    run {i + 1}/{self.runs}: dstore new {d.get('new_bytes_stored')} B, "
                    f"restic growth {r.get('repo_growth_bytes')} B, ratio {run['ratio']}"
                )
                runs.append(run)
            M.rm(v2)
            ratio = M.median([r["ratio"] for r in runs])
            cases[kind] = {
                "v2": info,
                "runs": runs,
                "dstore_new_bytes": M.median(
                    [r["dstore"].get("new_bytes_stored") for r in runs if "error" not in r["dstore"]]
                ),
                "dstore_new_metadata_bytes": M.median(
                    [r["dstore"].get("new_metadata_bytes") for r in runs if "error" not in r["dstore"]]
                ),
                "dstore_home_growth_bytes": M.median(
                    [r["dstore"].get("home_growth_bytes") for r in runs if "error" not in r["dstore"]]
                ),
                "restic_growth_bytes": M.median(
                    [r["restic"].get("repo_growth_bytes") for r in runs if "error" not in r["restic"]]
                ),
                "errors": {side: r[side]["error"] for r in runs for side in ("dstore", "restic") if "error" in r[side]},
                "ratio": ratio,
                "pass": None if ratio is None else ratio <= 1.2,
            }
        M.rm(pw)
        return {
            "description": f"second version of the {v1.stat().st_size}-byte CSV, each edit applied "
            f"to the same v1; dstore: fresh store, add v1 then v2 with --shards "
            f"{SHARDS_NO_PARITY}, new_bytes_stored of v2 (no parity); restic: fresh repo, "
            "backup of a folder holding v1 then v2 as data.csv, repo growth (du -sb)",
            "restic": restic_info,
            "cases": cases,
            "target": "dstore new bytes <= 1.2 x restic repo growth, each case",
            "pass": {k: c["pass"] for k, c in cases.items()},
        }

    def get_disk(self) -> dict:
        """get with the store on disk, its pages evicted from the page cache before every run,
        against cp of the same bytes from a disk file (evicted too); outputs on tmpfs."""
        f, home = self.random_path, self.disk / "home-get"
        src = self.disk / "get-src.bin"
        out, cp_out = self.tmp / "get-disk-out.bin", self.tmp / "cp-disk-out.bin"
        M.rm(home)
        setup = self.attempt(self.dstore_add, f, home, SHARDS)
        cid = setup.get("json", {}).get("cid")
        M.run_timed(["cp", str(f), str(src)])
        verified: dict = {}

        def dstore(i):
            if cid is None:
                raise RuntimeError(f"setup add failed: {setup.get('error')}")
            M.rm(out)
            evicted = M.evict_page_cache([home])
            r = self.dstore_get(cid, out, home)
            if "identical" not in verified:
                verified["identical"] = self.same_bytes(f, out)
                if not verified["identical"]:
                    raise RuntimeError("dstore get returned different bytes")
            M.rm(out)
            return r | {"files_evicted": evicted}

        def cp(i):
            M.rm(cp_out)
            M.evict_page_cache([src])
            r = M.run_timed(["cp", str(src), str(cp_out)])
            M.rm(cp_out)
            return {"seconds": r["seconds"], "cpu_s": r["cpu_s"]}

        items = {"dstore": dstore, "cp": cp}
        try:
            runs = self.interleaved(items, self.size)
        finally:
            M.rm(home)
            M.rm(src)
        sec = {
            "description": f"dstore get of the {self.size // M.MiB} MiB incompressible dataset (--shards {SHARDS}) "
            "with the store on disk, output on tmpfs",
            "bytes": self.size,
            "store_fs": M.fs_type(self.disk),
            "mount": M.mount_options(self.disk),
            "setup_add": setup,
            "output_verified_identical": verified.get("identical"),
            "references": {"cp": "cp <copy of the input on the same disk> <tmpfs file>"},
            "cache_note": "before every timed command: sync, then posix_fadvise(DONTNEED) on every file of "
            "the store (dstore) or on the source file (cp), so both read from the disk, not the page "
            "cache (only those files' pages are dropped; the virtual disk's host may still cache)",
            "runs": runs,
            "median_gbps": {n: self.med(runs, n) for n in items},
            "ratio_runs": {"dstore/cp": self.ratios(runs, "dstore", "cp")},
            "target": {"dstore/cp": "— (no target; tmpfs get: >= 0.7)"},
        }
        sec["ratio"] = {k: M.median(v) for k, v in sec["ratio_runs"].items()}
        sec["errors"] = self.errors(runs)
        return sec

    def small(self) -> dict:
        return small.section(self)

    def files1m(self) -> dict:
        return small.files1m(self)

    def scaling(self) -> dict:
        """add and get of the incompressible file pinned to CPU 0 (`taskset -c 0`) and on every
        usable CPU; ratio all/one within each run."""
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return {"error": f"needs two usable CPUs, have {len(cpus)}"}
        one = ["taskset", "-c", str(cpus[0])]
        f = self.random_path
        home_add, home_get, out = self.tmp / "home-scale-add", self.tmp / "home-scale-get", self.tmp / "scale-out.bin"
        M.rm(home_get)
        setup = self.attempt(self.dstore_add, f, home_get, SHARDS)
        cid = setup.get("json", {}).get("cid")
        add_cmd = self.dstore_cmd() + ["add", str(f), "--shards", SHARDS, "--json", "-q"]

        def add(prefix):
            def go(i):
                M.rm(home_add)
                r = M.run_timed(prefix + add_cmd, env={"DSTORE_HOME": str(home_add)})
                M.rm(home_add)
                return {"seconds": r["seconds"], "cpu_s": r["cpu_s"]}

            return go

        def get(prefix):
            def go(i):
                if cid is None:
                    raise RuntimeError(f"setup add failed: {setup.get('error')}")
                M.rm(out)
                r = M.run_timed(
                    prefix + self.dstore_cmd() + ["get", cid, "-o", str(out), "-q"], env={"DSTORE_HOME": str(home_get)}
                )
                M.rm(out)
                return {"seconds": r["seconds"], "cpu_s": r["cpu_s"]}

            return go

        items = {"add_1cpu": add(one), "add_all": add([]), "get_1cpu": get(one), "get_all": get([])}
        try:
            runs = self.interleaved(items, self.size)
        finally:
            M.rm(home_get)
        sec = {
            "description": f"dstore add --shards {SHARDS} and get of {self.size // M.MiB} MiB incompressible "
            f"(tmpfs), pinned to one CPU (`taskset -c {cpus[0]}`) and on all {len(cpus)} usable CPUs",
            "bytes": self.size,
            "cpus": len(cpus),
            "setup_add": setup,
            "runs": runs,
            "median_gbps": {n: self.med(runs, n) for n in items},
            "median_cpu_s": {n: self.med(runs, n, "cpu_s") for n in items},
            "ratio_runs": {
                "add all/1": self.ratios(runs, "add_all", "add_1cpu"),
                "get all/1": self.ratios(runs, "get_all", "get_1cpu"),
            },
            "target": {"add all/1": ">= 1.7", "get all/1": ">= 1.5"},
        }
        sec["ratio"] = {k: M.median(v) for k, v in sec["ratio_runs"].items()}
        sec["pass"] = {
            k: None if sec["ratio"][k] is None else sec["ratio"][k] >= t
            for k, t in (("add all/1", 1.7), ("get all/1", 1.5))
        }
        sec["errors"] = self.errors(runs)
        return sec

    def stages(self) -> dict:
        """Core-seconds per GiB of each stage of the big-file add (bench/stages.py, one stage
        at a time), against its floor; plus the whole `dstore add` and hf_xet processes."""
        f = self.random_path
        work, home = self.tmp / "stages", self.tmp / "home-stages"
        runs = []
        for i in range(self.runs):
            run = {}
            M.rm(work)
            r = self.attempt(M.run_timed, [sys.executable, str(HERE / "stages.py"), str(f), str(work)])
            run["stages"] = M.last_json(r["stdout"]) if "stdout" in r else r
            M.rm(work)
            M.rm(home)
            run["dstore_add"] = self.attempt(self.dstore_add, f, home, SHARDS)
            run["dstore_add"].pop("json", None)
            M.rm(home)
            run["xet"] = self.attempt(self.ref, "xet", f)
            self.log(
                f"  run {i + 1}/{self.runs}: dstore add {run['dstore_add'].get('cpu_s', 0):.2f} CPU-s, "
                f"xet {run['xet'].get('cpu_s', 0):.2f} CPU-s"
            )
            runs.append(run)
        gib = self.size / (1 << 30)
        ok = [r["stages"] for r in runs if "cpu_s" in r["stages"]]
        names = list(ok[0]["cpu_s"]) if ok else []
        cpu = {n: M.median([s["cpu_s"].get(n) for s in ok]) for n in names}
        wall = {n: M.median([s["wall_s"].get(n) for s in ok]) for n in names}
        per_gib = {n: None if v is None else v / gib for n, v in cpu.items()}
        whole = {k: M.median([r[k].get("cpu_s") for r in runs if "error" not in r[k]]) for k in ("dstore_add", "xet")}
        whole_wall = {
            k: M.median([r[k].get("seconds") for r in runs if "error" not in r[k]]) for k in ("dstore_add", "xet")
        }
        sec = {
            "description": f"CPU cost of each stage of dstore add --shards {SHARDS} of {self.size // M.MiB} MiB "
            "incompressible (tmpfs), each native call timed on its own on one calling thread "
            "(bench/stages.py: time.process_time, all threads of the process), against its floor",
            "bytes": self.size,
            "cpus": len(os.sched_getaffinity(0)),
            "runs": runs,
            "stage_cpu_s": cpu,
            "stage_wall_s": wall,
            "core_s_per_gib": per_gib,
            "whole_cpu_s": whole,
            "whole_wall_s": whole_wall,
            "whole_core_s_per_gib": {k: None if v is None else v / gib for k, v in whole.items()},
            "floors": report.STAGE_FLOORS,
            "errors": {k: r[k]["error"] for r in runs for k in r if isinstance(r[k], dict) and "error" in r[k]},
        }
        return sec

    def get_stages(self) -> dict:
        return get_stages.section(self)

    def gateway(self) -> dict:
        return gateway.section(self)

    def kubo(self) -> dict:
        return kubo.section(self)

    def peers(self) -> dict:
        return peers.section(self)

    def train(self) -> dict:
        return train.section(self)

    def wait_for_quiet(self) -> None:
        """With BENCH_MAX_LOAD set, wait (at most BENCH_MAX_WAIT_S, default 600 s) until the
        1-minute load average drops below it: the machine may be shared."""
        limit = os.environ.get("BENCH_MAX_LOAD")
        if not limit:
            return
        deadline = time.monotonic() + float(os.environ.get("BENCH_MAX_WAIT_S", "600"))
        while os.getloadavg()[0] >= float(limit) and time.monotonic() < deadline:
            self.log(f"  waiting for load {os.getloadavg()[0]:.2f} < {limit}")
            time.sleep(15)

    # ---- main -----------------------------------------------------------------

    @staticmethod
    def provenance(machine: dict, config: dict) -> dict:
        """When, at which commit and with which sizes a section was measured."""
        return {
            "date_utc": machine.get("date_utc"),
            "git_commit": machine.get("git_commit"),
            "git_dirty_tracked_files": machine.get("git_dirty_tracked_files"),
            "loadavg_start": machine.get("loadavg_start"),
            "config": {k: config.get(k) for k in ("BENCH_SIZE_MIB", "BENCH_RSS_MIB", "BENCH_RUNS", "BENCH_SEED")},
        }

    def merge_previous(self) -> None:
        """Sections not run this time keep their results from the previous results.json
        (BENCH_MERGE=0: don't). Each section carries its own `measured` provenance; the
        top-level config/machine are this run's."""
        path = self.results_dir / "results.json"
        if os.environ.get("BENCH_MERGE", "1") == "0" or not path.exists():
            return
        try:
            old = json.loads(path.read_text())
        except ValueError as e:
            self.log(f"previous {path} unreadable ({e}); not merged")
            return
        new = self.results["sections"]
        kept = {}
        for name, sec in (old.get("sections") or {}).items():
            if name in new:
                continue
            sec.setdefault("measured", self.provenance(old.get("machine", {}), old.get("config", {})))
            kept[name] = sec
        if not kept:
            return
        merged = {**kept, **new}
        order = {n: i for i, n in enumerate(SECTIONS)}
        self.results["sections"] = dict(sorted(merged.items(), key=lambda kv: order.get(kv[0], len(order))))
        self.results["inputs"] = {**(old.get("inputs") or {}), **self.results.get("inputs", {})}
        self.results["config"]["sections_this_run"] = self.only
        self.results["config"]["sections"] = list(self.results["sections"])
        self.log(f"kept previous results of {sorted(kept)} from {path}")

    def run(self) -> None:
        t0 = time.perf_counter()
        self.results["config"] = {
            "BENCH_SIZE_MIB": self.size // M.MiB,
            "BENCH_RSS_MIB": self.rss_size // M.MiB,
            "BENCH_RUNS": self.runs,
            "BENCH_SEED": self.seed,
            "shm": str(self.shm),
            "shm_fs": M.fs_type(self.shm),
            "disk": str(self.disk),
            "disk_fs": M.fs_type(self.disk),
            "sections": self.only,
            "shards": SHARDS,
            "gb": "10^9 bytes",
            "timing": "time.perf_counter around subprocess.run of the whole command",
            "aggregation": "medians over runs; ratios computed within each run, then their median",
        }
        self.results["machine"] = M.machine_info(REPO)
        self.generate()
        self.smoke()
        self.warm_up()
        sections = {}
        for name in self.only:
            self.wait_for_quiet()
            load = os.getloadavg()
            self.log(f"== {name} (load {load[0]:.2f})")
            t = time.perf_counter()
            try:
                sections[name] = getattr(self, name)()
            except Exception as e:  # noqa: BLE001 - report it, keep the other sections
                traceback.print_exc()
                sections[name] = {"error": f"{type(e).__name__}: {e}"}
            sections[name]["loadavg_before"] = load
            sections[name]["loadavg_after"] = os.getloadavg()
            sections[name]["section_seconds"] = time.perf_counter() - t
        m, c = self.results["machine"], self.results["config"]
        for sec in sections.values():
            sec["measured"] = self.provenance(m, c)
        self.results["sections"] = sections
        self.results["machine"]["loadavg_end"] = os.getloadavg()
        self.results["total_seconds"] = time.perf_counter() - t0
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.merge_previous()
        (self.results_dir / "results.json").write_text(json.dumps(self.results, indent=1, default=str) + "\n")
        md = report.markdown(self.results)
        (self.results_dir / "results.md").write_text(md)
        for plot, png in (
            (report.plot, "throughput.png"),
            (report.plot_small, "small.png"),
            (report.plot_stages, "stages.png"),
        ):
            try:
                plot(self.results, self.results_dir / png)
            except Exception as e:  # noqa: BLE001 - the JSON and table matter more than the chart
                self.log(f"plot {png} failed: {e}")
        print()
        print(report.table(self.results))
        self.log(f"results in {self.results_dir}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated sections (default: all; env BENCH_ONLY)")
    Bench(ap.parse_args()).run()


if __name__ == "__main__":
    main()
