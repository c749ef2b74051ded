import math

import pytest
import torch

from tripletkit import Curriculum, Schedule, TripletLoss, default_curriculum, triplet_loss


def test_constant():
    assert [Schedule("constant", start=0.3)(s) for s in (0, 5, 10**6)] == [0.3, 0.3, 0.3]


def test_linear_reaches_end_and_stays():
    sched = Schedule("linear", start=0.2, end=0.0, steps=10)
    assert sched(0) == 0.2
    assert sched(5) == pytest.approx(0.1)
    assert sched(10) == 0.0 and sched(1000) == 0.0
    assert sched(-3) == 0.2


def test_cosine_is_a_half_cosine():
    sched = Schedule("cosine", start=1.0, end=0.0, steps=100)
    for step in range(0, 101, 7):
        assert sched(step) == pytest.approx(0.5 * (1 + math.cos(math.pi * step / 100)))


def test_step_has_equal_plateaus():
    sched = Schedule("step", start=0.3, end=0.0, steps=8, stages=4)
    values = [sched(s) for s in range(10)]
    assert values == pytest.approx([0.3, 0.3, 0.2, 0.2, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0])


def test_default_goes_from_easy_to_semi_hard():
    curriculum = default_curriculum(total_steps=100, margin=0.2)
    assert curriculum.at(0) == {"offset": pytest.approx(0.1)}
    assert curriculum.at(25)["offset"] == pytest.approx(0.05)
    assert curriculum.at(50) == {"offset": 0.0} == curriculum.at(99)


def test_curriculum_values_go_to_the_loss_per_call_and_leave_it_unchanged():
    loss = TripletLoss()
    curriculum = Curriculum(Schedule("linear", 0.1, 0.0, 10), Schedule("linear", 0.1, 0.3, 10))
    values = curriculum.at(5)
    assert values == pytest.approx({"offset": 0.05, "margin": 0.2})
    x = torch.nn.functional.normalize(
        torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
    )
    y = torch.arange(4).repeat_interleave(3)
    moved = loss(x, y, **values)[0]
    assert moved == triplet_loss(x, y, margin=0.2, offset=0.05)[0]
    assert (loss.offset, loss.margin) == (0.0, 0.2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "exp"}, "kind must be one of"),
        ({"kind": "linear", "steps": 0}, "steps must be"),
        ({"kind": "step", "stages": 1}, "stages must be"),
        ({"kind": "linear", "start": float("inf")}, "finite"),
        ({"start": float("nan")}, "start must be a number"),
    ],
)
def test_bad_schedules_are_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Schedule(**kwargs)


def test_readme_training_example_runs_the_curriculum_once_over_all_epochs():
    """Regression: the README's sampler example restarted the curriculum every epoch (its step
    came from enumerate(sampler)), so the offset never left margin / 2."""
    import pathlib
    import re

    readme = pathlib.Path(__file__).resolve().parents[2] / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    block = next(b for b in blocks if "PKSampler" in b and "curriculum" in b)
    namespace: dict = {}
    exec(compile(block, str(readme), "exec"), namespace)
    sampler = namespace["sampler"]
    assert namespace["step"] == namespace["epochs"] * len(sampler)
    assert namespace["values"] == {"offset": 0.0}  # the schedule reached its end within the run
