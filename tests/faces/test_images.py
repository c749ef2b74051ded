import io

import numpy as np
import pytest
import torch
from faces_fixtures import make_faces
from PIL import Image, ImageOps

from tripletkit.faces.images import (
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
    with pytest.warns(UserWarning, match=r"skipped .*broken.png: unreadable"):
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


def _noise(size=(6, 5), mode="L", seed=0) -> Image.Image:
    shape = size if mode == "L" else (*size, 3)
    array = (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)
    return Image.fromarray(array, mode)


def _problems(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, UserWarning)]


def test_each_unusable_image_is_its_own_warning_naming_it(tmp_path):
    root = make_faces(tmp_path / "faces", identities=2, per_id=3)
    (root / "person00" / "empty.png").write_bytes(b"")
    (root / "person01" / "text.jpg").write_text("not a picture")
    with pytest.warns(UserWarning) as record:
        data = load_identities(root, (8, 8))
    messages = _problems(record)
    assert len(data) == 6 and len(messages) == 2
    assert any("empty.png" in m for m in messages) and any("text.jpg" in m for m in messages)


def test_decompression_bomb_is_a_warning_not_a_traceback(tmp_path, monkeypatch):
    # Pillow refuses images over twice MAX_IMAGE_PIXELS (179 MP by default) with
    # DecompressionBombError, which is not an OSError; a 24 x 20 image over a limit of 100
    # pixels stands in for a 200-megapixel photo
    root = make_faces(tmp_path / "faces", identities=2, per_id=2, size=(6, 5))
    Image.new("L", (24, 20), 7).save(root / "person00" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.warns(UserWarning, match=r"huge.png: unreadable \(DecompressionBombError"):
        data = load_identities(root, (8, 8))
    assert len(data) == 4
    with pytest.raises(ValueError, match="huge.png"):
        load_identities(root, (8, 8), strict=True)
    with pytest.raises(ValueError, match="huge.png.*DecompressionBombError"):
        read_image(root / "person00" / "huge.png", (8, 8))
    with pytest.warns(UserWarning, match="huge.png"):
        assert len(load_unlabelled(root, (8, 8))) == 4


def test_truncated_jpeg_is_a_warning(tmp_path):
    root = make_faces(tmp_path / "faces", identities=2, per_id=2)
    buffer = io.BytesIO()
    _noise((16, 16), "RGB").save(buffer, "JPEG")
    (root / "person01" / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.warns(UserWarning, match=r"cut.jpg: unreadable \(OSError"):
        assert len(load_identities(root, (8, 8))) == 4


def test_any_exception_while_reading_one_image_is_a_warning(tmp_path):
    root = make_faces(tmp_path / "faces", identities=2, per_id=2)

    def crop(image):
        if image.size == (20, 24):
            raise RuntimeError("detector crashed")
        return image

    Image.new("L", (10, 10), 3).save(root / "person00" / "small.png")
    with pytest.warns(UserWarning) as record:
        data = load_identities(root, (8, 8), crop=crop)
    assert data.paths == [str(root / "person00" / "small.png")]
    messages = _problems(record)
    assert len(messages) == 4
    assert all("unreadable (RuntimeError: detector crashed)" in m for m in messages)


def test_odd_modes_and_sizes_load(tmp_path):
    root = tmp_path / "faces"
    (root / "x").mkdir(parents=True)
    Image.new("CMYK", (6, 5), (10, 20, 30, 40)).save(root / "x" / "cmyk.jpg")
    Image.new("L", (1, 1), 99).save(root / "x" / "one_pixel.png")
    Image.new("RGBA", (4, 4), (1, 2, 3, 0)).save(root / "x" / "alpha.png")
    _noise().convert("P").save(root / "x" / "palette.gif")
    data = load_identities(root, (4, 3), channels=3)
    assert len(data) == 4 and data.images.shape == (4, 3, 4, 3)
    assert (data.images[data.paths.index(str(root / "x" / "one_pixel.png"))] == 99).all()


def test_sixteen_bit_png_is_scaled_not_clipped_to_white(tmp_path):
    levels = np.array([[0, 257 * 64], [257 * 128, 65535]], dtype=np.uint16)
    Image.fromarray(levels).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    image = read_image(tmp_path / "deep.png", (2, 2))
    # nearest-equivalent: resizing 2 x 2 to 2 x 2 keeps the pixels
    assert image[0].tolist() == [[0, 64], [128, 255]]


def test_exif_orientation_is_applied_before_anything_else(tmp_path):
    upright = _noise((6, 4))  # 4 wide, 6 high
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # 6 wide, 4 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(tmp_path / "rotated.png", exif=exif)
    upright.save(tmp_path / "upright.png")
    assert ImageOps.exif_transpose(Image.open(tmp_path / "rotated.png")).size == (4, 6)
    got = read_image(tmp_path / "rotated.png", (6, 4))
    assert torch.equal(got, read_image(tmp_path / "upright.png", (6, 4)))


def test_broken_symlinks_are_reported_by_name(tmp_path):
    root = make_faces(tmp_path / "faces", identities=2, per_id=2)
    (root / "person01" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (root / "person09").symlink_to(tmp_path / "no_folder")
    with pytest.warns(UserWarning) as record:
        data = load_identities(root, (8, 8))
    messages = _problems(record)
    assert len(data) == 4
    assert any("gone.png: symbolic link to nowhere" in m for m in messages)
    assert any("person09: symbolic link to nowhere" in m for m in messages)
    with pytest.warns(UserWarning, match="gone.png: symbolic link to nowhere"):
        assert len(load_unlabelled(root, (8, 8))) == 4
    with pytest.raises(ValueError, match="gone.png"):
        load_identities(root, (8, 8), strict=True)
    with pytest.raises(ValueError, match="gone.png: symbolic link to nowhere"):
        read_image(root / "person01" / "gone.png", (8, 8))


def test_misplaced_images_are_reported(tmp_path):
    root = make_faces(tmp_path / "faces", identities=2, per_id=2)
    (root / "person00" / "more").mkdir()
    Image.new("L", (5, 5)).save(root / "person00" / "more" / "a.png")
    Image.new("L", (5, 5)).save(root / "stray.png")
    (root / "person01" / "notes.txt").write_text("not an image: left alone")
    with pytest.warns(UserWarning) as record:
        data = load_identities(root, (8, 8))
    messages = _problems(record)
    assert len(data) == 4 and len(messages) == 2
    assert any("more: a folder inside an identity's folder" in m for m in messages)
    assert any("stray.png: not in an identity's folder" in m for m in messages)


def _faces_with_a_broken_second_image(tmp_path):
    root = make_faces(tmp_path / "faces", identities=2, per_id=4)
    (root / "person00" / "1.png").write_bytes(b"broken")
    with pytest.warns(UserWarning, match="1.png"):
        return root, load_identities(root, (8, 8))


def test_pairs_number_images_among_the_files_present(tmp_path):
    root, data = _faces_with_a_broken_second_image(tmp_path)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("person00 1 3\nperson00 4 person01 2\n")
    index, same = read_pairs(pairs, data)
    named = [[data.paths[i] for i in row] for row in index.tolist()]
    p0, p1 = root / "person00", root / "person01"
    assert named == [[str(p0 / "0.png"), str(p0 / "2.png")], [str(p0 / "3.png"), str(p1 / "1.png")]]
    assert same.tolist() == [True, False]


def test_pair_with_an_unreadable_image_fails_naming_file_line_and_image(tmp_path):
    _, data = _faces_with_a_broken_second_image(tmp_path)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("person00 1 3\nperson00 2 person01 1\n")
    with pytest.raises(ValueError, match=r"pairs.txt:2: image 2 of 'person00' \(.*1.png\) was not"):
        read_pairs(pairs, data)


@pytest.mark.parametrize(
    "text, message",
    [
        (b"person00 1 2\nperson00 1 \xff3\n", r"pairs.txt:2: not valid UTF-8"),
        (b"person00 1 2\nperson00 2 1\n", r"pairs.txt:2: the same pair as line 1"),
        (b"person00 2 2\n", r"pairs.txt:1: pairs an image with itself"),
        (b"person00 1 2 3 4 5\n", r"pairs.txt:1: expected .* got 6 field"),
        (b"person00 1 \xd9\xa1\n", r"pairs.txt:1: 'person00' has no image number"),
        (b"person00 0 1\n", r"pairs.txt:1: 'person00' has no image number '0'"),
        (b"\n\n", r"pairs.txt: no pairs"),
    ],
)
def test_damaged_pairs_file_names_file_and_line(tmp_path, text, message):
    data = load_identities(make_faces(tmp_path / "faces", identities=2, per_id=3), (8, 8))
    pairs = tmp_path / "pairs.txt"
    pairs.write_bytes(text)
    with pytest.raises(ValueError, match=message):
        read_pairs(pairs, data)


def test_pairs_file_header_crlf_and_bom_are_accepted(tmp_path):
    data = load_identities(make_faces(tmp_path / "faces", identities=2, per_id=3), (8, 8))
    pairs = tmp_path / "pairs.txt"
    pairs.write_bytes("\ufeff1\t2\r\nperson00\t1\t3\r\n\r\nperson00 2 person01 1\r\n".encode())
    index, same = read_pairs(pairs, data)
    assert index.tolist() == [[0, 2], [1, 3]] and same.tolist() == [True, False]
