"""dstore/_native.pyi matches the compiled module (mypy's stubtest)."""

from __future__ import annotations

import subprocess
import sys


def test_stub_matches_the_extension_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "dstore._native"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
