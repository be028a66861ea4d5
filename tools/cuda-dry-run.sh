#!/usr/bin/env bash
# The CUDA build's kernels compiled and loaded as on an H200, on a machine with no GPU, before
# a GPU session spends its minutes finding out: tools/dry-cuda/libcuda.c stands in for NVIDIA's
# driver (every kernel goes through NVRTC and, as the driver's JIT would, ptxas for sm_90a;
# every launch is checked against the card's limits; no kernel runs, so the values printed mean
# nothing). NVRTC, ptxas and CUDA's headers come from NVIDIA's pip wheels of CUDA 13.0, the
# version the build targets (cudarc's `cuda-13000`), kept in ~/.cache/wsi-unet/cuda-13.0.
#
#   bash tools/cuda-dry-run.sh    # after tools/build-gpu-bundle.sh, which runs it at its end
#
# fused_forward runs the demo model (w = 8) at 64x64 in a batch of 2, and a full-width random
# model (w = 64) at 512x512 in a batch of 12, each twice: a first process that tunes every
# layer shape (cubecl's autotune compiles each candidate), then a second that reads the tuning
# and the compiled kernels back. It prints per run the first forward's seconds (compilation,
# as kernels take no time here), the modules loaded (each through ptxas, timed), launches and
# refusals, and the streams the patches' upload, the kernels and the maps' read went on; for
# the first runs, the candidates cubek refused and why. It fails where NVRTC or ptxas refuses
# a kernel, a launch passes the card's limits, a copy shares the kernels' stream, or
# fused_forward fails.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wsi-unet/target}"
FUSED_FORWARD="${FUSED_FORWARD:-$CARGO_TARGET_DIR/release/examples/fused_forward}"
RANDOM_MODEL="${RANDOM_MODEL:-$CARGO_TARGET_DIR/release/examples/random_model}"
CUDA="$HOME/.cache/wsi-unet/cuda-13.0"
for binary in "$FUSED_FORWARD" "$RANDOM_MODEL"; do
  [ -x "$binary" ] || { echo "no $binary: build it first (tools/build-gpu-bundle.sh)" >&2; exit 2; }
done

