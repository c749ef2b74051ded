"""tripletkit's triplet loss inside sentence-transformers' own trainer (3.0 and later).

``TripletKitLoss`` takes either of two dataset layouts; the trainer hands a loss the text columns
in dataset order and the first column named "label", "labels", "score" or "scores" (5.1 and
earlier: "label" or "score") as ``labels``:

- **(anchor, positive[, negative_1, ..., negative_n])**, as MultipleNegativesRankingLoss takes it.
  Each anchor is a query; every text of the batch in the other columns is a document, a
  positive of the query when it is relevant to it and else a candidate negative (in-batch plus
  the given negatives), and the selection is tripletkit's (semi-hard by default) through
  :func:`tripletkit.relevance_triplet_loss`. Texts are compared by their token ids, so:

  - rows whose anchors are the same text are one query, and the positive of each such row is
    relevant to it: an anchor that appears with several positives never has one of them as a
    negative;
  - a document whose text equals a relevant positive (the same passage twice in a batch, or in
    a negative column) is a positive too, never a negative.

  An optional label column is honoured: 1 (or True) says the row's second text answers its
  anchor, 0 that it does not, and then that text is only a negative of the anchor (unless another
  row with the same anchor has it as a positive: positive wins). Other label values are refused.
- **(text, label)**, as sentence-transformers' BatchSemiHardTripletLoss and BatchAllTripletLoss
  take it: one text column and integer class labels; texts of one class are positives of each
  other, :func:`tripletkit.triplet_loss`.

Any other layout is refused with a ValueError; :func:`check_columns` names the columns at fault
before training starts.

    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from tripletkit.search.sentence_transformers import TripletKitLoss, check_columns

    model = SentenceTransformer(path)
    check_columns(dataset)
    trainer = SentenceTransformerTrainer(model=model, train_dataset=dataset,
                                         loss=TripletKitLoss(model, mining="semi-hard"))

Embeddings are L2-normalised before the loss. Limits: batches are not gathered across devices
(each rank mines its own batch), and a text given different prompts in two columns counts as two
texts.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..losses import TripletLoss, TripletStats

LABEL_COLUMNS = ("label", "labels", "score", "scores")
"""The columns the data collator (6.x) takes as labels, the first present wins."""

_FORMATS = (
    "TripletKitLoss takes (anchor, positive[, negative_1, ..., negative_n]) text columns with an "
    "optional 0/1 label column, or (text, label) columns with integer class labels"
)


class TripletKitLoss(nn.Module):
    """A sentence-transformers loss module; the options are :func:`tripletkit.triplet_loss`'s
    except ``fallback``, which defaults to "hardest" for semi-hard mining (a batch of a few
    anchors often has no semi-hard negative); the column layouts are this module's.

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
        fallback: str | None = None,
        distance: str = "squared",
        soft: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if fallback is None:  # "hardest" where it applies; other strategies take none
            fallback = "hardest" if mining == "semi-hard" else "skip"
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
        """The loss of one batch.

        Args:
            sentence_features: one tokenised feature dict per text column, B rows each.
            labels: (B,) the label column, or None when the dataset has none.

        Returns:
            The 0-d loss; :attr:`last_stats` holds its statistics.

        Raises:
            ValueError: for a layout other than the two above, or labels that do not fit it.
        """
        features = list(sentence_features)
        if len(features) >= 2:
            loss, self.last_stats = self._pairs(features, labels)
        elif len(features) == 1 and labels is not None:
            embeddings = self._embed(features[0])
            labels = class_labels(labels, len(embeddings))
            loss, self.last_stats = self.triplet(embeddings, labels)
        else:
            label = "no label column" if labels is None else "a label column"
            raise ValueError(
                f"TripletKitLoss got {len(features)} text column(s) and {label}: {_FORMATS} "
                f"(check_columns(dataset) names a dataset's columns)"
            )
        return loss

    def _pairs(
        self, features: list[dict[str, Tensor]], labels: Tensor | None
    ) -> tuple[Tensor, TripletStats]:
        """The loss of an (anchor, positive[, negatives...]) batch: distinct anchors x texts."""
        reps = [self._embed(f) for f in features]
        n = len(reps[0])
        keep = None if labels is None else relevant_rows(labels, n)
        doc_keys = [
            k for f, r in zip(features[1:], reps[1:], strict=True) for k in text_keys(f, len(r))
        ]
        rows, relevant = anchor_relevance(text_keys(features[0], n), doc_keys, keep)
        queries = reps[0][torch.tensor(rows, device=reps[0].device)]
        return self.triplet.relevance(queries, torch.cat(reps[1:]), relevant.to(queries.device))

    def _embed(self, features: dict[str, Tensor]) -> Tensor:
        """(B, d) unit vectors of one column."""
        return nn.functional.normalize(self.model(features)["sentence_embedding"], dim=1)

    def get_config_dict(self) -> dict[str, Any]:
        """The options, for sentence-transformers' model card."""
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


