"""ORL recipes compared on the VALIDATION people of the same 4 identity folds: the choices of
`make demo` (fine-tuning recipe, steps, learning rate, levels) and of `make demo-scratch` are
made here, never on the test people. Each recipe is a shipped config plus overrides; writes
docs/orl_recipes.md (dlib) or docs/orl_recipes_scratch.md, ranked by validation EER. A
finished row (its run's recipe.json and validation.json) whose run was trained with the same
settings is reused, so a rerun trains only new or changed rows.

    python experiments/orl_recipes.py --which dlib      # fine-tuning recipes (configs/orl.yaml)
    python experiments/orl_recipes.py --which scratch   # from-scratch recipes (about 25 min)
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

from tripletkit._io import write_text
from tripletkit.cli.settings import load_config
from tripletkit.faces import experiment as faces
from tripletkit.faces.report import summary_cell
from tripletkit.faces.runs import shaping_settings

DLIB = "configs/orl.yaml"
SCRATCH = "configs/orl-scratch.yaml"


def dlib_row(
    detector: str, levels: int, lr: str, steps: int, mining: str, *extra: str
) -> tuple[str, list[str]]:
    """A fine-tuning recipe with every setting that differed between rows spelt out, so a row
    means the same run whatever configs/orl.yaml says today."""
    curriculum = "default" if mining == "semi-hard" else "none"
    return DLIB, [
        f"data.detector={detector}",
        f"model.train_levels={levels}",
        f"train.lr={lr}",
        f"train.max_steps={steps}",
        f"loss.mining={mining}",
        f"loss.curriculum={curriculum}",
        *extra,
    ]


RECIPES: dict[str, dict[str, tuple[str, list[str]]]] = {
    "dlib": {  # new rows go last: a row's index names its run folder
        "frozen, HOG detector": dlib_row("hog", 0, "3e-5", 100, "semi-hard"),
        "level5+fc, lr 1e-5, 100 steps, HOG detector": dlib_row("hog", 1, "1e-5", 100, "semi-hard"),
        "level5+fc, lr 1e-4, 200 steps, HOG detector": dlib_row("hog", 1, "1e-4", 200, "semi-hard"),
        "level5+fc, lr 1e-5, 100 steps, both resolutions, HOG detector": dlib_row(
            "hog", 1, "1e-5", 100, "semi-hard", "model.mix_resolutions=true"
        ),
        "level5+fc, lr 3e-5, 100 steps, HOG detector": dlib_row("hog", 1, "3e-5", 100, "semi-hard"),
        "level5+fc, lr 3e-5, 100 steps, batch-hard, HOG detector": dlib_row(
            "hog", 1, "3e-5", 100, "hard"
        ),
        "frozen, CNN detector": dlib_row("cnn", 0, "3e-5", 100, "semi-hard"),
        "level5+fc, lr 3e-5, 100 steps, CNN detector": dlib_row("cnn", 1, "3e-5", 100, "semi-hard"),
        "level5+fc, lr 3e-5, 100 steps, batch-hard, CNN detector": dlib_row(
            "cnn", 1, "3e-5", 100, "hard"
        ),
        "level5+fc, lr 3e-5, 100 steps, margin 0.5, CNN detector": dlib_row(
            "cnn", 1, "3e-5", 100, "semi-hard", "loss.margin=0.5"
        ),
        "levels 4-5+fc, lr 3e-5, 100 steps, CNN detector": dlib_row(
            "cnn", 2, "3e-5", 100, "semi-hard"
        ),
        "level5+fc, lr 1e-4, 100 steps, batch-hard, CNN detector": dlib_row(
            "cnn", 1, "1e-4", 100, "hard"
        ),
        "level5+fc, lr 3e-5, 300 steps, batch-hard, CNN detector": dlib_row(
            "cnn", 1, "3e-5", 300, "hard"
        ),
        "levels 4-5+fc, lr 1e-5, 100 steps, batch-hard, CNN detector": dlib_row(
            "cnn", 2, "1e-5", 100, "hard"
        ),
        "level5+fc, lr 3e-5, 100 steps, batch-hard, both resolutions, CNN detector": dlib_row(
            "cnn", 1, "3e-5", 100, "hard", "model.mix_resolutions=true"
        ),
        "levels 3-5+fc, lr 1e-5, 100 steps, batch-hard, CNN detector": dlib_row(
            "cnn", 3, "1e-5", 100, "hard"
        ),
        "level5+fc, lr 3e-5, 600 steps, batch-hard, CNN detector": dlib_row(
            "cnn", 1, "3e-5", 600, "hard"
        ),
        "level5+fc, lr 3e-5, 300 steps, batch-hard, both resolutions, CNN detector": dlib_row(
            "cnn", 1, "3e-5", 300, "hard", "model.mix_resolutions=true"
        ),
    },
    "scratch": {
        "average-pooling head, P=10, 120 epochs": (
            SCRATCH,
            ["model.head=avg", "train.p=10", "train.epochs=120", "loss.margin_end=null"],
        ),
        "spatial head, P=10, 120 epochs": (
            SCRATCH,
            ["model.head=flatten", "train.p=10", "train.epochs=120", "loss.margin_end=null"],
        ),
        "spatial head, P=24, 300 epochs": (
            SCRATCH,
            ["model.head=flatten", "train.p=24", "train.epochs=300", "loss.margin_end=null"],
        ),
        "spatial head, P=24, 300 epochs, margin growing 0.2 -> 1.0": (
            SCRATCH,
            ["model.head=flatten", "train.p=24", "train.epochs=300", "loss.margin_end=1.0"],
        ),
    },
}
OUT_SCRATCH = "docs/orl_recipes_scratch.md"
SCORES = "validation.json"
MINUTES = "recipe.json"  # a row's training minutes, written when it finishes
COLUMNS = [
    ("val_at_far_1e-3", "VAL@1e-3"),
    ("eer", "EER"),
    ("map_at_r", "MAP@R"),
    ("ari", "ARI"),
]


def model_methods(summary: dict) -> list[str]:
    """The trained model's methods: "tripletkit" (scratch) or "finetuned..." (dlib)."""
    return [m for m in summary if m == "tripletkit" or m.startswith("finetuned")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--which", choices=sorted(RECIPES), default="dlib")
    parser.add_argument("--runs", default="runs/recipes", help="where the runs go")
    parser.add_argument(
        "--out", help="the Markdown table (default docs/orl_recipes.md, or _scratch.md)"
    )
    args = parser.parse_args()
    args.out = args.out or ("docs/orl_recipes.md" if args.which == "dlib" else OUT_SCRATCH)
    rows = []
    recipes = RECIPES[args.which]
    shipped = {c: shaping_settings(load_config(c)) for c, _ in recipes.values()}
    for i, (label, (config, overrides)) in enumerate(recipes.items()):
        cfg = load_config(config, [f"name={args.which}{i}", *overrides])
        run = Path(args.runs) / cfg.name
        timing = run / MINUTES
        kept = json.loads(timing.read_text()) if timing.is_file() else {}
        if not kept or shaping_settings(load_config(run / "config.yaml")) != shaping_settings(cfg):
            for stale in (timing, run / SCORES):  # a finished row trained with the same
                stale.unlink(missing_ok=True)  # settings is kept; new or changed rows train
            start = time.perf_counter()
            faces.train(cfg, run, progress=False)
            kept = {"minutes": (time.perf_counter() - start) / 60}
            write_text(timing, json.dumps(kept) + "\n")
        minutes = kept["minutes"]
        scores = run / SCORES  # written by faces.validate; kept with the row it scores
        summary = json.loads(scores.read_text()) if scores.is_file() else faces.validate(run)
        if shaping_settings(cfg) == shipped[config]:  # names and threads aside
            label += " (shipped)"
        methods = model_methods(summary)
        eer = sum(summary[m]["eer"]["mean"] or 1.0 for m in methods) / len(methods)
        for m in methods:
            cells = [summary_cell(summary[m].get(k)) for k, _ in COLUMNS]
            rows.append(
                (
                    eer,
                    f"| {label} | {m} | `{' '.join(overrides) or '-'}` | "
                    + " | ".join(cells)
                    + f" | {minutes:.1f} |",
                )
            )
            print(rows[-1][1], flush=True)
    rows.sort(key=lambda row: row[0])
    base = next(iter(recipes.values()))[0]
    text = "\n".join(
        [
            f"# ORL recipes ({args.which}) on the validation people of the same folds",
            "",
            f"Regenerate: `python experiments/orl_recipes.py --which {args.which}` "
            f"({datetime.date.today()}). Each row: {base} "
            "plus the overrides, trained on the training people of each of the 4 folds and "
            "scored on that fold's validation people (mean ± std over folds), never on its "
            "test people. Rows are ranked by the validation EER (averaged over the model's "
            "resolutions); the shipped config is the best row. Minutes: training, all folds, "
            "on 2 shared cores.",
            "",
            "| recipe | model | overrides | "
            + " | ".join(label for _, label in COLUMNS)
            + " | minutes |",
            "|---|---|---|" + "---|" * (len(COLUMNS) + 1),
            *[row for _, row in rows],
            "",
        ]
    )
    write_text(args.out, text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
