"""Figures (matplotlib, PNG) and the Markdown report of a run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.manifold import TSNE

from .._io import legend, save_figure, write_text
from . import metrics
from .models import load_model

FACE_METRICS = [
    ("verification_accuracy", "verif. acc."),
    ("val_at_far_1e-3", "VAL@1e-3"),
    ("val_at_far_1e-2", "VAL@1e-2"),
    ("roc_auc", "ROC AUC"),
    ("eer", "EER"),
    ("rank1", "rank-1"),
    ("rank5", "rank-5"),
    ("map_at_r", "MAP@R"),
    ("nmi", "NMI"),
    ("ari", "ARI"),
    ("purity", "purity"),
    ("ari_unknown_k", "ARI (k unknown)"),
]
FACE_TARGETS = {
    "val_at_far_1e-3": (">=", 0.90),
    "eer": ("<=", 0.03),
    "map_at_r": (">=", 0.95),
    "ari": (">=", 0.90),
}


def subplots(
    rows: int, cols: int, figsize: tuple[float, float], **kwargs: Any
) -> tuple[Figure, Any]:
    """A figure and its axes, without pyplot's global state."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, **kwargs)


def metrics_table(
    summary: dict[str, metrics.Summary],
    columns: Sequence[tuple[str, str]],
    order: Sequence[str],
) -> str:
    """Markdown table: one row per method, mean +- std per metric over the folds that define it;
    "(n of m folds)" when some fold does not, "n/a" when none does, "-" when not computed."""
    cols = [(k, label) for k, label in columns if any(k in summary[m] for m in order)]
    lines = [
        "| method | " + " | ".join(label for _, label in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for m in order:
        cells = [summary_cell(summary[m].get(k)) for k, _ in cols]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_cell(entry: dict[str, float | int | None] | None) -> str:
    """One metric's cell: "0.812 ± 0.010", "0.812 ± 0.010 (2 of 3 folds)", "n/a" or "-"."""
    if entry is None:
        return "-"
    mean, std = entry.get("mean"), entry.get("std")
    if mean is None or std is None:
        return "n/a"
    cell = f"{mean:.3f} ± {std:.3f}"
    missing = int(entry.get("missing") or 0)
    if missing:
        counted = int(entry.get("folds") or 0)
        cell += f" ({counted} of {counted + missing} folds)"
    return cell


def fold_value(v: float) -> str:
    """A per-fold value, "n/a" when undefined (NaN)."""
    return f"{v:.3f}" if np.isfinite(v) else "n/a"


def roc_figure(folds: list[dict[str, Any]], methods: Sequence[str], path: Path) -> None:
    """Mean ROC over folds (vertical averaging), false accept rate on a log axis."""
    grid = np.logspace(-4, 0, 200)
    fig, ax = subplots(1, 1, figsize=(6, 4.5))
    for m in methods:
        curves = []
        for fold in folds:
            d, same = metrics.all_pairs(
                metrics.distance_matrix(fold["embeddings"][m]), fold["labels"]
            )
            fpr, tpr = metrics.roc_points(d, same)
            if np.isfinite(fpr[0]) and np.isfinite(tpr[0]):  # both kinds of pairs
                curves.append(np.interp(grid, fpr, tpr))
        if curves:
            ax.plot(grid, np.mean(curves, 0), label=m, lw=2 if m == "tripletkit" else 1.2)
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate (different people accepted)")
    ax.set_ylabel("validation rate (same person accepted)")
    ax.set_title("Verification on held-out identities (mean over folds)")
    ax.axvline(1e-3, color="grey", ls=":", lw=1)
    legend(ax, fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def distance_histogram(
    dist: np.ndarray, labels: np.ndarray, threshold: float, path: Path, title: str
) -> None:
    """Same-person vs different-person distances, with the decision threshold."""
    d, same = metrics.all_pairs(dist, labels)
    fig, ax = subplots(1, 1, figsize=(6, 3.8))
    bins = np.linspace(0, max(d.max(), threshold) * 1.02, 60).tolist()
    ax.hist(d[~same], bins=bins, alpha=0.6, density=True, label=f"different ({(~same).sum()})")
    ax.hist(d[same], bins=bins, alpha=0.6, density=True, label=f"same ({same.sum()})")
    ax.axvline(threshold, color="k", ls="--", lw=1.2, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("Euclidean distance between embeddings")
    ax.set_ylabel("density")
    ax.set_title(title)
    legend(ax, fontsize=8)
    save_figure(fig, path)


def embedding_map(embeddings: dict[str, np.ndarray], labels: np.ndarray, path: Path) -> None:
    """t-SNE maps side by side, coloured by identity."""
    fig, axes = subplots(1, len(embeddings), figsize=(4.2 * len(embeddings), 4))
    axes = np.atleast_1d(axes)
    for ax, (name, emb) in zip(axes, embeddings.items(), strict=True):
        xy = TSNE(
            n_components=2, perplexity=min(15, len(emb) - 1), random_state=0, init="pca"
        ).fit_transform(emb)
        people = np.unique(labels, return_inverse=True)[1]
        ax.scatter(
            xy[:, 0], xy[:, 1], c=people, cmap="tab10" if people.max() < 10 else "tab20", s=18
        )
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Test identities (t-SNE of the embeddings; colour = person)")
    save_figure(fig, path)


def training_curves(logs: list[Path], path: Path) -> None:
    """Loss, triplet-type fractions and the curriculum offset per step, one line per fold."""
    fig, axes = subplots(1, 3, figsize=(14, 3.6))
    for i, log in enumerate(logs):
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        if not rows:
            continue
        step = np.array([r["step"] for r in rows])
        alpha = 1.0 if i == 0 else 0.35
        axes[0].plot(step, _smooth([r["loss"] for r in rows]), color="C0", alpha=alpha)
        for j, key in enumerate(("easy_fraction", "semihard_fraction", "hard_fraction")):
            axes[1].plot(
                step,
                _smooth([r[key] for r in rows]),
                color=f"C{j + 1}",
                alpha=alpha,
                label=key.split("_")[0] if i == 0 else None,
            )
        axes[2].plot(step, [r["offset"] for r in rows], color="C4", alpha=alpha)
    axes[0].set_title("loss (smoothed)")
    axes[1].set_title("share of valid triplets in the batch")
    legend(axes[1], fontsize=8)
    axes[2].set_title("semi-hard offset t (curriculum)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def cluster_montage(
    images: np.ndarray,
    clusters: np.ndarray,
    path: Path,
    people: Sequence[str] | None = None,
    per_row: int = 12,
) -> None:
    """Faces grouped by predicted cluster, one row per cluster (largest first, at most
    ``per_row`` faces shown); with ``people`` (each image's identity) the row title names them."""
    ids = sorted(np.unique(clusters).tolist(), key=lambda c: -int((clusters == c).sum()))
    fig, axes = subplots(len(ids), per_row, figsize=(per_row * 0.8, len(ids) * 1.15), squeeze=False)
    for r, c in enumerate(ids):
        members = np.flatnonzero(clusters == c)
        for col in range(per_row):
            ax = axes[r, col]
            ax.axis("off")
            if col < len(members):
                img = images[members[col]]
                ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray")
        title = f"cluster {r}: {len(members)} faces"
        if people is not None:
            names = sorted({people[int(i)] for i in members})
            title += f" of {', '.join(names)}"
        axes[r, 0].set_title(title, fontsize=7, loc="left", pad=2)
    fig.suptitle("Faces grouped by predicted cluster", fontsize=9)
    fig.subplots_adjust(hspace=0.45)
    save_figure(fig, path)


def _smooth(values: Sequence[float], width: int = 25) -> np.ndarray:
    """Trailing mean over the last ``width`` values (fewer at the start, so the first steps
    show their own values rather than a flat line)."""
    v = np.asarray(values, dtype=float)
    total = np.concatenate([[0.0], np.cumsum(v)])
    end = np.arange(1, len(v) + 1)
    start = np.maximum(0, end - width)
    return (total[end] - total[start]) / (end - start)


def _target_lines(main: metrics.Summary) -> str:
    """One Markdown line per target of :data:`FACE_TARGETS`: the mean, and met or not."""
    lines = []
    for key, (op, goal) in FACE_TARGETS.items():
        entry = main[key]
        value = entry["mean"]
        if value is None:
            lines.append(f"- {key}: n/a, undefined on every fold (target {op} {goal}: not met)")
            continue
        ok = value >= goal if op == ">=" else value <= goal
        missing = int(entry.get("missing") or 0)
        over = (
            f" over {entry['folds']} of {int(entry['folds'] or 0) + missing} folds"
            if missing
            else ""
        )
        lines.append(
            f"- {key}: {value:.3f}{over} (target {op} {goal}: {'met' if ok else 'not met'})"
        )
    return "\n".join(lines)


def faces_report(
    run: Path,
    cfg: Any,
    data: Any,
    plan: list[Any],
    summary: dict[str, metrics.Summary],
    per_fold: dict[str, list[dict[str, float]]],
    folds: list[dict[str, Any]],
) -> Path:
    """Figures and ``report.md`` of a faces run."""
    order = ["tripletkit", *cfg.ablation, "eigenfaces", "pixels", "untrained"]
    order = [m for m in order if m in summary]
    roc_figure(folds, order, run / "roc.png")
    first = folds[0]
    _, _, thresholds = load_model(run / plan[0].name)
    threshold = thresholds["threshold"]
    dist = metrics.distance_matrix(first["embeddings"]["tripletkit"])
    distance_histogram(
        dist,
        first["labels"],
        threshold,
        run / "distances.png",
        f"tripletkit, {plan[0].name} test pairs",
    )
    embedding_map(
        {m: first["embeddings"][m] for m in ("tripletkit", "eigenfaces", "untrained")},
        first["labels"],
        run / "map.png",
    )
    training_curves([run / f.name / "train_log.jsonl" for f in plan], run / "training.png")
    clusters = metrics.agglomerative(dist, threshold=thresholds["cluster_threshold"])
    names = [data.names[i] for i in first["labels"]]
    cluster_montage(data.images[plan[0].test].numpy(), clusters, run / "clusters.png", names)

    target_lines = _target_lines(summary["tripletkit"])
    fold_rows = "\n".join(
        f"| {f.name} | " + " | ".join(fold_value(row[k]) for k, _ in FACE_METRICS) + " |"
        for f, row in zip(plan, per_fold["tripletkit"], strict=True)
    )
    data_name = (
        "ORL / AT&T faces (40 people x 10 images)" if cfg.data.source == "orl" else cfg.data.source
    )
    header = " | ".join(label for _, label in FACE_METRICS)
    text = f"""# {cfg.name}: face embeddings with the triplet loss

**Data**: {data_name}: {len(data.names)} people, {len(data)} images at {cfg.data.height} x \
{cfg.data.width}, split into {len(plan)} fold(s) of held-out people (seed {cfg.data.seed}).
Every number below is on people never seen in training: mean ± std over folds. A metric that is
undefined on a fold (EER without two images of one person, ...) is left out of that mean, and
its cell says over how many folds it is ("n/a": none).

**Model**: residual CNN, stages {list(cfg.model.stages)}, {cfg.model.head} head,
{cfg.model.dim}-d L2-normalised output. **Loss**: {cfg.loss.mining} mining, margin
{cfg.loss.margin}, {cfg.loss.distance} distance, curriculum {cfg.loss.curriculum}.
**Training**: {cfg.train.epochs} epochs of P x K = {cfg.train.p} x {cfg.train.k} batches,
{cfg.train.optimizer}, learning rate {cfg.train.lr} ({cfg.train.schedule}).

## Results

{metrics_table(summary, FACE_METRICS, order)}

- Verification accuracy: balanced pairs (every same-person pair and as many seeded
  different-person pairs), threshold by 10-fold cross-validation (the LFW protocol).
- VAL@FAR, ROC AUC, EER: over all pairs of test images. VAL@1e-3 is the share of same-person
  pairs accepted when at most 0.1% of different-person pairs are; with 10 test people that is
  4 or 5 pairs out of 4,500, so a few look-alike pairs decide it and it swings between folds.
- Rank-k and MAP@R: leave-one-out nearest neighbours among the test images.
- NMI, ARI, purity: average-linkage agglomerative clustering with the number of people known;
  "ARI (k unknown)": with a distance threshold chosen on the training people.

Targets for tripletkit (mean over folds):
{target_lines}

Per fold (tripletkit):

| fold | {header} |
|---{"|---" * len(FACE_METRICS)}|
{fold_rows}

## Figures

![ROC](roc.png)

Mean ROC over folds: the share of same-person pairs accepted against the share of
different-person pairs accepted (log scale); the dotted line is FAR = 1e-3.

![distances](distances.png)

Distances between test images of {plan[0].name}, with the verification threshold the model chose
on its training people. Where same-person distances reach past the threshold, the embedding
separates new people less well than the people it was trained on.

![map](map.png)

t-SNE of the test embeddings of {plan[0].name}, one colour per person.

![training](training.png)

Training, one line per fold (the first one solid): the loss, the share of easy / semi-hard /
hard triplets among all valid triplets of each batch, and the semi-hard offset t of the
curriculum. Once every training triplet is easy the hinge loss has no gradient left.

![clusters](clusters.png)

The test faces of {plan[0].name} grouped by agglomerative clustering with the number of people
unknown (threshold from the training people).
"""
    return write_text(run / "report.md", text)
