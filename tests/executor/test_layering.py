"""The executor's folders are layers and imports only go down them (read from the source, nothing is run).

Guards against the flat-folder drift this layout replaced: a kernel that reaches into a parallel runtime,
a runtime that imports the step driver, or anything that imports the verification harness.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import executor

pytestmark = pytest.mark.timeout(60)

LAYERS = {
    "executor.data": 0,  # corpus, tokenizer, token store, batches: `proto` and numpy only
    "executor.model": 0,
    "executor.attention": 0,
    "executor.role": 0,  # plan checks and RankRole read only `proto`: the runtimes may take a role
    "executor.parallel": 1,
    "executor.interop": 1,  # Hugging Face checkpoints <-> a stage module (model level, no process groups)
    "executor.interop.export_command": 3,  # `helix export` reads helix train's checkpoints
    "executor.runner": 2,
    "executor.verify": 3,
    "executor.train": 3,  # the training loop: data + step driver, beside verification (neither imports the other)
    "executor.profile": 3,  # helix profile: layer, collectives and whole steps timed on the job's devices
    "executor.cli_launch": 3,  # one-line user errors and the local torchrun of the helix commands
}
"""Module prefix -> layer: kernels and data, parallel runtimes, step driver, verification and training."""

ROOT = Path(executor.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def _imports(path: Path, *, top_level_only: bool = False) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            assert node.level == 0, f"{path}: relative import of {node.module}"
            names.append(node.module)
    return names


def _sources() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def test_every_executor_module_has_a_layer() -> None:
    unplaced = [_module_name(p) for p in _sources() if p.name != "__init__.py" and _layer(_module_name(p)) is None]
    assert unplaced == [], f"modules outside every layer (add them to a folder or LAYERS): {unplaced}"


def test_imports_only_go_down_the_layers() -> None:
    """Every `executor.*` import (function-level ones included) targets the importer's layer or one below."""
    upward = []
    for path in _sources():
        importer = _module_name(path)
        own = _layer(importer)
        if own is None:
            continue
        for name in _imports(path):
            target = _layer(name)
            if target is not None and target > own:
                upward.append(f"{importer} (layer {own}) imports {name} (layer {target})")
    assert upward == [], "\n".join(upward)


def test_the_executor_imports_without_the_planner() -> None:
    """Planner imports stay inside functions (verify's planning, the memory prediction), so the executor
    package loads on a training node that has no planner dependencies."""
    eager = [
        f"{_module_name(path)} imports {name}"
        for path in _sources()
        for name in _imports(path, top_level_only=True)
        if name == "planner_service" or name.startswith("planner_service.")
    ]
    assert eager == [], eager
