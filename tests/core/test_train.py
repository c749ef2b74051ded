import json
import math

import pytest
import torch
from faces_fixtures import TINY, make_faces

from tripletkit.cli.settings import load_config
from tripletkit.faces.images import load_identities
from tripletkit.faces.scratch import train_model


@pytest.fixture()
def tiny(tmp_path):
    data = load_identities(make_faces(tmp_path / "faces"), (20, 16))
    return load_config(None, TINY + ["train.epochs=3"]), data


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, tiny):
    cfg, data = tiny
    straight = train_model(cfg, data, tmp_path / "a", progress=False)
    train_model(cfg, data, tmp_path / "b", progress=False, stop_after_epoch=0)
    resumed = train_model(cfg, data, tmp_path / "b", progress=False, resume=True)
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    log_a = (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
    last_a, last_b = json.loads(log_a[-1]), json.loads(log_b[-1])
    assert last_a.pop("seconds") > 0 and last_b.pop("seconds") > 0
    assert len(log_a) == len(log_b) and last_a == last_b


def test_log_has_the_statistics_and_no_temporary_files_remain(tmp_path, tiny):
    cfg, data = tiny
    train_model(cfg, data, tmp_path / "run", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert {
        "loss",
        "lr",
        "offset",
        "margin",
        "active_fraction",
        "easy_fraction",
        "semihard_fraction",
        "hard_fraction",
        "mean_d_ap",
        "mean_d_an",
    } <= rows[0].keys()
    assert rows[0]["offset"] > rows[-1]["offset"]  # the default curriculum moved t
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoint.pt",
        "model.json",
        "model.safetensors",
        "train_log.jsonl",
    ]


def test_collapse_warns(tmp_path, tiny):
    cfg, data = tiny
    cfg = load_config(
        None,
        TINY
        + [
            "train.epochs=6",
            "train.lr=1.0",
            "loss.mining=hard",
            "loss.curriculum=none",
            "train.augment=false",
        ],
    )
    with pytest.warns(UserWarning, match="collapsing"):
        train_model(cfg, data, tmp_path / "run", progress=False)


def test_people_with_one_image_join_batches_as_negatives(tmp_path):
    from PIL import Image

    from tripletkit.faces.scratch import FaceBatches

    root = make_faces(tmp_path / "faces")
    for i in range(2):
        (root / f"loner{i}").mkdir()
        Image.new("L", (20, 24), 40 + 80 * i).save(root / f"loner{i}" / "a.png")
    data = load_identities(root, (20, 16))
    cfg = load_config(None, TINY)
    batches = FaceBatches(data, cfg)
    loners = {data.names.index("loner0"), data.names.index("loner1")}
    for batch in batches.sampler:
        labels = data.labels[batch].tolist()
        assert len(batch) == 3 * 2 + 2 and set(labels[-2:]) == loners


def test_bfloat16_autocast_trains_on_cpu(tmp_path, tiny):
    from tripletkit.faces.scratch import build_model

    _, data = tiny
    cfg = load_config(None, [*TINY, "train.epochs=1", "train.amp=true"])
    start = build_model(cfg).state_dict()
    model = train_model(cfg, data, tmp_path / "amp", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "amp" / "train_log.jsonl").read_text().splitlines()]
    assert rows and all(math.isfinite(r["loss"]) for r in rows)
    weights = model.state_dict()
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert not torch.equal(weights["head.weight"], start["head.weight"])


class ToySource:
    """24 points of 6 identities in batches of 8; every other step the source moves its inputs
    (as a source that mines its negatives again changes its batches): state of its own, which a
    resumed run must continue from."""

    def __init__(self, stateful: bool = True, noisy: bool = False) -> None:
        from tripletkit.sampling import ShuffledBatches

        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(24, 6, generator=gen)
        self.labels = torch.arange(24) % 6
        self.sampler = ShuffledBatches(24, 8, seed=0)
        self.shift = 0.0
        self.noisy = noisy  # noise from torch's global generator, as dropout draws it
        if not stateful:
            self.state_dict = None  # hides the hooks: a source without state of its own

    def loss(self, model, loss_fn, indices, gen, step):
        if step % 2 == 1:
            self.shift += 0.5
        x = self.x[indices] + self.shift
        if self.noisy:
            x = x + 0.3 * torch.randn(x.shape)
        return loss_fn(model(x), self.labels[indices])

    def state_dict(self):
        return {"shift": self.shift}

    def load_state_dict(self, state):
        self.shift = state["shift"]


