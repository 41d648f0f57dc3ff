#!/usr/bin/env bash
# GPU check for sessions lent a CUDA device: one command, under 8 minutes, everything in one JSON file.
#
#   bench/gpu_check.sh                 # on the GPU machine (uses its CUDA torch)
#   bench/gpu_check.sh --dry-run       # anywhere: the same stages on CPU with the tiny model (checks the script)
#   bench/gpu_check.sh --out FILE      # default bench/results/gpu_check.json
#
# Stages (each under its own time limit, so one stuck stage cannot eat the budget):
#   1. environment: torch, CUDA, the GPU, and which attention backends resolve (sdpa, torch_varlen, flash);
#   2. FlashAttention: flash-attn 2 if importable; flash-attn-4 (CuTe-DSL, `flash_attn.cute`) if importable, or
#      installed from wheels carried to the machine under shared/wheels (flash-attn-4 needs
#      nvidia-cutlass-dsl-libs-cu13, ~92 MB, more than one device call carries: bring it in a first call, run this
#      in a second one on the warm machine); otherwise skipped with that reason;
#   3. the CUDA tests (pytest -m gpu: fused attention backends against SDPA, the prefix-K/V memory model);
#   4. bench/gpu_check.py: profile one layer of llama2-7b and llama3-8b in bf16 (GEMM MFU, attention efficiency
#      at 4K-64K tokens) and time a 1-GPU training step of the executor against its plan's time and peak memory.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
OUT=bench/results/gpu_check.json
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    *) echo "usage: bench/gpu_check.sh [--dry-run] [--out FILE]" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$(dirname "$OUT")"
STARTED=$SECONDS

echo "== 1/4 environment"
timeout 60 "$PY" - > "$WORK/env.json" <<'EOF'
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
FLASH_NOTE=""
if "$PY" -c "import flash_attn.cute" 2>/dev/null; then
  FLASH_NOTE="flash-attn-4 (flash_attn.cute) importable"
elif ls shared/wheels/flash_attn_4-*.whl >/dev/null 2>&1 && ls shared/wheels/nvidia_cutlass_dsl_libs_cu13-*.whl >/dev/null 2>&1; then
  if [ "$DRY" = 1 ]; then
    FLASH_NOTE="dry run: flash-attn-4 wheels present, not installed on CPU"
  elif timeout 120 "$PY" -m pip install --quiet --no-index --find-links shared/wheels flash-attn-4 >"$WORK/pip.log" 2>&1; then
    FLASH_NOTE="flash-attn-4 installed from shared/wheels"
  else
    FLASH_NOTE="flash-attn-4 install from shared/wheels failed: $(tail -1 "$WORK/pip.log")"
  fi
else
  FLASH_NOTE="flash-attn-4 skipped: its wheels (flash_attn_4, nvidia_cutlass_dsl_libs_cu13 ~92 MB) are not under shared/wheels; one device call carries at most 64 MiB, so bring them in an earlier call"
fi
if "$PY" -c "import flash_attn; flash_attn.flash_attn_varlen_func" 2>/dev/null; then
  FLASH_NOTE="$FLASH_NOTE; flash-attn 2 importable"
else
  FLASH_NOTE="$FLASH_NOTE; flash-attn 2 not installed (source build only)"
fi
echo "$FLASH_NOTE"

echo "== 3/4 CUDA tests"
timeout 180 "$PY" -m pytest -q -m gpu -rs -p no:cacheprovider tests/executor/attention/test_cuda_backends.py \
  tests/simulator/test_prefix_kv_memory.py > "$WORK/pytest.log" 2>&1
TESTS_RC=$?
tail -15 "$WORK/pytest.log"

echo "== 4/4 profile and 1-GPU step"
ARGS=(--out "$WORK/measure.json")
[ "$DRY" = 1 ] && ARGS+=(--dry-run)
timeout 330 "$PY" bench/gpu_check.py "${ARGS[@]}"
MEASURE_RC=$?

"$PY" - "$WORK" "$OUT" "$TESTS_RC" "$MEASURE_RC" "$FLASH_NOTE" "$DRY" "$((SECONDS - STARTED))" <<'EOF'
import json, pathlib, sys
work, out, tests_rc, measure_rc, flash, dry, seconds = sys.argv[1:]
work = pathlib.Path(work)
measure = work / "measure.json"
report = {
    "dry_run": dry == "1",
    "environment": json.loads((work / "env.json").read_text() or "{}"),
    "flash_attention": flash,
    "cuda_tests": {"exit_code": int(tests_rc), "log_tail": (work / "pytest.log").read_text().splitlines()[-15:]},
    "measure_exit_code": int(measure_rc),
    "measure": json.loads(measure.read_text()) if measure.exists() else None,
    "seconds": int(seconds),
}
pathlib.Path(out).write_text(json.dumps(report, indent=1))
print(f"gpu_check: wrote {out} ({seconds} s; tests rc {tests_rc}, measure rc {measure_rc})")
EOF
[ "$MEASURE_RC" = 0 ]
