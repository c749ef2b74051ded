import pytest
import torch
from search_fixtures import tiny_encoder

from tripletkit.integrations.sentence_transformers import TripletKitLoss


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_encoder(tmp_path_factory.mktemp("st"))), device="cpu")


def test_trains_inside_sentence_transformers_trainer(model, tmp_path):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import (
        SentenceTransformerTrainingArguments,
    )

    topics = ["river", "mountain", "violin", "planet", "bird", "engine", "poem", "bridge"]
    data = Dataset.from_dict(
        {
            "anchor": [f"what is a {t}" for t in topics],
            "positive": [f"a {t} is described here" for t in topics],
            "negative": [f"a {topics[(i + 1) % 8]} is described here" for i in range(8)],
        }
    )
    loss = TripletKitLoss(model, mining="all", reduction="mean_active")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        seed=0,
    )
    before = [p.detach().clone() for p in model.parameters()]
    SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss).train()
    assert loss.last_stats is not None and loss.last_stats.valid_triplets > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_duplicate_positive_is_never_a_negative(model):
    loss = TripletKitLoss(model, mining="all")
    anchors = model.preprocess(["q1", "q2", "q3"])
    positives = model.preprocess(["shared passage", "shared passage", "other passage"])
    loss([anchors, positives])
    stats = loss.last_stats
    # anchors 1 and 2 each have 2 positives (the same passage twice) and 1 negative; anchor 3
    # has 1 positive and 2 negatives
    assert stats.valid_triplets == 2 * 1 + 2 * 1 + 1 * 2


def test_needs_two_columns(model):
    with pytest.raises(ValueError, match="anchor, positive"):
        TripletKitLoss(model)([model.preprocess(["q"])])
