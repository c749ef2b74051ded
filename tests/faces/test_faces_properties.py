"""Property tests of the faces inputs: LFW-style pairs files and folder-per-identity image sets
with random damage. A damaged pairs file is an error naming the file and the damaged line; a
damaged image folder loads its good images and names each bad entry in a warning (or, strict,
in one error)."""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from faces_fixtures import make_faces
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tripletkit.faces.images import ImageSet, load_identities, load_unlabelled, read_pairs

PER_ID = 4  # image numbers stay single digits: every strict prefix of a pair line is invalid
BROKEN = ("person02", 2)  # the second image of person02 is unreadable


@dataclass(frozen=True)
class Pair:
    """One pair line: (name, image number) twice."""

    a: tuple[str, int]
    b: tuple[str, int]

    @property
    def key(self) -> frozenset[tuple[str, int]]:
        return frozenset((self.a, self.b))

    def fields(self, short: bool) -> list[str]:
        """``name i j`` when ``short`` and both are one person, else ``name1 i name2 j``."""
        if short and self.a[0] == self.b[0]:
            return [self.a[0], str(self.a[1]), str(self.b[1])]
        return [self.a[0], str(self.a[1]), self.b[0], str(self.b[1])]


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> ImageSet:
    root = make_faces(tmp_path_factory.mktemp("pairs") / "faces", identities=3, per_id=PER_ID)
    name, number = BROKEN
    (root / name / f"{number - 1}.png").write_bytes(b"not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_identities(root, (8, 8))


def _images() -> list[tuple[str, int]]:
    people = [f"person{i:02d}" for i in range(3)]
    return [(p, n) for p in people for n in range(1, PER_ID + 1) if (p, n) != BROKEN]


GOOD_PAIRS = [Pair(a, b) for i, a in enumerate(_images()) for b in _images()[i + 1 :]]
DAMAGE = ["none", "truncate", "utf8", "unknown", "number", "duplicate", "fields", "self", "broken"]


@st.composite
def pairs_files(draw, kind: str) -> tuple[list[bytes], int | None]:
    """(lines of a pairs file with damage ``kind``, number of the damaged line or None)."""
    good = draw(
        st.lists(st.sampled_from(GOOD_PAIRS), min_size=1, max_size=6, unique_by=lambda p: p.key)
    )
    at = draw(st.integers(0, len(good) - 1))
    sep = draw(st.sampled_from([" ", "\t", "  "]))
    rows = [sep.join(p.fields(draw(st.booleans()))).encode() for p in good]
    damaged: bytes | None = None
    if kind == "truncate":
        damaged = rows[at][: draw(st.integers(1, len(rows[at]) - 1))]
    elif kind == "utf8":
        cut = draw(st.integers(0, len(rows[at])))
        bad = draw(st.sampled_from([b"\xff", b"\x80", b"\xc3", b"\xe2\x82"]))
        damaged = rows[at][:cut] + bad + rows[at][cut:]
    elif kind == "unknown":
        fields = good[at].fields(False)
        fields[0] = draw(st.sampled_from(["stranger", "person0", "PERSON00", "person03", "ü"]))
        damaged = sep.join(fields).encode()
    elif kind == "number":
        fields = good[at].fields(False)
        fields[draw(st.sampled_from([1, 3]))] = draw(
            st.sampled_from(["0", str(PER_ID + 1), "99", "-1", "1.5", "x", "", "\u0661"])
        )
        damaged = sep.join(f for f in fields if f).encode()
    elif kind == "duplicate":
        original = good[draw(st.integers(0, at))]
        twin = Pair(original.b, original.a) if draw(st.booleans()) else original
        damaged = sep.join(twin.fields(draw(st.booleans()))).encode()
    elif kind == "fields":
        fields = good[at].fields(False)
        count = draw(st.sampled_from([1, 2, 5, 6]))
        damaged = sep.join((fields + ["person00", "1"])[:count]).encode()
    elif kind == "self":
        image = good[at].a
        damaged = sep.join(Pair(image, image).fields(draw(st.booleans()))).encode()
    elif kind == "broken":
        other = draw(st.sampled_from(_images()))
        damaged = sep.join(Pair(BROKEN, other).fields(draw(st.booleans()))).encode()
    if kind == "duplicate":  # the copy goes after its original
        at += 1
        rows.insert(at, damaged or b"")
    elif damaged is not None:
        rows[at] = damaged
    lines: list[bytes] = [b"10 300"] if draw(st.booleans()) else []
    damaged_line = None
    for i, row in enumerate(rows):
        if draw(st.booleans()):
            lines.append(b"")
        lines.append(row)
        if damaged is not None and i == at:
            damaged_line = len(lines)
    return lines, damaged_line


@pytest.mark.parametrize("kind", DAMAGE)
@settings(max_examples=30, deadline=None)
@given(data=st.data(), crlf=st.booleans())
def test_damaged_pairs_file_is_an_error_naming_file_and_line(faces, kind, data, crlf):
    lines, damaged_line = data.draw(pairs_files(kind))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pairs.txt"
        path.write_bytes((b"\r\n" if crlf else b"\n").join(lines) + b"\n")
        if damaged_line is None:
            index, same = read_pairs(path, faces)
            assert len(index) == sum(1 for line in lines if line and line != b"10 300")
            for (i, j), flag in zip(index.tolist(), same.tolist(), strict=True):
                assert i != j and flag == (faces.labels[i] == faces.labels[j])
            return
        with pytest.raises(ValueError) as error:
            read_pairs(path, faces)
    message = str(error.value)
    assert message.startswith(f"{path}:{damaged_line}: "), (kind, lines, message)
    if kind == "broken":
        assert f"{BROKEN[1] - 1}.png" in message and "was not loaded" in message


def test_a_clean_pairs_file_numbers_images_in_each_folder(faces, tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("person02 1 3\nperson02 4 person00 1\n")
    index, same = read_pairs(path, faces)
    files = [
        [Path(faces.paths[i]).relative_to(Path(faces.paths[0]).parents[1]) for i in row]
        for row in index.tolist()
    ]
    assert [[str(f) for f in row] for row in files] == [
        ["person02/0.png", "person02/2.png"],  # 1.png is unreadable and keeps its number 2
        ["person02/3.png", "person00/0.png"],
    ]
    assert same.tolist() == [True, False]


# ---- image folders ---------------------------------------------------------------------------

GOOD = {
    ".png": "PNG",
    ".PNG": "PNG",
    ".Jpeg": "JPEG",
    ".jpg": "JPEG",
    ".TIF": "TIFF",
    ".bmp": "BMP",
}
BAD = ["zero_bytes", "truncated", "not_an_image", "dangling_link", "nested_folder"]
IGNORED = ["text_file", "image_without_suffix"]
ENTRY = st.sampled_from(["good"] * 3 + BAD + IGNORED)


def _noise(seed: int) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((8, 8)) * 255).astype(np.uint8))


