"""Model-state memory per rank for ZeRO 0/1/2/3 on one plan, and the time the overlapped gradient sync saves.

Memory (4 gloo ranks, one stage block of 4, float32, the same static plan under each ZeRO stage): measured
per rank = the bytes of parameters, gradients and AdamW state the rank holds (`ModelStates.state_bytes`, at
its largest: after the backward and after the optimizer step) + the executor's measured activation peak
(`memory_probe`); predicted = the cost model's `model_state_bytes` (param 4 B, grad 4 B, AdamW m and v 8 B per
parameter, ZeRO-sharded; ZeRO-3 adds two gathered layers) + its activation walk with the executor's per-token
coefficients. On CPU the gathered ZeRO-3 layers are transient and not in the measured column (on CUDA the
allocator's peak includes them).

Overlap (2 gloo ranks, one stage block of 2): the same steps with the gradient buckets reduced while the last
backward runs (the executor's default) and with every bucket issued after it (`overlap_grad_sync=False`),
alternating, step time = the slowest rank's forward-backward including the sync; medians over the steps, and
the saving as the median of per-step differences (the modes run back to back, so drifting load cancels);
beside it, one flat all-reduce of all the gradients on its own (what overlapping can hide at most), and the
exposed sync: the seconds from the end of a rank's last backward op until its reductions completed (slowest
rank, median), which is the part overlap is meant to remove and depends less on the machine's load.

Ranks and cores: this machine has 2 cores; the memory run puts 4 single-threaded ranks on them (2 per core,
time-shared: memory numbers do not depend on it); the overlap run uses 2 single-threaded ranks, one per core,
so a reduction in flight competes with the other rank's compute only through gloo's own threads.

Run: .venv/bin/python bench/zero_memory.py   (writes both tables to bench/results/zero_memory.{md,json})
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_common import machine, write_table
from executor.parallel.groups import create_process_groups
from executor.runner import ExecutorConfig, PlanExecutor
from executor.verify.launch import launch_local
from executor.verify.synthetic_tokens import SyntheticTokens
from planner_service.presets import resolve_model
from proto import Batch, ClusterSpec, ModelSpec, Plan, PlanOptions, ZeroStage

MIB = 2**20
MODEL = resolve_model("tiny").model_copy(
    update={"name": "bench-llama-s", "num_layers": 4, "hidden_size": 128, "ffn_hidden_size": 352, "vocab_size": 8192}
)
"""2.9 M parameters (float32: 11 MiB of weights, 45 MiB of unsharded states) and small activations, so the
states the ZeRO stages shard dominate."""
SYNC_MODEL = MODEL.model_copy(update={"name": "bench-llama-sync", "hidden_size": 256, "vocab_size": 16384})
"""9.6 M parameters (37 MiB of float32 gradients) for the overlap timing, on a small batch: a sync comparable to
the compute, so overlapping it matters."""
MEMORY_BATCH = Batch.from_lengths([512, 384, 256, 200, 128, 96, 64, 32])
SYNC_BATCH = Batch.from_lengths([128, 128, 128, 128])
SYNC_STEPS = 31
"""Steps per mode (the first of each is a warm-up and dropped)."""
SYNC_BUCKET_BYTES = 4 * MIB
MEMORY_COLUMNS = ["ZeRO", "rank", "states MiB", "activations MiB", "measured MiB"]
MEMORY_COLUMNS += ["pred. states MiB", "pred. act. MiB", "predicted MiB", "measured/predicted"]
SYNC_COLUMNS = ["ZeRO", "sync after backward ms", "overlapped ms", "saved ms (paired)", "saved share"]
SYNC_COLUMNS += ["flat all-reduce ms", "exposed sync ms, after", "exposed sync ms, overlapped"]


def cluster(devices: int) -> ClusterSpec:
    return ClusterSpec(
        name=f"cpu-1x{devices}",
        num_nodes=1,
        devices_per_node=devices,
        device_memory_bytes=8e9,
        peak_flops=1e11,
        intra_node_bandwidth=1e10,
        inter_node_bandwidth=1e9,
    )


def make_plan(batch: Batch, devices: int, model: ModelSpec) -> Plan:
    from planner_service.planner import make_plan as plan_batch

    return plan_batch(batch=batch, cluster=cluster(devices), model=model, strategy="static", num_stages=1)


# --- worker side -------------------------------------------------------------------------------------------


def memory_worker(plan_json: str) -> list[dict[str, Any]]:
    plan = Plan.model_validate_json(plan_json)
    spec = cluster(dist.get_world_size())
    groups = create_process_groups(spec, [1])
    rows = []
    for zero in range(4):
        config = ExecutorConfig(seed=0, dtype=torch.float32, zero_stage=zero)
        executor = PlanExecutor(model=MODEL, cluster=spec, pipeline=plan.pipeline, groups=groups, config=config)
        staged = plan.model_copy(update={"options": PlanOptions(zero_stage=ZeroStage(zero))})
        result = executor.forward_backward(staged, MEMORY_BATCH, tokens=SyntheticTokens(1, MODEL.vocab_size))
        after_backward = executor.states.state_bytes()
        executor.optimizer_step()
        states = max(after_backward, executor.states.state_bytes())
        rows.append(
            {"zero": zero, "rank": dist.get_rank(), "states": states, "activations": result.peak_activation_bytes}
        )
        del executor
    return rows


def sync_worker(plan_json: str) -> dict[str, list[float]]:
    plan = Plan.model_validate_json(plan_json)
    spec = cluster(dist.get_world_size())
    groups = create_process_groups(spec, [1])
    executors = {
        (zero, overlap): PlanExecutor(
            model=SYNC_MODEL,
            cluster=spec,
            pipeline=plan.pipeline,
            groups=groups,
            config=ExecutorConfig(
                seed=0,
                dtype=torch.float32,
                zero_stage=zero,
                overlap_grad_sync=overlap,
                grad_bucket_bytes=SYNC_BUCKET_BYTES,
            ),
        )
        for zero in (0, 1)
        for overlap in (True, False)
    }
    times: dict[str, list[float]] = {}
    for z, o in executors:
        times[f"zero{z}-{'overlap' if o else 'after'}"] = []
        times[f"zero{z}-{'overlap' if o else 'after'}-exposed"] = []
    times["all-reduce-alone"] = []
    for step in range(SYNC_STEPS):
        for (zero, overlap), executor in executors.items():
            staged = plan.model_copy(update={"options": PlanOptions(zero_stage=ZeroStage(zero))})
            dist.barrier()
            began = time.perf_counter()
            executor.forward_backward(staged, SYNC_BATCH, tokens=SyntheticTokens(step, SYNC_MODEL.vocab_size))
            elapsed = torch.tensor([time.perf_counter() - began], dtype=torch.float64)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            exposed = torch.tensor([executor.states.exposed_sync_s], dtype=torch.float64)  # type: ignore[attr-defined]
            dist.all_reduce(exposed, op=dist.ReduceOp.MAX)
            if step > 0:
                times[f"zero{zero}-{'overlap' if overlap else 'after'}"].append(float(elapsed))
                times[f"zero{zero}-{'overlap' if overlap else 'after'}-exposed"].append(float(exposed))
        # the reduction on its own: what overlapping can hide at most
        grads = torch.zeros(sum(p.numel() for p in executors[(0, True)].module.parameters()))
        dist.barrier()
        began = time.perf_counter()
        dist.all_reduce(grads)
        elapsed = torch.tensor([time.perf_counter() - began], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        if step > 0:
            times["all-reduce-alone"].append(float(elapsed))
    return times


# --- parent side -------------------------------------------------------------------------------------------


def predicted_memory(plan: Plan, zero: int) -> dict[int, tuple[float, float]]:
    """{rank: (predicted state bytes, predicted activation bytes)}."""
    from executor.verify.memory_prediction import memory_profile, predict_activation_memory
    from planner_service.cost_model import CostModel

    spec = cluster(4)
    profile = memory_profile(spec, MODEL, torch.float32, "executor").model_copy(
        update={"param_bytes": 4.0, "grad_bytes": 4.0, "bytes_per_param_state": 16.0}  # fp32 + AdamW m, v in fp32
    )
    staged = plan.model_copy(update={"options": PlanOptions(zero_stage=ZeroStage(zero))})
    cost = CostModel.from_specs(spec, MODEL, profile=profile, options=staged.options)
    states = cost.model_state_bytes(0, plan.pipeline, cost.dp_size(plan.pipeline))
    activations = predict_activation_memory(staged, MEMORY_BATCH, spec, MODEL, profile)
    return {rank: (states, activations[rank].held_peak_bytes) for rank in activations}


def main() -> None:
    memory_plan = make_plan(MEMORY_BATCH, 4, MODEL)
    measured = launch_local(memory_worker, (memory_plan.model_dump_json(),), world_size=4)
    rows = []
    for zero in range(4):
        predicted = predicted_memory(memory_plan, zero)
        for rank in sorted(measured):
            got = next(r for r in measured[rank] if r["zero"] == zero)
            p_states, p_act = predicted[rank]
            total, p_total = got["states"] + got["activations"], p_states + p_act
            rows.append(
                [
                    zero,
                    rank,
                    got["states"] / MIB,
                    got["activations"] / MIB,
                    total / MIB,
                    p_states / MIB,
                    p_act / MIB,
                    p_total / MIB,
                    total / p_total,
                ]
            )
    memory_md = write_table(
        "zero_memory",
        "Peak memory per rank by ZeRO stage (measured on CPU vs the cost model), same plan",
        MEMORY_COLUMNS,
        rows,
        run_meta(MODEL, memory_plan, MEMORY_BATCH, "4 single-threaded gloo ranks on 2 cores")
        | {"not measured on CPU": "ZeRO-3's transiently gathered layers (predicted: 2 layers)"},
    )
    sync_plan = make_plan(SYNC_BATCH, 2, SYNC_MODEL)
    timed = launch_local(sync_worker, (sync_plan.model_dump_json(),), world_size=2)[0]
    sync_rows = []
    for zero in (0, 1):
        overlapped, after_backward = timed[f"zero{zero}-overlap"], timed[f"zero{zero}-after"]
        overlap, after = statistics.median(overlapped), statistics.median(after_backward)
        # paired by step (the two modes run back to back), so load that drifts over the run cancels
        saved = statistics.median(a - o for a, o in zip(after_backward, overlapped, strict=True))
        alone = statistics.median(timed["all-reduce-alone"])
        exposed = [statistics.median(timed[f"zero{zero}-{m}-exposed"]) for m in ("after", "overlap")]
        sync_rows.append(
            [zero, after * 1e3, overlap * 1e3, saved * 1e3, saved / after, alone * 1e3, *(e * 1e3 for e in exposed)]
        )
    overlap_md = write_table(
        "zero_sync_overlap",
        "Step time with the gradient sync after the backward vs overlapped with it (medians, ms)",
        SYNC_COLUMNS,
        sync_rows,
        run_meta(SYNC_MODEL, sync_plan, SYNC_BATCH, "2 single-threaded gloo ranks, one per core")
        | {
            "buckets": f"{SYNC_BUCKET_BYTES // MIB} MiB",
            "steps": f"{SYNC_STEPS - 1} per mode after a warm-up, modes alternating",
            "raw seconds": {k: [round(x, 4) for x in v] for k, v in timed.items()},
        },
    )
    merge_tables(memory_md, overlap_md)


def run_meta(model: ModelSpec, plan: Plan, batch: Batch, ranks_on_cores: str) -> dict[str, Any]:
    """What a table was measured on: the machine, the model, the plan's lanes, how ranks share the cores."""
    lanes = ", ".join(f"SP {lane.sp_degree} x {len(lane.chunks)} chunks" for lane in plan.lanes)
    ranks = sum(lane.sp_degree for lane in plan.lanes)
    return {
        **machine(),
        "model": f"{model.name}: {model.num_layers} layers, hidden {model.hidden_size}, vocab {model.vocab_size}",
        "plan": f"{plan.strategy}, P = 1, {ranks} ranks in one stage block ({lanes}); batch {batch.lengths}",
        "ranks on cores": ranks_on_cores,
    }


def merge_tables(first: Path, second: Path) -> None:
    """Append `second`'s table (md and json) to `first`'s, so zero_memory.{md,json} hold both."""
    first.write_text(first.read_text() + "\n" + second.read_text().replace("# ", "## ", 1))
    merged = {"memory": json.loads(first.with_suffix(".json").read_text())}
    merged["sync_overlap"] = json.loads(second.with_suffix(".json").read_text())
    first.with_suffix(".json").write_text(json.dumps(merged, indent=1))
    second.unlink()
    second.with_suffix(".json").unlink()


if __name__ == "__main__":
    main()
