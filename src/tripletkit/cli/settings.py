"""From command-line arguments to a run's config: the task registry (which config class a
task's YAML files hold) and the flags that stand for config keys."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..config import from_dict, read_settings
from ..faces.config import FacesConfig
from ..search.config import SearchConfig

TASKS: dict[str, type] = {"faces": FacesConfig, "search": SearchConfig}


def load_config(
    path: str | None = None, overrides: Sequence[str] = (), task: str | None = None
) -> Any:
    """Defaults, then the YAML file, then ``section.key=value`` overrides; the task ("faces"
    or "search") comes from ``task``, else the file's ``task`` key, else "faces".

    Raises:
        ValueError: an unknown task or key (with the valid ones), a bad value, or a malformed
            override.
    """
    raw = read_settings(path, overrides)
    chosen = task or raw.get("task") or "faces"
    if chosen not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {chosen!r}")
    raw["task"] = chosen
    return from_dict(TASKS[chosen], raw, where=str(path) if path else "--set")


def config_from_args(args: argparse.Namespace) -> Any:
    """The config of ``--config`` with ``--set`` and the flags that stand for keys (``--data``,
    ``--name``, ``--strict``, ``--model`` of train / demo)."""
    overrides = list(args.set or [])
    if getattr(args, "data", None):
        overrides.append(f"data.source={args.data}")
    if getattr(args, "name", None):
        overrides.append(f"name={args.name}")
    if getattr(args, "strict", False):
        overrides.append("data.strict=true")
    if getattr(args, "backbone", None):
        overrides.append(f"model.backbone={args.backbone}")
    return load_config(args.config, overrides, task=getattr(args, "task", None))
