"""`helix profile` end to end on CPU ranks (gloo), and whole steps timed by `step_timing`.

Guards against a profiler that measures nothing (every fit must have rows from the real devices), a document that
`--profile` cannot read back, a cache that measures again although nothing changed, user mistakes that launch
anything, and step timings that lose ranks or repeats. Timings are not asserted against thresholds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from executor.profile.grid import GRIDS
from executor.profile.layer_bench import chunk_shapes
from executor.profile.step_timing import PlanCase, StepTimingSettings, time_plans
from executor.verify.launch import launch_local
from planner_service.cli import main
from planner_service.cost_model.profile_document import read_profile_file
from planner_service.planner import make_plan
from planner_service.presets import resolve_cluster, resolve_model
from proto import Batch

pytestmark = pytest.mark.timeout(600)

BASE = ["profile", "--cluster", "cpu-1x2", "--model", "tiny", "--grid", "tiny", "--warmup", "0", "--repeats", "1"]


def helix(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "planner_service.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "tpu"], "--device: 'tpu'; choose cpu or cuda"),
        (["--grid", "huge"], "--grid: 'huge'; choose one of tiny, cpu, gpu"),
        (["--dtype", "int8"], "--dtype: 'int8'"),
        (["--no-cache"], "with --no-cache, give --out FILE"),
    ],
)
def test_user_errors_exit_2_before_any_launch(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_launch(**_: object) -> int:
        raise AssertionError("a user error must not start torchrun")

    monkeypatch.setattr("executor.profile.command.launch_local_torchrun", no_launch)
    code = main([*BASE, *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
@pytest.mark.distributed
def test_profile_measures_fits_writes_and_caches(tmp_path: Path) -> None:
    out, cache = tmp_path / "profile.json", tmp_path / "cache"
    first = helix(*BASE, "--out", str(out), "--cache-dir", str(cache), "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    assert summary["cached"] is False and summary["path"] == str(out)
    profile, doc = read_profile_file(out)
    assert doc is not None and doc.profile == profile
    fits = {f.name: f for f in doc.fits}
    assert fits["layer forward"].rows == len(chunk_shapes(GRIDS["tiny"]))
    assert fits["layer backward"].rows == fits["layer forward"].rows
    for name in ("all-to-all inside a node", "p2p inside a node", "gradient reductions inside a node"):
        assert fits[name].rows > 0 and fits[name].rms_relative_error is not None, name
    m = doc.measurements
    # the layer on lanes of SP degree 1 and 2 (both ranks), every grid length, and one cost per degree
    assert sorted((r.sp_degree, r.num_tokens) for r in m.lanes) == [
        (s, t) for s in (1, 2) for t in sorted(GRIDS["tiny"].lane_tokens)
    ]
    assert [c.sp_degree for c in profile.sp_degree_costs] == [1, 2]
    assert fits["layer on SP-2 lanes"].rows == 2 * len(GRIDS["tiny"].lane_tokens)
    assert (m.world_size, m.backend, m.attention_backend, m.threads_per_rank) == (2, "gloo", "sdpa", 1)
    # the per-op probe ran both steps on the two ranks (P = 2: one stage each) and its fit set the overhead
    assert m.op_probe is not None and m.op_probe.num_stages == 2
    assert m.op_probe.packed_s > 0 and m.op_probe.split_s > 0
    assert fits["per-op overhead"].rows == 1
    assert profile.op_overhead_s == fits["per-op overhead"].coefficients["op_overhead_s"] >= 0
    assert not m.attention_saves_prefix_kv and profile.attention_saves_prefix_kv is False
    # MLP-only recompute frees what the probe measures: the layer's saved bytes less those with its MLP checkpointed
    assert fits["saved bytes: mlp_checkpointed_layer"].rows > 0
    freed = (
        profile.activation_bytes_per_token_layer
        - fits["saved bytes: mlp_checkpointed_layer"].coefficients["bytes_per_token"]
    )
    assert freed > 0
    assert profile.mlp_recompute_freed_bytes_per_token_layer == pytest.approx(freed)
    # float32 AdamW: param, grad, exp_avg, exp_avg_sq (+ one 4-byte step counter per tensor)
    assert profile.bytes_per_param_state == pytest.approx(16.0, rel=1e-3)
    e = doc.efficiency
    assert e.measured_gemm_peak_flops is not None and e.measured_gemm_peak_flops > 0
    # a tiny noisy grid may not identify the linear term (all of it in the per-call overhead): then no MFU is claimed
    gemm_flops = 2.0 * (doc.model.params_per_layer - 2 * doc.model.hidden_size)
    expected = gemm_flops / profile.linear_s_per_token / e.peak_flops if profile.linear_s_per_token > 0 else None
    assert e.gemm_efficiency == (pytest.approx(expected) if expected is not None else None)
    assert list(cache.glob("tiny--cpu-1x2--*.json")), "the document is filed in the cache"

    again = helix(*BASE, "--out", str(tmp_path / "again.json"), "--cache-dir", str(cache), "--json", timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["cached"] is True
    assert read_profile_file(tmp_path / "again.json")[1] == doc

    workload = ["-c", "cpu-1x2", "-m", "tiny", "--dataset", "github", "--batch-size", "4", "--max-len", "512"]
    plan = helix("plan", *workload, "--profile", str(out), "--out", str(tmp_path / "plan.json"), timeout=120)
    assert plan.returncode == 0, plan.stderr


@pytest.mark.slow
@pytest.mark.distributed
def test_time_plans_reports_every_case_rank_and_repeat() -> None:
    cluster, model = resolve_cluster("cpu-1x2"), resolve_model("tiny")
    batch = Batch.from_lengths([300, 40, 120, 90])
    cases = [
        PlanCase(
            key=s, batch=batch, plan=make_plan(batch=batch, cluster=cluster, model=model, strategy=s), token_seed=3
        )
        for s in ("static", "greedy")
    ]
    settings = StepTimingSettings(warmup=1, repeats=2)
    timings = launch_local(time_plans, (cluster, model, cases, settings), world_size=2)
    assert timings[1] is None
    results = timings[0]
    assert [t.key for t in results] == ["static", "greedy"]
    for timing, case in zip(results, cases, strict=True):
        assert timing.plan_id == case.plan.plan_id
        assert len(timing.seconds) == 2 and all(s > 0 for s in timing.seconds)
        assert len(timing.peak_memory_bytes) == 2 and all(p > 0 for p in timing.peak_memory_bytes)
        assert timing.loss > 0
