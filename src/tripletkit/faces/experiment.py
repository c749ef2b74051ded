"""A faces run: train on some identities, evaluate FaceNet's protocols on held-out ones.

Two backbones (``model.backbone``): "scratch", the residual CNN trained from scratch
(:mod:`tripletkit.faces.scratch`), and "dlib", the pretrained dlib descriptor fine-tuned with
the triplet loss (:mod:`tripletkit.faces.dlib_run`, :mod:`tripletkit.faces.finetune`).

A run folder holds ``config.yaml``, ``run.json`` (the config hash, the data digest and each
fold's train / validation / test people: :mod:`tripletkit.faces.runs`), one model folder per
identity fold (``fold0`` ...; :mod:`tripletkit.faces.models`), for the scratch backbone one per
ablation arm and fold (``ablation/<arm>/fold0`` ...), for the dlib backbone one per further
resolution and fold (``lowres4/fold0`` ...) and, with camera adaptation, its checkpoint and
logs per fold (``adapt/fold0`` ...; :mod:`tripletkit.faces.adapt`), and after :func:`evaluate`
``metrics.json``, ``report.md`` and the figures (:mod:`tripletkit.faces.report`,
:mod:`tripletkit.faces.dlib_report`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from .._io import write_json
from .._onnx import check_runtime
from ..config import read_config, to_dict, write_config
from . import dlib_report, metrics, report
from .adapt import check_adapt
from .config import FacesConfig
from .datasets import load_faces
from .dlib_run import chip_sets, dlib_embeddings, train_dlib
from .evaluation import Embeddings, baselines, calibration_index, fold_pairs, score
from .images import ImageSet, read_pairs
from .models import embed_chips, load_model, model_saved
from .models import embed_scratch as embed
from .pretrained import load_dlib_resnet
from .runs import Fold, check_batches, check_record, folds, make_record, write_record
from .scratch import arm_config, arm_folder, build_model, train_model

BASELINES = ("eigenfaces", "pixels", "untrained")


def train(
    cfg: FacesConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> list[Path]:
    """Train the configured model on every fold (and every ablation arm, or every resolution
    of the dlib backbone); return the model folders.

    Raises:
        ValueError: with ``resume``, when the run was trained with another config or data
            (naming what differs); a bad ``model.backbone`` or ``model.runtime``.
    """
    run = Path(run_dir)
    if cfg.model.backbone not in ("scratch", "dlib"):
        raise ValueError(f"model.backbone must be 'scratch' or 'dlib', got {cfg.model.backbone!r}")
    check_runtime(cfg.model.runtime)
    check_adapt(cfg)
    distributed.check_same(to_dict(cfg))
    if cfg.model.backbone == "dlib":
        return _train_dlib(cfg, run, resume=resume, progress=progress)
    data = load_faces(cfg.data)
    plan = folds(cfg.data, data)
    check_batches(cfg, data, plan)
    _start_run(cfg, run, make_record(cfg, data, plan), resume)
    jobs = {run: cfg}
    for arm in cfg.ablation:
        jobs.setdefault(arm_folder(cfg, run, arm), arm_config(cfg, arm))
    done = []
    for base, job_cfg in jobs.items():
        for fold in plan:
            out = base / fold.name
            done_before = resume and model_saved(out)
            if not distributed.broadcast(done_before, "resume plan"):
                calibration = data.subset(fold.val) if len(fold.val) else None
                train_model(
                    job_cfg,
                    data.subset(fold.train),
                    out,
                    calibration=calibration,
                    resume=resume,
                    progress=progress,
                )
            done.append(out)
    return done


def _start_run(cfg: FacesConfig, run: Path, record: dict, resume: bool) -> None:
    """Check a resumed run's record against ``record``; write ``config.yaml`` and ``run.json``."""
    if resume and (run / "run.json").exists():
        check_record(run, record, action="resume")
    if distributed.is_main():
        write_config(run / "config.yaml", cfg)
        write_record(run, record)


def _train_dlib(cfg: FacesConfig, run: Path, *, resume: bool, progress: bool) -> list[Path]:
    if cfg.ablation:
        raise ValueError(
            "ablation arms (--set ablation=[...]) compare mining on the from-scratch CNN: use "
            "model.backbone=scratch (configs/orl-scratch.yaml), not the dlib backbone"
        )
    if distributed.active():
        raise ValueError(
            "fine-tuning the dlib backbone runs in one process: run it without torchrun"
        )
    chips = chip_sets(cfg, progress)
    plan = folds(cfg.data, chips[cfg.data.lowres[0]])
    check_batches(cfg, chips[cfg.data.lowres[0]], plan)
    _start_run(cfg, run, make_record(cfg, chips[cfg.data.lowres[0]], plan), resume)
    return train_dlib(
        cfg,
        run,
        plan,
        chips,
        load_dlib_resnet(),
        resume=resume,
        progress=progress,
        done=model_saved,
    )


