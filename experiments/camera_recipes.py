"""Camera adaptation recipes on VALIDATION people (issue 19), through the code `tripletkit
train` runs (:func:`tripletkit.faces.dlib_run.train_dlib`, :mod:`tripletkit.faces.adapt`).

Each recipe is configs/orl.yaml (CNN-detector chips at x1 and x4, 4 folds of 10 test people, 6
validation and 24 training people each) with a few settings changed; its run is trained into
runs/camera-recipes/<n>/ (restartable: a finished fold is kept). Test people are not read: each
fold's models are scored on the fold's 6 validation people, mean over the 4 folds, EER and
VAL@1e-3 at x1 (the full-resolution model on clean chips), x4 (the x4 model on x4 chips) and
clean-x4 (the x4 model: x4 probes against the same people's clean chips as gallery). A recipe
that adapts with the same ``adapt`` settings as an earlier one reuses its adaptation. Writes
docs/faces_camera_recipes.md after every recipe.

    python experiments/camera_recipes.py [--only REGEX]
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from tripletkit._io import write_text
from tripletkit.cli.settings import load_config
from tripletkit.faces import metrics
from tripletkit.faces.dlib_run import adapt_folder, chip_sets, train_dlib, variant_folder
from tripletkit.faces.models import embed_chips, load_model, model_saved
from tripletkit.faces.pretrained import load_dlib_resnet
from tripletkit.faces.runs import folds

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "faces_camera_recipes.md"
RUNS = ROOT / "runs" / "camera-recipes"
EVERY = ["model.eval_every=100"]

RECIPES: list[tuple[str, list[str]]] = [
    ("frozen (the pretrained descriptor)", ["model.train_levels=0"]),
    ("top level: triplet fine-tuning (make demo's recipe)", []),
    ("adapt stem + level 1: distillation", ["adapt.levels=1", "model.train_levels=0"]),
    (
        "adapt stem + level 1: distillation, then the top level's triplet fine-tuning",
        ["adapt.levels=1"],
    ),
    (
        "adapt stem + level 1: distillation + teacher-anchored triplets (weight 1)",
        ["adapt.levels=1", "adapt.triplet=1", "model.train_levels=0"],
    ),
    ("adapt stem + levels 1-2: distillation", ["adapt.levels=2", "model.train_levels=0"]),
    (
        "adapt stem + level 1: distillation + teacher-anchored triplets, then the top level's "
        "triplet fine-tuning",
        ["adapt.levels=1", "adapt.triplet=1"],
    ),
    (
        "adapt stem + level 1: distillation, 800 steps",
        ["adapt.levels=1", "adapt.steps=800", "model.train_levels=0"],
    ),
]
COLUMNS = ("x1", "x4", "clean-x4")


def fold_scores(run: Path, factors: tuple[int, ...], fold, chips) -> dict[str, tuple[float, float]]:
    """(VAL@1e-3, EER) per column on the fold's validation people."""
    nets = {f: load_model(variant_folder(run, f, factors) / fold.name)[0] for f in factors}
    labels = chips[1].labels[fold.val].numpy()
    x1 = embed_chips(nets[1], chips[1].images[fold.val])
    x4 = embed_chips(nets[4], chips[4].images[fold.val])
    gallery = embed_chips(nets[4], chips[1].images[fold.val])
    pairs = {
        "x1": metrics.all_pairs(metrics.distance_matrix(x1), labels),
        "x4": metrics.all_pairs(metrics.distance_matrix(x4), labels),
        "clean-x4": metrics.cross_pairs(metrics.cross_distance(x4, gallery), labels),
    }
    return {
        k: (metrics.val_at_far(d, same, 1e-3), metrics.equal_error_rate(d, same))
        for k, (d, same) in pairs.items()
    }


def train_minutes(run: Path) -> float:
    """The training time its logs record: every ``train_log.jsonl`` of the run (an adaptation
    shared with an earlier recipe counted again)."""
    seconds = 0.0
    for log in run.rglob("train_log.jsonl"):
        lines = log.read_text().splitlines()
        if lines:
            seconds += json.loads(lines[-1])["seconds"]
    return seconds / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the recipes whose name matches this regex")
    args = parser.parse_args()
    torch.set_num_threads(2)
    began = time.time()
    pretrained = load_dlib_resnet().eval()
    adapted: dict[str, Path] = {}  # adapt settings -> the run that holds that adaptation
    rows = []
    for n, (name, overrides) in enumerate(RECIPES):
        if not re.search(args.only, name) and not name.startswith("frozen"):
            continue
        cfg = load_config(ROOT / "configs" / "orl.yaml", [*overrides, *EVERY])
        chips = chip_sets(cfg, progress=True)
        plan = folds(cfg.data, chips[1])
        run = RUNS / str(n)
        key = repr(cfg.adapt) if cfg.adapt.levels else ""
        if key in adapted and not adapt_folder(run).exists():
            shutil.copytree(adapt_folder(adapted[key]), adapt_folder(run))
        train_dlib(cfg, run, plan, chips, pretrained, resume=True, progress=True, done=model_saved)
        if key:
            adapted.setdefault(key, run)
        per_fold = [fold_scores(run, cfg.data.lowres, fold, chips) for fold in plan]
        mean = {
            c: tuple(float(np.mean([f[c][i] for f in per_fold])) for i in range(2)) for c in COLUMNS
        }
        rows.append((name, overrides, mean, train_minutes(run)))
        print(name, mean, flush=True)
        write_text(OUT, report(rows, time.time() - began))


def report(rows, seconds: float) -> str:
    lines = [
        "# Camera adaptation recipes on validation people (issue 19)",
        "",
        f"Regenerate: `python experiments/camera_recipes.py` ({datetime.date.today()}, 2 cores, "
        f"{seconds / 60:.0f} minutes, restartable; a recipe's minutes are the training time its "
        "logs record, an adaptation it shares with an earlier recipe counted again).",
        "",
        "configs/orl.yaml with the settings shown (and model.eval_every=100). 'adapt': the "
        "stem and the first level(s) of dlib's ResNet learn to map the x4 and the clean chips "
        "of the fold's 24 training people to the frozen network's embedding of the clean chip "
        "(tripletkit.faces.adapt; 400 steps of 12 x 4 at lr 1e-4 unless shown), the levels above "
        "and the final layer stay pretrained; 'top level: triplet fine-tuning' is make demo's "
        "recipe (level 5 and the final layer, batch-hard, 300 steps at lr 3e-5, one model per "
        "resolution), after the adaptation where both are named. Scored on each fold's 6 "
        "validation people, mean over the 4 folds: x1 = full resolution, x4 = issue 9's low "
        "resolution, clean-x4 = x4 probes against a gallery of the same people's clean chips "
        "(both through the x4 model).",
        "",
        "| recipe | settings | "
        + " | ".join(f"{c} EER | {c} VAL@1e-3" for c in COLUMNS)
        + " | minutes |",
        "|---" * (2 * len(COLUMNS) + 3) + "|",
    ]
    for name, overrides, mean, minutes in rows:
        cells = " | ".join(f"{mean[c][1]:.4f} | {mean[c][0]:.3f}" for c in COLUMNS)
        settings = ", ".join(f"`{o}`" for o in overrides) or "-"
        lines.append(f"| {name} | {settings} | {cells} | {minutes:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
