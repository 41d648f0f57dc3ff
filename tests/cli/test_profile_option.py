"""`--profile FILE` on `helix plan` and `helix compare`: a profile document or a bare CostProfile replaces the preset
in the predictions, and a file that cannot be used is a one-line error (exit 2) naming the file and the problem.

Guards against an option that is parsed but never reaches the cost model, and against silently planning a job with
a profile measured for another model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner_service.cli import main
from planner_service.cost_model import CostModel
from planner_service.cost_model.profile_document import write_document
from planner_service.presets import resolve_cluster, resolve_model
from planner_service.report import batch_of_plan
from planner_service.simulator.pipeline_simulator import simulate
from proto import Plan
from tests.cost_model.synthetic_profile import synthetic_document

CLUSTER, MODEL = resolve_cluster("cpu-2x2"), resolve_model("tiny")
WORKLOAD = ["--cluster", "cpu-2x2", "--model", "tiny", "--dataset", "github", "--batch-size", "16"]
WORKLOAD += ["--max-len", "2048", "--seed", "4"]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def document(tmp_path: Path) -> Path:
    path = tmp_path / "profile.json"
    write_document(path, synthetic_document(CLUSTER, MODEL))
    return path


def test_plan_predicts_with_the_profile_document(
    tmp_path: Path, document: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plan.json"
    code, _, err = run(capsys, "plan", *WORKLOAD, "--strategy", "greedy", "--profile", str(document), "--out", str(out))
    assert code == 0, err
    plan = Plan.model_validate_json(out.read_text())
    profile = synthetic_document(CLUSTER, MODEL).profile
    with_profile = simulate(plan, batch_of_plan(plan), CostModel.from_specs(CLUSTER, MODEL, profile)).predicted
    with_preset = simulate(plan, batch_of_plan(plan), CostModel.from_specs(CLUSTER, MODEL)).predicted
    assert plan.predicted.iteration_s == with_profile.iteration_s != with_preset.iteration_s


def test_compare_takes_a_bare_cost_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A CostProfile JSON (what PUT /v1/jobs/{id}/profile takes) works too; ideal_s is priced with it."""
    profile = synthetic_document(CLUSTER, MODEL).profile
    bare = tmp_path / "bare.json"
    bare.write_text(profile.model_dump_json())
    code, out, err = run(
        capsys, "compare", *WORKLOAD, "--strategies", "static,greedy", "--profile", str(bare), "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    code, out, _ = run(capsys, "compare", *WORKLOAD, "--strategies", "static,greedy", "--json")
    preset = json.loads(out)
    assert report["ideal_s"] != preset["ideal_s"]
    assert report["ideal_s"] > 0 and all(r["feasible"] for r in report["results"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "not JSON"),
        ('{"name": "x"}', "not a cost profile"),
    ],
)
def test_unusable_profile_files_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "p.json"
    if content is not None:
        path.write_text(content)
    code, _, err = run(capsys, "plan", *WORKLOAD, "--profile", str(path), "--out", str(tmp_path / "plan.json"))
    assert code == 2 and message in err and str(path) in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_document_for_another_model_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "other.json"
    write_document(path, synthetic_document(CLUSTER, resolve_model("llama2-7b")))
    code, _, err = run(capsys, "compare", *WORKLOAD, "--profile", str(path))
    assert code == 2 and "measured for model 'llama2-7b', not 'tiny'" in err, err


def test_serve_refuses_a_bad_profile_before_starting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "serve", "--profile", str(tmp_path / "absent.json"), "--db", str(tmp_path / "x.db"))
    assert code == 2 and "no such file" in err and len(err.strip().splitlines()) == 1, err
