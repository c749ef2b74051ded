"""How a dlib run is used at each camera, and what fine-tuning changed there.

Two protocols per resolution of a run: "same camera", every test photo against every other
through the same camera (the main table's pairs), and, at a worse camera when the run also
holds full resolution, "clean gallery": people enrolled from their full-resolution photos and
looked up from the worse camera's (probe i against gallery j, i != j). For each, the frozen
and the fine-tuned model's scores over folds, and the paired difference fine-tuned minus
frozen with a bootstrap interval over people (:func:`~tripletkit.faces.bootstrap.paired_difference`:
both models scored on the same resampled people).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import metrics
from .bootstrap import paired_difference

SAME, GALLERY = "same camera", "clean gallery"
MODELS = ("pretrained", "finetuned")


def _distances(fold: dict[str, Any], method: str, protocol: str) -> np.ndarray:
    probe = fold["embeddings"][method]
    if protocol == GALLERY:
        return metrics.cross_distance(probe, fold["galleries"][method])
    return metrics.distance_matrix(probe)


def _scores(dist: np.ndarray, labels: np.ndarray, protocol: str) -> dict[str, float]:
    pairs = metrics.cross_pairs if protocol == GALLERY else metrics.all_pairs
    d, same = pairs(dist, labels)
    found = metrics.identification(dist, labels, ks=(1,))
    return {
        "val_at_far_1e-3": metrics.val_at_far(d, same, 1e-3),
        "eer": metrics.equal_error_rate(d, same),
        "rank1": found["rank1"],
        "map_at_r": found["map_at_r"],
    }


def protocol_results(
    folds: list[dict[str, Any]], suffixes: list[str], *, draws: int = 200
) -> dict[str, dict[str, Any]]:
    """Per resolution suffix and protocol: each model's summary over folds and the paired
    difference fine-tuned minus frozen.

    Args:
        folds: per fold, {"embeddings": method -> test embeddings, "galleries": method ->
            the same people's full-resolution embeddings by that method, "labels"}.
        suffixes: the run's resolution suffixes ("" full resolution, "-lowres", ...).

    Returns:
        "<suffix> <protocol>" -> {"suffix", "protocol", "pretrained": Summary, "finetuned":
        Summary, "difference": metric -> {"difference", "low", "high"}}; a protocol without
        galleries is left out.
    """
    out: dict[str, dict[str, Any]] = {}
    for sfx in suffixes:
        for protocol in (SAME, GALLERY):
            methods = [m + sfx for m in MODELS]
            if protocol == GALLERY and not all(
                m in f.get("galleries", {}) for f in folds for m in methods
            ):
                continue
            dists = [{m: _distances(f, m, protocol) for m in methods} for f in folds]
            entry: dict[str, Any] = {"suffix": sfx, "protocol": protocol}
            for model, m in zip(MODELS, methods, strict=True):
                entry[model] = metrics.summarise_folds(
                    [
                        _scores(d[m], f["labels"], protocol)
                        for d, f in zip(dists, folds, strict=True)
                    ]
                )
            entry["difference"] = paired_difference(
                [
                    (d[methods[0]], d[methods[1]], f["labels"])
                    for d, f in zip(dists, folds, strict=True)
                ],
                cross=protocol == GALLERY,
                draws=draws,
            )
            out[f"{sfx.lstrip('-') or 'full'} {protocol}"] = entry
    return out


def _mean(summary: metrics.Summary, key: str) -> float:
    value = summary[key]["mean"]
    return math.nan if value is None else float(value)


def protocol_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: per resolution and protocol, frozen and fine-tuned EER, VAL@1e-3 and rank-1
    (means over folds) and the paired differences with their 95% intervals."""
    lines = [
        "| resolution | protocol | EER frozen -> fine-tuned | difference [95%] "
        "| VAL@1e-3 frozen -> fine-tuned | difference [95%] | rank-1 frozen -> fine-tuned |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in results.values():
        a, b, diff = entry["pretrained"], entry["finetuned"], entry["difference"]
        cells = []
        for key in ("eer", "val_at_far_1e-3"):
            d = diff[key]
            cells.append(f"{_mean(a, key):.4f} -> {_mean(b, key):.4f}")
            cells.append(f"{d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]")
        cells.append(f"{_mean(a, 'rank1'):.3f} -> {_mean(b, 'rank1'):.3f}")
        resolution = entry["suffix"].lstrip("-") or "full"
        lines.append(f"| {resolution} | {entry['protocol']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def protocol_targets(results: dict[str, dict[str, Any]]) -> str:
    """Issue 19's protocol targets, met or not: at a worse camera the fine-tuned EER at most half
    the frozen one in the clean-gallery protocol, and the interval of the same-camera EER
    difference excluding 0 on the side of fine-tuning."""
    lines = []
    for name, entry in results.items():
        if not entry["suffix"]:
            continue
        a, b = _mean(entry["pretrained"], "eer"), _mean(entry["finetuned"], "eer")
        high = entry["difference"]["eer"]["high"]
        if entry["protocol"] == GALLERY:
            ok = b <= a / 2
            lines.append(
                f"- {name}: fine-tuned EER {b:.4f} against frozen {a:.4f} (target at most half: "
                f"{'met' if ok else 'not met'})"
            )
        else:
            lines.append(
                f"- {name}: the 95% interval of the EER difference "
                f"{'excludes' if high < 0 else 'does not exclude'} 0 on the side of fine-tuning "
                f"(upper end {high:+.4f})"
            )
    return "\n".join(lines)
