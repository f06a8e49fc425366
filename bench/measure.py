"""Timing, peak-RSS and machine-information helpers for run.py."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

GB = 1e9  # throughputs are reported in GB/s = 10^9 bytes per second
MiB = 1 << 20


class CommandFailed(RuntimeError):
    pass


def _tail(text: str, n: int = 800) -> str:
    text = text.strip()
    return text if len(text) <= n else "…" + text[-n:]


TIMEOUT_S = float(os.environ.get("BENCH_TIMEOUT_S", "1800"))  # per command


def run_timed(
    cmd: list[str],
    env: dict | None = None,
    check: bool = True,
    stdout_path: Path | None = None,
    timeout: float = TIMEOUT_S,
) -> dict:
    """Run cmd to completion; the wall time of the whole command (perf_counter
    around subprocess.run, start-up included) and its CPU seconds (user + system
    of the command and every descendant it waited for, from RUSAGE_CHILDREN)."""
    full_env = None if env is None else {**os.environ, **env}
    with contextlib.ExitStack() as stack:
        out_f = stack.enter_context(open(stdout_path, "wb")) if stdout_path else None
        cpu0 = children_cpu_s()
        t0 = time.perf_counter()
        p = subprocess.run(
            cmd,
            check=False,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=out_f or subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )
        seconds = time.perf_counter() - t0
        cpu_s = children_cpu_s() - cpu0
    stdout = "" if out_f else p.stdout.decode(errors="replace")
    stderr = p.stderr.decode(errors="replace")
    if check and p.returncode != 0:
        raise CommandFailed(f"{' '.join(map(str, cmd))} exited {p.returncode}: {_tail(stderr or stdout)}")
    return {"seconds": seconds, "cpu_s": cpu_s, "rc": p.returncode, "stdout": stdout, "stderr": stderr}


def children_cpu_s() -> float:
    """User + system CPU seconds of every child this process has waited for."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def evict_page_cache(paths: list[Path]) -> int:
    """Drop the cached pages of these files (and of every file below these folders)
    with posix_fadvise(DONTNEED) after `sync`: the next read comes from the disk.
    Only these files' pages go; the rest of the (shared) machine's cache stays.
    Returns the number of files."""
    sync()
    n = 0
    for top in paths:
        files = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
        for path in files:
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    n += 1
                finally:
                    os.close(fd)
    return n


_STATUS_KEYS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")


