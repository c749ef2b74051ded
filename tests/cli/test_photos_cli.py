"""embed / cluster / verify on ordinary photos with the pretrained dlib descriptor: real photos
(the face_recognition 1.3.0 test photos), several faces per photo, and every kind of bad file."""

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from photos import fetch_photos
from PIL import Image

from tripletkit.cli import main
from tripletkit.faces.photos import list_photos, read_faces


@pytest.fixture(scope="module")
def album(tmp_path_factory) -> Path:
    """The four photos and one with obama and biden side by side (obama on the left)."""
    photos = fetch_photos()
    folder = tmp_path_factory.mktemp("album")
    for name, path in photos.items():
        shutil.copy(path, folder / name)
    left, right = Image.open(photos["obama.jpg"]), Image.open(photos["biden.jpg"])
    canvas = Image.new(
        "RGB", (left.width + right.width + 40, max(left.height, right.height)), "white"
    )
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + 40, 0))
    canvas.save(folder / "two.jpg")
    return folder


def png_header(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG declaring width x height gray pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def verify(capsys, *args: str) -> dict:
    assert main(["verify", *args, "--model", "dlib"]) == 0
    return json.loads(capsys.readouterr().out)


def test_verify_same_person_closer_than_different_people(album, capsys):
    same = [
        verify(capsys, str(album / a), str(album / b))
        for a, b in [("obama.jpg", "obama2.jpg"), ("obama.jpg", "obama3.jpg")]
    ]
    different = verify(capsys, str(album / "obama.jpg"), str(album / "biden.jpg"))
    assert all(r["same_person"] for r in same)
    assert not different["same_person"]
    assert max(r["distance"] for r in same) < different["distance"]
    assert "ORL" in different["calibration"]  # says what the threshold was calibrated on


def test_verify_with_detection_takes_the_largest_face_of_each_photo(album, capsys):
    # in two.jpg biden's face (right) is larger than obama's
    with_biden = verify(capsys, str(album / "two.jpg"), str(album / "biden.jpg"), "--detect")
    with_obama = verify(capsys, str(album / "two.jpg"), str(album / "obama.jpg"), "--detect")
    chosen = with_biden["faces"][0]
    assert chosen["faces_in_photo"] == 2 and chosen["box"][0] > 500  # the right-hand face
    assert with_biden["same_person"] and not with_obama["same_person"]


def test_embed_every_face_of_every_photo_with_boxes(album, tmp_path):
    out = tmp_path / "e.npz"
    assert (
        main(["embed", str(album), "--model", "dlib", "--detect", "--quiet", "--out", str(out)])
        == 0
    )
    saved = np.load(out)
    names = [Path(p).name for p in saved["paths"]]
    assert sorted(names) == sorted(
        ["biden.jpg", "obama.jpg", "obama2.jpg", "obama3.jpg", "two.jpg", "two.jpg"]
    )
    assert saved["embeddings"].shape == (6, 128)
    np.testing.assert_allclose(np.linalg.norm(saved["embeddings"], axis=1), 1.0, atol=1e-5)
    two = [i for i, n in enumerate(names) if n == "two.jpg"]
    assert saved["faces"][two].tolist() == [0, 1]
    left, right = saved["boxes"][two]
    assert left[2] <= right[0]  # left to right, boxes in photo pixels
    # the left face of two.jpg is obama: nearest to obama.jpg; the right one is biden
    emb = saved["embeddings"]
    obama, biden = names.index("obama.jpg"), names.index("biden.jpg")
    assert emb[two[0]] @ emb[obama] > emb[two[0]] @ emb[biden]
    assert emb[two[1]] @ emb[biden] > emb[two[1]] @ emb[obama]


def test_cluster_groups_the_photos_by_person(album, tmp_path):
    out = tmp_path / "c"
    assert (
        main(["cluster", str(album), "--model", "dlib", "--detect", "--quiet", "--out", str(out)])
        == 0
    )
    groups = json.loads((out / "clusters.json").read_text())
    people = [
        sorted({(Path(f["path"]).name, f["face"]) for f in members}) for members in groups.values()
    ]
    assert sorted(people, key=len) == [
        [("biden.jpg", 0), ("two.jpg", 1)],
        [("obama.jpg", 0), ("obama2.jpg", 0), ("obama3.jpg", 0), ("two.jpg", 0)],
    ]
    assert (out / "clusters.png").stat().st_size > 0


def bad_photos(folder: Path, photo: Path) -> dict[str, str]:
    """Every kind of bad photo, and what the warning must say about it."""
    folder.mkdir()
    (folder / "truncated.jpg").write_bytes(photo.read_bytes()[:20000])
    Image.new("RGB", (1, 1)).save(folder / "tiny.png")
    (folder / "huge.png").write_bytes(png_header(20000, 20000))
    (folder / "gone.jpg").symlink_to(folder / "nowhere.jpg")
    (folder / "notes.jpg").write_text("not a photo")
    Image.new("L", (200, 200), 128).save(folder / "blank.png")  # no face in it
    Image.open(photo).convert("CMYK").save(folder / "cmyk.jpg")
    gray16 = (np.asarray(Image.open(photo).convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(folder / "deep.png")
    return {
        "truncated.jpg": "truncated",
        "tiny.png": "no face found",
        "huge.png": "too large",
        "gone.jpg": "broken symbolic link",
        "notes.jpg": "not an image",
        "blank.png": "no face found",
    }


def test_each_bad_photo_is_a_warning_naming_it_and_good_ones_are_used(album, tmp_path, capsys):
    expected = bad_photos(tmp_path / "bad", album / "obama2.jpg")
    out = tmp_path / "e.npz"
    with pytest.warns(UserWarning) as caught:
        code = main(
            [
                "embed",
                str(tmp_path / "bad"),
                "--model",
                "dlib",
                "--detect",
                "--quiet",
                "--out",
                str(out),
            ]
        )
    assert code == 0
    messages = [str(w.message) for w in caught]
    for name, reason in expected.items():
        assert any(name in m and reason in m for m in messages), (name, messages)
    # the CMYK JPEG and the 16-bit PNG are ordinary photos of one face each
    assert sorted(Path(p).name for p in np.load(out)["paths"]) == ["cmyk.jpg", "deep.png"]


def test_strict_stops_naming_every_bad_photo_and_writes_nothing(album, tmp_path, capsys):
    expected = bad_photos(tmp_path / "bad", album / "obama2.jpg")
    out = tmp_path / "e.npz"
    code = main(
        [
            "embed",
            str(tmp_path / "bad"),
            "--model",
            "dlib",
            "--detect",
            "--strict",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for name in expected:
        assert name in err
    assert not out.exists()


def test_verify_a_photo_without_a_face_is_a_clear_error(album, tmp_path, capsys):
    Image.new("RGB", (300, 300), "gray").save(tmp_path / "wall.jpg")
    code = main(
        [
            "verify",
            str(tmp_path / "wall.jpg"),
            str(album / "obama.jpg"),
            "--model",
            "dlib",
            "--detect",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "wall.jpg: no face found" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["embed", "{album}", "--model", "nonsense"], "not 'dlib'"),
        (["embed", "{tmp}/missing", "--model", "dlib"], "photo folder not found"),
        (["embed", "{tmp}", "--model", "dlib"], "no image files"),
        (["verify", "{tmp}/a.jpg", "{album}/obama.jpg", "--model", "dlib"], "file not found"),
        (["embed", "{album}", "--model", "dlib", "--detector", "cnn"], "cnn needs --detect"),
    ],
)
def test_bad_arguments_name_what_is_wrong(album, tmp_path, capsys, args, message):
    filled = [a.format(album=album, tmp=tmp_path) for a in args]
    assert main(filled) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_read_faces_without_detection_is_one_face_per_photo(album):
    paths = list_photos(album)
    faces, inputs = read_faces(paths, lambda photo, face: _gray(photo), progress=False)
    assert [f.name for f in faces] == [str(p) for p in paths]
    assert inputs.shape == (len(paths), 1, 8, 8) and not any(f.detected for f in faces)


def _gray(photo: Image.Image):
    import torch

    return torch.from_numpy(np.asarray(photo.convert("L").resize((8, 8))).copy())[None]


def test_embed_without_detection_records_the_face_the_dlib_model_took(album, tmp_path):
    # one face per photo: the best face found, aligned, and its box (not the whole photo)
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(album / "obama.jpg", folder)
    got = {}
    for flag in ([], ["--detect"]):
        out = tmp_path / f"e{len(flag)}.npz"
        args = ["embed", str(folder), "--model", "dlib", *flag, "--quiet", "--out", str(out)]
        assert main(args) == 0
        got[bool(flag)] = np.load(out)
    width, height = Image.open(album / "obama.jpg").size
    box = got[False]["boxes"][0].tolist()
    assert box == got[True]["boxes"][0].tolist() and box != [0, 0, width, height]
    np.testing.assert_allclose(got[False]["embeddings"], got[True]["embeddings"], atol=1e-6)
