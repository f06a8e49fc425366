"""Shared pytest setup: hypothesis profiles and a real `dstore` CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty store folder."""
    return tmp_path / "store"


@pytest.fixture
def dstore(home: Path):
    """Run the real command line in a subprocess against ``home``."""

    def run(*args: str | Path, check: bool = True, env: dict[str, str] | None = None) -> Result:
        full_env = {**os.environ, "DSTORE_HOME": str(home), **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "dstore", *map(str, args)],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=600,
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"dstore {args} failed ({proc.returncode}): {proc.stderr}")
        return result

    return run
