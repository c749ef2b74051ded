"""How far a camera adaptation holds at cameras it was not trained on (issue 19).

Takes a finished camera-adapted run (``make demo-camera``: runs/demo-camera, adapted to the x4
camera) and scores each fold's x4 model against the pretrained network on that fold's TEST
people through other cameras (:mod:`tripletkit.faces.cameras`: shrink factors, JPEG, blur and
noise), each photo degraded and then cut by the run's detector, as the x4 test chips are
(:mod:`tripletkit.faces.views`, ``align="detect"``). Nothing is chosen here: the run's recipe
was chosen on validation people, and this only reports. Same camera (every test photo against
every other) and clean gallery (probes through the camera against the same people's clean
chips), mean over the 4 folds, and the paired difference adapted minus frozen with its 95%
bootstrap interval over people. Writes docs/faces_camera_transfer.md.

    python experiments/camera_transfer.py [--run runs/demo-camera] [--cameras x2 x3 ...]
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import numpy as np
import torch

from tripletkit._io import write_text
from tripletkit.config import read_config
from tripletkit.faces import metrics
from tripletkit.faces.bootstrap import paired_difference
from tripletkit.faces.cameras import Camera, CameraFamily
from tripletkit.faces.chips import ChipSettings, load_chips
from tripletkit.faces.config import FacesConfig
from tripletkit.faces.dlib_run import variant_folder
from tripletkit.faces.models import embed_chips, load_model
from tripletkit.faces.pretrained import load_dlib_resnet
from tripletkit.faces.runs import folds
from tripletkit.faces.views import ViewSettings, load_views

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "faces_camera_transfer.md"
CAMERAS = ["x2", "x3", "x4", "x5", "x6", "x8", "x4q30", "x4q15", "x2q15", "x3b1n4q30"]


def camera_chips(source: str, spec: str, detector: str) -> tuple[torch.Tensor, list[str]]:
    """Every image through the camera ``spec``, cut by ``detector`` on the degraded photo."""
    cam = Camera.parse(spec)
    family = CameraFamily(
        factor=(cam.factor, cam.factor),
        blur=(cam.blur, cam.blur),
        blur_share=1.0 if cam.blur else 0.0,
        noise=(cam.noise, cam.noise),
        noise_share=1.0 if cam.noise else 0.0,
        quality=(cam.quality, cam.quality),
        jpeg_share=1.0 if cam.quality else 0.0,
    )
    views = load_views(source, ViewSettings(family, 1, seed=1, detector=detector, align="detect"))
    return views.chips[:, 0], views.paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "demo-camera")
    parser.add_argument("--cameras", nargs="+", default=CAMERAS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(2)
    began = time.time()
    cfg = read_config(FacesConfig, args.run / "config.yaml")
    trained = [f for f in cfg.data.lowres if f != 1]
    if not cfg.adapt.levels or len(trained) != 1:
        raise SystemExit(f"{args.run}: not a camera-adapted run with one degraded factor")
    factor = trained[0]
    clean = load_chips(cfg.data.source, ChipSettings(lowres=1, detector=cfg.data.detector))
    plan = folds(cfg.data, clean)
    teacher = load_dlib_resnet().eval()
    nets = [load_model(variant_folder(args.run, factor, cfg.data.lowres) / f.name)[0] for f in plan]
    galleries = {
        "frozen": [embed_chips(teacher, clean.images[f.test]) for f in plan],
        "adapted": [embed_chips(n, clean.images[f.test]) for n, f in zip(nets, plan, strict=True)],
    }
    rows = []
    for spec in args.cameras:
        chips, paths = camera_chips(cfg.data.source, spec, cfg.data.detector)
        if paths != clean.paths:
            raise SystemExit(f"camera {spec}: the degraded chips hold other images")
        row: dict = {"camera": spec}
        probes = [
            {
                "frozen": embed_chips(teacher, chips[f.test]),
                "adapted": embed_chips(n, chips[f.test]),
            }
            for n, f in zip(nets, plan, strict=True)
        ]
        for protocol in ("same camera", "clean gallery"):
            per_fold = []
            for k, fold in enumerate(plan):
                dists = {
                    name: metrics.distance_matrix(probe)
                    if protocol == "same camera"
                    else metrics.cross_distance(probe, galleries[name][k])
                    for name, probe in probes[k].items()
                }
                per_fold.append(
                    (dists["frozen"], dists["adapted"], clean.labels[fold.test].numpy())
                )
            pairs = metrics.all_pairs if protocol == "same camera" else metrics.cross_pairs
            scores = {}
            for name, i in (("frozen", 0), ("adapted", 1)):
                found = [pairs(f[i], f[2]) for f in per_fold]
                scores[name] = (
                    float(np.mean([metrics.equal_error_rate(d, same) for d, same in found])),
                    float(np.mean([metrics.val_at_far(d, same, 1e-3) for d, same in found])),
                )
            diff = paired_difference(per_fold, cross=protocol == "clean gallery")["eer"]
            row[protocol] = {**scores, "difference": diff}
        rows.append(row)
        print(row, flush=True)
        write_text(args.out, report(rows, args.run, cfg, factor, time.time() - began))


def report(rows, run: Path, cfg: FacesConfig, factor: int, seconds: float) -> str:
    lines = [
        "# How far the camera adaptation holds at other cameras (issue 19)",
        "",
        f"Regenerate: `python experiments/camera_transfer.py --run {run.relative_to(ROOT)}` after "
        f"`make demo-camera` ({datetime.date.today()}, 2 cores, {seconds / 60:.0f} minutes, "
        "most of it dlib's CNN detector on every degraded photo).",
        "",
        f"The run's x{factor} models (stem and first {cfg.adapt.levels} level(s) adapted to the "
        f"x{factor} and clean chips of each fold's training people) against the frozen "
        "pretrained network, on each fold's 10 TEST people through each camera (x<f>: shrunk f "
        "times; q<n>: JPEG quality n; b<r>: blur radius r; n<s>: noise std s; the photo is "
        "degraded, then cut by dlib's CNN detector). Mean over the 4 folds, EER / VAL@1e-3; "
        "'difference' is adapted minus frozen EER with its 95% bootstrap interval over people "
        f"(200 draws). The adaptation saw x1 and x{factor} only: every other camera is a "
        "transfer.",
        "",
        "| camera | protocol | frozen EER | frozen VAL@1e-3 | adapted EER | adapted VAL@1e-3 "
        "| EER difference [95% interval] |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for protocol in ("same camera", "clean gallery"):
            r = row[protocol]
            d = r["difference"]
            lines.append(
                f"| {row['camera']} | {protocol} | {r['frozen'][0]:.4f} | {r['frozen'][1]:.3f} | "
                f"{r['adapted'][0]:.4f} | {r['adapted'][1]:.3f} | {d['difference']:+.4f} "
                f"[{d['low']:+.4f}, {d['high']:+.4f}] |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
