"""Turn results.json into the summary table, results.md and throughput.png."""

from __future__ import annotations

from pathlib import Path

import gateway
import get_stages
import kubo

#: The columns of a result row.
_COLUMNS = ("measurement", "dstore", "reference", "ratio", "target", "pass")

MiB = 1 << 20

# Stage of bench/stages.py -> the floor it is compared with (None: no floor, Python or LMDB work).
STAGE_FLOORS = {
    "read (16 MiB segments, tmpfs)": "floor: memcpy of the input (16 MiB blocks)",
    "chunk + hash + compress (_native.process_segment)": "floor: hf_xet.hash_files (read + chunk + hash)",
    "chunk CIDs + dedup lookup (Python, LMDB)": None,
    "copy chunks into packs (Segment.copy_into)": "floor: memcpy of the input (16 MiB blocks)",
    "erasure code alone (encode_pack - shard hashes)": "floor: memcpy of the input (16 MiB blocks)",
    "shard hashes alone (_native.blake3 per shard)": "floor: BLAKE3 of the shard bytes (16 MiB blocks)",
    "pack record, shard CIDs (Python)": None,
    "shard writes (write, fsync, rename; tmpfs)": "floor: one plain write of the shard bytes (tmpfs)",
    "index commit (LMDB, one transaction per pack)": None,
}
ENCODE = "erasure code + shard hashes (_native.encode_pack)"
SHARD_HASHES = "shard hashes alone (_native.blake3 per shard)"


def _f(x, fmt="{:.3f}", unit=""):
    return "n/a" if x is None else fmt.format(x) + unit


def _f3(x, fmt="{:.3f}"):
    return _f(x, fmt)


def _pass(p):
    return {True: "PASS", False: "FAIL", None: "n/a"}[p]


def _mb(x):
    return "n/a" if x is None else f"{x / 1e6:,.2f} MB"


def _mib(n):
    return f"{n / MiB:,.0f} MiB"


def _size(n):
    return f"{n / MiB:,.0f} MiB" if n and n >= MiB else f"{n} B"


