"""The per-op overhead probe's plans: valid, the same work both ways, and only the op count differs.

Guards against a probe whose two steps differ in more than the number of ops (the fit would then blame the
difference in work on the op overhead), and plans the executor would refuse.
"""

from __future__ import annotations

import pytest

from planner_service.cost_model import CostModel
from planner_service.cost_model.op_overhead_probe import SEQUENCES_PER_LANE, OpProbe, fit_op_overhead
from planner_service.presets import resolve_cluster, resolve_model
from proto import ClusterSpec
from proto.validation import validate_plan


def one_device() -> ClusterSpec:
    return resolve_cluster("cpu-1x2").model_copy(update={"devices_per_node": 1, "name": "cpu-1x1"})


@pytest.mark.parametrize(
    ("cluster", "layers", "stages"),
    [(resolve_cluster("cpu-2x2"), 4, 2), (one_device(), 4, 1), (resolve_cluster("cpu-2x2"), 1, 1)],
)
def test_probe_plans_are_valid_and_differ_only_in_chunking(cluster: ClusterSpec, layers: int, stages: int) -> None:
    model = resolve_model("tiny").model_copy(update={"num_layers": layers})
    probe = OpProbe.of(cluster, model)
    assert probe.num_stages == stages and probe.model.num_layers == stages  # one layer per stage
    profile = CostModel.from_specs(cluster, probe.model).profile
    batch = probe.batch(cluster)
    packed, split = (probe.plan(cluster, profile, split=s) for s in (False, True))
    for plan in (packed, split):
        validate_plan(plan, batch, cluster, probe.model)
        assert plan.plan_id and plan.predicted.iteration_s > 0
    assert [len(lane.chunks) for lane in packed.lanes] == [1] * (cluster.num_devices // stages)
    assert [len(lane.chunks) for lane in split.lanes] == [SEQUENCES_PER_LANE] * (cluster.num_devices // stages)
    for a, b in zip(packed.lanes, split.lanes, strict=True):
        assert a.ranks == b.ranks
        pieces = [{(g.seq_id, g.start, g.end) for c in lane.chunks for g in c.segments} for lane in (a, b)]
        assert pieces[0] == pieces[1] and len(pieces[0]) == SEQUENCES_PER_LANE


def test_the_fit_inverts_the_simulator_at_any_overhead() -> None:
    """Steps priced with a known overhead give it back (the simulated difference is linear in it)."""
    cluster, model = resolve_cluster("cpu-2x2"), resolve_model("tiny")
    probe = OpProbe.of(cluster, model)
    base = CostModel.from_specs(cluster, probe.model).profile
    for overhead in (0.0, 2e-4, 5e-3):
        truth = base.model_copy(update={"op_overhead_s": overhead})
        packed, split = (probe.plan(cluster, truth, split=s).predicted.iteration_s for s in (False, True))
        fit = fit_op_overhead(cluster, model, base, packed, split)
        assert fit.op_overhead_s == pytest.approx(overhead, abs=1e-12)
        assert fit.slope > 0
