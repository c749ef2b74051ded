"""ORL recipes compared on the same 4 identity folds: what moved held-out performance and what
did not. Each recipe is configs/orl.yaml plus overrides; writes docs/orl_recipes.md.

    python experiments/orl_recipes.py            # about 25 minutes on 2 cores
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

RECIPES = {
    "average-pooling head, P=10, 120 epochs": ["model.head=avg", "train.p=10", "train.epochs=120"],
    "spatial head, P=10, 120 epochs": ["train.p=10", "train.epochs=120"],
    "spatial head, P=30, 300 epochs (shipped)": [],
    "shipped + soft margin": ["loss.soft=true"],
    "shipped + margin growing 0.2 -> 1.0": ["loss.margin_end=1.0"],
    "shipped + wider CNN (32-256 channels)": ["model.stages=[32, 64, 128, 256]"],
}
COLUMNS = [
    ("val_at_far_1e-3", "VAL@1e-3"),
    ("eer", "EER"),
    ("map_at_r", "MAP@R"),
    ("ari", "ARI"),
    ("verification_accuracy", "verif. acc."),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/recipes", help="where the runs go")
    parser.add_argument("--out", default="docs/orl_recipes.md", help="the Markdown table")
    args = parser.parse_args()
    rows = []
    for i, (label, overrides) in enumerate(RECIPES.items()):
        cfg = load_config("configs/orl.yaml", [f"name=recipe{i}", *overrides])
        run = Path(args.runs) / cfg.name
        start = time.perf_counter()
        faces.train(cfg, run, progress=False)
        minutes = (time.perf_counter() - start) / 60
        summary = faces.evaluate(run, progress=False)["tripletkit"]
        cells = [summary_cell(summary.get(k)) for k, _ in COLUMNS]
        rows.append(
            f"| {label} | `{' '.join(overrides) or '-'}` | "
            + " | ".join(cells)
            + f" | {minutes:.1f} |"
        )
        print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# ORL recipes on the same folds",
            "",
            f"Regenerate: `python experiments/orl_recipes.py` ({datetime.date.today()}). Each row: "
            "configs/orl.yaml plus the overrides, trained on 30 people and evaluated on the 10 "
            "held-out people of each of the 4 folds (mean ± std over folds); training minutes for "
            "all 4 folds on 2 cores.",
            "",
            "| recipe | overrides | " + " | ".join(label for _, label in COLUMNS) + " | minutes |",
            "|---|---|" + "---|" * (len(COLUMNS) + 1),
            *rows,
            "",
        ]
    )
    write_text(args.out, text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
