"""Step 5 of the edgedx model pipeline: assemble the brain-mri-4class bundle.

Copies the three models into models/brain-mri-4class/, picks sample images from the test
split (four PNGs, one per class, and two DICOMs), records what onnxruntime predicts for
each, and writes manifest.toml (models/BUNDLE.md) with the real sha256 of every model file
and the [evaluation] numbers from evaluate.py.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import shutil
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pydicom
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from common import BUNDLE_DIR, DATASET_DIR, LABELS, MEAN, OUT_DIR, SEED, STD, sha256_file

MODELS = {"int8": ("int8.onnx", "int8", "qoperator"), "fp32": ("fp32.onnx", "fp32", "none"),
          "int8-qdq": ("int8-qdq.onnx", "int8", "qdq")}
VERSION = "0.2.0"
MODEL_CARD = {
    "summary": "Small CNN (5 conv layers, 45.5k parameters, ~40 MFLOPs) that classifies one axial T1 "
               "brain-MRI slice as glioma, meningioma, no tumour or pituitary. Demo model for edgedx.",
    "trained_on": "Synthetic lesions (glioma-like, meningioma-like, pituitary-like) painted into axial slices "
                  "of real T1 template brains (Colin27 ch2/ch2bet and MNI ICBM152 2009a; calibration, validation and "
                  "test use MNI slice blocks kept out of training), with simulated MR nuisance (Rician noise, bias field, "
                  "ghosting, motion, contrast changes). No patient data.",
    "intended_use": "Research, demonstration and integration testing of the edgedx firmware (engine, "
                    "quantization gate, int8/fp32 fallback). Not a medical device.",
    "limitations": "Never trained or validated on real tumours or real clinical scans; accuracy on real images "
                   "is unknown and must be assumed to be poor. Two template anatomies only; the test split shares the "
                   "MNI brain with part of the training set (different slices), so it overstates generalisation. "
                   "Lesions are simple parametric shapes; only axial T1 slices from about z = -30 to +6 mm "
                   "(MNI) are covered; no contrast-enhanced, T2, FLAIR, paediatric or post-operative images. "
                   "Outputs are not calibrated probabilities.",
    "clinical_use": "NOT FOR CLINICAL USE",
}
# (sample name, label, format). Two per tumour class would be more than the bundle needs:
# the PNGs cover every class, the DICOMs exercise the 16-bit DICOM ingest path.
SAMPLES = [("glioma-01", "glioma", "png"), ("meningioma-01", "meningioma", "png"),
           ("notumor-01", "notumor", "png"), ("pituitary-01", "pituitary", "png"),
           ("meningioma-02", "meningioma", "dcm"), ("pituitary-02", "pituitary", "dcm")]


def toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # JSON string escapes are valid TOML basic strings


def toml_floats(v) -> str:
    return "[" + ", ".join(f"{x:.4f}" for x in v) + "]"


def write_manifest(path: Path, shas: dict, ev: dict) -> None:
    r = ev["results"]
    lines = [
        "# edgedx model bundle manifest (format: models/BUNDLE.md). Written by models/pipeline/bundle.py;",
        "# regenerate with models/pipeline/make_bundle.sh rather than editing by hand.",
        "schema_version = 1",
        "",
        "[bundle]",
        'name = "brain-mri-4class"',
        f'version = "{VERSION}"',
        'task = "image-classification"',
        "labels = [" + ", ".join(toml_str(l) for l in LABELS) + "]",
        "",
        "[input]",
        'tensor = "input"',
        'layout = "NCHW"',
        "height = 128",
        "width = 128",
        "channels = 1",
        'colour = "grey"',
        f"mean = [{MEAN:.1f}]",
        f"std = [{STD:.1f}]",
        "",
        "[output]",
        'tensor = "logits"',
        'kind = "logits"',
    ]
    for key, (file, precision, quant) in MODELS.items():
        lines += ["", f"[models.{key}]", f'file = "{file}"', f'sha256 = "{shas[key]}"',
                  f'precision = "{precision}"', f'quantization = "{quant}"']
    lines += ["", "[model_card]"] + [f"{k} = {toml_str(v)}" for k, v in MODEL_CARD.items()]
    split = ", ".join(f'{k} = "{v}"' for k, v in ev["split_sha256"].items())
    lines += [
        "", "[evaluation]",
        f"tool = {toml_str(ev['tool'])}",
        'split = "test"',
        f"images = {ev['images']}",
        f"fp32_accuracy = {r['fp32']['accuracy']:.4f}",
        f"int8_accuracy = {r['int8']['accuracy']:.4f}",
        f"fp32_recall = {toml_floats(r['fp32']['recall'])}",
        f"int8_recall = {toml_floats(r['int8']['recall'])}",
        f"split_sha256 = {{ {split} }}",
        "",
    ]
    path.write_text("\n".join(lines))


def write_dicom(path: Path, pixels_u8: np.ndarray, label: str, source: str) -> None:
    """16-bit MONOCHROME2 MR image, 12 bits stored (pixel*16), Explicit VR Little Endian.

    UIDs are derived from the file name and there are no dates, so a rerun of the pipeline
    writes byte-identical files. Type 2 attributes are present and empty.
    """
    def uid(kind: str) -> str:
        return generate_uid(entropy_srcs=["edgedx-models-samples", path.name, kind])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid(entropy_srcs=["edgedx-models-pipeline"])
    meta.ImplementationVersionName = "EDGEDX_PIPE_01"
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
    ds.FrameOfReferenceUID = uid("frame")
    ds.StudyDate = ds.StudyTime = ds.AccessionNumber = ds.ReferringPhysicianName = ds.StudyID = ""
    ds.Modality = "MR"
    ds.Manufacturer = ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.PatientName = "Anonymous^Sample"
    ds.PatientID = "EDGEDX-SAMPLE"
    ds.PatientBirthDate = ds.PatientSex = ""
    ds.SeriesDescription = "edgedx synthetic sample T1 axial"
    ds.ImageComments = f"Synthetic {label}-like lesion on a template brain ({source}). NOT FOR CLINICAL USE."
    ds.BurnedInAnnotation = "NO"
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "RM", "NONE", "", "3D"
    ds.RepetitionTime = ds.EchoTime = ds.EchoTrainLength = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, 0]
    ds.PixelSpacing = [1.6, 1.6]
    ds.SliceThickness = 1.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels_u8.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    # With the DICOM linear window (PS3.3 C.11.2.1.2) centre 2041 / width 4081 maps stored
    # 0 -> 0.0 and 4080 (= 255 * 16) -> 1.0 exactly, so DICOM and PNG give the model the
    # same input.
    ds.WindowCenter, ds.WindowWidth = 2041, 4081
    ds.PixelData = (pixels_u8.astype(np.uint16) * 16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=BUNDLE_DIR)
    args = ap.parse_args()
    t0 = time.time()
    ev = json.loads((OUT_DIR / "evaluation.json").read_text())
    args.bundle.mkdir(parents=True, exist_ok=True)
    shas = {}
    for key, (file, _, _) in MODELS.items():
        shutil.copyfile(OUT_DIR / file, args.bundle / file)
        shas[key] = sha256_file(args.bundle / file)
        assert shas[key] == ev["files"][key]["sha256"], f"{file} changed since evaluation"

    sessions = {k: ort.InferenceSession(str(args.bundle / MODELS[k][0]), providers=["CPUExecutionProvider"])
                for k in ("fp32", "int8")}
    with open(DATASET_DIR / "test" / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(SEED)
    samples_dir = args.bundle / "samples"
    if samples_dir.exists():
        shutil.rmtree(samples_dir)
    samples_dir.mkdir()
    used, table = set(), []
    for name, label, kind in SAMPLES:
        # A clear, correctly classified example from the "obvious" stratum (samples are for
        # the quick start, not for judging the model): fp32 and int8 both right and confident.
        cands = [r for r in rows if r["label"] == label and r["stratum"] == "obvious" and r["file"] not in used]
        for r in rng.permutation(cands):
            pixels = np.asarray(Image.open(DATASET_DIR / "test" / r["file"]).convert("L"))
            x = ((pixels.astype(np.float32) / 255.0 - MEAN) / STD)[None, None]
            probs = {}
            for k, s in sessions.items():
                z = s.run(["logits"], {"input": x})[0][0]
                p = np.exp(z - z.max())
                probs[k] = p / p.sum()
            if all(p.argmax() == LABELS.index(label) and p.max() > 0.9 for p in probs.values()):
                break
        else:
            raise RuntimeError(f"no confident {label} sample in the test split")
        used.add(r["file"])
        out = samples_dir / f"{name}.{kind}"
        if kind == "png":
            Image.fromarray(pixels, mode="L").save(out)
        else:
            write_dicom(out, pixels, label, f"test split {r['file']}")
            back = pydicom.dcmread(out).pixel_array
            assert np.array_equal(back, pixels.astype(np.uint16) * 16), "DICOM round trip changed pixels"
        table.append((out.name, label, r["file"], probs))

    lines = [
        "# Samples", "",
        "Quick-start inputs for edgedx, taken from the pipeline's **test** split (MNI ICBM152 template brain with "
        "a synthetic lesion painted in, plus simulated MR nuisance; see models/pipeline/README.md). "
        "Synthetic images, no patient data. **NOT FOR CLINICAL USE.**", "",
        "PNG: 8-bit greyscale 128x128, exactly the test image. DICOM: MR, 16-bit unsigned MONOCHROME2, "
        "BitsStored 12, Explicit VR Little Endian, pixel = PNG value x 16, RescaleSlope 1 / Intercept 0, "
        "WindowCenter 2041 / WindowWidth 4081 (the DICOM linear window then maps the pixels to exactly the PNG's "
        "value/255), "
        "PatientName Anonymous^Sample.", "",
        "Predictions: onnxruntime " + ort.__version__ + ", softmax of the logits, input = pixel/255 "
        "(probabilities in label order " + ", ".join(LABELS) + ").", "",
        "| file | true label | source (test split) | fp32 prediction | fp32 probabilities | int8 prediction | int8 probabilities |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for fname, label, src, probs in table:
        cells = [fname, label, f"`{src}`"]
        for k in ("fp32", "int8"):
            cells += [f"{LABELS[int(probs[k].argmax())]} ({probs[k].max():.3f})",
                      " / ".join(f"{v:.3f}" for v in probs[k])]
        lines.append("| " + " | ".join(cells) + " |")
    (samples_dir / "README.md").write_text("\n".join(lines) + "\n")

    write_manifest(args.bundle / "manifest.toml", shas, ev)
    total = sum(p.stat().st_size for p in args.bundle.rglob("*") if p.is_file())
    print(f"bundle {args.bundle}: {total / 1024:.0f} KiB in total; done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
