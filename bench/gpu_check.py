"""The measuring half of `bench/gpu_check.sh`: profile 7B/8B layers in bf16 and compare a 1-GPU step with its plan.

0. the attention backends side by side (SDPA, torch's fused varlen, FlashAttention 2 or 4 where importable): forward
   and forward+backward of one causal sequence of 4K-64K tokens in bf16 with llama2-7b's and llama3-8b's heads,
   as achieved FLOP/s and a fraction of the peak;
1. `helix profile` on one CUDA device (a 1x1 cluster with the GPU's datasheet peak) for llama2-7b and llama3-8b:
   the fitted profile, every fit's error, the GEMMs' MFU and the attention efficiency per token count (4K-64K);
2. a training step of the executor on that GPU (a llama2-7b-shaped model cut to a few layers so that weights and
   AdamW state fit), planned with the measured profile, timed (median of repeats) and compared with the plan's
   predicted time and peak memory.

`--dry-run` does the same on CPU with the tiny model and the tiny grid (to check the script without a GPU).
Everything goes to one JSON file, rewritten after each part, so a part cut off by its time limit keeps what the
earlier parts measured. `--parts` picks parts (a second, shorter call can re-run `attention` once FlashAttention 4 has
been brought to the machine).
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

from executor.attention.backends import flash_api, resolve_backend, varlen_causal_attention
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


ATTENTION_TOKENS = {"gpu": (4096, 16384, 65536), "dry": (256, 512)}
"""Causal sequence lengths of the attention comparison (one segment each)."""

ATTENTION_BACKWARD_FLOPS = 2.5
"""FLOPs of a causal attention backward per forward FLOP (the dQ, dK, dV and recomputed-score GEMMs: 5 against 2),
the convention FlashAttention's own benchmarks use to report backward TFLOP/s."""

PARTS = ("attention", "profile", "step")


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


def _timed(fn: Any, repeats: int, device: str) -> float:
    """Median seconds of `fn()` over `repeats` calls after one warm-up (CUDA: synchronised around each call)."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _attention_times(
    backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, repeats: int, device: str
) -> tuple[float, float]:
    """Median forward and forward+backward seconds of one causal segment spanning all of q's rows."""
    bounds = [0, q.shape[0]]

    def forward() -> torch.Tensor:
        return varlen_causal_attention(q, k, v, bounds, backend=backend)

    def forward_backward() -> None:
        forward().backward(grad)

    with torch.no_grad():
        fwd_s = _timed(forward, repeats, device)
    return fwd_s, _timed(forward_backward, repeats, device)


