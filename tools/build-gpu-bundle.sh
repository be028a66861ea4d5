#!/usr/bin/env bash
# Builds, here (no GPU, no CUDA toolkit needed), the release binaries tools/gpu-check.sh runs on
# a GPU machine where nothing can be built, and packs them gzipped into .gpu/ (git-ignored; name
# it in the device tool's `carry`). FEATURES=cuda (default) for the GPU; FEATURES= for a CPU
# bundle that smoke-tests the script anywhere (DEVICE=cpu bash tools/gpu-check.sh).
# A cold CUDA build takes about 35 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wsi-unet/target}"
features="${FEATURES-cuda}"
feature_flags=()
[ -n "$features" ] && feature_flags=(--features "unet-core/$features")
flags=(--release "${feature_flags[@]}")
mkdir -p .gpu
cargo build "${flags[@]}" -p infer -p convert
cargo build "${flags[@]}" -p unet-core --example predict --example random_model
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
for pair in "infer:$CARGO_TARGET_DIR/release/infer" "convert:$CARGO_TARGET_DIR/release/convert" \
    "predict:$CARGO_TARGET_DIR/release/examples/predict" "random_model:$CARGO_TARGET_DIR/release/examples/random_model" \
    "synthetic_slide:$CARGO_TARGET_DIR/release/examples/synthetic_slide" "model-bench:$bench" \
    "${kernels[@]}"; do
  name=${pair%%:*}; path=${pair#*:}
  strip -o ".gpu/$name" "$path" && gzip -f -9 ".gpu/$name"
done
ls -la .gpu
