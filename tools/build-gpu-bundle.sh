#!/usr/bin/env bash
# Builds, here (no GPU, no CUDA toolkit needed), the release binaries tools/gpu-check.sh runs on
# a GPU machine where nothing can be built, and packs them with xz into .gpu/ (git-ignored; name
# it in the device tool's `carry`, which takes 64 MiB at most: checked at the end).
# FEATURES=cuda (default) for the GPU; FEATURES= for a CPU bundle that smoke-tests the script
# anywhere (DEVICE=cpu bash tools/gpu-check.sh).
# On 2 cores a cold CUDA bundle takes ~30 minutes (cargo 20, xz 7, the dry run 2-3: 2026-12-05), a
# warm one ~10.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wsi-unet/target}"
features="${FEATURES-cuda}"
feature_flags=()
[ -n "$features" ] && feature_flags=(--features "unet-core/$features")
flags=(--release "${feature_flags[@]}")
rm -rf .gpu && mkdir -p .gpu
# Every binary in one cargo invocation, so that all of them share one build of Burn and
# cubecl: the examples and the bench bring unet-core's dev-dependencies (cubecl's wgpu runtime
# among them), and an invocation without them unifies features differently and builds the whole
# stack again (in separate invocations, a cold bundle took 54 minutes, 2026-12-05). The tools
# that need no GPU (converting, making a random model, a slide) link part of the CUDA stack this
# way, which the solid archive below holds in 43 MiB instead of 39.
targets=(-p infer -p convert -p unet-core -p wsi --bin infer --bin convert --example predict
  --example random_model --example synthetic_slide --bench model)
[ "$features" = cuda ] && targets+=(--example fused_forward)
built=$(mktemp)
cargo build "${flags[@]}" "${targets[@]}" --message-format json-render-diagnostics >"$built"
# Where cargo put each executable (the bench's name carries a hash), by target name.
artifact() {
  python3 -c 'import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[2] and m.get("executable"):
        print(m["executable"])' "$built" "$1" | tail -n 1
}
# One solid xz archive, its dictionary larger than a binary: the CUDA binaries share nearly
# all their code, so each compresses against the one before it (four of them: 36 MB, against
# 66 MB in separate files, 2026-12-04). xz needs ~5.5 GB and a single thread for that.
staged=$(mktemp -d)
names=(infer convert predict random_model synthetic_slide model)
[ "$features" = cuda ] && names+=(fused_forward)
for target in "${names[@]}"; do
  path=$(artifact "$target")
  [ -n "$path" ] || { echo "cargo built no $target" >&2; exit 1; }
  # The names tools/gpu-check.sh runs them by.
  case $target in model) name=model-bench ;; fused_forward) name=fused-forward ;; *) name=$target ;; esac
  strip -o "$staged/$name" "$path"
done
rm -f "$built"
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
