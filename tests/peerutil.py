"""Start real storage peer processes (``python -m dstore.peer serve``) for tests.

Usage::

    from peerutil import running_peers

    def test_something(tmp_path):
        with running_peers(tmp_path, 3, token="t") as peers:
            peers[0].url        # "http://127.0.0.1:40123"
            peers[0].peer_id    # "12D3KooW…"
            peers[0].home       # tmp_path / "peer0"
            peers[0].token      # "t"
            peers[0].stop()     # SIGTERM, wait for exit (graceful)
            peers[0].kill()     # SIGKILL, wait for exit
            peers[0].start()    # start again: same home, same port, same peer ID

Each peer gets its own home ``tmp_path/peer{i}``, listens on 127.0.0.1 at a
free port (chosen by the peer itself on first start, kept for restarts), and
logs to ``tmp_path/peer{i}.stdout`` / ``.stderr`` (``peer.stderr_text()``).
Keyword options become command-line options: ``capacity="1M"`` →
``--capacity 1M``, ``scrub_interval=1`` → ``--scrub-interval 1``; a value of
``True`` is a bare flag. ``extra_args=[...]`` adds raw arguments. Peers still
running at the end of the ``with`` block are killed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["PeerProcess", "running_peers", "START_LINE"]

#: What a peer prints once it accepts connections.
START_LINE = re.compile(
    r"^dstore peer (?P<peer_id>12D3KooW\w+) listening on (?P<url>http://\S+) \(token: (?P<source>.*)\)$"
)

START_TIMEOUT_S = 60.0  # a loaded machine starting 14 peers at once (a setup wait, not a timing check)
STOP_TIMEOUT_S = 20.0


def _options(options: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        args.append(flag) if value is True else args.extend([flag, str(value)])
    return args


class PeerProcess:
    """One peer process; ``start()`` runs it and waits for its start line."""

    def __init__(self, home: Path, token: str | None = "test-token", **options: Any) -> None:
        self.home = home
        self.token = token
        self.extra_args: list[str] = [str(a) for a in options.pop("extra_args", [])]
        self.options = options
        self.port = 0
        self.url = ""
        self.peer_id = ""
        self.token_source = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0
        self.stdout_path = home.with_name(home.name + ".stdout")
        self.stderr_path = home.with_name(home.name + ".stderr")

    @property
    def auth(self) -> dict[str, str]:
        """The Authorization header for writes."""
        return {"Authorization": f"Bearer {self.token}"}

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "dstore.peer", "serve", "--home", str(self.home)]
        args += ["--listen", f"127.0.0.1:{self.port}"]
        if self.token is not None:
            args += ["--token", self.token]
        return args + _options(self.options) + self.extra_args

    def start(self, timeout_s: float = START_TIMEOUT_S) -> PeerProcess:
        """Run the peer (again) and wait until it prints its start line."""
        self._spawn()
        return self._wait_started(timeout_s)

    def _spawn(self) -> None:
        if self.running:
            raise RuntimeError(f"peer {self.home} is already running")
        self._offset = self.stdout_path.stat().st_size if self.stdout_path.exists() else 0
        env = {k: v for k, v in os.environ.items() if k != "DSTORE_TOKEN"}
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)

    def _wait_started(self, timeout_s: float) -> PeerProcess:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while True:
            with open(self.stdout_path, "rb") as f:
                f.seek(self._offset)
                for line in f.read().decode(errors="replace").splitlines():
                    if m := START_LINE.match(line):
                        self.peer_id, self.url, self.token_source = m["peer_id"], m["url"], m["source"]
                        self.port = int(self.url.rsplit(":", 1)[1])
                        return self
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"peer exited with {code} before starting: {self.stderr_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"peer did not start within {timeout_s} s: {self.stderr_text()[-2000:]}")
            time.sleep(0.02)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (graceful shutdown) and wait; returns the exit code."""
        return self._signal(signal.SIGTERM, timeout_s)

    def kill(self) -> int:
        """SIGKILL and wait; returns the exit code."""
        return self._signal(signal.SIGKILL, STOP_TIMEOUT_S)

    def _signal(self, sig: int, timeout_s: float) -> int:
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            code = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        self.proc = None
        return code

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def __repr__(self) -> str:
        return f"PeerProcess({self.peer_id or '?'} at {self.url or '?'}, home={self.home})"


@contextmanager
def running_peers(
    tmp_path: Path, n: int = 1, token: str | None = "test-token", **options: Any
) -> Iterator[list[PeerProcess]]:
    """Start ``n`` peers (homes ``tmp_path/peer0``…) and kill whatever still runs at the end.

    ``options`` are ``dstore peer serve`` options (``capacity="1M"``, ``scrub_interval=1``…);
    ``token=None`` leaves the peer to its own token file.
    """
    peers = [PeerProcess(tmp_path / f"peer{i}", token=token, **options) for i in range(n)]
    try:
        for p in peers:  # all at once: each takes a moment to import
            p._spawn()
        for p in peers:
            p._wait_started(START_TIMEOUT_S)
        yield peers
    finally:
        for p in peers:
            p.kill()


@contextmanager
def added_on_peers(
    root: Path, src: Path, token: str, n: int = 6, shards: str = "4+2"
) -> Iterator[tuple[list[PeerProcess], str]]:
    """``n`` fresh peers (homes under ``root/peers``, no scrub) holding the dataset of ``src``, added through the
    CLI by another store (home ``root/adder``); yields the peers and the dataset ID."""
    (root / "peers").mkdir()
    with running_peers(root / "peers", n, token=token, scrub_rate=0) as peers:
        env = {
            **os.environ,
            "DSTORE_HOME": str(root / "adder"),
            "DSTORE_PEERS": ",".join(p.url for p in peers),
            "DSTORE_TOKEN": token,
        }
        add = subprocess.run(
            [sys.executable, "-m", "dstore", "add", str(src), "--shards", shards, "-q"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        yield peers, add.stdout.strip()
