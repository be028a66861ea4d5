#!/usr/bin/env python3
"""PyTorch's own error in bf16 on the fixtures (tests/fixtures/pytorch): how far its fp32,
bf16 autocast and all-bf16 outputs are from the float64 reference, per case. The bf16 CPU
path's test bars are set against these (unet-core's `cpu` tests).

usage: python3 tools/torch_bf16_fixtures.py   (needs torch, numpy, pillow)
"""
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_anchor import Unet  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "pytorch")


def state_dict(path):
    loaded = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("state_dict", "model_state_dict"):
        if isinstance(loaded, dict) and key in loaded:
            loaded = loaded[key]
    if not isinstance(loaded, dict):
        loaded = loaded.state_dict()
    return {k.removeprefix("module."): v for k, v in loaded.items()}


for case in json.load(open(os.path.join(FIXTURES, "cases.json"))):
    def model():
        m = Unet(case["in_channels"], case["out_channels"], case["base_width"])
        m.load_state_dict(state_dict(os.path.join(FIXTURES, case["checkpoint"])))
        return m.eval()

    image = np.asarray(Image.open(os.path.join(FIXTURES, case["input"])).convert("RGB"), dtype=np.float64)
    x = torch.from_numpy(((image / 255 - 0.5) / 0.5).transpose(2, 0, 1)[None].copy()).float()
    expected = np.load(os.path.join(FIXTURES, case["checkpoint"].replace(".pth", "_expected_f64.npy")))
    with torch.no_grad():
        fp32 = model()(x).numpy()[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model()(x).float().numpy()[0]
        full = model().to(torch.bfloat16)(x.to(torch.bfloat16)).float().numpy()[0]
    error = lambda out: float(np.abs(out - expected).max())  # noqa: E731
    print(f"{case['name']}: fp32 {error(fp32):.1e}, bf16 autocast {error(autocast):.1e}, "
          f"all bf16 {error(full):.1e} (torch {torch.__version__})")