def rows(res: dict) -> list[dict]:
    """One row per (measurement, target) plus informational rows (target '—')."""
    S = res.get("sections", {})
    out = []

    def err_row(name, sec):
        out.append(
            {
                "measurement": name,
                "dstore": "ERROR",
                "reference": sec.get("error", "")[:80],
                "ratio": "n/a",
                "target": "",
                "pass": "n/a",
            }
        )

    s = S.get("add_tmpfs")
    if s:
        if "error" in s and "runs" not in s:
            err_row("add, tmpfs", s)
        else:
            g, r = s["median_gbps"], s["ratio"]
            name = f"add {_mib(s['bytes'])} incompressible --shards 10+4, tmpfs (GB/s)"
            out.append(
                {
                    "measurement": name,
                    "dstore": _f(g["dstore"]),
                    "reference": f"hf_xet.hash_files {_f(g['xet'])}",
                    "ratio": _f(r["dstore/xet"], "{:.2f}"),
                    "target": ">= 1.0",
                    "pass": _pass(s["pass"]),
                }
            )
            out.append(
                {
                    "measurement": "  same, vs Python pyfastcdc + blake3 loop",
                    "dstore": _f(g["dstore"]),
                    "reference": _f(g["cdc_loop"]),
                    "ratio": _f(r["dstore/cdc_loop"], "{:.2f}"),
                    "target": "—",
                    "pass": "info",
                }
            )
            out.append(
                {
                    "measurement": "  same, vs floor: read + blake3 all threads",
                    "dstore": _f(g["dstore"]),
                    "reference": _f(g["floor"]),
                    "ratio": _f(r["dstore/floor"], "{:.2f}"),
                    "target": "—",
                    "pass": "info",
                }
            )
    s = S.get("add_disk")
    if s:
        if "error" in s and "runs" not in s:
            err_row("add, disk", s)
        else:
            g = s["median_gbps"]
            out.append(
                {
                    "measurement": f"add {_mib(s['bytes'])} --shards 10+4, store on disk (GB/s)",
                    "dstore": _f(g["dstore"]),
                    "reference": f"dd 1.4x conv=fsync {_f(g['dd'])} (raw {_f(s['median_dd_write_gbps'])})",
                    "ratio": _f(s["ratio"]["dstore/dd"], "{:.2f}"),
                    "target": ">= 0.8",
                    "pass": _pass(s["pass"]),
                }
            )
    s = S.get("get_tmpfs")
    if s:
        if "error" in s and "runs" not in s:
            err_row("get, tmpfs", s)
        else:
            g = s["median_gbps"]
            out.append(
                {
                    "measurement": f"get {_mib(s['bytes'])}, store + output on tmpfs (GB/s)",
                    "dstore": _f(g["dstore"]),
                    "reference": f"cp {_f(g['cp'])}",
                    "ratio": _f(s["ratio"]["dstore/cp"], "{:.2f}"),
                    "target": ">= 0.7",
                    "pass": _pass(s["pass"]),
                }
            )
    s = S.get("rss")
    if s:
        if "error" in s and "runs" not in s:
            err_row("peak RSS", s)
        else:
            for k in ("add", "get"):
                out.append(
                    {
                        "measurement": f"peak RSS, {k} {_mib(s['bytes'])} (max of runs)",
                        "dstore": _f(s["peak_rss_mib"][k], "{:.0f}", " MiB"),
                        "reference": f"({_f(s['median_gbps'][k])} GB/s)",
                        "ratio": "—",
                        "target": "<= 400 MiB",
                        "pass": _pass(s["pass"][k]),
                    }
                )
    s = S.get("csv")
    if s:
        if "error" in s and "runs" not in s:
            err_row("CSV", s)
        else:
            g = s["median_gbps"]
            out.append(
                {
                    "measurement": f"CSV {_mib(s['bytes'])} stored bytes (--shards 10+0)",
                    "dstore": _mb(s["dstore_stored_bytes"]),
                    "reference": f"zstd -3 {_mb(s['zstd_bytes'])}",
                    "ratio": _f(s["ratio"]["stored/zstd"], "{:.3f}"),
                    "target": "<= 1.15",
                    "pass": _pass(s["pass"]["stored/zstd"]),
                }
            )
            out.append(
                {
                    "measurement": f"CSV {_mib(s['bytes'])} add --shards 10+4, tmpfs (GB/s)",
                    "dstore": _f(g["dstore"]),
                    "reference": f"zstd -3 {_f(g['zstd'])} (info)",
                    "ratio": "—",
                    "target": ">= 0.45 GB/s",
                    "pass": _pass(s["pass"]["dstore_gbps"]),
                }
            )
    s = S.get("dedup")
    if s:
        if "error" in s and "cases" not in s:
            err_row("dedup", s)
        else:
            labels = {
                "edit": "100 scattered row edits",
                "append": "+1% rows appended",
                "insert": "100 B inserted at start",
            }
            for k, c in s["cases"].items():
                d, r = c.get("dstore_new_bytes"), c.get("restic_growth_bytes")
                out.append(
                    {
                        "measurement": f"CSV v2 new bytes: {labels.get(k, k)}",
                        "dstore": (_mb(d) if d is not None else "ERROR")
                        + (
                            f" (+{_mb(c['dstore_new_metadata_bytes'])} metadata)"
                            if c.get("dstore_new_metadata_bytes") is not None
                            else ""
                        ),
                        "reference": f"restic {_mb(r)}" if r is not None else "restic ERROR",
                        "ratio": _f(c["ratio"], "{:.3f}"),
                        "target": "<= 1.2",
                        "pass": _pass(c["pass"]),
                    }
                )
    s = S.get("peers")
    if s:
        if "error" in s and "runs" not in s:
            err_row("peers", s)
        else:
            g, r, p = s["median_gbps"], s["ratio"], s["pass"]
            n, k, sz = s.get("peers", 14), s.get("killed", 4), _mib(s["bytes"])
            out.append(
                {
                    "measurement": f"get {sz} from {n} local peers, 10+4 (GB/s)",
                    "dstore": _f(g["dstore"]),
                    "reference": f"curl --parallel 16, {n} aiohttp static {_f(g['curl'])}",
                    "ratio": _f(r["dstore/curl"], "{:.2f}"),
                    "target": ">= 1.0",
                    "pass": _pass(p["dstore/curl"]),
                }
            )
            out.append(
                {
                    "measurement": "  same, vs one raw TCP stream (sendfile, loopback)",
                    "dstore": _f(g["dstore"]),
                    "reference": _f(g["raw_tcp"]),
                    "ratio": _f(r["dstore/raw_tcp"], "{:.2f}"),
                    "target": "—",
                    "pass": "info",
                }
            )
            out.append(
                {
                    "measurement": f"get {sz} with {k} of {n} peers SIGKILLed (GB/s)",
                    "dstore": _f(g["dstore_4_killed"]),
                    "reference": f"healthy get {_f(g['dstore'])}",
                    "ratio": _f(r["dstore_4_killed/dstore"], "{:.2f}"),
                    "target": ">= 0.75",
                    "pass": _pass(p["dstore_4_killed/dstore"]),
                }
            )
            out.append(
                {
                    "measurement": f"add {sz} to {n} local peers, 10+4 (GB/s of input)",
                    "dstore": _f(g["dstore_add"]),
                    "reference": "—",
                    "ratio": "—",
                    "target": ">= 0.35 GB/s",
                    "pass": _pass(p["add_gbps"]),
                }
            )
            for op in ("add", "get"):
                out.append(
                    {
                        "measurement": f"peer RSS during {op} (max over {n} peers and runs)",
                        "dstore": _f(s["peer_peak_rss_mib"][op], "{:.0f}", " MiB"),
                        "reference": "—",
                        "ratio": "—",
                        "target": "<= 150 MiB",
                        "pass": _pass(p[f"peer_rss_{op}"]),
                    }
                )
            for op in ("add", "get"):
                out.append(
                    {
                        "measurement": f"client peak RSS, {op} {sz} with peers (max of runs)",
                        "dstore": _f(s["client_peak_rss_mib"][op], "{:.0f}", " MiB"),
                        "reference": f"({_f(s['rss_run_median_gbps'][op])} GB/s)",
                        "ratio": "—",
                        "target": "<= 400 MiB",
                        "pass": _pass(p[f"client_rss_{op}"]),
                    }
                )
    _new_rows(S, out)
    kubo.rows(S, lambda *cells: out.append(dict(zip(_COLUMNS, cells))), _f)
    gateway.rows(S, lambda *cells: out.append(dict(zip(_COLUMNS, cells))), _f)
    if S.get("train"):
        import train  # the train section (bench/train.py) formats its own rows

        out += train.rows(S["train"])
    return out


