#!/usr/bin/env python3
"""PyTorch's CPU time per patch for the Camelyon UNet: fp32 eager and bf16 autocast, both
channels_last (oneDNN's fastest CPU paths), median of N runs after a warm-up.

usage: torch_cpu_bench.py [--width 64] [--side 512] [--batch 1] [--runs 3] [--no-bf16] [--json]

The model is tools/torch_anchor.py's (the users' architecture), with random weights and
BatchNorm statistics: the time does not depend on the values. With --json the one line
printed is {"fp32_ms_per_patch": ..., "bf16_ms_per_patch": ..., "bf16_vs_fp32_max_abs": ...,
"version": ..., "cpu_capability": ...} (`cargo run --release -p onnx-export --example
versus_onnxruntime -- --torch PYTHON` reads it). --no-bf16 leaves the bf16 fields null: where
the CPU, or oneDNN as ONEDNN_MAX_CPU_ISA limits it, has no bf16 instructions, autocast emulates
them (46 s a 512x512 patch on a 2-core Xeon held to AVX2, 2026-12-06). Needs `pip install torch
numpy` (a venv: tools/README.md).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_anchor import Unet, init_bn  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--width", type=int, default=64)
ap.add_argument("--side", type=int, default=512)
ap.add_argument("--batch", type=int, default=1)
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--no-bf16", action="store_true")
ap.add_argument("--json", action="store_true")
a = ap.parse_args()

torch.manual_seed(0)
model = Unet(3, 3, a.width)
init_bn(model)
model = model.eval().to(memory_format=torch.channels_last)
x = torch.rand(a.batch, 3, a.side, a.side).mul(2).sub(1).to(memory_format=torch.channels_last)


def timed(bf16):
    def forward():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(x).float()

    out = forward()
    times = []
    for _ in range(a.runs):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / a.batch, out


fp32_ms, fp32_out = timed(False)
bf16_ms, bf16_out = (None, None) if a.no_bf16 else timed(True)
report = {
    "fp32_ms_per_patch": fp32_ms,
    "bf16_ms_per_patch": bf16_ms,
    "bf16_vs_fp32_max_abs": None if a.no_bf16 else (bf16_out - fp32_out).abs().max().item(),
    "version": torch.__version__,
    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
}
if a.json:
    print(json.dumps(report))
else:
    bf16 = "" if a.no_bf16 else (f", bf16 autocast {bf16_ms:.0f} ms/patch (max |bf16 - fp32| "
                                 f"{report['bf16_vs_fp32_max_abs']:.1e})")
    print(f"torch {report['version']} ({report['cpu_capability']}), w = {a.width}, "
          f"{a.side}x{a.side} batch {a.batch}, channels_last: fp32 {fp32_ms:.0f} ms/patch{bf16}")