def toy_fit(out, *, source=None, overrides=None, settings=None, **options):
    from tripletkit.config import TrainConfig
    from tripletkit.losses import TripletLoss
    from tripletkit.train import fit

    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4)
    cfg = TrainConfig(
        **{"epochs": 3, "lr": 0.05, "warmup_steps": 1, "threads": 1, **(overrides or {})}
    )
    source = source or ToySource()
    loss = TripletLoss(mining="all")
    fit(model, loss, source, cfg, out, progress=False, settings=settings, **options)
    return model, source


def test_resume_restores_the_state_of_the_batch_source(tmp_path):
    straight, source = toy_fit(tmp_path / "a")
    toy_fit(tmp_path / "b", stop_after_epoch=0)
    checkpoint = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert checkpoint["source"] == {"shift": 0.5}  # steps 0..2 ran: one move, at 1
    fresh = ToySource()
    resumed, _ = toy_fit(tmp_path / "b", source=fresh, resume=True)
    assert fresh.shift == source.shift == 2.0  # moves at 1, 3, 5, 7
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_source_without_state_is_checkpointed_as_before(tmp_path):
    toy_fit(tmp_path / "a", source=ToySource(stateful=False), stop_after_epoch=0)
    assert "source" not in torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    toy_fit(tmp_path / "a", source=ToySource(stateful=False), resume=True)


def test_checkpoint_records_the_settings_and_resumes_when_they_are_the_same(tmp_path):
    settings = {"loss": {"margin": 0.2, "mining": "all"}}
    straight, _ = toy_fit(tmp_path / "a", settings=settings)
    toy_fit(tmp_path / "b", settings=settings, stop_after_epoch=0)
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert state["config"]["train"]["epochs"] == 3 and "threads" not in state["config"]["train"]
    assert state["config"]["steps"] == {"per_epoch": 3, "total": 9}
    assert state["config"]["loss"] == settings["loss"] and len(state["config_hash"]) == 16
    # where and how it runs may change: threads, device, backend, timeout
    resumed, _ = toy_fit(tmp_path / "b", settings=settings, overrides={"threads": 2}, resume=True)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("overrides", "settings", "named"),
    [
        ({"epochs": 5, "lr": 0.01}, None, r"train.epochs 3 -> 5, train.lr 0.05 -> 0.01"),
        ({"epochs": 5}, None, r"steps.total 9 -> 15"),
        ({"optimizer": "sgd"}, None, r"train.optimizer 'adam' -> 'sgd'"),
        ({"batch_size": 4, "seed": 1}, None, r"train.batch_size 32 -> 4, train.seed 0 -> 1"),
        ({"max_steps": 4}, None, r"train.max_steps 0 -> 4"),
        ({}, {"loss": {"margin": 0.3}}, r"loss.margin '\(unset\)' -> 0.3"),
    ],
)
def test_resume_with_other_settings_names_what_changed(tmp_path, overrides, settings, named):
    toy_fit(tmp_path / "run", stop_after_epoch=0)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(
        ValueError, match=rf"checkpoint.pt was written by a run with other settings: .*{named}"
    ):
        toy_fit(tmp_path / "run", overrides=overrides, settings=settings, resume=True)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_a_checkpoint_without_settings_resumes_with_a_warning(tmp_path):
    toy_fit(tmp_path / "run", stop_after_epoch=0)
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    for key in ("config", "config_hash", "source"):
        del state[key]
    torch.save(state, path)
    with pytest.warns(UserWarning) as caught:
        toy_fit(tmp_path / "run", resume=True)
    messages = " | ".join(str(w.message) for w in caught)
    assert "records no training settings" in messages
    assert "holds no state of the batch source" in messages


def test_a_curriculum_moves_no_offset_for_strategies_without_one():
    from tripletkit.config import LossConfig
    from tripletkit.train import curriculum_from_config

    for mining in ("hard", "all"):
        assert curriculum_from_config(LossConfig(mining=mining, curriculum="default"))(100) is None
        grown = curriculum_from_config(LossConfig(mining=mining, margin_end=0.5))(100)
        assert (
            grown is not None and grown.at(50)["offset"] == 0.0 and grown.at(100)["margin"] == 0.5
        )
    semi = curriculum_from_config(LossConfig(mining="semi-hard", curriculum="default"))(100)
    assert semi is not None and semi.at(0)["offset"] == 0.1


