#!/usr/bin/env bash
# The workspace, its tests and benches, and the CUDA build checked for aarch64 Linux with
# clippy: what an ARM server (AWS Graviton, NVIDIA Grace) builds, where none of the x86-64
# kernels exist. Checked, not run (no ARM machine here); needs rustup's aarch64 standard
# library and a cross C compiler (for the few crates that build C), which this installs.
# ~2.5 minutes cold on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
if ! command -v aarch64-linux-gnu-gcc >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu >/dev/null
fi
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
cargo clippy --workspace --all-targets --target "$target" -- -D warnings
cargo clippy -p unet-core -p infer --features cuda --target "$target" -- -D warnings