def _write_entry(folder: Path, i: int, kind: str, suffix: str) -> tuple[Path, str]:
    """Write entry ``i`` of one identity's folder; (its path, "good" / "bad" / "ignored")."""
    if kind == "good":
        path = folder / f"{i}{suffix}"
        _noise(i).save(path, GOOD[suffix])
        return path, "good"
    if kind in IGNORED:
        path = folder / (f"{i}.txt" if kind == "text_file" else f"{i}")
        _noise(i).save(path, "PNG")
        return path, "ignored"
    path = folder / f"{i}.png"
    if kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "truncated":
        _noise(i).save(path, "PNG")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "not_an_image":
        path.write_text("just some text")
    elif kind == "dangling_link":
        os.symlink(folder / "missing" / f"{i}.png", path)
    else:  # nested_folder
        path = folder / f"sub{i}"
        path.mkdir()
        _noise(i).save(path / "inner.png")
    return path, "bad"


@settings(max_examples=100, deadline=None)
@given(
    people=st.lists(
        st.lists(st.tuples(ENTRY, st.sampled_from(sorted(GOOD))), max_size=4),
        min_size=1,
        max_size=3,
    ),
)
def test_damaged_image_folder_loads_the_good_images_and_names_each_bad_one(people):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "faces"
        written: dict[str, list[Path]] = {"good": [], "bad": [], "ignored": []}
        for p, entries in enumerate(people):
            person = root / f"p{p}"
            person.mkdir(parents=True)
            for i, (kind, suffix) in enumerate(entries):
                path, verdict = _write_entry(person, i, kind, suffix)
                written[verdict].append(path)
        good = sorted(str(p) for p in written["good"])
        bad = [str(p) for p in written["bad"]]
        if not good:
            with (
                pytest.raises(ValueError, match=re.escape(str(root))),
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("ignore")
                load_identities(root, (4, 4))
            return
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            data = load_identities(root, (4, 4))
        messages = [str(w.message) for w in record]
        assert data.paths == good
        assert data.names == sorted({Path(p).parent.name for p in good})
        assert len(messages) == len(bad)
        for name in bad:  # each bad entry named in exactly one warning
            assert sum(f"{name}: " in m for m in messages) == 1, (name, messages)
        for path in written["ignored"]:
            assert not any(str(path) in m for m in messages)
        if bad:
            with pytest.raises(ValueError) as error:
                load_identities(root, (4, 4), strict=True)
            assert all(name in str(error.value) for name in bad)
        else:
            assert load_identities(root, (4, 4), strict=True).paths == good
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            photos = load_unlabelled(root, (4, 4))
        nested = [str(Path(p) / "inner.png") for p in bad if Path(p).name.startswith("sub")]
        assert photos.paths == sorted(good + nested)  # the photo loader looks into sub-folders
        assert len(record) == len(bad) - len(nested)