def test_resume_restores_the_global_random_state(tmp_path):
    """Regression (the other resume tests drew no random numbers, so they passed with the RNG
    restore removed): a source that draws from torch's global generator, as dropout does,
    trains to the same weights resumed as uninterrupted."""
    straight, _ = toy_fit(tmp_path / "a", source=ToySource(noisy=True))
    toy_fit(tmp_path / "b", source=ToySource(noisy=True), stop_after_epoch=0)
    resumed, _ = toy_fit(tmp_path / "b", source=ToySource(noisy=True), resume=True)
    assert torch.equal(straight.weight, resumed.weight)
    # and the check has teeth: without the checkpoint's RNG state the weights differ
    toy_fit(tmp_path / "c", source=ToySource(noisy=True), stop_after_epoch=0)
    state = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=False)
    state["rng"] = [torch.manual_seed(123).get_state()]
    torch.save(state, tmp_path / "c" / "checkpoint.pt")
    other, _ = toy_fit(tmp_path / "c", source=ToySource(noisy=True), resume=True)
    assert not torch.equal(straight.weight, other.weight)


def test_evaluation_curve_reads_as_if_never_interrupted(tmp_path):
    """Regression: a resumed run's curve lost every point before the resume ([0..8] became
    [0, 5, 6, 7, 8]), as the search arms' dev_curve.jsonl and the fine-tuning's val_log.jsonl
    did."""
    from tripletkit.train import Evaluation

    def evaluation():
        return Evaluation(
            lambda m: {"norm": float(m.weight.detach().norm())}, every=2, file="curve.jsonl"
        )

    toy_fit(tmp_path / "a", evaluation=evaluation())
    toy_fit(tmp_path / "b", evaluation=evaluation(), stop_after_epoch=0)
    toy_fit(tmp_path / "b", evaluation=evaluation(), resume=True)
    curve_a = [json.loads(x) for x in (tmp_path / "a" / "curve.jsonl").read_text().splitlines()]
    curve_b = [json.loads(x) for x in (tmp_path / "b" / "curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve_a] == [0, 2, 4, 6, 8, 9]  # 3 epochs of 3 steps
    assert curve_a == curve_b


def test_the_warm_up_keeps_its_length_in_a_run_shorter_than_it():
    """Issue 19: train.max_steps=2 squeezed the 50-step warm-up into one step, so the first
    step ran at the full learning rate and collapsed the pretrained network."""
    from tripletkit.config import TrainConfig
    from tripletkit.train import lr_lambda

    short = lr_lambda(TrainConfig(warmup_steps=50, schedule="cosine"), total=2)
    assert [short(0), short(1)] == pytest.approx([1 / 50, 2 / 50])
    # a run longer than its warm-up: linear up, then the cosine from 1 to 0 over the rest
    full = lr_lambda(TrainConfig(warmup_steps=2, schedule="cosine"), total=6)
    expected = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * i / 4)) for i in range(4)]
    assert [full(s) for s in range(6)] == pytest.approx(expected)
    constant = lr_lambda(TrainConfig(warmup_steps=0, schedule="constant"), total=3)
    assert [constant(s) for s in range(3)] == [1.0, 1.0, 1.0]


def _log(path, d_ans):
    path.write_text(
        "".join(json.dumps({"step": i, "mean_d_an": d}) + "\n" for i, d in enumerate(d_ans))
    )
    return path


@pytest.mark.parametrize(
    "d_ans, collapsed",
    [
        ([1.0, 0.5, 0.09], True),  # below a tenth of the first at the end
        ([1.0, 0.05, 0.5], False),  # collapsed on the way and recovered
        ([1.0, 0.1], False),  # exactly a tenth is not below it
        ([math.nan, 1.0, 0.2, 0.05], True),  # the first finite value is the yardstick
        ([math.nan, math.nan], False),  # nothing measured
        ([], False),
    ],
)
def test_ended_collapsed_reads_the_first_and_last_negative_distance(tmp_path, d_ans, collapsed):
    from tripletkit.train import ended_collapsed

    why = ended_collapsed(_log(tmp_path / "train_log.jsonl", d_ans))
    assert (why is not None) == collapsed
    if collapsed:
        assert "train_log.jsonl" in why and "collapsed" in why
    assert ended_collapsed(tmp_path / "missing.jsonl") is None
