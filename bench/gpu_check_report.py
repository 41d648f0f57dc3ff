"""Render a `bench/gpu_check.sh` JSON report as a markdown table (what ran, what passed, what was measured).

python bench/gpu_check_report.py bench/results/gpu_check_h200.json   # writes bench/results/gpu_check_h200.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

GIB = 2**30


def _environment(report: dict[str, Any]) -> list[str]:
    env = report.get("environment") or {}
    software = (report.get("measure") or {}).get("software", {})
    return [
        f"- Device: {env.get('gpu')}; torch {env.get('torch')} (CUDA {env.get('cuda')}), "
        f"NCCL {software.get('nccl', '?')}, Python {software.get('python', '?')}.",
        f"- Attention backends: {', '.join(f'{k} -> {v}' for k, v in (env.get('attention_backends') or {}).items())}.",
        f"- FlashAttention: {report.get('flash_attention')}.",
        f"- Whole check: {report.get('seconds')} s; CUDA tests exit code {report['cuda_tests']['exit_code']}; "
        f"measuring exit code {report.get('measure_exit_code')}.",
    ]


def _tests(report: dict[str, Any]) -> list[str]:
    tail = report["cuda_tests"]["log_tail"]
    summary = [line for line in tail if " passed" in line or " failed" in line or " skipped" in line]
    return ["", "## CUDA tests", "", f"`{summary[-1].strip('= ')}`" if summary else "(no pytest summary line)"]


def _attention(measure: dict[str, Any]) -> list[str]:
    attention = measure.get("attention")
    if not attention:
        return []
    lines = [
        "",
        "## Attention backends (one causal segment, bf16)",
        "",
        "| backend | model | tokens | forward ms | fwd+bwd ms | forward / peak | fwd+bwd / peak |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in attention["rows"]:
        if "error" in row:
            lines.append(f"| {row['backend']} | {row['model']} | {row['tokens']} | failed: {row['error'][:90]} | | | |")
            continue
        lines.append(
            f"| {row['backend']} | {row['model']} | {row['tokens']} | {1e3 * row['forward_s']:.2f} "
            f"| {1e3 * row['forward_backward_s']:.2f} | {row['forward_efficiency']:.3f} "
            f"| {row['forward_backward_efficiency']:.3f} |"
        )
    for backend, why in attention.get("unavailable", {}).items():
        lines.append(f"\n{backend}: not measured ({why}).")
    return lines


def _profiles(measure: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, profile in (measure.get("profiles") or {}).items():
        eff = profile["efficiency"]
        lines += ["", f"## Profile: {name}", "", f"- efficiency: {json.dumps(eff)}"]
        lines += [f"- fit {fit.get('name', '?')}: {json.dumps(fit)[:200]}" for fit in profile["fits"]]
    return lines


def _step(measure: dict[str, Any]) -> list[str]:
    step = measure.get("step")
    if not step:
        return []
    return [
        "",
        "## 1-GPU training step against its plan",
        "",
        "| tokens | predicted s | measured s | error | predicted peak GiB | measured peak GiB | error |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {step['tokens']} | {step['predicted_s']:.4f} | {step['measured_s']:.4f} | {100 * step['time_error']:+.1f}% "
        f"| {step['predicted_peak_bytes'] / GIB:.2f} | {step['measured_peak_bytes'] / GIB:.2f} "
        f"| {100 * step['memory_error']:+.1f}% |",
    ]


def render(report: dict[str, Any], title: str) -> str:
    measure = report.get("measure") or {}
    lines = [f"# {title}", "", *_environment(report), *_tests(report), *_attention(measure)]
    lines += _profiles(measure) + _step(measure)
    if not measure.get("profiles"):
        lines += ["", "No profile was completed in this run (see the measuring exit code and the log)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--out", type=Path, help="default: the report's path with .md")
    parser.add_argument("--title", default="GPU check")
    parser.add_argument("--note", type=Path, help="a markdown file appended as the run's notes (what it found)")
    args = parser.parse_args()
    out = args.out or args.report.with_suffix(".md")
    text = render(json.loads(args.report.read_text()), args.title)
    if args.note:
        text += "\n## Notes\n\n" + args.note.read_text()
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
