#!/usr/bin/env bash
# Bring flash-attn 4 (FlashAttention's CuTe-DSL kernels, with a Hopper backward) to a GPU machine that cannot reach
# a package index and takes at most 64 MiB per call. Its CUDA 13 library wheel alone is 92 MB, so it travels in two
# parts, recompressed (unpacked, tar | xz: ~61 MiB) and split.
#
#   bench/flash4_transport.sh pack DIR [FIRST_MIB]   # here: download the wheels, write DIR/a (the small wheels and
#                                                    # the first FIRST_MIB MiB of the libraries, default 22) and DIR/b
#   bench/flash4_transport.sh install DIR TARGET     # there, once DIR/a and DIR/b have both arrived (two calls on a
#                                                    # warm machine): unpack everything into TARGET, then
#                                                    #   export PYTHONPATH=TARGET:TARGET/nvidia_cutlass_dsl/dsl_packages
#
# The second PYTHONPATH entry does what the wheel's .pth file does in a site-packages directory (a PYTHONPATH
# directory's .pth files are not read). The executor's "flash" backend then calls `flash_attn.cute`.
set -euo pipefail

FLASH4_VERSION=4.0.0b36
CUTLASS_DSL_VERSION=4.8.1
SMALL_WHEELS=(
  "flash-attn-4==$FLASH4_VERSION"
  "nvidia-cutlass-dsl==$CUTLASS_DSL_VERSION"
  "nvidia-cutlass-dsl-libs-base==$CUTLASS_DSL_VERSION"
  "apache-tvm-ffi>=0.1.11,<0.2"
  "torch-c-dlpack-ext"
  "quack-kernels>=0.5.3"
)
LIBS_WHEEL="nvidia-cutlass-dsl-libs-cu13==$CUTLASS_DSL_VERSION"
PLATFORMS=(manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64
  manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64)

usage() { sed -n '2,13p' "$0" >&2; exit 2; }

download() {  # download DEST SPEC: one wheel for CPython 3.12 on x86-64 Linux (the GPU machine's Python)
  local args=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d "$1")
  for p in "${PLATFORMS[@]}"; do args+=(--platform "$p"); done
  python3 -m pip download -q "${args[@]}" "$2"
}

pack() {
  local dir=$1 first_mib=${2:-22} tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  mkdir -p "$dir/a" "$dir/b"
  for spec in "${SMALL_WHEELS[@]}"; do
    echo "downloading $spec"
    download "$dir/a" "$spec"
  done
  echo "downloading $LIBS_WHEEL (92 MB) and recompressing it (a few minutes on 2 cores)"
  download "$tmp" "$LIBS_WHEEL"
  mkdir "$tmp/unpacked"
  (cd "$tmp/unpacked" && python3 -m zipfile -e "$tmp"/nvidia_cutlass_dsl_libs_cu13-*.whl .)
  tar -C "$tmp/unpacked" -cf - . | xz -9 -T2 > "$tmp/libs.tar.xz"
  local cut=$((first_mib * 1048576)) rest
  head -c "$cut" "$tmp/libs.tar.xz" > "$dir/a/libs.tar.xz.part0"
  tail -c "+$((cut + 1))" "$tmp/libs.tar.xz" > "$dir/b/libs.tar.xz.part1"
  rest=$(stat -c %s "$dir/b/libs.tar.xz.part1")
  if [ "$rest" -gt $((60 * 1048576)) ]; then
    echo "flash4_transport: the second part is $((rest / 1048576)) MiB, over one call's 60 MiB; raise FIRST_MIB" >&2
    exit 1
  fi
  du -sh "$dir/a" "$dir/b"
}

install() {
  local dir=$1 target=$2
  for part in "$dir/a/libs.tar.xz.part0" "$dir/b/libs.tar.xz.part1"; do
    [ -s "$part" ] || { echo "flash4_transport: $part is missing (carry $dir/a and $dir/b in two calls)" >&2; exit 1; }
  done
  mkdir -p "$target"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$target" "$dir"/a/*.whl
  cat "$dir/a/libs.tar.xz.part0" "$dir/b/libs.tar.xz.part1" | xz -d | tar -C "$target" -xf -
  echo "flash-attn 4 installed under $target"
}

case "${1:-}" in
  pack) [ $# -ge 2 ] || usage; shift; pack "$@" ;;
  install) [ $# -eq 3 ] || usage; install "$2" "$3" ;;
  *) usage ;;
esac
