"""Regenerate the stock thresholds of ``--model dlib`` (``STOCK_THRESHOLD`` and
``STOCK_CLUSTER_THRESHOLD`` in tripletkit/faces/models.py): the pretrained descriptor on
the chips of all 400 ORL images (full resolution, HOG detector, tripletkit.faces.chips),
calibrated with ``calibrate`` (verification at FAR 1e-3 over all pairs, clustering at the best
ARI). Prints them beside the shipped constants; exits 1 when they differ in the third decimal.

    python experiments/dlib_thresholds.py
"""

from __future__ import annotations

import sys

from tripletkit.faces.chips import ChipSettings, load_chips
from tripletkit.faces.models import STOCK_CLUSTER_THRESHOLD, STOCK_THRESHOLD, calibrate, embed_chips
from tripletkit.faces.pretrained import load_dlib_resnet


def main() -> int:
    chips = load_chips("orl", ChipSettings())
    embeddings = embed_chips(load_dlib_resnet(), chips.images)
    found = calibrate(embeddings, chips.labels.numpy(), far=1e-3)
    rows = [
        ("STOCK_THRESHOLD", found["threshold"], STOCK_THRESHOLD),
        ("STOCK_CLUSTER_THRESHOLD", found["cluster_threshold"], STOCK_CLUSTER_THRESHOLD),
    ]
    print(f"{len(chips.labels)} ORL chips, {len(set(chips.labels.tolist()))} people")
    for name, value, shipped in rows:
        print(f"{name}: calibrated {value:.4f}, shipped {shipped}")
    return 0 if all(round(v, 3) == round(s, 3) for _, v, s in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
