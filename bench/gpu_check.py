"""The measuring half of `bench/gpu_check.sh`: profile 7B/8B layers in bf16 and compare a 1-GPU step with its plan.

1. `helix profile` on one CUDA device (a 1x1 cluster with the GPU's datasheet peak) for llama2-7b and llama3-8b:
   the fitted profile, every fit's error, the GEMMs' MFU and the attention efficiency per token count (4K-64K);
2. a training step of the executor on that GPU (a llama2-7b-shaped model cut to a few layers so that weights and
   AdamW state fit), planned with the measured profile, timed (median of repeats) and compared with the plan's
   predicted time and peak memory.

`--dry-run` does the same on CPU with the tiny model and the tiny grid (to check the script without a GPU).
Everything goes to one JSON file.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from executor.profile.grid import GRIDS, ProfileSettings
from executor.profile.profile_run import ProfileTarget, run_profile_rank, software_versions
from executor.profile.step_timing import PlanCase, StepTimingSettings, time_plans
from executor.verify.launch import launch_local
from planner_service.cost_model.profile_document import ProfileDocument
from planner_service.planner import make_plan
from planner_service.presets import resolve_model
from planner_service.workloads import load_workload
from proto import ClusterSpec, ModelSpec

GIB = 2**30

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12}
"""Dense bf16 tensor-core peak by GPU family (NVIDIA datasheets; SXM parts), the denominator of the MFU reported."""

STEP_LAYERS = 4
"""Layers of the llama2-7b-shaped model of the step check: 4 layers + embedding + head ≈ 1.1B parameters, ≈ 17 GiB
of fp32 weights, gradients and AdamW state (bf16 autocast), leaving the rest of an 80 GB part for activations."""


def gpu_cluster() -> ClusterSpec:
    name = torch.cuda.get_device_name()
    family = next((k for k in PEAK_BF16_FLOPS if k in name), None)
    total = torch.cuda.get_device_properties(0).total_memory
    return ClusterSpec(
        name="gpu-1x1",
        num_nodes=1,
        devices_per_node=1,
        device_memory_bytes=float(total),
        peak_flops=PEAK_BF16_FLOPS.get(family or "", 989e12),
        intra_node_bandwidth=100e9,
        inter_node_bandwidth=10e9,
        source=f"{name}: datasheet bf16 peak ({family or 'unknown family: H100 figure assumed'}); one device, no links",
    )


def cpu_cluster() -> ClusterSpec:
    from planner_service.presets import resolve_cluster

    return resolve_cluster("cpu-1x2").model_copy(update={"name": "cpu-1x1", "devices_per_node": 1})


def profile_model(cluster: ClusterSpec, model: ModelSpec, settings: ProfileSettings, out: Path) -> ProfileDocument:
    target = ProfileTarget(cluster=cluster, model=model, settings=settings, out=out, cache_dir=None)
    doc: ProfileDocument = launch_local(run_profile_rank, (target,), world_size=1)[0]
    return doc


def attention_efficiency_by_tokens(doc: ProfileDocument) -> list[dict[str, float]]:
    """Per one-segment chunk without context: attention FLOPs (2·h·T²) over the forward time left after the fitted
    linear part, as a fraction of the peak."""
    p, h = doc.profile, doc.model.hidden_size
    rows = []
    for r in doc.measurements.layer:
        if r.context or r.seq_len != r.num_tokens:
            continue
        attention_s = r.forward_s - p.linear_s_per_token * r.num_tokens - p.layer_overhead_s
        if attention_s <= 0:
            continue
        flops = 2.0 * h * r.attn_pairs / attention_s
        efficiency = flops / doc.cluster.peak_flops
        rows.append({"tokens": r.num_tokens, "attention_flops_per_s": flops, "efficiency": efficiency})
    return rows


def step_check(
    cluster: ClusterSpec, model: ModelSpec, doc: ProfileDocument, args: argparse.Namespace
) -> dict[str, Any]:
    device = "cpu" if args.dry_run else "cuda"
    max_len = 2048 if args.dry_run else 16384
    batch = load_workload(lengths_path=None, dataset="github", batch_size=4 if args.dry_run else 16, seed=1,
                          max_len=max_len)  # fmt: skip
    plan = make_plan(batch=batch, cluster=cluster, model=model, strategy="helix", profile=doc.profile, time_limit_s=2.0)
    settings = StepTimingSettings(
        warmup=1, repeats=args.repeats, dtype="float32" if args.dry_run else "bfloat16", device=device
    )
    timing = launch_local(time_plans, (cluster, model, [PlanCase(key="step", batch=batch, plan=plan)], settings),
                          world_size=1)[0][0]  # fmt: skip
    measured = statistics.median(timing.seconds)
    predicted_peak = max(plan.predicted.peak_memory_bytes) - doc.profile.memory_reserve_bytes
    return {
        "model": model.model_dump(mode="json"),
        "tokens": batch.num_tokens,
        "lengths": batch.lengths,
        "plan": {
            "num_stages": plan.pipeline.num_stages,
            "chunks": len(plan.lanes[0].chunks),
            "recompute": plan.lanes[0].recompute,
        },
        "predicted_s": plan.predicted.iteration_s,
        "measured_s": measured,
        "measured_steps_s": list(timing.seconds),
        "time_error": plan.predicted.iteration_s / measured - 1.0,
        "predicted_peak_bytes": predicted_peak,
        "measured_peak_bytes": max(timing.peak_memory_bytes),
        "memory_error": predicted_peak / max(timing.peak_memory_bytes) - 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, tiny grid")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="llama2-7b,llama3-8b")
    args = parser.parse_args()
    began = time.perf_counter()
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device (use --dry-run to check the script on CPU)")
    cluster = cpu_cluster() if args.dry_run else gpu_cluster()
    settings = ProfileSettings(
        grid=GRIDS["tiny" if args.dry_run else "gpu"],
        grid_name="tiny" if args.dry_run else "gpu",
        warmup=1,
        repeats=args.repeats,
        dtype="float32" if args.dry_run else "bfloat16",
        device="cpu" if args.dry_run else "cuda",
        collectives=False,
    )
    names = ["tiny"] if args.dry_run else args.models.split(",")
    report: dict[str, Any] = {
        "dry_run": args.dry_run,
        "cluster": cluster.model_dump(mode="json"),
        "software": software_versions(settings.device),
        "python": platform.python_version(),
        "profiles": {},
    }
    docs = {}
    for name in names:
        model = resolve_model(name)
        doc = profile_model(cluster, model, settings, args.out.parent / f"gpu_check_profile_{name}.json")
        docs[name] = doc
        report["profiles"][name] = {
            "fits": [f.model_dump(mode="json") for f in doc.fits],
            "efficiency": doc.efficiency.model_dump(mode="json"),
            "attention_by_tokens": attention_efficiency_by_tokens(doc),
            "profile": doc.profile.model_dump(mode="json"),
        }
        print(f"{name}: GEMM MFU {doc.efficiency.gemm_efficiency}, attention {doc.efficiency.attention_efficiency} "
              f"({time.perf_counter() - began:.0f} s)", flush=True)  # fmt: skip
    first = names[0]
    step_model = docs[first].model
    if not args.dry_run:
        step_model = step_model.model_copy(update={"num_layers": STEP_LAYERS, "name": f"{first}-{STEP_LAYERS}layers"})
    report["step"] = step_check(cluster, step_model, docs[first], args)
    report["seconds"] = time.perf_counter() - began
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    step = report["step"]
    print(f"step: predicted {step['predicted_s']:.4f} s, measured {step['measured_s']:.4f} s "
          f"({100 * step['time_error']:+.1f}%); peak memory predicted {step['predicted_peak_bytes'] / GIB:.2f} GiB, "
          f"measured {step['measured_peak_bytes'] / GIB:.2f} GiB ({100 * step['memory_error']:+.1f}%)")  # fmt: skip
    print(f"wrote {args.out} in {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
