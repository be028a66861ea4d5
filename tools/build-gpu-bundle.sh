#!/usr/bin/env bash
# Builds, here (no GPU, no CUDA toolkit needed), the release binaries tools/gpu-check.sh runs on
# a GPU machine where nothing can be built, and packs them with xz into .gpu/ (git-ignored; name
# it in the device tool's `carry`, which takes 64 MiB at most: checked at the end).
# FEATURES=cuda (default) for the GPU; FEATURES= for a CPU bundle that smoke-tests the script
# anywhere (DEVICE=cpu bash tools/gpu-check.sh).
# A cold CUDA build takes 35 minutes to over an hour on 2 cores (75 min beside other builds).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wsi-unet/target}"
features="${FEATURES-cuda}"
feature_flags=()
[ -n "$features" ] && feature_flags=(--features "unet-core/$features")
flags=(--release "${feature_flags[@]}")
rm -rf .gpu && mkdir -p .gpu
# What runs the model gets the features; the rest (converting, making a random model, making a
# slide) needs no GPU and is built without them: smaller, so that the bundle fits the 64 MiB a
# device call carries.
cargo build "${flags[@]}" -p infer
cargo build "${flags[@]}" -p unet-core --example predict
cargo build --release -p convert
cargo build --release -p unet-core --example random_model
cargo build --release -p wsi --example synthetic_slide
kernels=()
if [ "$features" = cuda ]; then
  cargo build "${flags[@]}" -p unet-core --example fused_forward
  kernels=("fused-forward:$CARGO_TARGET_DIR/release/examples/fused_forward")
fi
bench=$(cargo bench "${feature_flags[@]}" -p unet-core --bench model --no-run --message-format json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "model" and m.get("executable"):
        print(m["executable"])' | tail -n 1)
# One solid xz archive, its dictionary larger than a binary: the CUDA binaries share nearly
# all their code, so each compresses against the one before it (four of them: 36 MB, against
# 66 MB in separate files, 2026-12-04). xz needs ~5.5 GB and a single thread for that.
staged=$(mktemp -d)
for pair in "infer:$CARGO_TARGET_DIR/release/infer" "convert:$CARGO_TARGET_DIR/release/convert" \
    "predict:$CARGO_TARGET_DIR/release/examples/predict" "random_model:$CARGO_TARGET_DIR/release/examples/random_model" \
    "synthetic_slide:$CARGO_TARGET_DIR/release/examples/synthetic_slide" "model-bench:$bench" \
    "${kernels[@]}"; do
  name=${pair%%:*}; path=${pair#*:}
  strip -o "$staged/$name" "$path"
done
(cd "$staged" && tar -cf - *) | xz -9e -T1 --lzma2=preset=9e,dict=512MiB > .gpu/bin.tar.xz
rm -rf "$staged"
# What the binaries were built from, for the figures tools/gpu-check.sh reports.
git describe --always --dirty > .gpu/commit
ls -la .gpu
total=$(du -cb .gpu/* | tail -n 1 | cut -f1)
echo "bundle: $(( total / 1024 / 1024 )) MiB; a device call carries 64 MiB with the tracked tree, which tools/gpu-tree.sh leans to ~11 MiB"
[ "$total" -le $(( 52 * 1024 * 1024 )) ] || { echo "the bundle is over 52 MiB: with the lean tree it cannot be carried" >&2; exit 1; }
# The bundle's kernels compiled and loaded as on an H200 by a stand-in driver (nothing runs):
# a kernel NVRTC or ptxas refuses, or a launch past the card's limits, shows here instead of in a
# GPU session's minutes. About 3 minutes on 2 cores; DRY_RUN=0 skips it.
if [ "$features" = cuda ] && [ "${DRY_RUN:-1}" != 0 ]; then
  bash tools/cuda-dry-run.sh || { echo "the dry run failed: the bundle is built, but its kernels would fail on the GPU" >&2; exit 1; }
fi
