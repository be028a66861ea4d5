#!/usr/bin/env bash
# What the tests need beyond cargo, on a machine with only Rust and Python (Debian or Ubuntu):
# Mesa's software Vulkan driver (unet-kernels' tests run CubeCL on wgpu without a GPU), and the
# Python references the tests compare against: OpenSlide and tifffile open the pyramids we
# write, ONNX's checker and ONNX Runtime run the exported models. README's test command and
# .ci/run both run this; it does nothing that is already done.
set -euo pipefail

if ! dpkg -s mesa-vulkan-drivers libvulkan1 >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi

python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  openslide-python openslide-bin onnx onnxruntime numpy pillow tifffile
