"""The lowest levels of dlib's ResNet trained to see through a worse camera, on VALIDATION
people (issue 19): the student's stem and first ``levels`` levels, fed degraded views, are
pulled toward the frozen teacher's feature maps of the clean image at the same depth (pixel-
aligned: each view is cut in the clean photo's box), optionally also toward the teacher's clean
embedding through the frozen upper levels. The recipes named "detected views" cut each view as
the test chips are cut (the CNN detector on the degraded photo) and use the embedding term only,
since such a view is not pixel-aligned with the clean one. The upper levels and the final
layer stay the pretrained ones, so the embedding space is unchanged and nothing is fitted to
the training people's identities: the signal is the same for any face.

Training: each fold's training people (test and validation people are not read), 8 views per
image from the camera family of experiments/teacher_recipes.py (shrink 1-6x, blur, noise, JPEG
10-60). Scored on each fold's 6 validation people, mean over the 4 folds: x4 (issue 9's low
resolution, CNN-detector chips), x1, clean gallery against x4 probe, and one fixed harsher
camera inside the family's range (shrink 4x then JPEG quality 15, ``x4q15``). Writes
docs/faces_lowlevel_distill.md.

    python experiments/lowlevel_distill.py [--steps 400] [--only REGEX]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from teacher_recipes import FAMILY, VIEWS, load_inputs, scores, trunk

from tripletkit._io import write_text
from tripletkit.faces.cameras import CameraFamily
from tripletkit.faces.config import DataConfig
from tripletkit.faces.dlib_resnet import DlibResNet
from tripletkit.faces.finetune import Tail
from tripletkit.faces.models import embed_chips
from tripletkit.faces.pretrained import load_dlib_resnet
from tripletkit.faces.runs import Fold, folds
from tripletkit.faces.views import ViewSettings, load_views

OUT = Path(__file__).resolve().parents[1] / "docs" / "faces_lowlevel_distill.md"
HARSH = CameraFamily(factor=(4.0, 4.0), quality=(15, 15), jpeg_share=1.0)
BATCH = 48


@dataclass(frozen=True)
class Recipe:
    name: str
    levels: int = 1  # the stem and this many levels are trained
    w_feat: float = 1.0  # feature maps at that depth against the teacher's of the clean image
    w_embed: float = 0.0  # the embedding (through the frozen top) against the clean teacher's
    lr: float = 1e-4
    # the training views: "box" (cut in the clean photo's box), "detect" (the CNN detector on
    # each degraded photo, as at test), "x4" (the x4 test camera's own chips, one per image) or
    # "x4+x1" (those and the clean chips, two views per image)
    align: str = "box"

    def __post_init__(self) -> None:
        if self.align != "box" and self.w_feat:
            raise ValueError(f"{self.name}: views cut by detection are not pixel-aligned")


RECIPES = [
    Recipe("stem + level 1, feature maps, lr 1e-4"),
    Recipe("stem + level 1, feature maps, lr 1e-3", lr=1e-3),
    Recipe("stem + levels 1-2, feature maps, lr 1e-4", levels=2),
    Recipe("stem + level 1, feature maps + embedding, lr 1e-4", w_embed=1.0),
    Recipe("stem + levels 1-2, embedding only, lr 1e-4", levels=2, w_feat=0.0, w_embed=1.0),
    Recipe(
        "detected views: stem + level 1, embedding, lr 1e-4",
        w_feat=0.0,
        w_embed=1.0,
        align="detect",
    ),
    Recipe(
        "detected views: stem + level 1, embedding, lr 1e-5",
        w_feat=0.0,
        w_embed=1.0,
        lr=1e-5,
        align="detect",
    ),
    Recipe("x4 chips: stem + level 1, embedding, lr 1e-4", w_feat=0.0, w_embed=1.0, align="x4"),
    Recipe(
        "x4 chips: stem + level 1, embedding, lr 1e-5", w_feat=0.0, w_embed=1.0, lr=1e-5, align="x4"
    ),
    Recipe(
        "x4 and clean chips: stem + level 1, embedding, lr 1e-4",
        w_feat=0.0,
        w_embed=1.0,
        align="x4+x1",
    ),
    Recipe(
        "detected views: stem + levels 1-2, embedding, lr 1e-5",
        levels=2,
        w_feat=0.0,
        w_embed=1.0,
        lr=1e-5,
        align="detect",
    ),
]


def train(
    recipe: Recipe,
    teacher: DlibResNet,
    fold: Fold,
    views: torch.Tensor,
    target_maps: torch.Tensor,
    target_emb: torch.Tensor,
    steps: int,
) -> DlibResNet:
    student = copy.deepcopy(teacher)
    student.requires_grad_(False)
    trained = [student.stem, *student.levels[: recipe.levels]]
    params = [p for m in trained for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=recipe.lr)
    scale = float(target_maps[torch.as_tensor(fold.train)].var())
    train_idx = torch.as_tensor(fold.train)
    gen = torch.Generator().manual_seed(0)
    student.eval()  # dlib's affine layers have no running statistics: eval is train here
    for _ in range(steps):
        idx = train_idx[torch.randint(0, len(train_idx), (BATCH,), generator=gen)]
        pick = torch.randint(0, views.shape[1], (BATCH,), generator=gen)
        maps = student.trunk(views[idx, pick].float(), levels=recipe.levels)
        loss = torch.zeros(())
        if recipe.w_feat:
            loss = loss + recipe.w_feat * ((maps - target_maps[idx]) ** 2).mean() / scale
        if recipe.w_embed:
            emb = student.tail(maps, recipe.levels)
            loss = loss + recipe.w_embed * ((emb - target_emb[idx]) ** 2).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return student


def fold_scores(
    student: DlibResNet,
    teacher: DlibResNet,
    levels: int,
    fold: Fold,
    images: dict[str, torch.Tensor],
    labels: torch.Tensor,
) -> dict:
    val = torch.as_tensor(fold.val)
    y = labels[val].numpy()
    tail = Tail(teacher, levels)
    maps = {k: trunk(student, v[val], levels) for k, v in images.items()}
    out = scores(tail, maps["x4"], maps["x1"], y)
    harsh = scores(tail, maps["x4q15"], maps["x1"], y)
    out["x4q15"], out["clean-x4q15"] = harsh["x4"], harsh["clean-x4"]
    # the same camera on the fold's TRAINING people: how much of a change is fitted to them
    train = torch.as_tensor(fold.train)
    seen = {k: trunk(student, images[k][train], levels) for k in ("x4", "x1")}
    out["train-x4"] = scores(tail, seen["x4"], seen["x1"], labels[train].numpy())["x4"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--only", default="", help="run the recipes whose name matches this regex")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(2)
    began = time.time()
    clean, low, box_views = load_inputs()
    chosen = [r for r in RECIPES if re.search(args.only, r.name)]
    views = {
        "box": box_views.chips,
        "x4": low.images[:, None],
        "x4+x1": torch.stack([low.images, clean.images], 1),  # a clean view's target: itself
    }
    if any(r.align == "detect" for r in chosen):
        settings = ViewSettings(FAMILY, VIEWS, seed=0, detector="cnn", align="detect")
        detected = load_views("orl", settings)
        if detected.paths != clean.paths:
            raise ValueError("the detected views and the clean chips hold other images")
        views["detect"] = detected.chips
    harsh = load_views("orl", ViewSettings(HARSH, 1, seed=1, detector="cnn"))
    if harsh.paths != clean.paths:
        raise ValueError("the x4q15 views and the clean chips hold other images")
    images = {"x1": clean.images, "x4": low.images, "x4q15": harsh.chips[:, 0]}
    teacher = load_dlib_resnet().eval()
    teacher.requires_grad_(False)
    target_emb = torch.from_numpy(embed_chips(teacher, clean.images))
    plan = folds(DataConfig(val_people=6, folds=4, seed=0), clean)
    targets: dict[int, torch.Tensor] = {}
    rows: list[tuple[str, dict, float]] = []
    for recipe in [Recipe("frozen (the pretrained descriptor)"), *chosen]:
        if recipe.levels not in targets:
            targets[recipe.levels] = trunk(teacher, clean.images, recipe.levels)
        started = time.time()
        per_fold = []
        for fold in plan:
            if recipe.name.startswith("frozen"):
                student = teacher
            else:
                student = train(
                    recipe,
                    teacher,
                    fold,
                    views[recipe.align],
                    targets[recipe.levels],
                    target_emb,
                    args.steps,
                )
            per_fold.append(
                fold_scores(student, teacher, recipe.levels, fold, images, clean.labels)
            )
        mean = {
            k: tuple(float(np.mean([f[k][i] for f in per_fold])) for i in range(2))
            for k in per_fold[0]
        }
        minutes = (time.time() - started) / 60
        rows.append((recipe.name, mean, minutes))
        print(recipe.name, mean, f"{minutes:.1f} min", flush=True)
        # after every recipe: a stopped run keeps the rows it finished
        write_text(args.out, report(rows, args.steps, time.time() - began))


COLUMNS = ("x4", "x1", "clean-x4", "x4q15", "clean-x4q15", "train-x4")


def report(rows: list[tuple[str, dict, float]], steps: int, seconds: float) -> str:
    lines = [
        "# The lowest levels trained to see through a worse camera (issue 19)",
        "",
        f"Regenerate: `python experiments/lowlevel_distill.py --steps {steps}` "
        f"({datetime.date.today()}, 2 cores, {seconds / 60:.0f} minutes).",
        "",
        f"The student's stem and first level(s) take a degraded view ({VIEWS} per ORL image from "
        "the camera family shrink 1-6x, blur 0.3-1.5 (30%), noise 2-8 (30%), JPEG 10-60 (50%), "
        "cut in the clean photo's box, or, for the recipes named 'detected views', with dlib's CNN "
        "detector run on each degraded photo as at test time) and are pulled toward the frozen "
        "teacher's feature maps of the clean image at the same depth (mean squared error over "
        "the maps' variance), and/or "
        "toward the teacher's clean embedding through the frozen upper levels. The upper levels "
        f"and the final layer stay the pretrained ones. {steps} steps of {BATCH} views from each "
        "fold's training people, Adam. Scored on the 4 folds' 6 validation people each (mean; "
        "EER / VAL@1e-3): x4 = issue 9's low resolution (CNN-detector chips), clean-x4 = clean "
        "gallery against x4 probe, x4q15 = shrink 4x then JPEG quality 15 (a fixed camera inside "
        "the family's range, cut in the clean photo's box); train-x4 = x4 among the fold's "
        "training people, what the student was fitted to. 'x4 chips' recipes train on the x4 "
        "camera's own chips of the training people (one view per image); 'x4 and clean chips' "
        "on those and the clean chips (two views per image, a clean one pulled to itself).",
        "",
        "| recipe | " + " | ".join(f"{c} EER | {c} VAL@1e-3" for c in COLUMNS) + " | minutes |",
        "|---" * (2 * len(COLUMNS) + 2) + "|",
    ]
    for name, mean, minutes in rows:
        cells = " | ".join(f"{mean[c][1]:.4f} | {mean[c][0]:.3f}" for c in COLUMNS)
        lines.append(f"| {name} | {cells} | {minutes:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
