"""Aligned chips: the low-resolution transform and the chip cache's key."""

from __future__ import annotations

import numpy as np
import pytest
from faces_fixtures import make_faces
from PIL import Image

from tripletkit.faces import chips
from tripletkit.faces.chips import ChipSettings, load_chips, low_resolution

pytest.importorskip("dlib")


def test_low_resolution_keeps_size_and_mode_and_removes_detail():
    board = (np.indices((112, 92)).sum(axis=0) % 2 * 255).astype(np.uint8)
    image = Image.fromarray(board)
    low = low_resolution(image, 4)
    assert low.size == image.size and low.mode == "L"
    # a one-pixel checkerboard shrunk 4x is flat gray: its detail is gone for good
    assert np.asarray(low, dtype=float).std() < 0.1 * board.std()
    flat = Image.new("RGB", (40, 30), (10, 200, 90))
    assert np.array_equal(np.asarray(low_resolution(flat, 4)), np.asarray(flat))
    assert np.array_equal(np.asarray(low_resolution(image, 1)), board)


def test_low_resolution_is_shrink_then_enlarge_with_bilinear():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (112, 92), dtype=np.uint8))
    expected = image.resize((23, 28), Image.Resampling.BILINEAR).resize(
        (92, 112), Image.Resampling.BILINEAR
    )
    assert np.array_equal(np.asarray(low_resolution(image, 4)), np.asarray(expected))


def test_low_resolution_factor_below_one_is_an_error():
    with pytest.raises(ValueError, match="factor must be >= 1"):
        low_resolution(Image.new("L", (8, 8)), 0)


def test_chips_are_computed_once_then_read_from_the_cache(tmp_path, monkeypatch):
    faces = make_faces(tmp_path / "faces", identities=3, per_id=2)
    first = load_chips(str(faces), cache=tmp_path / "cache", progress=False)
    assert first.images.shape == (6, 3, 150, 150) and str(first.images.dtype) == "torch.uint8"
    assert first.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert len(list((tmp_path / "cache" / "chips").glob("*.npz"))) == 1

    def no_computing(*args, **kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr(chips, "_compute", no_computing)
    again = load_chips(str(faces), cache=tmp_path / "cache", progress=False)
    assert np.array_equal(again.images.numpy(), first.images.numpy())
    assert again.paths == first.paths
    # the same memory layout too: a channels-last tensor sends convolutions down another code
    # path whose rounding differs, and fine-tuning then differed between a run that computed
    # its chips and one that read them from the cache
    assert first.images.is_contiguous() and again.images.is_contiguous()
    assert first.images.stride() == again.images.stride()


def test_cache_key_follows_file_bytes_settings_and_versions(tmp_path, monkeypatch):
    faces = make_faces(tmp_path / "faces", identities=2, per_id=2)
    files = sorted(faces.rglob("*.png"))
    key = chips.cache_key(faces, files, ChipSettings())
    assert chips.cache_key(faces, files, ChipSettings()) == key
    assert chips.cache_key(faces, files, ChipSettings(lowres=4)) != key
    assert chips.cache_key(faces, files, ChipSettings(upsample=0)) != key
    monkeypatch.setattr(chips, "_version", lambda package: "0.0-other")
    assert chips.cache_key(faces, files, ChipSettings()) != key
    monkeypatch.undo()
    Image.new("L", (24, 20), 7).save(files[0])  # same name, other bytes
    assert chips.cache_key(faces, files, ChipSettings()) != key


@pytest.mark.parametrize("damage", ["garbage", "first-half", "last-half"])
def test_a_broken_cache_file_is_computed_again(tmp_path, damage):
    """Regression (issue 20, item 14): a cache file cut short inside its zip directory raised
    zipfile.BadZipFile from np.load instead of being computed again."""
    faces = make_faces(tmp_path / "faces", identities=2, per_id=2)
    first = load_chips(str(faces), cache=tmp_path / "cache", progress=False)
    (stored,) = (tmp_path / "cache" / "chips").glob("*.npz")
    data = stored.read_bytes()
    cut = {"garbage": b"cut short", "first-half": data[: len(data) // 2]}
    stored.write_bytes(cut.get(damage, data[len(data) // 2 :]))
    again = load_chips(str(faces), cache=tmp_path / "cache", progress=False)
    assert np.array_equal(again.images.numpy(), first.images.numpy())


def test_an_unreadable_image_is_named_in_a_warning_or_error(tmp_path):
    faces = make_faces(tmp_path / "faces", identities=2, per_id=2)
    bad = faces / "person00" / "9.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.warns(UserWarning, match="9.png"):
        data = load_chips(str(faces), cache=tmp_path / "cache", progress=False)
    assert len(data) == 4
    with pytest.raises(ValueError, match="9.png"):
        load_chips(str(faces), cache=tmp_path / "cache", strict=True, progress=False)


def test_the_same_files_elsewhere_share_the_cache_and_name_their_own_paths(tmp_path, monkeypatch):
    # a fresh checkout (another virtual environment holds ORL elsewhere) reads the chips cached
    # by the first: their paths must be where the files are now, not where they were
    import shutil

    faces = make_faces(tmp_path / "a", identities=2, per_id=2)
    (faces / "person01" / "9.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning):
        load_chips(str(faces), cache=tmp_path / "cache", progress=False)
    moved = tmp_path / "b"
    shutil.copytree(faces, moved)

    def no_computing(*args, **kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr(chips, "_compute", no_computing)
    with pytest.warns(UserWarning, match=str(moved / "person01" / "9.png")):
        again = load_chips(str(moved), cache=tmp_path / "cache", progress=False)
    assert again.paths == [str(moved / f"person0{i}" / f"{j}.png") for i in (0, 1) for j in (0, 1)]
