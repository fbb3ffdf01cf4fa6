"""Shared helpers for the pipeline steps: label order, split loading, file hashing."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

LABELS = ["glioma", "meningioma", "notumor", "pituitary"]
STRATA = ["obvious", "subtle", "artifact", "normal"]
PIPELINE_DIR = Path(__file__).resolve().parent
OUT_DIR = PIPELINE_DIR / "out"
DATASET_DIR = OUT_DIR / "dataset"
BUNDLE_DIR = PIPELINE_DIR.parent / "brain-mri-4class"
# Model input normalisation: value = (pixel/255 - MEAN) / STD. Identity on purpose: [0, 1]
# inputs quantize to uint8 with zero point 0 and scale ~1/255, so an 8-bit image loses
# nothing at the int8 model's input.
MEAN, STD = 0.0, 1.0
SEED = 20261122


def load_split(split: str, dataset_dir: Path = DATASET_DIR):
    """Return (x float32 [N,1,128,128] normalised, y int64 [N], strata [N], files [N])."""
    csv_path = dataset_dir / split / "labels.csv"
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    x = np.stack([np.asarray(Image.open(csv_path.parent / r["file"]).convert("L")) for r in rows])
    x = ((x.astype(np.float32) / 255.0 - MEAN) / STD)[:, None]
    y = np.array([int(r["class_index"]) for r in rows], dtype=np.int64)
    strata = np.array([r["stratum"] for r in rows])
    files = [r["file"] for r in rows]
    return x, y, strata, files


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
