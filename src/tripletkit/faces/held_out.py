"""A run's models scored on people the user names (``tripletkit evaluate RUN --people FOLDER``):
a folder with one sub-folder per person, none of whom the models trained on.

Every model folder of the run (``fold0``, ``all``, ``x4/fold0``, ...), and for a run that
fine-tuned dlib's descriptor the pretrained descriptor it started from, embeds each photo of the
folder as ``tripletkit embed`` does without ``--detect`` (one face per photo: the model's own
choice). Over all pairs of the folder's photos: EER and VAL@FAR 1e-3 with a 95% percentile
bootstrap interval over people, rank-1 and MAP@R (leave one out), and the false accept and
false reject rates at the model's own threshold, the one ``verify`` and the service decide by.
A fine-tuned dlib model also gets its difference from the pretrained descriptor on the same
people, with a paired bootstrap interval (:func:`tripletkit.faces.bootstrap.paired_difference`).

A model that recorded its training people (``model.json``'s ``training_people``) is refused
when the folder holds one of them: the score would not be of new people. The result goes to
``RUN/people-<folder name>.json``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import write_json
from . import bootstrap, metrics
from .chips import source_files
from .models import FaceModel, load_face_model, model_saved, read_meta
from .photos import read_faces

PRETRAINED = "pretrained dlib"


def scores_file(run: Path, folder: Path) -> Path:
    """Where :func:`evaluate_people` writes the scores of ``run`` on ``folder``'s people."""
    return run / f"people-{folder.resolve().name}.json"


def model_folders(run: Path) -> list[Path]:
    """Every folder under ``run`` that holds a complete model, sorted.

    Raises:
        ValueError: none.
    """
    found = sorted(p.parent for p in run.rglob("model.json") if model_saved(p.parent))
    if not found:
        raise ValueError(f"no trained model under {run} (run `tripletkit train` first)")
    return found


def photos_of_people(folder: Path) -> tuple[list[Path], dict[str, str]]:
    """The photo files of ``folder`` (one sub-folder per person) and each file's person.

    Raises:
        ValueError: no such folder, fewer than two people, or no person with two photos.
    """
    if not folder.is_dir():
        raise ValueError(f"people folder not found: {folder}")
    _, groups = source_files(str(folder))
    sizes = [len(files) for _, files in groups]
    if len(groups) < 2 or max(sizes, default=0) < 2:
        raise ValueError(
            f"{folder}: scoring needs at least two people (one sub-folder each) and one of them "
            f"with two photos; found {len(groups)} people, at most {max(sizes, default=0)} "
            "photo(s) each"
        )
    person = {str(path): name for name, files in groups for path in files}
    return [path for _, files in groups for path in files], person


def check_unseen(model_folder: Path, people: set[str], folder: Path) -> None:
    """Raise ValueError when ``model_folder``'s recorded training people include one of
    ``people``; warn when it recorded none (a model saved by an older version)."""
    trained = read_meta(model_folder).get("training_people")
    if trained is None:
        warnings.warn(
            f"{model_folder} does not record its training people (an older model folder): "
            f"that {folder}'s people are new to it is not checked",
            stacklevel=3,
        )
        return
    seen = sorted(people & set(trained))
    if seen:
        listing = ", ".join(seen[:5]) + (f" and {len(seen) - 5} more" if len(seen) > 5 else "")
        raise ValueError(
            f"{folder} holds {len(seen)} of the people {model_folder} was trained on ({listing}): "
            "score it on people it has not seen"
        )


def scores(emb: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """The module docstring's metrics of embeddings ``emb`` with person ``labels``."""
    dist = metrics.distance_matrix(emb)
    d, same = metrics.all_pairs(dist, labels)
    ident = metrics.identification(dist, labels, ks=(1,))
    low_high = bootstrap.fold_mean_interval([(emb, labels)])
    return {
        "eer": metrics.equal_error_rate(d, same),
        "val_at_far_1e-3": metrics.val_at_far(d, same, 1e-3),
        "rank1": ident["rank1"],
        "map_at_r": ident["map_at_r"],
        "threshold": float(threshold),
        "false_accept_rate": float((d[~same] <= threshold).mean()),
        "false_reject_rate": float((d[same] > threshold).mean()),
        "interval": {k: list(v) for k, v in low_high.items()},
    }


def evaluate_people(run: str | Path, folder: str | Path, *, progress: bool = True) -> dict:
    """Score every model of ``run`` on the people of ``folder`` (module docstring); write and
    return ``RUN/people-<folder name>.json``'s content.

    Raises:
        ValueError: naming the run, the folder or the model at fault: no model, too few people,
            people a model trained on, no usable photo.
    """
    run, folder = Path(run), Path(folder)
    if not run.is_dir():
        raise ValueError(f"run folder not found: {run}")
    paths, person = photos_of_people(folder)
    people = set(person.values())
    named = [(str(m.relative_to(run)) or ".", m) for m in model_folders(run)]
    for _, model_folder in named:
        check_unseen(model_folder, people, folder)
    models: list[tuple[str, FaceModel]] = [(name, load_face_model(m)) for name, m in named]
    if any(model.kind == "dlib" for _, model in models):
        models.insert(0, (PRETRAINED, load_face_model("dlib")))
    inputs: dict[Any, tuple[np.ndarray, torch.Tensor]] = {}
    results: dict[str, Any] = {}
    embedded: dict[str, np.ndarray] = {}
    for name, model in models:
        key = "dlib" if model.kind == "dlib" else name  # dlib models share one chip per photo
        if key not in inputs:
            faces, batch = read_faces(
                paths, model.prepare, one_face=model.one_face, progress=progress
            )
            inputs[key] = (np.array([person[f.path] for f in faces]), batch)
        labels, batch = inputs[key]
        embedded[name] = model.embed(batch)
        results[name] = scores(embedded[name], labels, model.threshold)
    if PRETRAINED in embedded:
        dlib_labels = inputs["dlib"][0]
        frozen = metrics.distance_matrix(embedded[PRETRAINED])
        for name, model in models:
            if model.kind == "dlib" and name != PRETRAINED:
                tuned = metrics.distance_matrix(embedded[name])
                results[name]["minus_pretrained"] = bootstrap.paired_difference(
                    [(frozen, tuned, dlib_labels)]
                )
    photos = max(len(labels) for labels, _ in inputs.values())
    out = {"folder": str(folder), "people": len(people), "photos": photos, "models": results}
    write_json(scores_file(run, folder), out)
    return out


def table(result: dict) -> str:
    """The result of :func:`evaluate_people` as a Markdown table."""
    lines = [
        f"{result['people']} people, {result['photos']} photos of {result['folder']}; "
        "95% bootstrap intervals over people",
        "",
        "| model | EER | VAL@1e-3 | rank-1 | MAP@R | FAR / FRR at its threshold | EER minus "
        "pretrained |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in result["models"].items():
        (e_lo, e_hi), (v_lo, v_hi) = row["interval"]["eer"], row["interval"]["val_at_far_1e-3"]
        diff = row.get("minus_pretrained", {}).get("eer")
        shown = (
            f"{diff['difference']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]" if diff else "-"
        )
        lines.append(
            f"| {name} | {row['eer']:.4f} [{e_lo:.4f}, {e_hi:.4f}] "
            f"| {row['val_at_far_1e-3']:.3f} [{v_lo:.3f}, {v_hi:.3f}] | {row['rank1']:.3f} "
            f"| {row['map_at_r']:.3f} | {row['false_accept_rate']:.4f} / "
            f"{row['false_reject_rate']:.3f} at {row['threshold']:.3f} | {shown} |"
        )
    return "\n".join(lines)
