#!/usr/bin/env bash
# What the tests need beyond cargo, on a machine with only Rust and Python (Debian or Ubuntu):
# Mesa's software Vulkan driver (unet-kernels' tests run CubeCL on wgpu without a GPU), a newer
# one with cooperative matrices in a Debian 13 root beside it (~700 MB), and the
# Python references the tests compare against: OpenSlide and tifffile open the pyramids we
# write, ONNX's checker and ONNX Runtime run the exported models. README's test command and
# .ci/run both run this; it does nothing that is already done.
set -euo pipefail

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

if ! dpkg -s mesa-vulkan-drivers libvulkan1 >/dev/null 2>&1; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi

# Mesa's lavapipe with cooperative matrices (VK_KHR_cooperative_matrix, Mesa 26 on), on which
# the tests run cubek's tensor-core main loops without a GPU: a Debian 13 root beside the
# system, with Mesa from trixie-backports. Its lavapipe needs that root's C library, so the
# test that uses it runs itself again under the root's loader (unet-kernels' pytorch_parity).
mesa_root="${UNET_MESA_ROOT:-$HOME/.cache/wsi-unet/mesa-coopmat}"
if [ ! -e "$mesa_root/.complete" ]; then
  if ! command -v debootstrap >/dev/null; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq debootstrap >/dev/null
  fi
  partial="$mesa_root.partial"
  $sudo rm -rf "$partial"
  mkdir -p "$(dirname "$mesa_root")"
  $sudo debootstrap --variant=minbase trixie "$partial" http://deb.debian.org/debian >/dev/null
  echo "deb http://deb.debian.org/debian trixie-backports main" |
    $sudo tee "$partial/etc/apt/sources.list.d/backports.list" >/dev/null
  $sudo chroot "$partial" apt-get update -qq
  # (apt inside the root says it cannot open a terminal for its log: its output goes to a
  # file, shown if the install fails.)
  DEBIAN_FRONTEND=noninteractive $sudo chroot "$partial" \
    apt-get install -y -qq -t trixie-backports mesa-vulkan-drivers >"$partial.log" 2>&1 ||
    { cat "$partial.log"; exit 1; }
  rm -f "$partial.log"
  $sudo touch "$partial/.complete"
  $sudo rm -rf "$mesa_root"
  $sudo mv "$partial" "$mesa_root"
fi

python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  openslide-python openslide-bin onnx onnxruntime numpy pillow tifffile
