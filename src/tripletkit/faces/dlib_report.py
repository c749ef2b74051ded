"""The report of a dlib-backbone faces run: the pretrained descriptor against the fine-tuned
one at every resolution, the baselines, bootstrap intervals over people, and the figures."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import legend, save_figure, write_text
from . import metrics
from .bootstrap import fold_mean_interval
from .dlib_run import adapt_folder, variant_folder, variant_suffix
from .models import STOCK_THRESHOLD, load_model
from .protocols import protocol_results, protocol_table, protocol_targets
from .report import FACE_METRICS, fold_value, metrics_table, roc_figure, subplots, training_curves

HEADLINE = [
    ("val_at_far_1e-3", "VAL@1e-3"),
    ("eer", "EER"),
    ("map_at_r", "MAP@R"),
    ("ari", "ARI"),
    ("rank1", "rank-1"),
    ("verification_accuracy", "verif. acc."),
]
# issue 9's targets for the fine-tuned model: (resolution suffix, metric, op, goal)
FINETUNE_TARGETS = [
    ("-lowres", "eer", "<=", 0.015),
    ("-lowres", "val_at_far_1e-3", ">=", 0.93),
    ("-lowres", "map_at_r", ">=", 0.97),
    ("-lowres", "ari", ">=", 0.95),
    ("", "eer", "<=", 0.006),
    ("", "val_at_far_1e-3", ">=", 0.98),
]

DETECTOR_NAMES = {"hog": "dlib's HOG detector", "cnn": "dlib's MMOD CNN detector"}


def finetune_report(
    run: Path,
    cfg: Any,
    data: Any,
    plan: list[Any],
    summary: dict[str, metrics.Summary],
    per_fold: dict[str, list[dict[str, float]]],
    folds: list[dict[str, Any]],
) -> dict[str, metrics.Summary]:
    """``metrics.json``, bootstrap intervals, figures and ``report.md`` of a dlib run.

    The from-scratch row is quoted from ``<runs>/<name>-scratch/metrics.json`` (its
    "tripletkit" method) when that run exists, and the report says so.

    Returns:
        the summary written to ``metrics.json`` (with "scratch" when quoted).
    """
    factors = tuple(cfg.data.lowres)
    suffixes = [variant_suffix(f, factors) for f in factors]
    quoted = _quote_scratch(run, cfg, summary)
    write_json_file(run / "metrics.json", summary)
    intervals = {
        m: fold_mean_interval([(f["embeddings"][m], f["labels"]) for f in folds])
        for m in folds[0]["embeddings"]
    }
    write_json_file(run / "intervals.json", intervals)
    protocols = protocol_results(folds, suffixes)
    write_json_file(run / "protocols.json", protocols)
    for sfx in suffixes:
        methods = [m + sfx for m in ("pretrained", "finetuned", "eigenfaces", "pixels")]
        roc_figure(folds, methods, run / f"roc{sfx}.png")
    _pair_histograms(run, cfg, plan, folds, suffixes)
    logs = [run / f.name / "train_log.jsonl" for f in plan]
    if all(p.is_file() for p in logs):
        training_curves(logs, run / "training.png")
    validation_curves([run / f.name / "val_log.jsonl" for f in plan], run / "validation.png")
    if cfg.adapt.levels:
        validation_curves(
            [adapt_folder(run) / f.name / "val_log.jsonl" for f in plan],
            run / "adaptation.png",
            xlabel="adaptation step",
        )
    text = _finetune_text(
        run, cfg, data, plan, summary, per_fold, intervals, protocols, suffixes, quoted
    )
    write_text(run / "report.md", text)
    return summary


def write_json_file(path: Path, value: Any) -> None:
    """``value`` as indented JSON, atomically."""
    write_text(path, json.dumps(value, indent=2) + "\n")


def _quote_scratch(run: Path, cfg: Any, summary: dict[str, metrics.Summary]) -> Path | None:
    """The from-scratch run's metrics, quoted only when it split the same people into the
    same train / validation / test parts as this run (both ``run.json`` records agree)."""
    scratch = run.parent / f"{cfg.name}-scratch"
    path = scratch / "metrics.json"
    try:
        quoted = json.loads(path.read_text(encoding="utf-8"))["tripletkit"]
        folds = [
            json.loads((r / "run.json").read_text(encoding="utf-8"))["folds"]
            for r in (run, scratch)
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if folds[0] != folds[1]:
        return None
    summary["scratch"] = quoted
    return path


def _pair_histograms(
    run: Path, cfg: Any, plan: list[Any], folds: list[dict[str, Any]], suffixes: list[str]
) -> None:
    """Test-pair distances of the first fold, pretrained against fine-tuned, per resolution,
    with each model's threshold (fine-tuned: calibrated on validation people)."""
    fig, axes = subplots(len(suffixes), 2, figsize=(11, 3.4 * len(suffixes)), squeeze=False)
    fig.set_layout_engine("constrained")  # else an x label runs into the next row's titles
    first = folds[0]
    for row, (sfx, factor) in enumerate(zip(suffixes, cfg.data.lowres, strict=True)):
        folder = variant_folder(run, factor, tuple(cfg.data.lowres)) / plan[0].name
        tuned = load_model(folder)[2]["threshold"]
        for col, (method, threshold) in enumerate(
            (("pretrained", STOCK_THRESHOLD), ("finetuned", tuned))
        ):
            ax = axes[row][col]
            dist = metrics.distance_matrix(first["embeddings"][method + sfx])
            d, same = metrics.all_pairs(dist, first["labels"])
            bins = np.linspace(0, max(float(d.max()), threshold) * 1.02, 60).tolist()
            ax.hist(d[~same], bins=bins, alpha=0.6, density=True, label="different")
            ax.hist(d[same], bins=bins, alpha=0.6, density=True, label="same")
            ax.axvline(threshold, color="k", ls="--", lw=1.2, label=f"threshold {threshold:.3f}")
            ax.set_title(f"{method}{sfx}, {plan[0].name} test pairs", fontsize=9)
            ax.set_xlabel("distance")
            legend(ax, fontsize=7)
    save_figure(fig, run / "distances.png")


