#!/usr/bin/env python3
"""A Camelyon17-style cohort for `infer evaluate --stages`, measured by scikit-image and scored
by scikit-learn (the references).

Writes OUT (default tests/fixtures/staging):
  maps/patient_NNN_node_M.prob.tif  probability maps at the evaluation level (u8, 255 = 1; one
                                    tiled deflate level, 15.552 µm/px in the resolution tags,
                                    level 6 of a 0.243 µm/px slide), seven patients of five
                                    nodes: ellipses of tumour of chosen sizes over a background
                                    below 0.5, some just below or at the threshold (127, 128);
  stage_labels.csv                  a reference in the challenge's format (`patient,stage`;
                                    patients as `patient_NNN.zip`, nodes as `..._node_M.tif`),
                                    which disagrees with the maps on four patients and three
                                    nodes and names one patient without maps;
  truth/patient_003_node_0.png      the one node annotated (its map's p >= 0.5), as Camelyon17
                                    annotates only some metastatic nodes;
  expected.json                     per map the largest metastasis, mm (scikit-image's
                                    `axis_major_length` of the largest 8-connected region of
                                    p >= 0.5, times the pixel size) and its class by the
                                    challenge's bounds; per patient the stage by the challenge's
                                    definitions; and the quadratic-weighted kappa of those
                                    stages against the reference's (scikit-learn's
                                    `cohen_kappa_score`, the five stages as labels, as the
                                    challenge's evaluation computes it) over the patients both
                                    name; how many nodes' findings the reference shares; which
                                    maps count in the FROC (annotated, or negative by the
                                    reference); the slide-level ROC AUC of each map's highest
                                    probability, tumour by the reference (scikit-learn's
                                    `roc_auc_score`).

Needs NumPy, scikit-image, scikit-learn and tifffile:
  python3 -m venv /tmp/staging && /tmp/staging/bin/pip install numpy scikit-image scikit-learn tifffile
  /tmp/staging/bin/python tools/make_staging_fixtures.py
"""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import tifffile
from skimage.draw import ellipse
from skimage.measure import label, regionprops
from PIL import Image
from sklearn.metrics import cohen_kappa_score, roc_auc_score

REPO = Path(__file__).resolve().parent.parent
SPACING = 0.243 * 64
SIDE = 208
STAGES = ["pN0", "pN0(i+)", "pN1mi", "pN1", "pN2"]

# Each node: ellipses (centre row, centre column, radius along rows, along columns, rotation,
# probability as u8). Radii in pixels of 15.552 µm: 2 mm is 128.6 pixels, 0.2 mm 12.9.
ITC = [(60, 60, 3, 2, 0.0, 200)]
SPECK = [(150, 40, 0, 0, 0.0, 128)]  # one pixel at exactly p >= 0.5
MICRO = [(100, 100, 20, 8, 0.4, 230), (40, 160, 3, 3, 0.0, 180)]
MICRO_LONG = [(104, 104, 50, 15, 1.0, 250)]
MACRO = [(104, 104, 80, 40, 0.3, 255), (20, 20, 5, 5, 0.0, 200)]
BELOW = [(104, 104, 90, 60, 0.0, 127)]  # large, but p < 0.5 everywhere: no tumour
NEGATIVE = []
PATIENTS = {
    "patient_000": [NEGATIVE, NEGATIVE, NEGATIVE, NEGATIVE, BELOW],
    "patient_001": [ITC, NEGATIVE, NEGATIVE, SPECK, NEGATIVE],
    "patient_002": [MICRO, ITC, NEGATIVE, NEGATIVE, NEGATIVE],
    "patient_003": [MACRO, MICRO, NEGATIVE, NEGATIVE, ITC],
    "patient_004": [MACRO, MICRO, MICRO_LONG, MICRO, NEGATIVE],
    "patient_005": [MICRO, MICRO_LONG, MICRO, MICRO_LONG, MICRO],
    "patient_006": [MACRO, MACRO, NEGATIVE, NEGATIVE, NEGATIVE],
}
# The reference's stages and findings where it disagrees with the maps, and a patient with no
# maps.
REFERENCE_DIFFERS = {
    "patient_000": "pN0(i+)",
    "patient_001": "pN0",
    "patient_004": "pN1",
    "patient_006": "pN2",
}
REFERENCE_NODES_DIFFER = {
    "patient_000_node_4": "itc",
    "patient_001_node_3": "negative",
    "patient_004_node_2": "macro",
}
REFERENCE_ONLY = {"patient_007": "pN1mi"}
# The one node whose metastases an annotation outlines (a mask of its tumour), as Camelyon17
# annotates only some of its metastatic nodes.
ANNOTATED = "patient_003_node_0"


