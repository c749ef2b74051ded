"""experiments/search_dev_sweep.py: every setting builds a valid config that differs from the
recipe (a mistyped key or a no-op override would train the recipe again under another name)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASE = str(ROOT / "configs" / "wiki.yaml")


def _sweep():
    spec = importlib.util.spec_from_file_location(
        "search_dev_sweep", ROOT / "experiments" / "search_dev_sweep.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_setting_changes_the_recipe():
    sweep = _sweep()
    recipe = sweep.settings_config(BASE, [], 60)
    assert recipe.train.max_steps == 60 and recipe.eval_every == 0
    seen = []
    for name, overrides in sweep.SETTINGS.items():
        cfg = sweep.settings_config(BASE, overrides, 60)
        if name == sweep.RECIPE_ROWS[0]:
            assert cfg == recipe
            continue
        assert cfg != recipe, name
        assert cfg not in seen, f"{name} repeats another setting"
        seen.append(cfg)


def test_step_and_remining_markers():
    sweep = _sweep()
    doubled = sweep.settings_config(BASE, ["__steps_x2", "negatives.n=4"], 60)
    assert doubled.train.max_steps == 120 and doubled.negatives.n == 4
    remine = sweep.settings_config(BASE, ["__remine_half"], 60)
    assert remine.negatives.remine_every == 30 and remine.train.max_steps == 60
