"""The PyTorch port of dlib's face descriptor against dlib itself, on all 400 ORL images.

Each image (gray copied to RGB) goes through dlib's own alignment: frontal HOG detector on the
image upscaled 2x (the whole image as the box when it finds no face), 5-point landmarks,
``get_face_chip`` (150 x 150, padding 0.25). The same chip goes into
``dlib.face_recognition_model_v1.compute_face_descriptor`` and into
``tripletkit.faces.pretrained.load_dlib_resnet()``. Prints the per-image cosine similarity
(min, mean) and the ORL metrics of both on identity-disjoint folds, and writes a Markdown
table to docs/dlib_port.md.

    python experiments/dlib_port_check.py        # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import datetime
import re
import time
from pathlib import Path

import dlib
import numpy as np
import torch
from PIL import Image

from tripletkit._io import write_text
from tripletkit.faces import metrics
from tripletkit.faces.images import identity_folds, orl_root
from tripletkit.faces.pretrained import MODEL_FILE, load_dlib_resnet, package_file

COLUMNS = [("val_at_far_1e-3", "VAL@1e-3"), ("eer", "EER"), ("map_at_r", "MAP@R"), ("ari", "ARI")]


def _number(path: Path) -> int:
    return int(re.sub(r"\D", "", path.stem) or 0)


def orl_images() -> tuple[list[Path], np.ndarray]:
    """The 400 ORL files in person order and their person indices (0..39)."""
    people = sorted(orl_root().glob("s*"), key=_number)
    files = [f for p in people for f in sorted(p.glob("*.pgm"), key=_number)]
    labels = np.array([_number(f.parent) - 1 for f in files])
    return files, labels


def dlib_chips(files: list[Path]) -> tuple[np.ndarray, int]:
    """(N, 150, 150, 3) uint8 chips cut by dlib, and how many images had no face found."""
    detector = dlib.get_frontal_face_detector()
    landmarks = dlib.shape_predictor(str(package_file("shape_predictor_5_face_landmarks.dat")))
    chips, missed = [], 0
    for file in files:
        image = np.asarray(Image.open(file).convert("RGB"))
        found = detector(image, 1)
        missed += not found
        box = found[0] if found else dlib.rectangle(0, 0, image.shape[1] - 1, image.shape[0] - 1)
        chips.append(dlib.get_face_chip(image, landmarks(image, box), size=150, padding=0.25))
    return np.stack(chips), missed


def dlib_descriptors(chips: np.ndarray) -> tuple[np.ndarray, float]:
    """dlib's raw descriptors (N, 128) and the seconds per image."""
    net = dlib.face_recognition_model_v1(str(package_file(MODEL_FILE)))
    start = time.perf_counter()
    out = np.array([net.compute_face_descriptor(chip) for chip in chips])
    return out, (time.perf_counter() - start) / len(chips)


def port_descriptors(chips: np.ndarray, batch: int = 50) -> tuple[np.ndarray, float]:
    """The port's unit descriptors (N, 128) and the seconds per image."""
    model = load_dlib_resnet()
    x = torch.from_numpy(chips).permute(0, 3, 1, 2).float()
    start = time.perf_counter()
    with torch.no_grad():
        out = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])
    return out.double().numpy(), (time.perf_counter() - start) / len(chips)


def fold_metrics(emb: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> dict[str, float]:
    """Mean over identity-disjoint folds of VAL@1e-3, EER, MAP@R and ARI (known number of
    people, average linkage) on each fold's people."""
    rows = []
    for people in identity_folds(int(labels.max()) + 1, folds, seed):
        keep = np.isin(labels, people)
        dist, truth = metrics.distance_matrix(emb[keep]), labels[keep]
        row = metrics.verification(dist, truth, seed=seed)
        row.update(metrics.identification(dist, truth))
        clusters = metrics.agglomerative(dist, n_clusters=len(people))
        row.update(metrics.clustering_scores(truth, clusters))
        rows.append(row)
    return {key: float(np.mean([r[key] for r in rows])) for key, _ in COLUMNS}


def table(results: dict[str, dict[str, float]]) -> list[str]:
    lines = ["| descriptor | " + " | ".join(name for _, name in COLUMNS) + " |"]
    lines.append("|---|" + "---|" * len(COLUMNS))
    for method, row in results.items():
        lines.append(f"| {method} | " + " | ".join(f"{row[k]:.3f}" for k, _ in COLUMNS) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/dlib_port.md", help="the Markdown report")
    parser.add_argument("--folds", type=int, default=4, help="identity-disjoint folds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    files, labels = orl_images()
    chips, missed = dlib_chips(files)
    reference, dlib_time = dlib_descriptors(chips)
    ours, port_time = port_descriptors(chips)
    unit = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cosine = (unit * ours).sum(1)
    gap = np.abs(metrics.distance_matrix(unit) - metrics.distance_matrix(ours)).max()
    results = {
        "dlib `compute_face_descriptor`, raw": fold_metrics(
            reference, labels, args.folds, args.seed
        ),
        "dlib, L2-normalised": fold_metrics(unit, labels, args.folds, args.seed),
        "PyTorch port (`load_dlib_resnet`)": fold_metrics(ours, labels, args.folds, args.seed),
    }
    summary = [
        f"images: {len(files)} ({missed} with no face found: whole image as the box)",
        f"cosine(port, dlib) per image: min {cosine.min():.7f}, mean {cosine.mean():.7f}, "
        f"images below 0.999: {int((cosine < 0.999).sum())}",
        f"largest difference between the two pairwise distance matrices: {gap:.2e}",
        f"time per image: dlib {dlib_time * 1e3:.1f} ms (one at a time), "
        f"port {port_time * 1e3:.1f} ms (batches of 50), {torch.get_num_threads()} threads",
    ]
    print("\n".join(summary + [""] + table(results)))
    today = datetime.date.today().isoformat()
    text = [
        "# The dlib face descriptor ported to PyTorch, checked against dlib",
        "",
        f"Written by `python experiments/dlib_port_check.py` on {today} (dlib {dlib.__version__},"
        f" torch {torch.__version__}).",
        "",
        "All 400 ORL images, gray copied to RGB, aligned by dlib (HOG detector on the image "
        "upscaled 2x, the whole image when no face is found, 5-point landmarks, "
        "`get_face_chip` 150 x 150); the same chips go into dlib's `compute_face_descriptor` "
        "and into the port.",
        "",
        *[f"- {line}" for line in summary],
        "",
        f"Metrics on the people of each of {args.folds} identity-disjoint folds (seed "
        f"{args.seed}), mean over folds; ARI with the number of people known (average linkage). "
        "Distances are Euclidean; the port's output is unit length, so it is compared with "
        "dlib's descriptors normalised the same way (the raw row is dlib as it ships, with its "
        "unnormalised descriptors).",
        "",
        *table(results),
        "",
    ]
    write_text(Path(args.out), "\n".join(text))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