def validation_curves(logs: list[Path], path: Path, xlabel: str = "fine-tuning step") -> None:
    """VAL@1e-3 and EER on the validation people against training steps, one line per fold
    and resolution (step 0: the pretrained model); nothing is drawn when no log is found."""
    if not any(log.is_file() for log in logs):
        return
    fig, axes = subplots(1, 2, figsize=(11, 3.6))
    for i, log in enumerate(logs):
        if not log.is_file():
            continue
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        keys = sorted({k.split("/")[0] for r in rows for k in r if "/" in k})
        for j, variant in enumerate(keys):
            for ax, metric in zip(axes, ("val_at_far_1e-3", "eer"), strict=True):
                ax.plot(
                    steps,
                    [r.get(f"{variant}/{metric}", np.nan) for r in rows],
                    color=f"C{j}",
                    alpha=1.0 if i == 0 else 0.35,
                    marker="o",
                    ms=3,
                    label=variant if i == 0 else None,
                )
    axes[0].set_title("VAL@1e-3 on validation people")
    axes[1].set_title("EER on validation people")
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        legend(ax, fontsize=8)
    save_figure(fig, path)


def _trained_text(cfg: Any) -> str:
    """What was trained, for the report's model paragraph."""
    m, t, a = cfg.model, cfg.train, cfg.adapt
    parts = []
    if a.levels:
        triplets = f" plus teacher-anchored triplets (weight {a.triplet:g})" if a.triplet else ""
        parts.append(
            f"its stem and first {a.levels} level(s) first adapted to the run's cameras: the "
            "training people's chips at every resolution, clean ones among them, pulled to the "
            f"frozen network's embedding of the clean chip{triplets} ({a.steps} steps of P x K "
            f"= {a.p} x {a.k}, Adam, learning rate {a.lr:g}; one adapted network per fold, the "
            "levels above and the final layer unchanged)"
        )
    if m.train_levels:
        steps = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs} epochs"
        source = "of every resolution together" if m.mix_resolutions else "of its own resolution"
        mirrors = " and their mirrors" if m.mirror else ""
        parts.append(
            f"its top {m.train_levels} level(s) and final layer trained with the triplet loss "
            f"({cfg.loss.mining} mining, margin {cfg.loss.margin}, curriculum "
            f"{cfg.loss.curriculum}) on the training people's chips {source}{mirrors}: {steps} of "
            f"P x K = {t.p} x {t.k}, {t.optimizer}, learning rate {t.lr} ({t.schedule}); the "
            "frozen levels' output computed once"
        )
    if not parts:
        return "frozen (nothing trained)."
    return "; then ".join(parts) + "."


