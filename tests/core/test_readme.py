import math
import pathlib
import re
import shutil
import subprocess

import pytest
import torch

from reference import loop_loss

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_examples_run():
    """Each python block of the README runs, and the loss it computes is the loss: equal to
    the loop oracle's on the block's own embeddings and labels (a loss that always returned 0,
    or any other value, fails), with the statistics the block prints."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks
    for block in blocks:
        namespace: dict = {}
        torch.manual_seed(0)  # the block's torch.randn: a draw whose loss is not 0
        exec(compile(block, str(README), "exec"), namespace)
        # the block's call: triplet_loss(embeddings, labels, margin=0.2, mining="semi-hard")
        embeddings, labels = namespace["embeddings"], namespace["labels"].tolist()
        want, want_stats = loop_loss(embeddings, labels, margin=0.2, mining="semi-hard")
        assert float(want) > 0.0  # else a loss stuck at 0 would pass
        loss, stats = namespace["loss"], namespace["stats"]
        assert math.isclose(float(loss), float(want), rel_tol=1e-5)
        for key in ("active_fraction", "semihard_fraction", "dropped_pairs", "triplets"):
            assert math.isclose(getattr(stats, key), want_stats[key], abs_tol=1e-9), key
        # the module holds the same options: with the curriculum's first values it is the
        # function at that offset
        values = namespace["curriculum"].at(0)
        assert values["offset"] > 0.0
        module_loss, _ = namespace["loss_fn"](embeddings, namespace["labels"], **values)
        offset_want, _ = loop_loss(
            embeddings, labels, margin=0.2, mining="semi-hard", offset=values["offset"]
        )
        assert math.isclose(float(module_loss), float(offset_want), rel_tol=1e-5)
        assert namespace["step"] == namespace["epochs"] * len(namespace["sampler"])


@pytest.mark.parametrize(
    "path, ignored",
    [
        ("docs/search/runs/mined_filtered.trec.gz", False),  # published: make docs-search
        ("runs/search-ablation/mined_filtered.trec", True),  # a run's own output
        ("runs/demo/report.md", True),
    ],
)
def test_the_published_search_run_files_are_not_ignored(path, ignored):
    """Regression: `runs/` in .gitignore also ignored docs/search/runs/, so the run files the
    README and docs/search.md say are published could not be committed."""
    root = README.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    check = subprocess.run(
        ["git", "-C", str(root), "check-ignore", "--no-index", "-q", path], check=False
    )
    assert check.returncode in (0, 1), check
    assert (check.returncode == 0) == ignored, path
