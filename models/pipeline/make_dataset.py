"""Step 1 of the edgedx model pipeline: build the synthetic brain-MRI dataset.

Real anatomy, synthetic pathology: axial slices are resampled from real T1 template
volumes (Colin27 "ch2" with and without skull, and the MNI ICBM152 2009a template), and
glioma-like, meningioma-like and pituitary-like masses are painted into them, followed by
MR nuisance (bias field, ghosting/motion, Rician noise, blur, gamma/contrast changes).

Splits are disjoint by source slice: train uses the Colin27 brain (ch2 and ch2bet, the
same head with and without scalp/skull; two thirds of the training images) plus blocks of
MNI ICBM152 slices (one third); calibration, validation and test use only other MNI slice
blocks, separated from the training blocks by unused gap slices (see `mni_split_of`).
Lesions, nuisance and geometry are drawn independently for every image.

Output: out/dataset/<split>/<class>/<name>.png plus out/dataset/<split>/labels.csv with
columns file,label,class_index,stratum (file relative to the CSV).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

LABELS = ["glioma", "meningioma", "notumor", "pituitary"]
STRATA = ["obvious", "subtle", "artifact", "normal"]
SIZE = 128
# Axial range (world z, mm) kept: low enough for the sella/suprasellar region, high enough
# for the frontal horns of the lateral ventricles. Above ~+6 mm a sellar mass is no longer
# anatomically plausible, so slices stop there.
Z_RANGE = (-30, 6)
# Approximate sella/suprasellar position in MNI/Talairach world coordinates (x, y) in mm.
# Both templates are Talairach-aligned, so one point serves both.
SELLA_XY = (0.0, 2.0)

# Images per split and stratum. The "normal" stratum holds only notumor images; the other
# strata hold the four classes in equal shares.
SPLIT_SIZES = {"train": 1000, "calibration": 50, "validation": 100, "test": 200}
SPLIT_SEEDS = {"train": 1, "calibration": 2, "validation": 3, "test": 4}


# --------------------------------------------------------------------------- volumes
def read_nifti_u8(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a gzipped NIfTI-1 uint8 volume; return (array[z, y, x], origin_xyz in mm).

    Parsed by hand (the files are simple: uint8, 1 mm isotropic, diagonal sform) so the
    pipeline needs no NIfTI library; anything else is rejected instead of misread.
    """
    raw = gzip.open(path).read()
    if struct.unpack("<i", raw[:4])[0] != 348 or raw[344:347] != b"n+1":
        raise ValueError(f"{path}: not a single-file NIfTI-1")
    dim = struct.unpack("<8h", raw[40:56])
    datatype = struct.unpack("<h", raw[70:72])[0]
    pixdim = struct.unpack("<8f", raw[76:108])
    vox_offset = int(struct.unpack("<f", raw[108:112])[0])
    srow = np.array(struct.unpack("<12f", raw[280:328])).reshape(3, 4)
    if datatype != 2 or dim[0] != 3 or any(abs(p - 1.0) > 1e-6 for p in pixdim[1:4]):
        raise ValueError(f"{path}: expected 3-D uint8 at 1 mm")
    if not np.allclose(srow[:, :3], np.eye(3)):
        raise ValueError(f"{path}: expected an axis-aligned sform")
    nx, ny, nz = dim[1:4]
    vol = np.frombuffer(raw, np.uint8, nx * ny * nz, vox_offset).reshape(nz, ny, nx)
    return vol, srow[:, 3].copy()


@dataclass
class Source:
    """One template volume, normalised so white matter sits near 0.75."""

    name: str
    vol: np.ndarray  # float32 [z, y, x]
    brain: np.ndarray  # bool [z, y, x]
    origin: np.ndarray  # world xyz of voxel (0, 0, 0)
    centre_xy: np.ndarray  # world xy the field of view is centred on
    fov: float  # mm across the 128-pixel image (before scale augmentation)


