"""ORL recipes compared on the VALIDATION people of the same 4 identity folds: the choices of
`make demo` (fine-tuning recipe, steps, learning rate, levels) and of `make demo-scratch` are
made here, never on the test people. Each recipe is a shipped config plus overrides; writes
docs/orl_recipes.md, ranked by validation EER.

    python experiments/orl_recipes.py --which dlib      # fine-tuning recipes (configs/orl.yaml)
    python experiments/orl_recipes.py --which scratch   # from-scratch recipes (about 25 min)
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

from tripletkit._io import write_text
from tripletkit.config import load_config
from tripletkit.report import summary_cell
from tripletkit.tasks import faces

DLIB = "configs/orl.yaml"
SCRATCH = "configs/orl-scratch.yaml"
RECIPES: dict[str, dict[str, tuple[str, list[str]]]] = {
    "dlib": {
        "frozen (no fine-tuning)": (DLIB, ["model.train_levels=0"]),
        "level5+fc, lr 1e-5, 100 steps, one model per resolution": (
            DLIB,
            ["model.train_levels=1", "train.lr=1e-5", "train.max_steps=100"],
        ),
        "level5+fc, lr 1e-4, 200 steps, one model per resolution": (
            DLIB,
            ["model.train_levels=1", "train.lr=1e-4", "train.max_steps=200"],
        ),
        "level5+fc, lr 1e-5, 100 steps, both resolutions in one model": (
            DLIB,
            [
                "model.train_levels=1",
                "train.lr=1e-5",
                "train.max_steps=100",
                "model.mix_resolutions=true",
            ],
        ),
        "level5+fc, lr 3e-5, 100 steps, one model per resolution": (
            DLIB,
            ["model.train_levels=1", "train.lr=3e-5", "train.max_steps=100"],
        ),
        "level5+fc, lr 3e-5, 100 steps, batch-hard, one model per resolution": (
            DLIB,
            [
                "model.train_levels=1",
                "train.lr=3e-5",
                "train.max_steps=100",
                "loss.mining=hard",
                "loss.curriculum=none",
            ],
        ),
        "frozen, CNN detector": (DLIB, ["model.train_levels=0", "data.detector=cnn"]),
        "level5+fc, lr 3e-5, 100 steps, CNN detector": (
            DLIB,
            ["data.detector=cnn", "model.train_levels=1", "train.lr=3e-5", "train.max_steps=100"],
        ),
        "level5+fc, lr 3e-5, 100 steps, batch-hard, CNN detector (shipped)": (
            DLIB,
            [
                "data.detector=cnn",
                "model.train_levels=1",
                "train.lr=3e-5",
                "train.max_steps=100",
                "loss.mining=hard",
                "loss.curriculum=none",
            ],
        ),
        "level5+fc, lr 3e-5, 100 steps, margin 0.5, CNN detector": (
            DLIB,
            [
                "data.detector=cnn",
                "model.train_levels=1",
                "train.lr=3e-5",
                "train.max_steps=100",
                "loss.margin=0.5",
            ],
        ),
        "levels 4-5+fc, lr 3e-5, 100 steps, CNN detector": (
            DLIB,
            ["data.detector=cnn", "model.train_levels=2", "train.lr=3e-5", "train.max_steps=100"],
        ),
    },
    "scratch": {
        "average-pooling head, P=10, 120 epochs": (
            SCRATCH,
            ["model.head=avg", "train.p=10", "train.epochs=120"],
        ),
        "spatial head, P=10, 120 epochs": (SCRATCH, ["train.p=10", "train.epochs=120"]),
        "spatial head, P=24, 300 epochs (shipped)": (SCRATCH, ["train.p=24"]),
        "shipped + margin growing 0.2 -> 1.0": (SCRATCH, ["train.p=24", "loss.margin_end=1.0"]),
    },
}
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
    parser.add_argument("--out", default="docs/orl_recipes.md", help="the Markdown table")
    args = parser.parse_args()
    rows = []
    for i, (label, (config, overrides)) in enumerate(RECIPES[args.which].items()):
        cfg = load_config(config, [f"name={args.which}{i}", *overrides])
        run = Path(args.runs) / cfg.name
        start = time.perf_counter()
        faces.train(cfg, run, progress=False)
        minutes = (time.perf_counter() - start) / 60
        summary = faces.validate(run)
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
    base = next(iter(RECIPES[args.which].values()))[0]
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