def _new_rows(S: dict, out: list) -> None:
    """Rows of the sections get_disk, small, scaling and stages."""

    def row(measurement, dstore, reference, ratio, target, passed):
        out.append(
            {
                "measurement": measurement,
                "dstore": dstore,
                "reference": reference,
                "ratio": ratio,
                "target": target,
                "pass": passed,
            }
        )

    def err(name, sec):
        row(name, "ERROR", str(sec.get("error", ""))[:80], "n/a", "", "n/a")

    s = S.get("get_disk")
    if s:
        if "error" in s and "runs" not in s:
            err("get, disk store", s)
        else:
            g = s["median_gbps"]
            row(
                f"get {_mib(s['bytes'])}, store on disk (page cache evicted), output tmpfs (GB/s)",
                _f(g["dstore"]),
                f"cp from disk {_f(g['cp'])}",
                _f(s["ratio"]["dstore/cp"], "{:.2f}"),
                "—",
                "info",
            )
    s = S.get("small")
    if s:
        if "error" in s and "trees" not in s:
            err("small files", s)
        for name, t in (s.get("trees") or {}).items():
            if "error" in t and "runs" not in t:
                err(f"small files, {name}", t)
                continue
            sec, r, p = t["median_seconds"], t["ratio"], t["pass"]
            what = f"{t['files']:,} files, {t['bytes'] / 1e6:,.0f} MB"
            target = {"add/restic": ">= 2.0", "get/cp": ">= 0.5"} if name == "images" else {"get/cp": ">= 0.3"}

            def s_(k, sec=sec):
                return _f(sec.get(k), "{:.2f}", " s")

            row(
                f"add {what} ({name}) (s)",
                s_("dstore_add"),
                f"restic backup {s_('restic_backup')}",
                _f(r["add/restic"], "{:.2f}"),
                target.get("add/restic", "—"),
                _pass(p["add/restic"]) if "add/restic" in p else "info",
            )
            row(
                "  same, vs hf_xet.hash_files of every file",
                s_("dstore_add"),
                s_("xet"),
                _f(r["add/xet"], "{:.2f}"),
                "—",
                "info",
            )
            row(
                f"get {what} ({name}) (s)",
                s_("dstore_get"),
                f"cp -r {s_('cp_r')}",
                _f(r["get/cp"], "{:.2f}"),
                target["get/cp"],
                _pass(p["get/cp"]),
            )
            row(
                "  same, vs restic restore",
                s_("dstore_get"),
                s_("restic_restore"),
                _f(r["get/restic_restore"], "{:.2f}"),
                "—",
                "info",
            )
            rss = t["peak_rss_mib"]
            for op, ref in (("add", "restic_backup"), ("get", "restic_restore")):
                row(
                    f"  peak RSS, {op} ({name}, max of runs)",
                    _f(rss[f"dstore_{op}"], "{:.0f}", " MiB"),
                    f"{ref.replace('_', ' ')} {_f(rss[ref], '{:.0f}', ' MiB')}",
                    "—",
                    "<= 400 MiB" if name == "tiny" else "—",
                    _pass(p.get(f"dstore_{op}_rss")) if name == "tiny" else "info",
                )
    s = S.get("scaling")
    if s:
        if "error" in s and "runs" not in s:
            err("scaling", s)
        else:
            g, r, p = s["median_gbps"], s["ratio"], s["pass"]
            for op, t in (("add", ">= 1.7"), ("get", ">= 1.5")):
                row(
                    f"{op} {_mib(s['bytes'])} on {s['cpus']} CPUs vs pinned to one (GB/s)",
                    _f(g[f"{op}_all"]),
                    f"taskset -c 0: {_f(g[f'{op}_1cpu'])}",
                    _f(r[f"{op} all/1"], "{:.2f}"),
                    t,
                    _pass(p[f"{op} all/1"]),
                )
    s = S.get("stages")
    if s:
        if "error" in s and "runs" not in s:
            err("stages", s)
        else:
            w = s.get("whole_core_s_per_gib", {})
            row(
                f"add {_mib(s['bytes'])}: CPU-s per GiB, whole process (stage table below)",
                _f(w.get("dstore_add"), "{:.2f}"),
                f"hf_xet.hash_files {_f(w.get('xet'), '{:.2f}')}",
                _f(None if not w.get("xet") or not w.get("dstore_add") else w["dstore_add"] / w["xet"], "{:.2f}"),
                "—",
                "info",
            )