def _status_kib(pid: int) -> dict[str, int]:
    out = dict.fromkeys(_STATUS_KEYS, 0)
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in out:
                    out[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return out


GNU_TIME = "/usr/bin/time"


def run_peak_rss(
    cmd: list[str],
    env: dict | None = None,
    interval: float = 0.01,
    timeout: float = TIMEOUT_S,
    maxrss_file: Path | None = None,
) -> dict:
    """Run cmd, polling the RSS of its process tree every `interval` s.

    Returns the wall time and the peak of the tree's summed VmRSS (and of its
    anonymous / file-backed / shmem parts, each peaked separately). When GNU
    time is installed, cmd runs under `/usr/bin/time -f %M`, which adds the
    kernel's exact maximum RSS of the command (GNU time is a tiny process
    that forks it; it is left out of the polled tree). The kernel's
    ru_maxrss of a process forked straight from this (large) Python process
    would include the parent's pages copied at fork, so it is not used."""
    full_env = None if env is None else {**os.environ, **env}
    use_time = os.access(GNU_TIME, os.X_OK) and maxrss_file is not None
    if use_time:
        maxrss_file.unlink(missing_ok=True)
        cmd_run = [GNU_TIME, "-f", "%M", "-o", str(maxrss_file), *cmd]
    else:
        cmd_run = cmd
    t0 = time.perf_counter()
    p = subprocess.Popen(
        cmd_run, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    # Drain pipes in threads so a chatty child cannot block on a full pipe.
    bufs = {"out": b"", "err": b""}

    def drain(stream, key):
        bufs[key] = stream.read()

    threads = [
        threading.Thread(target=drain, args=(p.stdout, "out"), daemon=True),
        threading.Thread(target=drain, args=(p.stderr, "err"), daemon=True),
    ]
    for t in threads:
        t.start()
    peak = dict.fromkeys(_STATUS_KEYS, 0)
    samples = 0
    try:
        root = psutil.Process(p.pid)
    except psutil.NoSuchProcess:
        root = None
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            break
        pids = [] if use_time else [p.pid]
        if root is not None:
            try:
                pids += [c.pid for c in root.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        tot = dict.fromkeys(_STATUS_KEYS, 0)
        for q in pids:
            for k, v in _status_kib(q).items():
                tot[k] += v
        for k in _STATUS_KEYS:
            peak[k] = max(peak[k], tot[k])
        samples += 1
        if time.perf_counter() - t0 > timeout:
            for q in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(q, 9)
            p.kill()
            os.wait4(p.pid, 0)
            raise CommandFailed(f"{' '.join(map(str, cmd))} timed out after {timeout:.0f} s")
        time.sleep(interval)
    seconds = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    for t in threads:
        t.join()
    exact = None
    if use_time:
        with contextlib.suppress(OSError, ValueError, IndexError):
            # GNU time writes "Command exited with non-zero status N" first on failure.
            exact = int(maxrss_file.read_text().split()[-1]) / 1024
        maxrss_file.unlink(missing_ok=True)
    res = {
        "seconds": seconds,
        "rc": p.returncode,
        "peak_tree_rss_mib": peak["VmRSS"] / 1024,
        "peak_tree_rss_anon_mib": peak["RssAnon"] / 1024,
        "peak_tree_rss_file_mib": peak["RssFile"] / 1024,
        "peak_tree_rss_shmem_mib": peak["RssShmem"] / 1024,
        "gnu_time_maxrss_mib": exact,
        "cpu_s": usage.ru_utime + usage.ru_stime,  # the command and the descendants it waited for
        "samples": samples,
        "poll_interval_s": interval,
        "stdout": bufs["out"].decode(errors="replace"),
        "stderr": bufs["err"].decode(errors="replace"),
    }
    if p.returncode != 0:
        raise CommandFailed(f"{' '.join(map(str, cmd))} exited {p.returncode}: {_tail(res['stderr'] or res['stdout'])}")
    res["peak_rss_mib"] = max(res["peak_tree_rss_mib"], exact or 0.0)
    return res


def du_bytes(path: Path) -> int:
    """Apparent size of everything under path (`du -sb`)."""
    if not path.exists():
        return 0
    out = subprocess.run(["du", "-sb", str(path)], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[0])


def rm(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def sync() -> None:
    subprocess.run(["sync"], check=False)


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def last_json(stdout: str) -> dict:
    """The JSON object `dstore ... --json` prints (the last non-empty line that parses)."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    # maybe pretty-printed over several lines
    s = stdout.strip()
    i = s.find("{")
    if i >= 0:
        return json.loads(s[i:])
    raise ValueError(f"no JSON object in output: {_tail(stdout, 300)!r}")


def _cmd_out(cmd: list[str]) -> str | None:
    try:
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30)
        return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr).strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _pkg_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(repo: Path) -> dict:
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = _cmd_out(["git", "-C", str(repo), "rev-parse", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
        check=False,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "nproc_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "mem_total_gib": round(psutil.virtual_memory().total / (1 << 30), 2),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "git_commit": commit,
        "git_dirty_tracked_files": len(dirty.splitlines()) if dirty else 0,
        "git_modified": dirty.splitlines() if dirty else [],
        "loadavg_start": os.getloadavg(),
        "versions": {
            "dstore": _pkg_version("dstore"),
            "hf_xet": _pkg_version("hf_xet"),
            "pyfastcdc": _pkg_version("pyfastcdc"),
            "blake3": _pkg_version("blake3"),
            "psutil": _pkg_version("psutil"),
            "matplotlib": _pkg_version("matplotlib"),
            "zstd": _cmd_out(["zstd", "--version"]),
            "restic": _cmd_out(["restic", "version"]),
            "dd": _cmd_out(["dd", "--version"]),
        },
    }


def fs_type(path: Path) -> str | None:
    """Filesystem type of the mount holding path (from /proc/self/mounts)."""
    path = path.resolve()
    best, fstype = "", None
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1]
            if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, fstype = mnt, parts[2]
    except OSError:
        pass
    return f"{fstype} ({best})" if fstype else None


def mount_options(path: Path) -> str | None:
    """The /proc/self/mounts line of the mount holding path."""
    path = path.resolve()
    best, line_best = "", None
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            mnt = line.split()[1]
            if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, line_best = mnt, line
    except OSError:
        pass
    return line_best