def attention_backends(names: list[str], cluster: ClusterSpec, args: argparse.Namespace) -> dict[str, Any]:
    """Each attention backend's forward and forward+backward time on one causal sequence per length, per model."""
    device = "cpu" if args.dry_run else "cuda"
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    rows: list[dict[str, Any]] = []
    unavailable: dict[str, str] = {}
    for backend in ("sdpa", "torch_varlen", "flash"):
        try:
            resolve_backend(backend, torch.device(device))
        except ValueError as exc:
            unavailable[backend] = str(exc)
            continue
        for name in names:
            model = resolve_model(name)
            heads, kv_heads = model.num_heads, model.num_kv_heads
            head_dim = model.head_dim or model.hidden_size // heads
            for tokens in ATTENTION_TOKENS["dry" if args.dry_run else "gpu"]:
                gen = torch.Generator(device=device).manual_seed(tokens)
                q, k, v = (
                    torch.randn(tokens, h, head_dim, generator=gen, device=device, dtype=dtype).requires_grad_(True)
                    for h in (heads, kv_heads, kv_heads)
                )
                grad = torch.randn(tokens, heads, head_dim, generator=gen, device=device, dtype=dtype)
                try:
                    fwd_s, both_s = _attention_times(backend, q, k, v, grad, args.repeats, device)
                except Exception as exc:  # one backend failing on one shape is a result, not the end of the check
                    rows.append({"backend": backend, "model": name, "tokens": tokens, "error": repr(exc)[:300]})
                    print(f"attention {backend} {name} {tokens} tokens failed: {exc!r}"[:300], flush=True)
                    del q, k, v, grad
                    if device == "cuda":
                        torch.cuda.empty_cache()
                    continue
                flops = 2.0 * tokens * tokens * heads * head_dim  # causal: half of 4·T²·h·d
                row = {
                    "backend": backend,
                    "model": name,
                    "tokens": tokens,
                    "forward_s": fwd_s,
                    "forward_backward_s": both_s,
                    "forward_flops_per_s": flops / fwd_s,
                    "backward_flops_per_s": ATTENTION_BACKWARD_FLOPS * flops / max(both_s - fwd_s, 1e-9),
                    "forward_efficiency": flops / fwd_s / cluster.peak_flops,
                    "forward_backward_efficiency": (1 + ATTENTION_BACKWARD_FLOPS) * flops / both_s / cluster.peak_flops,
                }
                rows.append(row)
                print(f"attention {backend:>12} {name:>10} {tokens:>6} tokens: fwd {1e3 * fwd_s:8.2f} ms "
                      f"({row['forward_efficiency']:.2f} of peak), fwd+bwd {1e3 * both_s:8.2f} ms "
                      f"({row['forward_backward_efficiency']:.2f})", flush=True)  # fmt: skip
                del q, k, v, grad
    return {"flash_api": flash_api(), "unavailable": unavailable, "rows": rows}


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
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--profile-dir", type=Path, help="where the profile JSON files go (default: beside --out)")
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    if not parts or any(p not in PARTS for p in parts):
        sys.exit(f"gpu_check: --parts takes a comma-separated subset of {', '.join(PARTS)}, got {args.parts!r}")
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
        "parts": parts,
        "cluster": cluster.model_dump(mode="json"),
        "software": software_versions(settings.device),
        "python": platform.python_version(),
        "profiles": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        report["seconds"] = time.perf_counter() - began
        args.out.write_text(json.dumps(report, indent=1))

    if "attention" in parts:
        report["attention"] = attention_backends(names, cluster, args)
        save()
    if "profile" not in parts and "step" not in parts:
        print(f"wrote {args.out} in {report['seconds']:.0f} s")
        return
    # The step is planned with the first model's measured profile: profile that model, time the step, then the rest.
    for i, name in enumerate(names if "profile" in parts else names[:1]):
        model = resolve_model(name)
        profile_dir = args.profile_dir or args.out.parent
        doc = profile_model(cluster, model, settings, profile_dir / f"gpu_check_profile_{name}.json")
        report["profiles"][name] = {
            "fits": [f.model_dump(mode="json") for f in doc.fits],
            "efficiency": doc.efficiency.model_dump(mode="json"),
            "attention_by_tokens": attention_efficiency_by_tokens(doc),
            "profile": doc.profile.model_dump(mode="json"),
        }
        print(f"{name}: GEMM MFU {doc.efficiency.gemm_efficiency}, attention {doc.efficiency.attention_efficiency} "
              f"({time.perf_counter() - began:.0f} s)", flush=True)  # fmt: skip
        save()
        if i == 0 and "step" in parts:
            step_model = doc.model
            if not args.dry_run:
                update = {"num_layers": STEP_LAYERS, "name": f"{name}-{STEP_LAYERS}layers"}
                step_model = step_model.model_copy(update=update)
            step = report["step"] = step_check(cluster, step_model, doc, args)
            save()
            print(f"step: predicted {step['predicted_s']:.4f} s, measured {step['measured_s']:.4f} s "
                  f"({100 * step['time_error']:+.1f}%); peak memory predicted "
                  f"{step['predicted_peak_bytes'] / GIB:.2f} GiB, measured {step['measured_peak_bytes'] / GIB:.2f} GiB "
                  f"({100 * step['memory_error']:+.1f}%)", flush=True)  # fmt: skip
    print(f"wrote {args.out} in {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