def stage_table(res: dict) -> list[str]:
    """The core-seconds per GiB of each add stage against its floor (section stages)."""
    s = res.get("sections", {}).get("stages")
    if not s or "core_s_per_gib" not in s:
        return []
    gib = s["bytes"] / (1 << 30)
    per = dict(s["core_s_per_gib"])
    if per.get(ENCODE) is not None and per.get(SHARD_HASHES) is not None:
        per["erasure code alone (encode_pack - shard hashes)"] = per[ENCODE] - per[SHARD_HASHES]
    lines = [
        "## Core-seconds per GiB by stage (add, 10+4, tmpfs)",
        "",
        (
            f"{_mib(s['bytes'])} incompressible input, {s['cpus']} CPUs; each stage timed on its own by"
            " `bench/stages.py` (`time.process_time()` deltas around each native call: CPU of all threads"
            " of the process), median of runs, divided by the input's GiB. 'x floor' = stage / floor."
            " The whole-process rows are `dstore add` and the hf_xet reference as commands (RUSAGE_CHILDREN),"
            " start-up included."
        ),
        "",
        "| stage | core-s / GiB | wall s / GiB | floor | floor core-s / GiB | x floor |",
        "|---|---|---|---|---|---|",
    ]
    total = 0.0
    for stage, floor in STAGE_FLOORS.items():
        v = per.get(stage)
        if v is None:
            continue
        total += v
        wall = (s["stage_wall_s"].get(stage) or 0) / gib if stage in s["stage_wall_s"] else None
        fv = per.get(floor) if floor else None
        ratio = None if not fv else v / fv
        fname = floor.removeprefix("floor: ") if floor else "—"
        lines.append(
            f"| {stage} | {_f(v, '{:.3f}')} | {_f(wall, '{:.3f}')} | {fname} | {_f(fv, '{:.3f}')} |"
            f" {_f(ratio, '{:.2f}')} |"
        )
    blake = per.get("floor: BLAKE3 of the input (_native.blake3, 16 MiB blocks)")
    lines.append(f"| **sum of stages** | **{total:.3f}** | | BLAKE3 of the input | {_f(blake, '{:.3f}')} | |")
    w = s.get("whole_core_s_per_gib", {})
    ww = s.get("whole_wall_s", {})
    lines.append(
        f"| whole `dstore add` process | {_f(w.get('dstore_add'), '{:.3f}')} |"
        f" {_f(None if ww.get('dstore_add') is None else ww['dstore_add'] / gib, '{:.3f}')} |"
        f" hf_xet.hash_files process | {_f(w.get('xet'), '{:.3f}')} |"
        f" {_f(None if not w.get('xet') or w.get('dstore_add') is None else w['dstore_add'] / w['xet'], '{:.2f}')} |"
    )
    if w.get("dstore_add") is not None:
        lines.append(
            f"| not in any stage (Python orchestration, threads handing off, metadata, start-up) |"
            f" {w['dstore_add'] - total:.3f} | | | | |"
        )
    cpus = s.get("cpus") or 1
    xet = per.get("floor: hf_xet.hash_files (read + chunk + hash)")
    lines += [
        "",
        (
            f"On {cpus} CPUs the stages alone allow at most {cpus / total * (1 << 30) / 1e9:.2f} GB/s"
            f" ({cpus} / {total:.3f} core-s per GiB) if they overlapped perfectly; hf_xet's read + chunk + hash"
            f" costs {_f(xet, '{:.3f}')} core-s per GiB, {total / xet:.2f}x less than the sum of the stages."
        )
        if total and xet
        else "",
        "",
    ]
    return lines


