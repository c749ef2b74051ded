"""The same-camera and clean-gallery protocols against hand-built folds."""

import numpy as np
import pytest

from tripletkit.faces import metrics
from tripletkit.faces.protocols import protocol_results, protocol_table, protocol_targets


def _fold(rng, frozen_noise, tuned_noise):
    labels = np.repeat(np.arange(5), 3)
    centres = rng.normal(size=(5, 16))
    clean = centres[labels] + 0.2 * rng.normal(size=(15, 16))
    emb, gal = {}, {}
    for sfx in ("", "-lowres"):
        for model, noise in (("pretrained", frozen_noise), ("finetuned", tuned_noise)):
            shift = noise if sfx else 0.0
            emb[model + sfx] = clean + shift * rng.normal(size=clean.shape)
            if sfx:
                gal[model + sfx] = clean
    return {"embeddings": emb, "galleries": gal, "labels": labels}


def test_protocols_score_the_pairs_each_protocol_defines():
    rng = np.random.default_rng(0)
    folds = [_fold(rng, 1.0, 0.3) for _ in range(2)]
    out = protocol_results(folds, ["", "-lowres"], draws=20)
    assert list(out) == ["full same camera", "lowres same camera", "lowres clean gallery"]
    # the clean gallery's EER, computed by hand from probe-gallery pairs i != j of each fold
    off = ~np.eye(15, dtype=bool)
    by_hand = []
    for f in folds:
        d = metrics.cross_distance(
            f["embeddings"]["pretrained-lowres"], f["galleries"]["pretrained-lowres"]
        )
        same = (f["labels"][:, None] == f["labels"][None])[off]
        by_hand.append(metrics.equal_error_rate(d[off], same))
    gallery = out["lowres clean gallery"]["pretrained"]["eer"]
    assert gallery["mean"] == pytest.approx(np.mean(by_hand)) and gallery["folds"] == 2
    # at full resolution both models are the same embeddings: a difference of exactly 0
    full = out["full same camera"]["difference"]["eer"]
    assert full == {"difference": 0.0, "low": 0.0, "high": 0.0}
    # less noise through the worse camera: fine-tuned better in both low-resolution protocols
    for name in ("lowres same camera", "lowres clean gallery"):
        assert out[name]["difference"]["eer"]["difference"] < 0
    table = protocol_table(out)
    assert table.count("\n") == 4 and "| lowres | clean gallery |" in table
    targets = protocol_targets(out)
    assert "lowres clean gallery" in targets and "full" not in targets


def test_a_run_without_galleries_has_no_clean_gallery_protocol():
    rng = np.random.default_rng(1)
    folds = [_fold(rng, 1.0, 1.0)]
    folds[0]["galleries"] = {}
    assert list(protocol_results(folds, ["", "-lowres"], draws=5)) == [
        "full same camera",
        "lowres same camera",
    ]