def node_map(shapes, rng):
    """A background below 0.5 (blocks of 8x8 pixels, so that the files stay small), then
    each shape painted over it."""
    blocks = rng.integers(0, 100, size=(SIDE // 8, SIDE // 8), dtype=np.uint8)
    values = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)
    for row, column, r_radius, c_radius, rotation, value in shapes:
        if r_radius == 0:
            values[row, column] = value
            continue
        rr, cc = ellipse(row, column, r_radius, c_radius, shape=values.shape, rotation=rotation)
        values[rr, cc] = value
    return values


def largest_mm(values):
    regions = regionprops(label(values >= 128, connectivity=2))
    if not regions:
        return None
    return max(r.axis_major_length for r in regions) * SPACING / 1000


def finding(mm):
    if mm is None:
        return "negative"
    if mm > 2.0:
        return "macro"
    if mm > 0.2:
        return "micro"
    return "itc"


def stage(findings):
    metastases = sum(f in ("micro", "macro") for f in findings)
    if "macro" in findings:
        return "pN2" if metastases >= 4 else "pN1"
    if metastases:
        return "pN1mi"
    return "pN0(i+)" if "itc" in findings else "pN0"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "staging")
    args = parser.parse_args()
    # What this script wrote before, not the folder's README.
    for folder in ("maps", "truth"):
        shutil.rmtree(args.out / folder, ignore_errors=True)
        (args.out / folder).mkdir(parents=True)
    rng = np.random.default_rng(17)
    slides, patients, reference_rows = {}, {}, []
    for patient, nodes in PATIENTS.items():
        findings = []
        node_rows = []
        for index, shapes in enumerate(nodes):
            stem = f"{patient}_node_{index}"
            values = node_map(shapes, rng)
            tifffile.imwrite(
                args.out / "maps" / f"{stem}.prob.tif",
                values,
                tile=(64, 64),
                compression="zlib",
                resolution=(1e4 / SPACING, 1e4 / SPACING),
                resolutionunit="CENTIMETER",
                photometric="minisblack",
            )
            if stem == ANNOTATED:
                Image.fromarray((values >= 128).astype(np.uint8)).save(args.out / "truth" / f"{stem}.png")
            mm = largest_mm(values)
            reference_finding = REFERENCE_NODES_DIFFER.get(stem, finding(mm))
            slides[stem] = {
                "largest_metastasis_mm": mm,
                "finding": finding(mm),
                "score": float(values.max()) / 255,
                # A node the reference calls a metastasis without an annotation has unknown lesions.
                "in_froc": stem == ANNOTATED or reference_finding == "negative",
                "tumour": reference_finding != "negative",
            }
            findings.append(finding(mm))
            node_rows.append(f"{stem}.tif,{reference_finding}")
        patients[patient] = stage(findings)
        reference_rows.append(f"{patient}.zip,{REFERENCE_DIFFERS.get(patient, patients[patient])}")
        reference_rows.extend(node_rows)
    for patient, reference_stage in REFERENCE_ONLY.items():
        reference_rows.append(f"{patient}.zip,{reference_stage}")
    (args.out / "stage_labels.csv").write_text("patient,stage\n" + "\n".join(reference_rows) + "\n")
    reference = [REFERENCE_DIFFERS.get(p, s) for p, s in patients.items()]
    kappa = cohen_kappa_score(reference, list(patients.values()), labels=STAGES, weights="quadratic")
    expected = {
        "slides": slides,
        "patients": patients,
        "kappa": float(kappa),
        "missing": sorted(REFERENCE_ONLY),
        "nodes_compared": len(slides),
        "nodes_agreeing": sum(REFERENCE_NODES_DIFFER.get(stem, s["finding"]) == s["finding"] for stem, s in slides.items()),
        # Slide-level ROC AUC of each map's highest probability, tumour by the reference.
        "auc": float(roc_auc_score([s["tumour"] for s in slides.values()], [s["score"] for s in slides.values()])),
    }
    (args.out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"kappa {kappa:.6f}", patients)


if __name__ == "__main__":
    main()