def check_columns(dataset: Any, label_columns: Sequence[str] = LABEL_COLUMNS) -> str:
    """Check a dataset's column layout for :class:`TripletKitLoss` before training.

    Args:
        dataset: a ``datasets.Dataset`` (its ``column_names``) or a list of column names.
        label_columns: the names the trainer's data collator takes as labels, first match wins
            (its ``valid_label_columns``; ["label", "score"] for sentence-transformers <= 5.1).

    Returns:
        "pairs" for (anchor, positive[, negatives...][, label]), "classes" for (text, label).

    Raises:
        ValueError: naming the columns, when the layout is neither.
    """
    names = list(getattr(dataset, "column_names", dataset))
    texts = [c for c in names if c != "dataset_name"]
    label = next((c for c in label_columns if c in texts), None)
    if label is not None:
        texts.remove(label)
    if len(texts) >= 2:
        return "pairs"
    if len(texts) == 1 and label is not None:
        return "classes"
    found = f"text column {texts[0]!r}" if texts else "no text column"
    raise ValueError(
        f"columns {names}: {found} and no label column (one of {list(label_columns)}); {_FORMATS}"
    )


def class_labels(labels: Tensor, n: int) -> Tensor:
    """The (B,) integer class labels of a (text, label) batch, checked."""
    if not isinstance(labels, Tensor) or labels.dtype == torch.bool or labels.is_floating_point():
        kind = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(
            f"(text, label) columns: the label column must hold integer class ids, got {kind} "
            f"(a float score, as for CoSENTLoss, is not a class)"
        )
    _check_shape(labels, n)
    return labels


def relevant_rows(labels: Tensor, n: int) -> Tensor:
    """(B,) bool: whether row i's second text answers its anchor, from a 0/1 label column."""
    if not isinstance(labels, Tensor) or labels.is_complex():
        kind = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"the label column must hold 0 or 1, got {kind}")
    _check_shape(labels, n)
    bad = labels[(labels != 0) & (labels != 1)]
    if len(bad):
        raise ValueError(
            f"beside (anchor, positive, ...) columns the label column must hold 1 (the positive "
            f"answers the anchor) or 0 (it does not), got {bad[0].item():g}"
        )
    return labels != 0


def _check_shape(labels: Tensor, n: int) -> None:
    if tuple(labels.shape) != (n,):
        raise ValueError(
            f"the label column must give one label per row, shape ({n},), got {tuple(labels.shape)}"
        )


def anchor_relevance(
    anchor_keys: Sequence[Hashable],
    document_keys: Sequence[Hashable],
    keep: Tensor | None = None,
) -> tuple[list[int], Tensor]:
    """Queries and relevance of an (anchor, positive[, negatives...]) batch.

    Args:
        anchor_keys: (B,) one key per row's anchor text.
        document_keys: (D,) keys of the documents, column by column, so the first B are the
            rows' positives (D = B * (columns - 1)).
        keep: (B,) bool, whether row i's positive answers its anchor; None for all rows.

    Returns:
        ``rows``: the first row of each distinct anchor, (Q,); and ``relevant``, (Q, D) bool:
        relevant[q, j] when document j has the text of the positive of a kept row whose anchor is
        query q's text.
    """
    n = len(anchor_keys)
    if len(document_keys) < n:
        raise ValueError(f"{len(document_keys)} documents for {n} anchors")
    doc_ids: dict[Hashable, int] = {}
    docs = torch.tensor([doc_ids.setdefault(k, len(doc_ids)) for k in document_keys])
    query_of: dict[Hashable, int] = {}
    rows: list[int] = []
    pairs: list[tuple[int, int]] = []
    kept = [True] * n if keep is None else keep.tolist()
    for i, key in enumerate(anchor_keys):
        if key not in query_of:
            query_of[key] = len(rows)
            rows.append(i)
        if kept[i]:
            pairs.append((query_of[key], int(docs[i])))
    answers = torch.zeros(len(rows), len(doc_ids), dtype=torch.bool)
    if pairs:
        q, d = torch.tensor(pairs).T
        answers[q, d] = True
    return rows, answers[:, docs]


def text_keys(features: dict[str, Tensor], n: int) -> list[Hashable]:
    """One hashable key per text of a tokenised column, equal for equal texts.

    Token ids without padding (a (B, L) ``input_ids`` with its ``attention_mask``), or a
    flattened token stream split at its ``offsets`` (StaticEmbedding); for other inputs (images,
    precomputed embeddings), the bytes of every per-row tensor.

    Args:
        features: one column's feature dict.
        n: B, the number of rows.

    Raises:
        ValueError: when no feature tells the rows apart.
    """
    ids = features.get("input_ids")
    if isinstance(ids, Tensor) and ids.dim() == 2 and len(ids) == n:
        mask = features.get("attention_mask")
        if isinstance(mask, Tensor) and mask.shape == ids.shape:
            return [tuple(row[m.bool()].tolist()) for row, m in zip(ids, mask, strict=True)]
        return [tuple(row) for row in ids.tolist()]
    offsets = features.get("offsets")
    if isinstance(ids, Tensor) and ids.dim() == 1 and isinstance(offsets, Tensor):
        bounds = [*offsets.tolist(), len(ids)]
        flat = ids.tolist()
        return [tuple(flat[bounds[i] : bounds[i + 1]]) for i in range(n)]
    per_row = [
        v.detach().cpu()
        for _, v in sorted(features.items())
        if isinstance(v, Tensor) and v.dim() >= 1 and len(v) == n
    ]
    if not per_row:
        raise ValueError(
            f"cannot tell which texts of a column are the same: its features {sorted(features)} "
            f"hold no tensor with one row per text"
        )
    return [tuple((tuple(v[i].shape), *v[i].flatten().tolist()) for v in per_row) for i in range(n)]
