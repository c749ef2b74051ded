import numpy as np
import pytest
import torch
from faces_fixtures import make_faces
from PIL import Image

from tripletkit.data.images import (
    augment,
    identity_folds,
    list_identities,
    load_identities,
    load_unlabelled,
    orl_root,
    read_image,
    read_pairs,
)


def test_loads_a_folder_per_identity(tmp_path):
    make_faces(tmp_path / "faces", identities=3, per_id=2)
    data = load_identities(tmp_path / "faces", (12, 10))
    assert data.images.shape == (6, 1, 12, 10) and data.images.dtype == torch.uint8
    assert data.names == ["person00", "person01", "person02"]
    assert data.labels.tolist() == [0, 0, 1, 1, 2, 2]
    rgb = load_identities(tmp_path / "faces", (12, 10), channels=3)
    assert rgb.images.shape == (6, 3, 12, 10)


def test_corrupt_image_is_skipped_with_a_warning_or_an_error_when_strict(tmp_path):
    root = make_faces(tmp_path / "faces", identities=2, per_id=3)
    bad = root / "person01" / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.warns(UserWarning, match=r"skipped 1 image\(s\): .*broken.png"):
        data = load_identities(root, (8, 8))
    assert len(data) == 6
    with pytest.raises(ValueError, match="broken.png"):
        load_identities(root, (8, 8), strict=True)


def test_identity_with_one_image_is_kept_as_a_singleton(tmp_path):
    root = make_faces(tmp_path / "faces", identities=2, per_id=3)
    (root / "loner").mkdir()
    Image.new("L", (10, 10), 128).save(root / "loner" / "a.png")
    data = load_identities(root, (8, 8))
    assert (data.labels == data.names.index("loner")).sum() == 1


@pytest.mark.parametrize("make", ["missing", "file", "empty", "no_images"])
def test_missing_or_empty_folder_is_an_error_naming_it(tmp_path, make):
    path = tmp_path / "faces"
    if make == "file":
        path.write_text("x")
    elif make == "empty":
        path.mkdir()
    elif make == "no_images":
        (path / "someone").mkdir(parents=True)
        (path / "someone" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=str(path)):
        list_identities(path)


def test_orl_ships_40_people_with_10_images_and_skips_the_stray_jpeg():
    files = list_identities(orl_root(), {".pgm"})
    assert len(files) == 40 and all(len(f) == 10 for _, f in files)
    assert not any(p.suffix == ".jpg" for _, fs in files for p in fs)


def test_identity_folds_are_disjoint_and_cover_everyone():
    parts = identity_folds(40, 4, seed=0)
    assert [len(p) for p in parts] == [10, 10, 10, 10]
    assert sorted(np.concatenate(parts).tolist()) == list(range(40))
    assert [p.tolist() for p in identity_folds(40, 4, seed=0)] == [p.tolist() for p in parts]
    with pytest.raises(ValueError, match="folds"):
        identity_folds(3, 4, seed=0)


def test_pairs_file(tmp_path):
    data = load_identities(make_faces(tmp_path / "faces", identities=2, per_id=3), (8, 8))
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1 2\nperson00 1 3\nperson00 2 person01 1\n")
    index, same = read_pairs(pairs, data)
    assert index.tolist() == [[0, 2], [1, 3]] and same.tolist() == [True, False]
    pairs.write_text("person00 1 3\nperson09 1 2\n")
    with pytest.raises(ValueError, match=r"pairs.txt:2: unknown identity 'person09'"):
        read_pairs(pairs, data)
    pairs.write_text("person00 1 7\n")
    with pytest.raises(ValueError, match=r"pairs.txt:1: 'person00' has no image number '7'"):
        read_pairs(pairs, data)


def test_unlabelled_folder_and_single_image(tmp_path):
    root = make_faces(tmp_path / "photos", identities=2, per_id=2)
    data = load_unlabelled(root, (8, 8))
    assert len(data) == 4 and (data.labels == -1).all()
    assert read_image(root / "person00" / "0.png", (8, 8)).shape == (1, 8, 8)
    with pytest.raises(ValueError, match="missing.png"):
        read_image(root / "missing.png", (8, 8))


def test_augment_is_seeded_and_keeps_the_shape():
    images = torch.randint(0, 256, (5, 1, 16, 12), dtype=torch.uint8)
    a = augment(images, torch.Generator().manual_seed(3))
    b = augment(images, torch.Generator().manual_seed(3))
    assert a.shape == (5, 1, 16, 12) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, augment(images, torch.Generator().manual_seed(4)))
