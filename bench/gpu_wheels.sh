#!/usr/bin/env bash
# Wheels the GPU check needs on a machine whose Python has CUDA torch but not this project's dependencies, and no
# package index: pydantic (proto), OR-Tools (the planner's CP-SAT) and what they import beyond such an image
# (numpy, pandas, absl-py and the test tools are assumed there). About 32 MB: one device call carries them.
#
#   bench/gpu_wheels.sh DIR [PYTHON_VERSION]     # here: download into DIR (default Python 3.12, x86-64 Linux)
#   bench/gpu_check.sh --wheels DIR              # there: installs DIR/*.whl into a temporary folder first
#
# The versions are this checkout's own (`.venv`), so the GPU run imports what the tests here ran against.
set -euo pipefail

[ $# -ge 1 ] || { sed -n '2,8p' "$0" >&2; exit 2; }
DIR=$1
PYVER=${2:-3.12}
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PACKAGES=(pydantic pydantic_core annotated_types typing_inspection typing_extensions ortools immutabledict protobuf)
SPECS=()
for name in "${PACKAGES[@]}"; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
  SPECS+=("$name==$version")
done
ARGS=(--no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp -d "$DIR")
for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64; do
  ARGS+=(--platform "$p")
done
mkdir -p "$DIR"
"$PY" -m pip download -q "${ARGS[@]}" "${SPECS[@]}"
du -sh "$DIR"
