import pytest
from PIL import Image

from tripletkit.faces.detect import face_cropper
from tripletkit.faces.images import load_identities, orl_root


def photo(person: int, left: int = 150, top: int = 40) -> Image.Image:
    """An ORL face pasted into a larger grey 'photo'."""
    face = Image.open(orl_root() / f"s{person}" / "1.pgm").convert("L").resize((184, 224))
    canvas = Image.new("L", (400, 300), 90)
    canvas.paste(face, (left, top))
    return canvas


@pytest.mark.parametrize("person", [1, 9, 21, 33])
def test_finds_the_face_in_a_photo(person):
    crop = face_cropper()(photo(person))
    assert crop is not None
    assert 150 <= crop.size[0] <= 300 and 150 <= crop.size[1] <= 300


def test_no_face_gives_none():
    assert face_cropper()(Image.new("L", (200, 200), 128)) is None


def test_images_without_a_face_are_skipped_with_a_warning(tmp_path):
    for person in (1, 2):
        folder = tmp_path / f"p{person}"
        folder.mkdir()
        photo(person).save(folder / "a.png")
        photo(person, left=20).save(folder / "b.png")
    Image.new("L", (200, 200), 128).save(tmp_path / "p2" / "empty.png")
    with pytest.warns(UserWarning, match=r"empty.png: no face found"):
        data = load_identities(tmp_path, (56, 46), crop=face_cropper())
    assert len(data) == 4
