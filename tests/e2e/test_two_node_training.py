"""The compose file's topology as local processes: a planner process and two torchrun launchers (`--nnodes 2`,
c10d rendezvous on the first) training together with plans from the planner over loopback.

The torchrun arguments are read from docker/compose.yaml itself (host names replaced by loopback addresses,
paths by temporary ones), so the command the compose file ships is the command that is tested.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from planner_service.local_service import LocalService, free_port
from tests.executor.train.train_cases import records_of, write_stdlib_corpus

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker" / "compose.yaml"
STEPS = 3


def node_command(
    template: list[str], *, rendezvous: str, planner: str, corpus: Path, node_dir: Path, shared: Path
) -> list[str]:
    overrides = {
        "rdzv-endpoint": rendezvous,
        "planner": planner,
        "data": str(corpus),
        "cache-dir": str(node_dir / "cache"),  # each "machine" tokenises on its own disk
        "checkpoint-dir": str(shared / "checkpoints"),
        "metrics": str(shared / "metrics.jsonl"),
        "steps": str(STEPS),
        "max-len": "512",
        "model": "tiny",
    }
    command = []
    for arg in template:
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") and "=" in arg else None
        command.append(f"--{name}={overrides[name]}" if name in overrides else arg)
    return [sys.executable, "-m", "torch.distributed.run", *command]


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_torchrun_nodes_train_with_the_planner(tmp_path: Path) -> None:
    template = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["executor-0"]["command"]
    corpus = write_stdlib_corpus(tmp_path / "corpus")
    rendezvous = f"127.0.0.1:{free_port()}"
    with LocalService(tmp_path / "plans.db") as service:
        commands = [
            node_command(
                template,
                rendezvous=rendezvous,
                planner=service.url,
                corpus=corpus,
                node_dir=tmp_path / f"node{i}",
                shared=tmp_path,
            )
            for i in (0, 1)
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        nodes = [
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for command in commands
        ]
        outputs = [node.communicate(timeout=540) for node in nodes]
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-3000:]
    records = records_of(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(STEPS))
    assert all(r["plan_source"] == "service" for r in records)
    assert all(len(r["peak_memory_bytes"]) == 4 for r in records)  # 2 nodes x 2 ranks
    assert (tmp_path / "checkpoints" / f"step-{STEPS:08d}" / ".metadata").is_file()