def _curve_text(run: Path, cfg: Any) -> str:
    """The figures of the training curves that this run drew."""
    out = []
    if cfg.adapt.levels and (run / "adaptation.png").is_file():
        out.append(
            "![adaptation](adaptation.png)\n\nVAL@1e-3 and EER on the validation people during "
            "the camera adaptation (step 0 is the pretrained model; clean-x<f>: probes at factor "
            "f against a clean gallery), one line per fold (the first solid)."
        )
    if (run / "validation.png").is_file():
        out.append(
            "![validation](validation.png)\n\nVAL@1e-3 and EER on the validation people during "
            "fine-tuning (step 0 is the model it started from), one line per fold (the first "
            "solid), one colour per resolution: what the recipe was chosen on."
        )
    if (run / "training.png").is_file():
        out.append(
            "![training](training.png)\n\nThe triplet loss during fine-tuning, the share of "
            "easy / semi-hard / hard triplets and the semi-hard offset of the curriculum."
        )
    return "\n\n".join(out) + "\n"


def _interval_table(intervals: dict[str, dict[str, Any]], order: Sequence[str]) -> str:
    lines = ["| method | VAL@1e-3 95% interval | EER 95% interval |", "|---|---|---|"]
    for m in order:
        if m not in intervals:
            continue
        cells = [
            f"{lo:.3f} - {hi:.3f}" if np.isfinite(lo) else "n/a"
            for lo, hi in (intervals[m]["val_at_far_1e-3"], intervals[m]["eer"])
        ]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _change_table(summary: dict[str, metrics.Summary], suffixes: list[str]) -> str:
    lines = [
        "| resolution | " + " | ".join(label for _, label in HEADLINE[:4]) + " |",
        "|---" * 5 + "|",
    ]
    for sfx in suffixes:
        cells = []
        for key, _ in HEADLINE[:4]:
            a = summary[f"pretrained{sfx}"][key]["mean"]
            b = summary[f"finetuned{sfx}"][key]["mean"]
            cells.append("n/a" if a is None or b is None else f"{a:.3f} -> {b:.3f} ({b - a:+.3f})")
        lines.append(f"| {'full' if not sfx else sfx.lstrip('-')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _finetune_targets(summary: dict[str, metrics.Summary], suffixes: list[str]) -> str:
    lines = []
    for sfx, key, op, goal in FINETUNE_TARGETS:
        if f"finetuned{sfx}" not in summary:
            continue
        value = summary[f"finetuned{sfx}"][key]["mean"]
        frozen = summary[f"pretrained{sfx}"][key]["mean"]
        if value is None or frozen is None:
            continue
        ok = value >= goal if op == ">=" else value <= goal
        better = value > frozen if op == ">=" else value < frozen
        lines.append(
            f"- finetuned{sfx} {key}: {value:.3f} (target {op} {goal}: "
            f"{'met' if ok else 'not met'}; frozen {frozen:.3f}, "
            f"{'better' if better else 'not better'} than frozen)"
        )
    return "\n".join(lines)


def _finetune_text(
    run: Path,
    cfg: Any,
    data: Any,
    plan: list[Any],
    summary: dict[str, metrics.Summary],
    per_fold: dict[str, list[dict[str, float]]],
    intervals: dict[str, dict[str, Any]],
    protocols: dict[str, dict[str, Any]],
    suffixes: list[str],
    quoted: Path | None,
) -> str:
    order = [
        m + sfx
        for sfx in suffixes
        for m in ("pretrained", "finetuned", "eigenfaces", "pixels")
        if m + sfx in summary
    ]
    if quoted is not None:
        order.insert(2, "scratch")
    scratch_note = (
        f"The `scratch` row is quoted from the last from-scratch run, `{quoted}` "
        "(`make demo-scratch`, which `make demo` runs first; configs/orl-scratch.yaml: the same "
        "folds and validation people)."
        if quoted is not None
        else "No from-scratch run with the same folds and validation people was found to quote "
        "(`make demo-scratch` writes one)."
    )
    fold_rows = "\n".join(
        f"| {f.name} | "
        + " | ".join(
            fold_value(per_fold[m][i][k])
            for m in ("finetuned", "finetuned" + suffixes[-1])
            for k, _ in HEADLINE[:4]
        )
        + " |"
        for i, f in enumerate(plan)
    )
    low = suffixes[-1]
    data_name = "ORL / AT&T faces" if cfg.data.source == "orl" else cfg.data.source
    m = cfg.model
    roc_lines = "\n\n".join(f"![ROC{sfx}](roc{sfx}.png)" for sfx in suffixes)
    title = f"{cfg.name}: dlib's pretrained face descriptor, frozen and fine-tuned"
    labels = " | ".join(label for _, label in HEADLINE[:4])
    return f"""# {title} with the triplet loss

**Data**: {data_name}: {len(data.names)} people, {len(data)} images, {len(plan)} folds of
held-out test people (seed {cfg.data.seed}); of each fold's other people, {cfg.data.val_people}
are validation people and the rest train. Every choice (fine-tuning recipe, steps, thresholds)
was made on validation people; the numbers below are on test people, never seen in training or
selection: mean ± std over folds. Resolutions: factors {list(cfg.data.lowres)} (a factor f > 1:
every image shrunk f times with bilinear filtering and enlarged back before detection, the
camera-domain shift of issue 9; methods suffixed `{low}`).

**Models**: `pretrained`: dlib's face recognition ResNet (about 3 million faces), frozen, on
aligned 150 x 150 chips ({DETECTOR_NAMES[cfg.data.detector]} on the image upscaled 2x, the whole
image when no face is found, 5 landmarks). `finetuned`: the same network, {_trained_text(cfg)}
`eigenfaces` and `pixels`: on the {cfg.data.height} x {cfg.data.width} gray images.
{scratch_note}

## Results

{metrics_table(summary, FACE_METRICS, order)}

VAL@1e-3 is decided by the 4 or 5 closest different-person pairs out of 4,500 in each fold, so
it moves in steps of about 0.002 per same-person pair and a few look-alike pairs swing it.
95% bootstrap intervals of the {len(plan)}-fold mean, resampling each fold's test people
(200 draws; a person drawn twice counts as two people, without the pairs between the copies):

{_interval_table(intervals, [o for o in order if o != "scratch"])}

## What fine-tuning changed

Mean over folds, pretrained -> fine-tuned:

{_change_table(summary, suffixes)}

Targets of issue 9 (mean over folds, test people):
{_finetune_targets(summary, suffixes)}

## Same camera and clean gallery

How the models are used: every test photo against every other through the same camera (the
pairs above), and, at a worse camera, people enrolled from their full-resolution photos and
looked up from the worse camera's (`clean gallery`: probe photo i against gallery photo j,
i != j). Means over folds, and the difference fine-tuned minus frozen with its 95% bootstrap
interval over people (200 draws; both models scored on the same resampled people, so the
interval is of the difference itself; `protocols.json`):

{protocol_table(protocols)}

{protocol_targets(protocols)}

Per fold (finetuned, then finetuned{low}: VAL@1e-3, EER, MAP@R, ARI):

| fold | {labels} | {labels} |
|---{"|---" * 8}|
{fold_rows}

## Figures

{roc_lines}

Mean ROC over folds at each resolution; the dotted line is FAR = 1e-3.

![distances](distances.png)

Test-pair distances of {plan[0].name}, pretrained (left, with the stock threshold) and
fine-tuned (right, with the threshold calibrated at FAR {m.far:g} on the validation people).

{_curve_text(run, cfg)}"""