def method_embeddings(cfg: FacesConfig, run: Path, data: ImageSet, fold: Fold) -> Embeddings:
    """Embeddings of every method of a scratch run on one fold (see :data:`Embeddings`)."""
    parts = {"calib": calibration_index(fold), "test": fold.test}
    out: Embeddings = {}

    def of(model: torch.nn.Module) -> dict[str, np.ndarray]:
        return {k: embed(model, data.images[v]) for k, v in parts.items()}

    out["tripletkit"] = of(load_model(run / fold.name)[0])
    for arm in cfg.ablation:
        out[arm] = of(load_model(arm_folder(cfg, run, arm) / fold.name)[0])
    out["untrained"] = of(build_model(cfg))
    out.update(baselines(data, fold, parts))
    return out


def evaluate(run_dir: str | Path, *, progress: bool = True) -> dict[str, metrics.Summary]:
    """Score every method on every fold's test people; write ``metrics.json``, the figures and
    ``report.md``.

    Returns:
        method -> metric -> {"mean", "std", "folds", "missing"} over folds (see
        :func:`tripletkit.faces.metrics.summarise_folds`).

    Raises:
        ValueError: not a run, no test people, or a run whose config or data changed since
            it was trained (naming what differs).
    """
    run = Path(run_dir)
    cfg, data, plan, per_fold, tests = _score_folds(run, "test", progress)
    summary = {m: metrics.summarise_folds(rows) for m, rows in per_fold.items()}
    if cfg.model.backbone == "dlib":
        return dlib_report.finetune_report(run, cfg, data, plan, summary, per_fold, tests)
    write_json(run / "metrics.json", summary)
    report.faces_report(run, cfg, data, plan, summary, per_fold, tests)
    return summary


def validate(run_dir: str | Path, *, progress: bool = False) -> dict[str, metrics.Summary]:
    """Score every method on every fold's VALIDATION people, the people choices are made on
    (recipes, steps), and write ``validation.json``. Test people are not read.

    The "k unknown" clustering threshold is then chosen on the same validation people, so that
    metric is optimistic here.

    Raises:
        ValueError: as :func:`evaluate`; a run without validation people.
    """
    run = Path(run_dir)
    _, _, _, per_fold, _ = _score_folds(run, "val", progress)
    summary = {m: metrics.summarise_folds(rows) for m, rows in per_fold.items()}
    write_json(run / "validation.json", summary)
    return summary


def _score_folds(
    run: Path, part: str, progress: bool
) -> tuple[FacesConfig, ImageSet, list[Fold], dict[str, list[dict[str, float]]], list[dict]]:
    """Config, data, folds, per-method per-fold scores on ``part`` ("test" or "val") people
    and, per fold, the embeddings of ``part`` for the figures."""
    cfg = read_config(FacesConfig, run / "config.yaml")
    if cfg.model.backbone == "dlib":
        embeddings_of, data = _dlib_evaluation(cfg, run, progress)
    else:
        data = load_faces(cfg.data)

        def embeddings_of(fold: Fold) -> Embeddings:
            return method_embeddings(cfg, run, data, fold)

    plan = folds(cfg.data, data)
    check_record(run, make_record(cfg, data, plan), action="evaluate")
    if part == "val":
        plan = [dataclasses.replace(f, test=f.val) for f in plan if len(f.val)]
        if not plan:
            raise ValueError(f"{run} has no validation people (data.val_people=0)")
    plan = [f for f in plan if len(f.test)]
    if not plan:
        raise ValueError(f"{run} has no held-out identities to evaluate (data.fold=none)")
    per_fold: dict[str, list[dict[str, float]]] = {}
    tests: list[dict] = []
    for i, fold in enumerate(plan):
        emb = embeddings_of(fold)
        calib_labels = data.labels[calibration_index(fold)].numpy()
        test_labels = data.labels[fold.test].numpy()
        pairs = None
        if cfg.data.pairs and part == "test":
            pairs = fold_pairs(read_pairs(cfg.data.pairs, data), fold)
        for method, e in emb.items():
            per_fold.setdefault(method, []).append(
                score(e["calib"], calib_labels, e["test"], test_labels, cfg.data.seed, pairs)
            )
        tests.append(
            {
                "embeddings": {m: e["test"] for m, e in emb.items()},
                "galleries": {m: e["gallery"] for m, e in emb.items() if "gallery" in e},
                "labels": test_labels,
            }
        )
        if progress:
            print(f"evaluated {fold.name} ({i + 1}/{len(plan)})", flush=True)
    return cfg, data, plan, per_fold, tests


def _dlib_evaluation(
    cfg: FacesConfig, run: Path, progress: bool
) -> tuple[Callable[[Fold], Embeddings], ImageSet]:
    """The embeddings function of a dlib run, and its chips at the first resolution."""
    chips = chip_sets(cfg, progress)
    images = {f: load_faces(cfg.data, f) for f in cfg.data.lowres}
    first = chips[cfg.data.lowres[0]]
    for f, raw in images.items():
        if raw.paths != first.paths:
            raise ValueError(
                f"data.lowres {f}: the images read for the baselines differ from the chips"
            )
    pretrained = load_dlib_resnet()
    stock = {f: embed_chips(pretrained, s.images) for f, s in chips.items()}

    def embeddings_of(fold: Fold) -> Embeddings:
        return dlib_embeddings(cfg, run, fold, chips, images, stock)

    return embeddings_of, first