# NVIDIA's wheels are zip files: unpacked, they are the toolkit's own layout (nvidia/cu13/...).
if [ ! -x "$CUDA/nvidia/cu13/bin/ptxas" ]; then
  wheels=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --dest "$wheels" "nvidia-cuda-nvrtc==13.0.*" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-crt==13.0.*" \
    "nvidia-cuda-nvcc==13.0.*" || { echo "pip could not fetch CUDA 13.0's wheels" >&2; exit 2; }
  mkdir -p "$CUDA"
  for wheel in "$wheels"/*.whl; do python3 -m zipfile -e "$wheel" "$CUDA"; done
  chmod +x "$CUDA"/nvidia/cu13/bin/*
  rm -rf "$wheels"
fi
toolkit="$CUDA/nvidia/cu13"
mkdir -p "$CUDA/driver"
gcc -O1 -Wall -Wextra -Werror -shared -fPIC -o "$CUDA/driver/libcuda.so.1" tools/dry-cuda/libcuda.c ||
  exit 2
ln -sf libcuda.so.1 "$CUDA/driver/libcuda.so"

work=$(mktemp -d /tmp/cuda-dry-run.XXXXXX)
"$RANDOM_MODEL" "$work/w64.bpk" >/dev/null || exit 2
failed=0
# One run of fused_forward in $dir, its driver log in $dir/$run.log.
run() {
  local dir=$1 run=$2 model=$3 side=$4 batch=$5
  mkdir -p "$dir/ptx-$run"
  (
    cd "$dir" &&
      LD_LIBRARY_PATH="$CUDA/driver:$toolkit/lib" CUDA_PATH="$toolkit" \
        DRY_CUDA_LOG="$dir/$run.log" DRY_CUDA_PTXAS="$toolkit/bin/ptxas" DRY_CUDA_PTX_DIR="$dir/ptx-$run" \
        "$FUSED_FORWARD" "$model" --side "$side" --batch "$batch" --runs 1 --precision f16
  ) >"$dir/$run.out" 2>&1
  local status=$?
  touch "$dir/$run.log"
  local seconds modules ptxas launches refused
  seconds=$(awk -F'|' '$1 ~ /f16/ && $3 ~ /[0-9]/ {gsub(/ /, "", $3); print $3; exit}' "$dir/$run.out")
  modules=$(grep -c '^module' "$dir/$run.log")
  ptxas=$(awk '/^module .* ptxas/ {ms += $4} END {printf "%.1f", ms / 1000}' "$dir/$run.log")
  launches=$(grep -c '^launch' "$dir/$run.log")
  refused=$(grep -c 'REFUSED\|^refused' "$dir/$run.log")
  echo "$run: first forward ${seconds:-?} s, $modules modules loaded (ptxas ${ptxas} s of it), $launches launches, $refused refused"
  # The fused engine's streams (engine/fused.rs): the patches' upload (batch x side^2 x 3
  # bytes) and the maps' read (x 4) each on a stream the kernels do not run on, or they would
  # not overlap the kernels on a card. Copies before the first launch are the weights' (one of
  # the w64 model's is the patches' size).
  local streams
  streams=$(awk -v up=$((batch * side * side * 3)) -v down=$((batch * side * side * 4)) '
    function list(set,   s, out) { out = ""; for (s in set) out = out (out ? "," : "") s; return out ? out : "none" }
    /^launch/ { kernels[$NF] = 1; launched = 1 }
    /^copy to the device:/ && $5 == up && launched { uploads[$NF] = 1 }
    /^copy to the host:/ && $5 == down { reads[$NF] = 1 }
    END {
      for (s in uploads) if (s in kernels) shared = 1
      for (s in reads) if (s in kernels) shared = 1
      printf "streams: patches uploaded on %s, kernels on %s, maps read on %s%s\n", list(uploads), list(kernels), list(reads),
        shared ? " SHARED: the copies wait for the kernels" : ""
    }' "$dir/$run.log")
  echo "  $streams"
  case "$streams" in *SHARED*) failed=1 ;; esac
  if [ "$status" -ne 0 ]; then
    echo "  fused_forward failed ($status): $(grep -m 3 -i 'error\|panicked' "$dir/$run.out" | tr '\n' ' ')"
    failed=1
  fi
  if grep -q 'Compilation Error' "$dir/$run.out"; then
    echo "  NVRTC refused a kernel: $(grep -m 1 -A 3 'Compilation Error' "$dir/$run.out" | tr '\n' ' ')"
    failed=1
  fi
  if grep -q 'FAILED' "$dir/$run.log"; then
    echo "  ptxas refused: $(grep -m 3 FAILED "$dir/$run.log" | tr '\n' ' ') (logs in $dir/ptx-$run)"
    failed=1
  fi
  if [ "$refused" -gt 0 ]; then
    grep -m 5 'REFUSED\|^refused' "$dir/$run.log" | sed 's/^/  /'
    failed=1
  fi
}

for case in "w8:$PWD/models/unet_demo_w8.bpk:64:2" "w64:$work/w64.bpk:512:12"; do
  IFS=: read -r name model side batch <<<"$case"
  dir="$work/$name"
  mkdir -p "$dir"
  # cubecl reads cubecl.toml from the working directory: the tuning and the compiled kernels
  # kept here rather than in a Cargo project's target/, and autotune's reasons logged.
  printf '[environment]\npath = "local"\n\n[autotune.logger]\nlevel = "full"\nfile = "autotune.log"\n' >"$dir/cubecl.toml"
  echo "== $name at ${side}x$side, batch $batch"
  run "$dir" first "$model" "$side" "$batch"
  run "$dir" second "$model" "$side" "$batch"
  echo "  candidates cubek refused in the first run (layer shapes):"
  grep -o "^cubek's convolution ([a-z_]*): .*" "$dir/autotune.log" 2>/dev/null |
    sort | uniq -c | sed 's/^/   /'
done
# The logs stay for reading; the random model (124 MB) is made again by the next run.
rm -f "$work/w64.bpk"
echo "logs: $work"
exit "$failed"
