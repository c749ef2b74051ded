"""TripletKitLoss inside sentence-transformers: its two layouts, labels, repeated anchors, and
the real SentenceTransformerTrainer. Imports only names that sentence-transformers 3.0 to 6.x
all have (the module paths moved in 5.4)."""

import shutil
import warnings

import pytest
import torch
from torch import nn

from tripletkit import relevance_triplet_loss, triplet_loss
from tripletkit.search.encoder import default_model_path
from tripletkit.search.sentence_transformers import (
    TripletKitLoss,
    anchor_relevance,
    check_columns,
    text_keys,
)

TOPICS = ["river", "mountain", "violin", "planet", "bird", "engine", "poem", "bridge"]


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory):
    """A 1-layer, 32-wide BERT with MiniLM's tokenizer and mean pooling."""
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel

    try:  # sentence-transformers >= 5.4
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # 3.0 to 5.3
        from sentence_transformers.models import Pooling, Transformer

    root = tmp_path_factory.mktemp("st")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(root / "hf")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(default_model_path() / name, root / "hf" / name)
    modules = [Transformer(str(root / "hf"), max_seq_length=32), Pooling(32)]
    SentenceTransformer(modules=modules, device="cpu").save(str(root / "model"))
    return root / "model"


@pytest.fixture
def model(encoder_path):
    """A fresh copy in eval mode (no dropout), so that equal texts embed equally."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(encoder_path), device="cpu").eval()


def tokens(model, texts):
    """Tokenised features: ``preprocess`` since 6.0, ``tokenize`` before."""
    return (getattr(model, "preprocess", None) or model.tokenize)(texts)


def unit(model, texts):
    return nn.functional.normalize(model(tokens(model, texts))["sentence_embedding"], dim=1)


DATASETS = {
    "anchor_positive_negative": {
        "anchor": [f"what is a {t}" for t in TOPICS],
        "positive": [f"a {t} is described here" for t in TOPICS],
        "negative": [f"a {TOPICS[(i + 1) % 8]} is described here" for i in range(8)],
    },
    "anchor_positive_repeated": {
        "anchor": [f"what is a {TOPICS[i // 2]}" for i in range(8)],
        "positive": [f"a {TOPICS[i // 2]} is described in part {i % 2}" for i in range(8)],
    },
    "anchor_positive_label": {
        "anchor": [f"what is a {t}" for t in TOPICS],
        "positive": [f"a {TOPICS[i if i % 4 else i + 1]} is described here" for i in range(8)],
        "label": [0 if i % 4 == 0 else 1 for i in range(8)],
    },
    "text_label": {
        "text": [f"a {TOPICS[i // 2]} text number {i}" for i in range(8)],
        "label": [i // 2 for i in range(8)],
    },
}
# valid triplets of a batch holding the whole set:
VALID = {
    # each anchor: its positive and the previous row's negative (the same text) x 14 others
    "anchor_positive_negative": 8 * 2 * 14,
    # 4 distinct anchors x 2 positives x 6 negatives
    "anchor_positive_repeated": 4 * 2 * 6,
    # rows 0 and 4 (label 0) have no positive; their texts repeat rows 1 and 5's positives,
    # which so have 2 positives x 6 negatives; 4 more anchors with 1 x 7
    "anchor_positive_label": 2 * 2 * 6 + 4 * 1 * 7,
    # 8 texts x 1 positive x 6 negatives
    "text_label": 8 * 1 * 6,
}


@pytest.mark.parametrize("name", list(DATASETS))
def test_trains_inside_sentence_transformers_trainer(model, tmp_path, name):
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    data = Dataset.from_dict(DATASETS[name])
    assert check_columns(data) == ("classes" if name == "text_label" else "pairs")
    loss = TripletKitLoss(model, mining="all", reduction="mean_active")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=8,  # the whole set: every batch has each case
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
    )
    before = [p.detach().clone() for p in model.parameters()]
    SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss).train()
    assert loss.last_stats is not None and loss.last_stats.valid_triplets == VALID[name]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_repeated_anchor_positives_are_relevant_not_negatives(model):
    anchors, positives = ["q", "q", "r"], ["p one", "p two", "p three"]
    loss = TripletKitLoss(model, mining="all")
    got = loss([tokens(model, anchors), tokens(model, positives)])
    with torch.no_grad():
        a, p = unit(model, anchors), unit(model, positives)
    # one query per distinct anchor; both of q's positives answer it
    relevant = torch.tensor([[True, True, False], [False, False, True]])
    want, _ = relevance_triplet_loss(a[[0, 2]], p, relevant, mining="all")
    naive, _ = relevance_triplet_loss(a, p, torch.eye(3, dtype=torch.bool), mining="all")
    assert torch.allclose(got, want)
    assert not torch.allclose(got, naive)
    assert loss.last_stats.valid_triplets == 2 * 1 + 1 * 2


def test_label_zero_pair_is_not_a_positive(model):
    anchors, positives = ["a", "b", "a"], ["x", "y", "z"]
    loss = TripletKitLoss(model, mining="all")
    got = loss([tokens(model, anchors), tokens(model, positives)], torch.tensor([1, 0, 0]))
    with torch.no_grad():
        a, p = unit(model, anchors), unit(model, positives)
    # "a" has x only (z is labelled 0), "b" has no positive
    relevant = torch.tensor([[True, False, False], [False, False, False]])
    want, _ = relevance_triplet_loss(a[[0, 1]], p, relevant, mining="all")
    assert torch.allclose(got, want)
    assert loss.last_stats.valid_triplets == 2


def test_only_label_zero_pairs_give_a_zero_loss(model):
    loss = TripletKitLoss(model, mining="semi-hard")
    got = loss([tokens(model, ["a", "b"]), tokens(model, ["x", "y"])], torch.tensor([0.0, 0.0]))
    assert got.item() == 0.0 and loss.last_stats.valid_triplets == 0


def test_text_label_layout_is_tripletkits_batch_loss(model):
    texts, labels = ["a b", "a c", "d e", "d f", "g"], torch.tensor([0, 0, 1, 1, 2])
    loss = TripletKitLoss(model, mining="semi-hard", margin=0.5)
    got = loss([tokens(model, texts)], labels)
    with torch.no_grad():
        want, stats = triplet_loss(
            unit(model, texts), labels, mining="semi-hard", margin=0.5, fallback="hardest"
        )
    assert torch.allclose(got, want)
    assert loss.last_stats == stats and stats.valid_triplets == 4 * 3


@pytest.mark.parametrize("mining", ["all", "hard"])
def test_default_fallback_is_not_set_for_strategies_without_one(model, mining):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = TripletKitLoss(model, mining=mining)
        loss([tokens(model, ["a", "b"]), tokens(model, ["x", "y"])])
    assert loss.triplet.fallback == "skip"
    assert TripletKitLoss(model).triplet.fallback == "hardest"


def test_duplicate_positive_is_never_a_negative(model):
    loss = TripletKitLoss(model, mining="all")
    anchors = tokens(model, ["q1", "q2", "q3"])
    positives = tokens(model, ["shared passage", "shared passage", "other passage"])
    loss([anchors, positives])
    # anchors 1 and 2 each have 2 positives (the same passage twice) and 1 negative; anchor 3
    # has 1 positive and 2 negatives
    assert loss.last_stats.valid_triplets == 2 * 1 + 2 * 1 + 1 * 2


def test_anchor_relevance_by_hand():
    rows, relevant = anchor_relevance(
        ["q", "r", "q", "s"],
        ["p", "x", "p2", "p", "n", "p2", "n", "n"],
        torch.tensor([True, True, True, False]),
    )
    assert rows == [0, 1, 3]
    assert relevant.tolist() == [
        [True, False, True, True, False, True, False, False],
        [False, True, False, False, False, False, False, False],
        [False] * 8,
    ]


def test_static_embedding_keys_split_at_offsets():
    features = {"input_ids": torch.tensor([5, 6, 7, 5, 6]), "offsets": torch.tensor([0, 2, 3])}
    assert text_keys(features, 3) == [(5, 6), (7,), (5, 6)]


def test_padding_does_not_change_a_key():
    short = {"input_ids": torch.tensor([[1, 2]]), "attention_mask": torch.tensor([[1, 1]])}
    padded = {"input_ids": torch.tensor([[1, 2, 0]]), "attention_mask": torch.tensor([[1, 1, 0]])}
    assert text_keys(short, 1) == text_keys(padded, 1)


@pytest.mark.parametrize(
    ("columns", "error"),
    [
        (["text"], r"columns \['text'\]: text column 'text' and no label column"),
        (["label"], r"columns \['label'\]: no text column"),
        (["query", "dataset_name"], r"text column 'query' and no label column"),
    ],
)
def test_check_columns_names_the_columns(columns, error):
    with pytest.raises(ValueError, match=error):
        check_columns(columns)


def test_check_columns_takes_the_collators_label_column():
    assert check_columns(["anchor", "positive", "score"]) == "pairs"
    assert check_columns(["sentence", "labels"]) == "classes"
    assert check_columns(["sentence", "label"], label_columns=["score"]) == "pairs"


def test_one_column_without_labels_is_refused(model):
    with pytest.raises(
        ValueError, match=r"1 text column\(s\) and no label column.*\(text, label\)"
    ):
        TripletKitLoss(model)([tokens(model, ["q"])])


def test_no_column_is_refused(model):
    with pytest.raises(ValueError, match=r"0 text column\(s\) and a label column"):
        TripletKitLoss(model)([], torch.tensor([0]))


def test_float_class_labels_are_refused(model):
    with pytest.raises(ValueError, match="integer class ids, got torch.float32"):
        TripletKitLoss(model)([tokens(model, ["a", "b"])], torch.tensor([0.5, 1.0]))


def test_pair_labels_other_than_zero_one_are_refused(model):
    batch = [tokens(model, ["a", "b"]), tokens(model, ["x", "y"])]
    with pytest.raises(ValueError, match=r"must hold 1 .* or 0 .*got 0\.7"):
        TripletKitLoss(model)(batch, torch.tensor([1.0, 0.7]))
    with pytest.raises(ValueError, match=r"shape \(2,\), got \(3,\)"):
        TripletKitLoss(model)(batch, torch.tensor([1, 0, 1]))