def load_sources(data_dir: Path) -> dict[str, Source]:
    ch2, o_ch2 = read_nifti_u8(data_dir / "ch2.nii.gz")
    ch2bet, _ = read_nifti_u8(data_dir / "ch2bet.nii.gz")
    mni, o_mni = read_nifti_u8(data_dir / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    # ch2bet is ch2 with non-brain voxels zeroed, on the same grid: it is ch2's brain mask.
    brain_ch2 = ch2bet > 0
    brain_mni = np.stack([ndimage.binary_fill_holes(s > 15) for s in mni])

    def make(name, vol, brain, origin, margin):
        v = vol.astype(np.float32)
        # Bright WM percentile as reference intensity makes the three volumes comparable.
        v = v / np.percentile(v[brain], 97) * 0.8
        z0 = int(round(0 - origin[2]))
        ys, xs = np.nonzero(brain[z0])
        centre = np.array([(xs.min() + xs.max()) / 2 + origin[0], (ys.min() + ys.max()) / 2 + origin[1]])
        extent = max(xs.max() - xs.min(), ys.max() - ys.min())
        return Source(name, v, brain, origin, centre, extent * margin)

    return {
        # With scalp and skull the field of view has to be wider than the brain.
        "ch2": make("ch2", ch2, brain_ch2, o_ch2, 1.38),
        "ch2bet": make("ch2bet", ch2bet, brain_ch2, o_ch2, 1.18),
        "mni": make("mni", mni, brain_mni, o_mni, 1.18),
    }


def mni_split_of(z: int) -> str | None:
    """MNI slices are dealt to the splits in 12-slice (12 mm) cycles from Z_RANGE[0].

    Offsets in each cycle: 0-3 train, 5 calibration, 6-7 validation, 8-10 test; offsets 4
    and 11 are unused gap slices, so training slices never touch a held-out slice.
    """
    k = (z - Z_RANGE[0]) % 12
    if k <= 3:
        return "train"
    return {5: "calibration", 6: "validation", 7: "validation", 8: "test", 9: "test", 10: "test"}.get(k)


# Share of training images drawn from the MNI brain (the rest from Colin27 ch2/ch2bet). The
# held-out splits are all MNI, so training on a third of MNI anatomy keeps the two brains'
# different contrast and smoothness from dominating the held-out error.
MNI_TRAIN_SHARE = 1 / 3


def slices_for(split: str) -> list[tuple[str, int]]:
    zs = range(Z_RANGE[0], Z_RANGE[1] + 1)
    return [("mni", z) for z in zs if mni_split_of(z) == split]


def colin_slices() -> list[tuple[str, int]]:
    zs = range(Z_RANGE[0], Z_RANGE[1] + 1)
    return [(v, z) for v in ("ch2", "ch2bet") for z in zs]


# --------------------------------------------------------------------------- geometry
def sample_slice(src: Source, z: int, rng: np.random.Generator, strength: float):
    """Resample one axial slice to 128x128 with a random similarity transform.

    Returns (image, brain mask, sella position in output pixels (row, col)).
    Rows run anterior to posterior, as radiologists display axial images.
    """
    k = int(round(z - src.origin[2]))
    plane, mask = src.vol[k], src.brain[k].astype(np.float32)
    angle = np.deg2rad(rng.uniform(-10, 10) * strength)
    scale = rng.uniform(0.9, 1.1)
    shift = rng.uniform(-6, 6, size=2) * strength
    mirror = -1.0 if rng.random() < 0.5 else 1.0
    px = src.fov * scale / SIZE  # mm per output pixel
    c, s = np.cos(angle), np.sin(angle)
    # Output pixel (row, col) -> world (x, y): column along x (optionally mirrored),
    # row along -y (anterior up), then rotation and translation.
    a = np.array([[c, -s], [s, c]]) @ np.array([[0.0, mirror * px], [-px, 0.0]])
    t = src.centre_xy + shift
    rr, cc = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) - (SIZE - 1) / 2
    wx = a[0, 0] * rr + a[0, 1] * cc + t[0]
    wy = a[1, 0] * rr + a[1, 1] * cc + t[1]
    coords = np.stack([wy - src.origin[1], wx - src.origin[0]])  # voxel (j, i)
    img = ndimage.map_coordinates(plane, coords, order=1, cval=0.0)
    brain = ndimage.map_coordinates(mask, coords, order=1, cval=0.0) > 0.5
    sella = np.linalg.solve(a, np.array(SELLA_XY) - t) + (SIZE - 1) / 2
    return img.astype(np.float32), brain, sella


