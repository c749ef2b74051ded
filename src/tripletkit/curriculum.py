"""Schedules for the semi-hard offset t (and optionally the margin) over training steps.

FaceNet describes its mining as giving triplets of increasing difficulty as training goes on,
but gives no schedule and no offset. With semi-hard mining a negative must satisfy
d_an > d_ap + t, so a high t gives easy triplets and t = 0 gives FaceNet's semi-hard ones;
t < 0 goes on to hard negatives.

The default (:func:`default_curriculum`) is this project's reading of that, not a method from
the paper: t moves linearly from margin / 2 to 0 over the first half of training and stays
at 0 (semi-hard) afterwards. With fallback "skip", at first only negatives more than margin / 2
beyond the positive are chosen, so every loss term is below margin / 2; with "hardest" or
"easiest", pairs without such a negative take another one, whose term can reach the margin or
more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("constant", "linear", "cosine", "step")


@dataclass(frozen=True)
class Schedule:
    """A value that moves from ``start`` to ``end`` over ``steps`` training steps.

    Attributes:
        kind: "constant" (always ``start``), "linear", "cosine" (half-cosine ease) or "step"
            (``stages`` equal plateaus from ``start`` to ``end``).
        start: value at step 0.
        end: value from step ``steps`` on.
        steps: length of the transition, in optimiser steps (> 0 unless constant).
        stages: plateaus of the "step" schedule (>= 2).
    """

    kind: str = "constant"
    start: float = 0.0
    end: float = 0.0
    steps: int = 1
    stages: int = 4

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule kind must be one of {SCHEDULES}, got {self.kind!r}")
        for name in ("start", "end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"schedule {name} must be a number, got {value!r}")
        if self.kind != "constant" and (
            not math.isfinite(self.start) or not math.isfinite(self.end)
        ):
            raise ValueError(f"a {self.kind} schedule needs finite start and end values")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"schedule steps must be an integer >= 1, got {self.steps!r}")
        if isinstance(self.stages, bool) or not isinstance(self.stages, int) or self.stages < 2:
            raise ValueError(f"schedule stages must be an integer >= 2, got {self.stages!r}")

    def __call__(self, step: int) -> float:
        """The value at optimiser step ``step`` (0-based)."""
        if self.kind == "constant":
            return float(self.start)
        progress = min(max(step, 0) / self.steps, 1.0)
        if self.kind == "linear":
            weight = progress
        elif self.kind == "cosine":
            weight = 0.5 * (1.0 - math.cos(math.pi * progress))
        else:
            weight = min(int(progress * self.stages), self.stages - 1) / (self.stages - 1)
        return float(self.start + (self.end - self.start) * weight)


@dataclass(frozen=True)
class Curriculum:
    """The offset schedule and an optional margin schedule: their values at each step go to
    the loss with the batch, ``loss_fn(embeddings, labels, **curriculum.at(step))``."""

    offset: Schedule
    margin: Schedule | None = None

    def at(self, step: int) -> dict[str, float]:
        """The values at ``step``: {"offset": t} and, with a margin schedule, "margin"."""
        values = {"offset": self.offset(step)}
        if self.margin is not None:
            values["margin"] = self.margin(step)
        return values


def default_curriculum(total_steps: int, margin: float = 0.2) -> Curriculum:
    """Easy to semi-hard: t goes linearly from margin / 2 to 0 over the first half of training
    (this project's schedule, not FaceNet's stated method; see the module docstring).
    ``total_steps`` counts every optimiser step of training, across epochs."""
    return Curriculum(Schedule("linear", start=margin / 2, end=0.0, steps=max(1, total_steps // 2)))
