#!/usr/bin/env python3
"""Cohorts for `infer evaluate`, scored by MONAI's Camelyon16 evaluation (the reference).

Each cohort is a folder under OUT (default tests/fixtures/froc):
  maps/STEM.prob.tif   the probability map at the evaluation level: u8 (255 = 1), one tiled
                       deflate level, its pixel size in the resolution tags;
  truth/STEM.png       the tumour mask at the same size (1 = tumour); tumour-free slides
                       have none, as Camelyon16's normal slides have no annotation;
  monai.json           MONAI's results on the same pixels: LesionFROC's score (run unchanged,
                       at level 0, with its mask reader fed from the PNG), the sensitivities at
                       Camelyon's six false-positive rates, each slide's lesion and
                       detection counts, its detections (PathologyProbNMS) in map pixels
                       and in the pixels of the slide the maps are level 6 of, and
                       compute_roc_auc of each slide's highest probability.

The masks are built from the repository's tumour masks (the demo slide's, the tiny and odd
slides'), scaled, moved and combined; the maps are those masks blurred, scaled (some lesions
too faint to find), with noise and false-positive bumps, all from a fixed seed.

Needs MONAI (which needs PyTorch), SciPy, scikit-image, Pillow and tifffile:
  python3 -m venv /tmp/monai && /tmp/monai/bin/pip install monai scipy scikit-image pillow tifffile
  /tmp/monai/bin/python tools/make_froc_fixtures.py
"""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image
from scipy import ndimage

import monai
from monai.apps.pathology.metrics import LesionFROC
from monai.apps.pathology.utils import PathologyProbNMS, compute_isolated_tumor_cells, compute_multi_instance_mask
from monai.metrics import compute_fp_tp_probs, compute_froc_curve_data, compute_roc_auc

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
# Microns per pixel of the maps (level 6 of a 0.243 µm/px slide): coarse enough that the
# small masks' lesions are more than isolated cells (275 µm = 18 pixels).
SPACING = 0.243 * 64


def load_mask(relative, scale):
    """A repository mask (non-zero = tumour), nearest-scaled by `scale`, as 0/1 uint8."""
    image = Image.open(FIXTURES / relative).convert("L")
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return (np.array(image.resize(size, Image.NEAREST)) > 0).astype(np.uint8)


def paste(canvas, mask, x, y):
    h, w = mask.shape
    canvas[y : y + h, x : x + w] |= mask