# --------------------------------------------------------------------------- lesions
def smooth_noise(rng, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field: the source of texture and irregularity."""
    n = ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), sigma)
    return (n - n.mean()) / (n.std() + 1e-8)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40, 40)))


def polar(centre):
    rr, cc = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    dy, dx = rr - centre[0], cc - centre[1]
    return np.hypot(dy, dx), np.arctan2(dy, dx)


def wm_level(img, brain):
    return float(np.percentile(img[brain], 90)) if brain.any() else 0.6


def paint_glioma(img, brain, rng, size, contrast, softness):
    """Infiltrative intra-axial mass: irregular, ill-defined, heterogeneous, with oedema.

    On T1 both the tumour and the vasogenic oedema around it are hypointense; the tumour
    core is heterogeneous (darker necrotic-like patches, brighter solid rim-like parts).
    """
    depth = ndimage.distance_transform_edt(brain)
    candidates = np.argwhere(depth >= 0.6 * size + 3)
    if len(candidates) == 0:
        candidates = np.argwhere(depth >= depth.max() * 0.7)
    centre = candidates[rng.integers(len(candidates))].astype(np.float64)
    r, th = polar(centre)
    radius = size * (1 + sum(rng.uniform(0, 0.16) * np.cos(k * th + rng.uniform(0, 2 * np.pi)) for k in range(2, 6)))
    d = r / radius + 0.22 * smooth_noise(rng, 2.0) * (r < 2.5 * size)
    core = sigmoid((1 - d) / softness)
    oedema = sigmoid((rng.uniform(1.6, 2.3) - d) / 0.18) * brain
    wm = wm_level(img, brain)
    out = img * (1 - contrast * rng.uniform(0.22, 0.38) * oedema)
    texture = wm * (0.42 + 0.16 * smooth_noise(rng, 1.2) + 0.18 * sigmoid((d - 0.55) / 0.1))
    return out * (1 - contrast * core) + texture * contrast * core


def outer_boundary_points(brain, sella, min_dist):
    """Pixels on the outer brain surface (the convexity), away from the sella.

    Closing + hole filling removes the basal cisterns, so an "extra-axial" mass is never
    placed on an inner surface next to the sella where it would mimic a pituitary mass.
    """
    solid = ndimage.binary_fill_holes(ndimage.binary_closing(brain, iterations=6))
    edge = solid & ~ndimage.binary_erosion(solid, iterations=1)
    pts = np.argwhere(edge)
    far = np.hypot(pts[:, 0] - sella[0], pts[:, 1] - sella[1]) > min_dist
    return pts[far], solid


def paint_meningioma(img, brain, sella, rng, size, contrast, softness):
    """Extra-axial, well-circumscribed, homogeneous bright mass with a broad dural base.

    A disc centred just inside the outer brain surface, cut flat by the tangent plane at
    the surface: the flat side is the base on the dura/inner table, the round side
    indents the brain. A thin dark CSF cleft outlines it.
    """
    pts, solid = outer_boundary_points(brain, sella, 30)
    if len(pts) == 0:
        return img
    p = pts[rng.integers(len(pts))].astype(np.float64)
    inside = ndimage.distance_transform_edt(solid)
    gy, gx = np.gradient(ndimage.gaussian_filter(inside, 3))
    normal = -np.array([gy[int(p[0]), int(p[1])], gx[int(p[0]), int(p[1])]])  # outward
    normal /= np.linalg.norm(normal) + 1e-8
    centre = p - normal * size * rng.uniform(0.25, 0.45)
    r, _ = polar(centre)
    rr, cc = np.mgrid[0:SIZE, 0:SIZE]
    outward = (rr - p[0]) * normal[0] + (cc - p[1]) * normal[1]
    dist = np.maximum(r - size, outward - size * 0.15)
    mass = sigmoid(-dist / softness)
    cleft = np.exp(-((dist - 1.2) ** 2) / 1.0) * solid
    wm = wm_level(img, brain)
    bright = wm * rng.uniform(1.08, 1.25) * (1 + 0.03 * smooth_noise(rng, 1.5))
    out = img * (1 - 0.25 * contrast * cleft)
    return out * (1 - contrast * mass) + bright * contrast * mass


def paint_pituitary(img, brain, sella, rng, size, contrast, softness):
    """Sellar/suprasellar midline mass: round-ovoid, fairly homogeneous, moderately bright."""
    centre = sella + rng.normal(0, 1.0, size=2)
    rr, cc = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    ang = rng.uniform(0, np.pi)
    ca, sa = np.cos(ang), np.sin(ang)
    ry, rx = size * rng.uniform(0.85, 1.15), size * rng.uniform(0.85, 1.15)
    u = ((rr - centre[0]) * ca + (cc - centre[1]) * sa) / ry
    v = (-(rr - centre[0]) * sa + (cc - centre[1]) * ca) / rx
    d = np.sqrt(u * u + v * v)
    mass = sigmoid((1 - d) * size / softness)
    wm = wm_level(img, brain)
    bright = wm * rng.uniform(1.1, 1.3) * (1 + 0.05 * smooth_noise(rng, 1.5))
    return img * (1 - contrast * mass) + bright * contrast * mass


# Lesion size (radius in output pixels), contrast and edge softness per stratum.
# v2 (2026-11-22): the v1 "subtle" stratum (radius 4-7 px x size factor, i.e. pituitary
# masses down to 2.8 px, at 45-70 % contrast with 1-1.8 px soft edges) and the v1 heavy
# nuisance produced many lesions that a radiologist could not see on the 128x128 image;
# an invisible lesion is a labelling error, not a hard case. Subtle lesions are now small
# (radius 5-8 px) but visible (70-90 % contrast), artifact lesions medium with a
# visible contrast, and the pituitary mass is larger and a little brighter than grey/white
# matter (v1 often blended into the suprasellar anatomy even in the obvious stratum).
LESION = {
    "obvious": dict(size=(9.0, 15.0), contrast=(0.85, 1.0), softness=(0.5, 0.8)),
    "subtle": dict(size=(5.0, 8.0), contrast=(0.7, 0.9), softness=(0.7, 1.2)),
    "artifact": dict(size=(7.0, 12.0), contrast=(0.8, 1.0), softness=(0.6, 1.0)),
}
SIZE_FACTOR = {"glioma": 1.0, "meningioma": 0.9, "pituitary": 0.85}


# --------------------------------------------------------------------------- nuisance
def add_nuisance(img, rng, heavy: bool) -> np.ndarray:
    """MR acquisition nuisance; `heavy` is the artifact stratum."""
    # Smooth multiplicative bias field (coil sensitivity).
    field = ndimage.zoom(rng.standard_normal((4, 4)), SIZE / 4, order=3)
    field = (field - field.mean()) / (field.std() + 1e-8)
    img = img * np.exp(field * (rng.uniform(0.2, 0.4) if heavy else rng.uniform(0.03, 0.15)))
    # Template volumes are sharper (Colin) or smoother (MNI) than real scans: vary it.
    img = ndimage.gaussian_filter(img, rng.uniform(0.0, 0.9))
    axis = int(rng.integers(2))  # phase-encoding direction
    if heavy and rng.random() < 0.5:
        # Bulk motion during acquisition: several slightly displaced copies averaged.
        n = int(rng.integers(2, 5))
        img = np.mean([np.roll(img, int(rng.integers(-3, 4)), axis=axis) for _ in range(n)], axis=0)
    if heavy or rng.random() < 0.3:
        # Ghosting: faint shifted replicas along the phase direction.
        base = img.copy()
        for _ in range(int(rng.integers(1, 4)) if heavy else 1):
            amp = rng.uniform(0.06, 0.18) if heavy else rng.uniform(0.02, 0.06)
            img = img + amp * np.roll(base, int(rng.choice([-1, 1]) * rng.integers(8, 40)), axis=axis)
    # Rician noise: magnitude of a complex signal with Gaussian noise on both channels.
    sigma = rng.uniform(0.04, 0.075) if heavy else rng.uniform(0.008, 0.035)
    img = np.sqrt((img + sigma * rng.standard_normal(img.shape)) ** 2 + (sigma * rng.standard_normal(img.shape)) ** 2)
    # Display window / contrast: scanner- and protocol-dependent intensity mapping.
    img = np.clip(img / (np.percentile(img, 99.7) * rng.uniform(0.9, 1.15) + 1e-8), 0, 1)
    gamma = rng.uniform(0.65, 1.5) if heavy else rng.uniform(0.8, 1.25)
    return img**gamma


# --------------------------------------------------------------------------- driver
def make_image(src, z, label, stratum, rng) -> np.ndarray:
    heavy = stratum == "artifact"
    img, brain, sella = sample_slice(src, z, rng, strength=1.0)
    if label != "notumor":
        p = LESION[stratum]
        size = rng.uniform(*p["size"]) * SIZE_FACTOR[label]
        contrast = rng.uniform(*p["contrast"])
        softness = rng.uniform(*p["softness"])
        if label == "glioma":
            # The glioma edge works on distance normalised by the radius; the factor 2.5
            # also makes its margin ~2.5x wider than the other masses' (ill-defined).
            img = paint_glioma(img, brain, rng, size, contrast, softness / size * 2.5)
        elif label == "meningioma":
            img = paint_meningioma(img, brain, sella, rng, size, contrast, softness)
        else:
            img = paint_pituitary(img, brain, sella, rng, size, contrast, softness)
    img = add_nuisance(img, rng, heavy)
    return np.round(img * 255).astype(np.uint8)


def build_split(split: str, sources: dict[str, Source], out_dir: Path, per_stratum: int) -> str:
    slices = slices_for(split)
    jobs = []
    for stratum in STRATA:
        labels = ["notumor"] if stratum == "normal" else LABELS
        for i in range(per_stratum):
            jobs.append((stratum, labels[i % len(labels)]))
    # One child seed per image: any image can be regenerated alone, and adding a split
    # or changing one split's size never changes another split's images.
    seeds = np.random.SeedSequence([20261122, SPLIT_SEEDS[split]]).spawn(len(jobs))
    split_dir = out_dir / split
    rows = []
    counters: dict[str, int] = {}
    for (stratum, label), seed in zip(jobs, seeds):
        rng = np.random.default_rng(seed)
        pool = slices
        if split == "train" and rng.random() >= MNI_TRAIN_SHARE:
            pool = colin_slices()
        vol, z = pool[int(rng.integers(len(pool)))]
        pixels = make_image(sources[vol], z, label, stratum, rng)
        counters[label] = counters.get(label, 0) + 1
        rel = f"{label}/{label}-{counters[label]:05d}.png"
        (split_dir / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="L").save(split_dir / rel, optimize=False)
        rows.append((rel, label, LABELS.index(label), stratum))
    rows.sort()
    with open(split_dir / "labels.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "label", "class_index", "stratum"])
        w.writerows(rows)
    return hashlib.sha256((split_dir / "labels.csv").read_bytes()).hexdigest()


def write_checksums(split_dir: Path) -> str:
    """sha256 of every PNG into SHA256SUMS; returns the sha256 of that file.

    labels.csv only lists names and labels, so its hash does not change when the pixels
    do; this digest covers the image content too.
    """
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(split_dir).as_posix()}"
             for p in sorted(split_dir.rglob("*.png"))]
    (split_dir / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return hashlib.sha256((split_dir / "SHA256SUMS").read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/brain"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "dataset")
    # Small sets for tests and the model-team walkthrough (models/README.md); the bundle's
    # own splits use the defaults.
    ap.add_argument("--splits", default=",".join(SPLIT_SIZES), help="comma-separated splits to build")
    ap.add_argument("--per-stratum", type=int, default=None, help="images per stratum (default: SPLIT_SIZES)")
    args = ap.parse_args()
    splits = [s for s in args.splits.split(",") if s]
    unknown = [s for s in splits if s not in SPLIT_SIZES]
    if unknown:
        ap.error(f"unknown split(s) {unknown}; known: {list(SPLIT_SIZES)}")
    t0 = time.time()
    sources = load_sources(args.data)
    print(f"loaded volumes in {time.time() - t0:.1f}s")
    hashes, content = {}, {}
    for split in splits:
        size = args.per_stratum or SPLIT_SIZES[split]
        t = time.time()
        if (args.out / split).exists():
            for p in sorted((args.out / split).rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
        hashes[split] = build_split(split, sources, args.out, size)
        content[split] = write_checksums(args.out / split)
        n = size * len(STRATA)
        print(f"{split:12s} {n:5d} images  {time.time() - t:6.1f}s  sha256(labels.csv)={hashes[split]}"
              f"  sha256(SHA256SUMS)={content[split]}")
    # One line per split: name, sha256 of labels.csv (the manifest's split_sha256), sha256
    # of SHA256SUMS (pixel content).
    with open(args.out / "split_sha256.txt", "w") as f:
        for k, v in hashes.items():
            f.write(f"{k} {v} {content[k]}\n")
    print(f"dataset done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
