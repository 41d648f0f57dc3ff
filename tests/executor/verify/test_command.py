"""`helix verify` as the CLI loads it (a `register(app)` plugin): JSON contract, exit codes, plan files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from executor.verify.command import register
from planner_service.presets import resolve_cluster, resolve_model
from tests.executor.executor_fixtures import make_plan, plugin_app, random_batch


def _app() -> typer.Typer:
    return plugin_app(register)


STEP_KEYS = {
    "step",
    "loss",
    "ref_loss",
    "max_rel_grad_err",
    "num_stages",
    "peak_activation_bytes",
    "predicted_activation_bytes",
}
WORKLOAD = ["--cluster", "cpu-2x2", "--model", "tiny", "--dataset", "github", "--batch-size", "6", "--max-len", "96"]


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_verify_json_reports_exact_equivalence() -> None:
    """stdout is exactly one JSON object with the documented keys; exit 0 because every error is tiny."""
    result = CliRunner().invoke(
        _app(), ["verify", *WORKLOAD, "--strategy", "static", "--seed", "1", "--steps", "2", "--zero", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"steps", "max_rel_param_err", "tolerance", "ok"}
    assert report["ok"] is True and report["tolerance"] == 1e-9
    assert [s["step"] for s in report["steps"]] == [0, 1]
    for s in report["steps"]:
        assert set(s) == STEP_KEYS
        assert s["max_rel_grad_err"] <= 1e-9
        assert abs(s["loss"] - s["ref_loss"]) <= 1e-9 * abs(s["ref_loss"])
        assert len(s["peak_activation_bytes"]) == len(s["predicted_activation_bytes"]) == 4
    assert report["max_rel_param_err"] <= 1e-9


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_verify_forced_pipeline_with_slices() -> None:
    """`--stages 2` makes the planner pipeline the job; infinipipe slices the long sequences; still exact, and
    every rank's measured activation memory is reported next to the planner's prediction."""
    result = CliRunner().invoke(
        _app(),
        ["verify", *WORKLOAD, "--max-len", "160", "--strategy", "infinipipe", "--stages", "2", "--seed", "4", "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    (step,) = report["steps"]
    assert step["num_stages"] == 2
    assert all(m > 0 for m in step["peak_activation_bytes"])
    for measured, predicted in zip(step["peak_activation_bytes"], step["predicted_activation_bytes"], strict=True):
        assert 0.8 * predicted <= measured <= 1.3 * predicted


TIED_MODEL = Path(__file__).with_name("tiny_tied_model.json")
"""A 4-layer tiny model with tied embeddings, for `--stages 2` (the presets' tiny model is untied)."""


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_verify_zero3_with_tied_embeddings_across_two_stages() -> None:
    """`--zero 3` (FSDP2) with a tied-embedding model pipelined over 2 stages, helix plans that slice: exact."""
    workload = [*WORKLOAD, "--model", str(TIED_MODEL), "--max-len", "160"]
    result = CliRunner().invoke(
        _app(), ["verify", *workload, "--strategy", "helix", "--stages", "2", "--zero", "3", "--seed", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["steps"][0]["num_stages"] == 2
    assert report["max_rel_param_err"] <= 1e-9


@pytest.mark.timeout(60)
def test_zero_stage_outside_the_executor_is_a_usage_error() -> None:
    result = CliRunner().invoke(_app(), ["verify", *WORKLOAD, "--zero", "4"])
    assert result.exit_code == 2
    assert "ZeRO stage 4 does not exist" in result.output


@pytest.mark.timeout(60)
def test_plan_file_for_another_batch_is_refused(tmp_path: Path) -> None:
    """A plan file that does not fit the workload is a usage error naming the mismatch, before any launch."""
    import random

    cluster, model = resolve_cluster("cpu-2x2"), resolve_model("tiny")
    batch = random_batch(random.Random(0), num_seqs=3, max_len=20)
    plan = make_plan(batch, cluster, model, [([0, 1, 2, 3], [batch.seq_ids])])
    path = tmp_path / "plan.json"
    path.write_text(plan.model_dump_json())
    result = CliRunner().invoke(_app(), ["verify", *WORKLOAD, "--plan-file", str(path), "--json"])
    assert result.exit_code == 2
    assert "plan was made for another batch" in result.output


@pytest.mark.timeout(60)
def test_recompute_scope_reaches_the_verified_plans_and_a_bad_one_is_a_usage_error() -> None:
    """`--recompute-scope mlp` plans every verified step with MLP-only recompute (planned before any launch);
    an unknown scope exits 2 naming the option."""
    from executor.verify.command import _step_inputs
    from proto.plan import RecomputeScope

    inputs = _step_inputs(
        cluster=resolve_cluster("cpu-2x2"), model=resolve_model("tiny"), strategy="static", lengths=None,
        dataset="github", batch_size=6, seed=1, max_len=96, steps=2, zero=0, plan_file=None, time_limit=1.0,
        recompute_scope=RecomputeScope.MLP,
    )  # fmt: skip
    assert [step.plan.options.recompute_scope for step in inputs] == [RecomputeScope.MLP] * 2
    result = CliRunner().invoke(_app(), ["verify", *WORKLOAD, "--recompute-scope", "attention"])
    assert result.exit_code == 2 and "--recompute-scope" in result.output


@pytest.mark.timeout(60)
def test_bad_dtype_is_a_usage_error() -> None:
    result = CliRunner().invoke(_app(), ["verify", *WORKLOAD, "--dtype", "float16"])
    assert result.exit_code == 2 and "float16" in result.output


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_verify_keeps_one_pipeline_degree_for_the_whole_job() -> None:
    """P is chosen once per job (from the first batch), never per step: planning every step's own best P gave
    P = 2 for step 0 and P = 1 for step 1 on this workload, and the executor (built for one P) refused step 1."""
    args = ["--cluster", "cpu-2x2", "--model", "tiny", "--strategy", "helix", "--dataset", "github"]
    args += ["--batch-size", "8", "--max-len", "2048", "--seed", "1", "--steps", "3", "--json"]
    result = CliRunner().invoke(_app(), ["verify", *args])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert len({s["num_stages"] for s in report["steps"]}) == 1, [s["num_stages"] for s in report["steps"]]
