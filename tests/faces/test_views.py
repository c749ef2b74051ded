"""Degraded training views: one chip per (image, view), seeded, cached, in the chips' order;
and the chip cache's recovery from a damaged file."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tripletkit.faces.cameras import Camera, CameraFamily, view_rng
from tripletkit.faces.chips import ChipSettings, load_chips
from tripletkit.faces.images import orl_root
from tripletkit.faces.views import ViewSettings, load_views

pytest.importorskip("dlib")

FAMILY = CameraFamily(factor=(2.0, 5.0), quality=(10, 50), jpeg_share=0.5)


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    """Three ORL people with two photos each."""
    root = tmp_path_factory.mktemp("views") / "people"
    for person in ("s1", "s2", "s3"):
        (root / person).mkdir(parents=True)
        for name in ("1.pgm", "2.pgm"):
            shutil.copy(orl_root() / person / name, root / person / name)
    return root


@pytest.mark.parametrize("align", ["box", "detect"])
def test_views_are_seeded_cached_and_in_the_chips_order(people, tmp_path, align):
    settings = ViewSettings(FAMILY, 3, seed=5, detector="hog", align=align)
    views = load_views(str(people), settings, cache=tmp_path, progress=False)
    chips = load_chips(str(people), ChipSettings(detector="hog"), cache=tmp_path, progress=False)
    assert views.paths == chips.paths and views.labels.tolist() == chips.labels.tolist()
    assert tuple(views.chips.shape) == (6, 3, 3, 150, 150)
    # view v of image i went through the camera drawn by view_rng(seed, i, v)
    assert views.cameras[4][2] == FAMILY.draw(view_rng(5, 4, 2)).spec
    assert all(Camera.parse(spec).factor >= 2.0 for row in views.cameras for spec in row)
    # the views differ from each other and from the clean chip
    assert not np.array_equal(views.chips[0, 0].numpy(), views.chips[0, 1].numpy())
    assert not np.array_equal(views.chips[0, 0].numpy(), chips.images[0].numpy())
    again = load_views(str(people), settings, cache=tmp_path, progress=False)
    assert np.array_equal(again.chips.numpy(), views.chips.numpy())
    assert len(list((tmp_path / "views").glob("*.npz"))) == 1
    other = load_views(str(people), ViewSettings(FAMILY, 3, seed=6), cache=tmp_path, progress=False)
    assert not np.array_equal(other.chips.numpy(), views.chips.numpy())


def test_bad_view_settings_are_errors():
    with pytest.raises(ValueError, match="views must be at least 1"):
        ViewSettings(FAMILY, 0)
    with pytest.raises(ValueError, match="align must be one of"):
        ViewSettings(FAMILY, 2, align="landmarks")
    with pytest.raises(ValueError, match="detector must be one of"):
        ViewSettings(FAMILY, 2, detector="mtcnn")


def test_a_damaged_chip_cache_is_computed_again(people, tmp_path):
    """Regression (issue 20 item 14): a truncated cache file raised BadZipFile."""
    first = load_chips(str(people), ChipSettings(detector="hog"), cache=tmp_path, progress=False)
    (cached,) = (tmp_path / "chips").glob("*.npz")
    cached.write_bytes(cached.read_bytes()[:100])
    again = load_chips(str(people), ChipSettings(detector="hog"), cache=tmp_path, progress=False)
    assert np.array_equal(again.images.numpy(), first.images.numpy())