def table(res: dict) -> str:
    rs = rows(res)
    cols = ["measurement", "dstore", "reference", "ratio", "target", "pass"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rs:
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def _runs_table(res: dict) -> str:
    lines = ["| section | item | seconds (bytes) per run | GB/s per run |", "|---|---|---|---|"]
    blocks = []
    for name, sec in res.get("sections", {}).items():
        if name == "stages":
            continue  # its runs are the stage table's inputs
        blocks.append((name, sec))
        blocks += [(f"{name} {t}", tree) for t, tree in (sec.get("trees") or {}).items() if isinstance(tree, dict)]
    for name, sec in blocks:
        runs = sec.get("runs") if isinstance(sec.get("runs"), list) else []
        items = []
        for run in runs:
            for k in run:
                if k not in items:
                    items.append(k)
        for k in items:
            secs = [run.get(k, {}).get("seconds") for run in runs]
            gbps = [run.get(k, {}).get("gbps") for run in runs]
            lines.append(
                f"| {name} | {k} | " + ", ".join(_f(x) for x in secs) + " | " + ", ".join(_f(x) for x in gbps) + " |"
            )
    for name, sec in res.get("sections", {}).items():
        for k, c in (sec.get("cases") or {}).items():
            for side, key in (("dstore", "new_bytes_stored"), ("restic", "repo_growth_bytes")):
                vals = [r.get(side, {}).get(key) for r in c.get("runs", [])]
                lines.append(
                    f"| {name} {k} | {side} {key} | " + ", ".join("n/a" if v is None else str(v) for v in vals) + " | |"
                )
    return "\n".join(lines)


def _provenance(res: dict) -> list[str]:
    """One line per group of sections measured together, when results.json merges runs."""
    groups: dict = {}
    for name, sec in res.get("sections", {}).items():
        p = sec.get("measured")
        if not p:
            continue
        c = p.get("config", {})
        key = (
            f"{p.get('date_utc')}, commit `{(p.get('git_commit') or '')[:7]}`"
            f" (modified tracked files: {p.get('git_dirty_tracked_files')}), BENCH_SIZE_MIB={c.get('BENCH_SIZE_MIB')},"
            f" BENCH_RSS_MIB={c.get('BENCH_RSS_MIB')}, BENCH_RUNS={c.get('BENCH_RUNS')}"
        )
        groups.setdefault(key, []).append(name)
    if len(groups) <= 1:
        return []
    return ["- sections come from separate runs:"] + [f"  - {', '.join(v)}: {k}" for k, v in groups.items()]


def _section_loads(res: dict) -> list[str]:
    """The 1-minute load average before and after each section: the machine may be shared."""
    loads = [
        f"{name} {sec['loadavg_before'][0]:.1f} → {sec['loadavg_after'][0]:.1f}"
        for name, sec in res.get("sections", {}).items()
        if sec.get("loadavg_before") and sec.get("loadavg_after")
    ]
    return ["- 1-minute load average before → after each section: " + "; ".join(loads)] if loads else []


def markdown(res: dict) -> str:
    m, c = res.get("machine", {}), res.get("config", {})
    inputs = res.get("inputs", {})
    smoke = res.get("dstore_smoke", {})
    parts = [
        "# dstore benchmark results",
        "",
        (
            f"- date: {m.get('date_utc')}; git commit `{m.get('git_commit')}`"
            f" (modified tracked files: {m.get('git_dirty_tracked_files')})"
        ),
        (
            f"- machine: {m.get('nproc')} CPUs ({m.get('cpu_model')}), {m.get('mem_total_gib')} GiB RAM,"
            f" kernel {m.get('kernel')}, Python {m.get('python')}"
        ),
        (
            f"- load average at start {tuple(round(x, 2) for x in m.get('loadavg_start', ()))},"
            f" at end {tuple(round(x, 2) for x in m.get('loadavg_end', ()))}"
        ),
        (
            f"- config: BENCH_SIZE_MIB={c.get('BENCH_SIZE_MIB')}, BENCH_RSS_MIB={c.get('BENCH_RSS_MIB')},"
            f" BENCH_RUNS={c.get('BENCH_RUNS')}, seed {c.get('BENCH_SEED')}; tmpfs {c.get('shm_fs')},"
            f" disk {c.get('disk_fs')}"
        ),
        "- inputs: " + "; ".join(f"{k} {_size(v.get('bytes', 0))} ({v.get('bytes')} bytes)" for k, v in inputs.items()),
        (
            f"- dstore: {'works' if smoke.get('ok') else 'NOT WORKING: ' + str(smoke.get('error'))}"
            f" (`{' '.join(smoke.get('command', []))}`, version {m.get('versions', {}).get('dstore')})"
        ),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if k != "dstore"),
        *_provenance(res),
        *_section_loads(res),
        "",
        (
            "GB/s = 10^9 bytes of input per second of wall time of the whole command (process start-up"
            " included, for dstore and for every reference). Values are medians over runs; each ratio is"
            " computed within one run (dstore and references interleaved, order rotated per run) and the"
            " median of those is shown. Ratios are dstore / reference for throughput (higher is better)"
            " and for bytes (lower is better)."
        ),
        "",
        table(res),
        "",
        "## Notes",
        "",
        "- tmpfs has no page-cache distinction: inputs, stores and outputs under /dev/shm are RAM.",
        (
            "- Disk case: input on tmpfs, store on disk. Before every timed command the previous run's"
            " store/dd file is deleted, `sync` runs, then a pause (`BENCH_DISK_SETTLE_S`, 10 s) lets the"
            " discard of the freed blocks finish (the disk is mounted with `discard`; a write right after"
            " a delete was up to 4x faster on this virtual disk), then `sync` again. The page cache is not"
            " dropped (the measured cost is writing, and both dstore and dd fsync)."
        ),
        (
            "- dd reference: `dd if=/dev/zero bs=4M count=ceil(1.4 x input / 4 MiB) conv=fsync`, i.e. the"
            " bytes a 10+4 layout stores; its GB/s column is input bytes / dd time (raw write rate in"
            " brackets)."
        ),
        (
            "- Peak RSS: the larger of GNU time's maximum RSS (`/usr/bin/time -f %M`) of the dstore"
            " process and its process tree polled every 10 ms (VmRSS summed over descendants), max over"
            " runs. RSS of a process that mmaps a tmpfs file includes the mapped pages (RssShmem); the"
            " breakdown is in results.json."
        ),
        (
            "- CSV size: dstore `new_bytes_stored` with `--shards 10+0` (no parity; includes shard"
            " padding) vs `zstd -3` of the whole file with zstd CLI defaults."
        ),
        (
            "- Dedup: each v2 is v1 plus one edit; dstore adds v1 then v2 to a fresh store with"
            " `--shards 10+0` and reports v2's `new_bytes_stored`; restic (repository format and"
            " compression as `restic init` defaults) backs up a folder holding v1 then v2 as data.csv and"
            " the repository growth is measured with `du -sb` (includes restic's index and snapshot"
            " files); the ratio uses dstore's `new_bytes_stored` (shards only), and the metadata blocks"
            " that add also wrote (`new_metadata_bytes`) are shown in brackets. dstore's store growth"
            " measured with `du -sb` (including its LMDB index) is in results.json as `home_growth_bytes`."
        ),
    ]
    if "peers" in res.get("sections", {}):
        parts.append(
            "- Peers: 14 `python -m dstore.peer serve` processes on 127.0.0.1, homes on tmpfs. add: a fresh"
            " fleet (new, empty peer homes) and a fresh `DSTORE_HOME` every run; get: fresh `DSTORE_HOME`"
            " each time (every block comes from the peers), output on tmpfs. References for the get: `curl"
            " --parallel --parallel-max 16 -K cfg` of the same bytes as 1 MiB plain files from 14 aiohttp"
            " `web.static` servers (one process each, files round-robin), and one raw loopback TCP stream"
            " (Python `socket.sendfile` to a receiver doing `recv_into` a reused buffer). The degraded get"
            " SIGKILLs 4 of the 14 peers just before it and restarts them after; its ratio is to the"
            " healthy get of the same run. Peer RSS: VmRSS of every peer process polled every 10 ms during"
            " separate add/get runs (max over peers and runs); client RSS as in the peak-RSS check."
        )
    st = res.get("sections", {}).get("add_tmpfs", {}).get("startup", {}).get("median")
    if st:
        parts.append(
            f"- Fixed cost per command (4 KiB input, median): `dstore add` "
            f"{_f(st.get('dstore_add_4KiB_s'))} s, hf_xet reference process "
            f"{_f(st.get('xet_4KiB_s'))} s; both are inside the whole-command timings above."
        )
    errs = []
    for name, sec in res.get("sections", {}).items():
        if sec.get("error"):
            errs.append(f"- {name}: {sec['error']}")
        for k, e in (sec.get("errors") or {}).items():
            errs.append(f"- {name} / {k}: {e}")
        for k, cse in (sec.get("cases") or {}).items():
            for side, e in (cse.get("errors") or {}).items():
                errs.append(f"- {name} / {k} / {side}: {e}")
    if errs:
        parts += ["", "## Errors", ""] + errs
    parts += ["", *stage_table(res), *get_stages.table(res, _f3), "## Raw timings", "", _runs_table(res), ""]
    return "\n".join(parts)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    S = res.get("sections", {})
    groups = []  # (group label, [(bar label, value, is_dstore)])
    if "median_gbps" in S.get("add_tmpfs", {}):
        g = S["add_tmpfs"]["median_gbps"]
        groups.append(
            (
                "add, tmpfs\n(incompressible)",
                [
                    ("dstore", g["dstore"], True),
                    ("hf_xet", g["xet"], False),
                    ("pyfastcdc+blake3", g["cdc_loop"], False),
                    ("read+blake3 floor", g["floor"], False),
                ],
            )
        )
    if "median_gbps" in S.get("add_disk", {}):
        g = S["add_disk"]["median_gbps"]
        groups.append(("add, disk store", [("dstore", g["dstore"], True), ("dd 1.4x fsync", g["dd"], False)]))
    if "median_gbps" in S.get("get_tmpfs", {}):
        g = S["get_tmpfs"]["median_gbps"]
        groups.append(("get, tmpfs", [("dstore", g["dstore"], True), ("cp", g["cp"], False)]))
    if "median_gbps" in S.get("get_disk", {}):
        g = S["get_disk"]["median_gbps"]
        groups.append(("get, disk store", [("dstore", g["dstore"], True), ("cp from disk", g["cp"], False)]))
    if "median_gbps" in S.get("scaling", {}):
        g = S["scaling"]["median_gbps"]
        groups.append(
            (
                "scaling",
                [
                    ("add\n1 CPU", g["add_1cpu"], False),
                    ("add\nall", g["add_all"], True),
                    ("get\n1 CPU", g["get_1cpu"], False),
                    ("get\nall", g["get_all"], True),
                ],
            )
        )
    if "median_gbps" in S.get("csv", {}):
        g = S["csv"]["median_gbps"]
        groups.append(("add, tmpfs\n(CSV)", [("dstore", g["dstore"], True), ("zstd -3", g["zstd"], False)]))
    if "median_gbps" in S.get("peers", {}):
        g = S["peers"]["median_gbps"]
        groups.append(
            (
                "get from 14 peers",
                [
                    ("dstore", g["dstore"], True),
                    ("dstore\n4 killed", g["dstore_4_killed"], True),
                    ("curl\n--parallel 16", g["curl"], False),
                    ("raw TCP", g["raw_tcp"], False),
                ],
            )
        )
        groups.append(("add to\n14 peers", [("dstore", g["dstore_add"], True)]))
    fig, ax = plt.subplots(figsize=(max(12, 0.5 * sum(len(b) for _, b in groups)), 5))
    x, ticks, tick_labels = 0.0, [], []
    ref_colors = ["#999999", "#bbbbbb", "#dddddd"]
    for label, bars in groups:
        start = x
        ri = 0
        for name, val, is_d in bars:
            color = "#1f77b4" if is_d else ref_colors[ri % len(ref_colors)]
            ri += 0 if is_d else 1
            v = val or 0.0
            ax.bar(x, v, width=0.8, color=color, edgecolor="black", linewidth=0.5)
            ax.text(x, v, f"{name}\n{'n/a' if val is None else f'{val:.2f}'}", ha="center", va="bottom", fontsize=7)
            x += 1
        ticks.append((start + x - 1) / 2)
        tick_labels.append(label)
        x += 0.8
    ax.set_xticks(ticks)
    ax.set_xticklabels(tick_labels)
    ax.set_ylabel("GB/s (10^9 input bytes / wall second, median)")
    c = res.get("config", {})
    sizes = {(s.get("measured") or {}).get("config", {}).get("BENCH_SIZE_MIB") for s in S.values()} - {None}
    runs = {(s.get("measured") or {}).get("config", {}).get("BENCH_RUNS") for s in S.values()} - {None}
    if len(sizes) > 1 or len(runs) > 1:
        what = "sections from separate runs (sizes in results.md), medians"
    else:
        what = f"{c.get('BENCH_SIZE_MIB')} MiB inputs, median of {c.get('BENCH_RUNS')} runs"
    ax.set_title(f"dstore vs references — {what}, {res.get('machine', {}).get('nproc')} CPUs")
    ax.margins(y=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_small(res: dict, path: Path) -> bool:
    """Seconds of add and get of each small-file tree, dstore and references (False: nothing to plot)."""
    trees = {n: t for n, t in (res.get("sections", {}).get("small", {}).get("trees") or {}).items() if "runs" in t}
    if not trees:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [
        ("dstore add", "dstore_add", True),
        ("restic backup", "restic_backup", False),
        ("hf_xet", "xet", False),
        ("dstore get", "dstore_get", True),
        ("cp -r", "cp_r", False),
        ("restic restore", "restic_restore", False),
    ]
    fig, axes = plt.subplots(1, len(trees), figsize=(6 * len(trees), 4.5), squeeze=False)
    for ax, (name, t) in zip(axes[0], trees.items(), strict=True):
        vals = [t["median_seconds"].get(k) for _, k, _ in bars]
        colors = ["#1f77b4" if d else "#aaaaaa" for _, _, d in bars]
        ax.bar(range(len(bars)), [v or 0 for v in vals], color=colors, edgecolor="black", linewidth=0.5)
        for i, v in enumerate(vals):
            ax.text(i, v or 0, _f(v, "{:.1f}"), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(bars)))
        ax.set_xticklabels([b[0] for b in bars], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("seconds (median, lower is better)")
        ax.set_title(f"{name}: {t['files']:,} files, {t['bytes'] / 1e6:,.0f} MB")
        ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_stages(res: dict, path: Path) -> bool:
    """Core-seconds per GiB of each add stage, with its floor (False: nothing to plot)."""
    s = res.get("sections", {}).get("stages")
    if not s or "core_s_per_gib" not in s:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = dict(s["core_s_per_gib"])
    if per.get(ENCODE) is not None and per.get(SHARD_HASHES) is not None:
        per["erasure code alone (encode_pack - shard hashes)"] = per[ENCODE] - per[SHARD_HASHES]
    stages = [st for st in STAGE_FLOORS if per.get(st) is not None]
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(stages) + 1.5))
    y = list(range(len(stages)))[::-1]
    ax.barh(y, [per[st] for st in stages], color="#1f77b4", height=0.6, label="dstore stage")
    for yi, st in zip(y, stages, strict=True):
        floor = STAGE_FLOORS[st]
        if floor and per.get(floor) is not None:
            ax.plot([per[floor]] * 2, [yi - 0.35, yi + 0.35], color="black", linewidth=2)
        ax.text(per[st], yi, f" {per[st]:.2f}", va="center", fontsize=8)
    ax.plot([], [], color="black", linewidth=2, label="its floor")
    ax.set_yticks(y)
    ax.set_yticklabels(stages, fontsize=8)
    ax.set_xlabel("core-seconds per GiB of input (median)")
    ax.set_title(f"add {_mib(s['bytes'])} --shards 10+4: CPU cost by stage (bench/stages.py)")
    ax.legend(loc="lower right", fontsize=8)
    ax.margins(x=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
