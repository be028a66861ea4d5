#!/usr/bin/env bash
# What an ARM server (AWS Graviton, NVIDIA Grace) builds, where none of the x86-64 kernels
# exist: the workspace, its tests and benches, and the CUDA build checked with clippy for
# aarch64 Linux, then the CPU engine's tests (every kernel against PyTorch's fixtures and
# Burn) run on aarch64 under qemu-user. Correctness only: an emulated CPU says nothing of
# speed. Installs rustup's aarch64 target, Debian's cross gcc (psm builds C; it also links
# the tests) and qemu-user. ~13 minutes cold on 2 cores, most of it the tests' release build.
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu qemu-user-static >/dev/null
fi
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
cargo clippy --workspace --all-targets --target "$target" -- -D warnings
cargo clippy -p unet-core -p infer --features cuda --target "$target" -- -D warnings
cargo test --release -p unet-core --target "$target" --lib cpu::