def probability(mask, rng, gains, bumps, noise=0.12):
    """The mask blurred, each lesion (8-connected) scaled by its gain, plus noise and bumps
    (x, y, height, sigma) where there is no tumour; u8, 255 = 1."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    gain = np.zeros(mask.shape)
    for label in range(1, count + 1):
        gain[labels == label] = gains[(label - 1) % len(gains)]
    p = ndimage.gaussian_filter(mask * gain, sigma=2.0)
    p = p / max(p.max(), 1e-9) * gain.max() if count else p
    p += rng.uniform(0, noise, mask.shape)
    yy, xx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    for x, y, height, sigma in bumps:
        p = np.maximum(p, height * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)))
    return np.round(np.clip(p, 0, 1) * 255).astype(np.uint8)


def cohorts(rng):
    demo = load_mask("pipeline/demo_mask.png", 1 / 8)  # 512 x 384: the demo slide at level 3
    tiny = load_mask("slides/tiny_mask.png", 2)  # 256 x 192, two lesions
    odd = load_mask("slides/odd_mask.png", 2)  # 126 x 96, one lesion
    empty = lambda w, h: np.zeros((h, w), np.uint8)

    several = empty(512, 384)
    paste(several, tiny, 10, 20)
    paste(several, odd, 300, 200)
    paste(several, demo[180:300, 120:220], 380, 30)
    for x, y in [(60, 330), (460, 300), (250, 60)]:  # isolated cells: 2 x 2 spots
        several[y : y + 2, x : x + 2] = 1
    several2 = empty(400, 300)
    paste(several2, odd, 20, 180)
    paste(several2, tiny[:, :128], 200, 40)
    several2[250:253, 330:333] = 1

    return {
        "one_lesion": [
            ("demo", demo, [0.95], [(60, 60, 0.7, 4), (470, 350, 0.55, 3)]),
            ("tiny", tiny, [0.8, 0.4], [(200, 150, 0.62, 3)]),
            ("normal_a", empty(300, 200), [], [(150, 120, 0.66, 4)]),
        ],
        "tumour_absent": [
            ("demo_faint", demo, [0.58], []),
            ("normal_a", empty(300, 200), [], []),
            ("normal_b", empty(256, 256), [], [(100, 100, 0.9, 5), (200, 60, 0.6, 3)]),
            ("normal_c", empty(320, 240), [], [(160, 200, 0.58, 4), (250, 50, 0.95, 6), (60, 170, 0.7, 2)]),
        ],
        "several_lesions": [
            ("several", several, [0.9, 0.7, 0.3, 0.85, 0.65], [(200, 300, 0.75, 5), (480, 200, 0.52, 3)]),
            ("several2", several2, [0.6, 0.99, 0.45], [(350, 250, 0.8, 4)]),
            ("odd", odd, [0.75], []),
            ("normal", empty(256, 200), [], [(128, 100, 0.51, 3), (40, 150, 0.88, 4)]),
        ],
    }


class PngMaskReader:
    """What LesionFROC asks of its image reader, for a mask held in memory."""

    def __init__(self, masks):
        self.masks = masks

    def read(self, name):
        return self.masks[name]

    def get_data(self, mask, level):
        assert level == 0
        return mask[None], {}


def write_cohort(folder, slides):
    (folder / "maps").mkdir(parents=True)
    (folder / "truth").mkdir()
    data, masks, scores, labels, per_slide = [], {}, [], [], []
    nms = PathologyProbNMS(sigma=0.0, prob_threshold=0.5, box_size=48)
    for stem, mask, _gains, _bumps, prob in slides:
        resolution = (1e4 / SPACING, 1e4 / SPACING)
        tifffile.imwrite(
            folder / "maps" / f"{stem}.prob.tif",
            prob,
            tile=(128, 128),
            compression="zlib",
            resolution=resolution,
            resolutionunit="CENTIMETER",
            photometric="minisblack",
        )
        if mask.any():
            Image.fromarray(mask).save(folder / "truth" / f"{stem}.png")
        values = prob.astype(np.float32) / 255
        npy = folder / f"{stem}.npy"
        np.save(npy, values)
        masks[stem] = mask
        data.append({"prob_map": str(npy), "tumor_mask": stem, "level": 0, "pixel_spacing": SPACING})
        scores.append(float(values.max()))
        labels.append(int(mask.any()))
        # The per-slide figures, by LesionFROC's own steps.
        detections = nms(probs_map=values.copy(), resolution_level=0)
        # The same detections placed in the slide the maps are level 6 of (pixel centres).
        in_slide = nms(probs_map=values.copy(), resolution_level=6)
        grow = 75 / (SPACING * 2)
        instances = compute_multi_instance_mask(mask=mask, threshold=grow)
        itcs = compute_isolated_tumor_cells(tumor_mask=instances, threshold=275 / SPACING)
        if not mask.any():
            # MONAI's distance transform of an empty mask invents a lesion in the top-left
            # corner (an isolated cell, left out); Camelyon counts none. Keep detections away
            # from it so that both agree.
            assert instances.max() <= 1 and len(itcs) == instances.max()
            assert all(instances[y, x] == 0 for _, y, x in detections), stem
            instances = np.zeros_like(instances)
            itcs = []
        probs = np.array([d[0] for d in detections], np.float32)
        ys = np.array([d[1] for d in detections])
        xs = np.array([d[2] for d in detections])
        fp, tp, targets = compute_fp_tp_probs(probs, ys, xs, instances, itcs, 0)
        per_slide.append(
            {
                "slide": stem,
                "lesions": int(targets),
                "isolated_tumour_cells": len(itcs),
                "lesions_found": int((tp > 0).sum()),
                "detections": len(detections),
                "false_positives": len(fp),
                "score": float(values.max()),
                # [probability, x, y], highest first: MONAI gives (row, column), Camelyon's
                # submissions (and infer) x then y.
                "detected": [[float(p), int(x), int(y)] for p, y, x in detections],
                "detected_in_slide": [[float(p), int(x), int(y)] for p, y, x in in_slide],
            }
        )
    froc = LesionFROC(data=data, image_reader_name="tifffile")
    froc.image_reader = PngMaskReader(masks)
    score = float(froc.evaluate())
    fp_probs, tp_probs, targets, images = froc.compute_fp_tp()
    fps, sensitivity = compute_froc_curve_data(fp_probs, tp_probs, targets, images)
    at = np.interp(froc.eval_thresholds, fps[::-1], sensitivity[::-1])
    auc = float(compute_roc_auc(torch.tensor(scores), torch.tensor(labels)))
    for d in data:
        Path(d["prob_map"]).unlink()
    result = {
        "monai": monai.__version__,
        "froc": score,
        "sensitivity_at": [float(s) for s in at],
        "auc": auc,
        "slides": per_slide,
    }
    (folder / "monai.json").write_text(json.dumps(result, indent=1) + "\n")
    print(folder.name, f"FROC {score:.6f} AUC {auc:.6f}", [s["lesions"] for s in per_slide])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=FIXTURES / "froc")
    args = parser.parse_args()
    rng = np.random.default_rng(16)
    for name, slides in cohorts(rng).items():
        made = [(stem, mask, gains, bumps, probability(mask, rng, gains, bumps)) for stem, mask, gains, bumps in slides]
        # What this script wrote before, not the folder's README.
        shutil.rmtree(args.out / name, ignore_errors=True)
        write_cohort(args.out / name, made)


if __name__ == "__main__":
    main()
