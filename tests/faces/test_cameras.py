"""Cameras: named specs, their chain of degradations, and the training family's draws."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tripletkit.faces.cameras import Camera, CameraFamily, view_rng
from tripletkit.faces.chips import low_resolution


def photo(seed: int = 0, mode: str = "L", size: tuple[int, int] = (46, 56)) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_shrink_alone_is_issue_9s_low_resolution(mode):
    image = photo(1, mode)
    for factor in (1, 2, 4, 5):
        got = Camera.parse(f"x{factor}").apply(image)
        assert np.array_equal(np.asarray(got), np.asarray(low_resolution(image, factor)))


@pytest.mark.parametrize("spec", ["x1", "x4", "x4q20", "x3b1n4q30", "x2.5", "x1b0.5", "x6n8"])
def test_specs_parse_back_and_keep_mode_and_size(spec):
    camera = Camera.parse(spec)
    assert camera.spec == spec
    for mode in ("L", "RGB"):
        image = photo(2, mode)
        out = camera.apply(image)
        assert out.mode == mode and out.size == image.size


def test_each_part_changes_the_image_and_jpeg_is_lossy():
    image = photo(3, "RGB", (80, 96))
    base = np.asarray(image, dtype=float)
    for spec in ("x4", "x1b1", "x1n5", "x1q10"):
        assert np.abs(np.asarray(Camera.parse(spec).apply(image), dtype=float) - base).mean() > 1
    assert Camera.parse("x1").apply(image).tobytes() == image.tobytes()
    # a named camera is deterministic (its noise has a fixed seed)
    assert (
        Camera.parse("x2n6").apply(image).tobytes() == Camera.parse("x2n6").apply(image).tobytes()
    )


@pytest.mark.parametrize("spec", ["4", "x", "x0.5", "xq20", "x4q0q1", "x4q99", "y4", "x4 q20"])
def test_bad_specs_name_the_spec(spec):
    with pytest.raises(ValueError, match="camera|factor|quality"):
        Camera.parse(spec)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), image=st.integers(0, 400), view=st.integers(0, 16))
def test_family_draws_stay_in_their_ranges_and_repeat_by_seed(seed, image, view):
    family = CameraFamily(
        factor=(1.5, 6.0),
        blur=(0.2, 1.0),
        blur_share=0.5,
        noise=(2, 8),
        noise_share=0.5,
        quality=(10, 60),
        jpeg_share=0.5,
    )
    camera = family.draw(view_rng(seed, image, view))
    assert camera == family.draw(view_rng(seed, image, view))
    assert 1.5 <= camera.factor <= 6.0
    assert camera.blur == 0 or 0.2 <= camera.blur <= 1.0
    assert camera.noise == 0 or 2 <= camera.noise <= 8
    assert camera.quality == 0 or 10 <= camera.quality <= 60
    assert Camera.parse(camera.spec).spec == camera.spec
