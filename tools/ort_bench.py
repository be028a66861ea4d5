#!/usr/bin/env python3
"""ONNX Runtime's CPU time per patch for an exported model: median of N runs after a warm-up.

usage: ort_bench.py MODEL.onnx [--side 512] [--batch 1] [--runs 3] [--threads 0] [--json]

With --json the one line printed is {"ms_per_patch": ..., "min_ms_per_patch": ..., "version": ...}
(`cargo run --release -p onnx-export --example versus_onnxruntime` reads it).
"""
import argparse
import json
import statistics
import time

import numpy as np
import onnxruntime as ort

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--side", type=int, default=512)
ap.add_argument("--batch", type=int, default=1)
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--threads", type=int, default=0, help="0 = all cores")
ap.add_argument("--json", action="store_true")
a = ap.parse_args()
options = ort.SessionOptions()
options.intra_op_num_threads = a.threads
session = ort.InferenceSession(a.model, options, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).uniform(-1, 1, (a.batch, 3, a.side, a.side)).astype(np.float32)
session.run(["output"], {"input": x})
times = []
for _ in range(a.runs):
    start = time.perf_counter()
    session.run(["output"], {"input": x})
    times.append(time.perf_counter() - start)
median = 1000 * statistics.median(times) / a.batch
fastest = 1000 * min(times) / a.batch
if a.json:
    print(json.dumps({"ms_per_patch": median, "min_ms_per_patch": fastest, "version": ort.__version__}))
else:
    print(f"onnxruntime {ort.__version__} {a.model}: {a.side}x{a.side} batch {a.batch}: "
          f"{median:.1f} ms/patch (median of {a.runs}, {fastest:.1f} min)")
