#!/usr/bin/env python3
"""Check an exported model with onnx.checker, run it with ONNX Runtime on the CPU, and compare
with a reference output.

usage: onnx_run.py MODEL.onnx PATCH.png [EXPECTED.npy] [--batch N] [--tolerance T]

Prints the max abs difference to EXPECTED (float32 [C, H, W]) for every item of a batch of N
copies of the patch; exits 1 when it is over T. Without EXPECTED, writes nothing and prints the
output's shape: the way to run the export yourself (pip install onnx onnxruntime numpy pillow).
"""
import argparse
import sys

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("patch")
    ap.add_argument("expected", nargs="?")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    a = ap.parse_args()

    onnx.checker.check_model(onnx.load(a.model), full_check=True)
    rgb = np.asarray(Image.open(a.patch).convert("RGB"), dtype=np.float32)
    # The users' normalisation: (p / 255 - 0.5) / 0.5, NCHW.
    x = ((rgb / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None]
    x = np.repeat(x, a.batch, axis=0).astype(np.float32)
    session = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
    (y,) = session.run(["output"], {"input": x})
    if a.expected is None:
        print(f"output {y.shape} {y.dtype}")
        return 0
    expected = np.load(a.expected)
    worst = max(float(np.abs(y[i] - expected).max()) for i in range(a.batch))
    print(f"batch {a.batch}: max abs difference {worst:.3e}")
    return 0 if worst <= a.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
