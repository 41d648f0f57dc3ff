#!/usr/bin/env bash
# GPU check for sessions lent a CUDA device: one command, under 8 minutes (the stages' own limits add up to 470 s),
# everything in one JSON file.
#
#   bench/gpu_check.sh                      # on the GPU machine (uses its CUDA torch)
#   bench/gpu_check.sh --dry-run            # anywhere: the same stages on CPU with the tiny model (checks the script)
#   bench/gpu_check.sh --out FILE           # default bench/results/gpu_check.json
#   bench/gpu_check.sh --parts attention    # only some measuring parts (attention, profile, step)
#   bench/gpu_check.sh --models llama3-8b   # models to profile (the first one's profile plans the step)
#   bench/gpu_check.sh --wheels DIR         # first install DIR/*.whl (bench/gpu_wheels.sh) into a temporary folder:
#                                           # a GPU image with CUDA torch but no pydantic or OR-Tools, no index
#
# Stages (each under its own time limit, so one stuck stage cannot eat the budget):
#   1. environment: torch, CUDA, the GPU, and which attention backends resolve (sdpa, torch_varlen, flash);
#   2. FlashAttention: which API the "flash" backend calls (flash-attn 2's `flash_attn` or flash-attn 4's
#      `flash_attn.cute`), or why neither is there. flash-attn 2 ships only a source build. flash-attn 4's CUDA 13
#      libraries are a 92 MB wheel, more than one device call carries (64 MiB): `bench/flash4_transport.sh pack`
#      splits its wheels into two parts here, and `bench/flash4_transport.sh install` assembles them on the warm GPU
#      machine after two calls have carried one part each;
#   3. the CUDA tests (pytest -m gpu: fused attention backends against SDPA, the prefix-K/V memory model, bf16 mixed
#      precision over fp32 states, deferred weight gradients under bf16 autocast);
#   4. bench/gpu_check.py: the attention backends side by side at 4K-64K tokens; a profile of one layer of
#      llama2-7b and llama3-8b in bf16 (GEMM MFU, attention efficiency); a 1-GPU training step of the executor
#      against its plan's time and peak memory.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
OUT=bench/results/gpu_check.json
PARTS=attention,profile,step
MODELS=llama2-7b,llama3-8b
WHEELS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    --parts) PARTS="$2"; shift ;;
    --models) MODELS="$2"; shift ;;
    --wheels) WHEELS="$2"; shift ;;
    *) echo "usage: bench/gpu_check.sh [--dry-run] [--out FILE] [--parts attention,profile,step] [--models A,B]" \
         "[--wheels DIR]" >&2
       exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$(dirname "$OUT")"
STARTED=$SECONDS
# The project runs from this checkout (no install): the spawned ranks and pytest import it from here.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "$WHEELS" ]; then
  SITE="$WORK/site"
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl \
    > "$WORK/pip.log" 2>&1; then
    echo "gpu_check: installing the wheels in $WHEELS failed:" >&2
    tail -5 "$WORK/pip.log" >&2
    exit 1
  fi
  export PYTHONPATH="$PYTHONPATH:$SITE"
fi

echo "== 1/4 environment"
timeout 40 "$PY" - > "$WORK/env.json" <<'EOF'
import json, torch
from executor.attention.backends import BACKENDS, resolve_backend
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
backends = {}
for name in BACKENDS:
    try:
        backends[name] = resolve_backend(name, device)
    except ValueError as exc:
        backends[name] = f"unavailable: {exc}"
print(json.dumps({
    "torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    "attention_backends": backends,
}))
EOF
cat "$WORK/env.json"

echo "== 2/4 FlashAttention"
FLASH_NOTE=$(timeout 30 "$PY" -c '
from executor.attention.backends import flash_api
api = flash_api()
print(f"flash backend calls {api}" if api else "no FlashAttention importable: flash-attn 2 ships only a source build; "
      "flash-attn 4 needs its 92 MB CUDA 13 library wheel brought in two calls (bench/flash4_transport.sh)")
' 2>&1 | tail -1)
echo "$FLASH_NOTE"

echo "== 3/4 CUDA tests"
timeout 120 "$PY" -m pytest -q -m gpu -rs -p no:cacheprovider tests/executor/attention/test_cuda_backends.py \
  tests/simulator/test_prefix_kv_memory.py tests/executor/test_mixed_precision_cuda.py \
  tests/executor/parallel/pipeline/test_weight_grads.py > "$WORK/pytest.log" 2>&1
TESTS_RC=$?
tail -15 "$WORK/pytest.log"
cp "$WORK/pytest.log" "${OUT%.json}_pytest.log"

echo "== 4/4 profile and 1-GPU step"
ARGS=(--out "$WORK/measure.json" --parts "$PARTS" --models "$MODELS" --profile-dir "$(dirname "$OUT")")
[ "$DRY" = 1 ] && ARGS+=(--dry-run)
timeout 280 "$PY" bench/gpu_check.py "${ARGS[@]}"
MEASURE_RC=$?

"$PY" - "$WORK" "$OUT" "$TESTS_RC" "$MEASURE_RC" "$FLASH_NOTE" "$DRY" "$((SECONDS - STARTED))" <<'EOF'
import json, pathlib, sys
work, out, tests_rc, measure_rc, flash, dry, seconds = sys.argv[1:]
work = pathlib.Path(work)
measure = work / "measure.json"


def read_json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # a stage that died keeps its reason in the report, not a traceback here
        return {"unreadable": f"{path.name}: {exc}"}


report = {
    "dry_run": dry == "1",
    "environment": read_json(work / "env.json"),
    "flash_attention": flash,
    "cuda_tests": {"exit_code": int(tests_rc), "log_tail": (work / "pytest.log").read_text().splitlines()[-60:]},
    "measure_exit_code": int(measure_rc),
    "measure": read_json(measure) if measure.exists() else None,
    "seconds": int(seconds),
}
pathlib.Path(out).write_text(json.dumps(report, indent=1))
print(f"gpu_check: wrote {out} ({seconds} s; tests rc {tests_rc}, measure rc {measure_rc})")
EOF
[ "$MEASURE_RC" = 0 ]
