"""tripletkit's triplet loss inside sentence-transformers' own trainer.

``TripletKitLoss`` takes the dataset columns (anchor, positive, negative_1, ..., negative_n) that
sentence-transformers' MultipleNegativesRankingLoss takes. Every text of the batch that is not a
positive of an anchor is a candidate negative for it (in-batch plus the given negatives), and the
selection is tripletkit's (semi-hard by default). A document whose text equals an anchor's
positive (the same passage twice in a batch, or a passage answering two anchors) is a positive
of that anchor, never its negative.

    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from tripletkit.integrations.sentence_transformers import TripletKitLoss

    model = SentenceTransformer(path)
    trainer = SentenceTransformerTrainer(model=model, train_dataset=dataset,
                                         loss=TripletKitLoss(model, mining="semi-hard"))
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..losses import TripletLoss, TripletStats


class TripletKitLoss(nn.Module):
    """A sentence-transformers loss module; the options are :func:`tripletkit.triplet_loss`'s.

    Attributes:
        last_stats: the :class:`tripletkit.TripletStats` of the latest batch.
    """

    def __init__(
        self,
        model: Any,
        *,
        margin: float = 0.2,
        mining: str = "semi-hard",
        offset: float = 0.0,
        fallback: str = "hardest",
        distance: str = "squared",
        soft: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.model = model
        self.triplet = TripletLoss(
            margin=margin,
            mining=mining,
            offset=offset,
            fallback=fallback,
            distance=distance,
            soft=soft,
            reduction=reduction,
        )
        self.last_stats: TripletStats | None = None

    def forward(
        self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None
    ) -> Tensor:
        features = list(sentence_features)
        if len(features) < 2:
            raise ValueError("TripletKitLoss needs (anchor, positive[, negatives...]) columns")
        reps = [
            nn.functional.normalize(self.model(f)["sentence_embedding"], dim=1) for f in features
        ]
        anchors, documents = reps[0], torch.cat(reps[1:])
        keys = [k for f in features[1:] for k in _text_keys(f)]
        n = len(anchors)
        relevant = torch.tensor(
            [[keys[j] == keys[i] for j in range(len(keys))] for i in range(n)],
            device=anchors.device,
        )
        loss, self.last_stats = self.triplet.relevance(anchors, documents, relevant)
        return loss

    def get_config_dict(self) -> dict[str, Any]:
        t = self.triplet
        return {
            "margin": t.margin,
            "mining": t.mining,
            "offset": t.offset,
            "fallback": t.fallback,
            "distance": t.distance,
            "soft": t.soft,
            "reduction": t.reduction,
        }


def _text_keys(features: dict[str, Tensor]) -> list[tuple[int, ...]]:
    """One hashable key per text of a tokenised column: its token ids without padding."""
    ids, mask = features["input_ids"], features["attention_mask"]
    return [tuple(row[m.bool()].tolist()) for row, m in zip(ids, mask, strict=True)]
