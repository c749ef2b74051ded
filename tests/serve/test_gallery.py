"""The face gallery: enroll / identify / rename / delete, persistence, and consistency after a
kill -9 at chosen points of an enrollment."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tripletkit.serve.gallery import (
    DB_FILE,
    INDEX_FILE,
    INDEX_META,
    FaceRecord,
    Gallery,
    GalleryError,
    check_name,
)

DIM = 8


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def stored(folder: Path) -> dict[int, tuple[str, np.ndarray]]:
    """face id -> (person, embedding), read from SQLite directly."""
    db = sqlite3.connect(folder / DB_FILE)
    rows = db.execute(
        "SELECT f.id, p.name, f.embedding FROM faces f JOIN people p ON p.id=f.person"
    )
    out = {i: (name, np.frombuffer(blob, "<f4")) for i, name, blob in rows}
    db.close()
    return out


def assert_consistent(folder: Path) -> dict[int, tuple[str, np.ndarray]]:
    """The index holds exactly the stored faces: each stored embedding finds its owner at
    distance 0, and the counts agree."""
    faces = stored(folder)
    with Gallery.open(folder, DIM) as g:
        assert len(g) == len(faces)
        assert sum(len(p.faces) for p in g.people()) == len(faces)
        for name, vector in faces.values():
            found = g.identify(vector[None], k=1, threshold=1e-3)[0]
            assert found.name == name
            assert found.distance == pytest.approx(0, abs=1e-3)
    return faces


def test_enroll_then_identify_finds_the_person_and_unknown_beyond_the_threshold(tmp_path):
    rng = np.random.default_rng(0)
    ada, bob = unit(rng, 2), unit(rng, 1)
    with Gallery.open(tmp_path / "g", DIM) as g:
        person = g.enroll("Ada", ada)
        g.enroll("Bob", bob)
        assert [len(p.faces) for p in g.people()] == [2, 1]
        assert person.name == "Ada" and len(person.faces) == 2
        near = ada[0] + 0.05 * unit(rng, 1)[0]
        hit = g.identify(near[None], k=2, threshold=0.6)[0]
        assert hit.name == "Ada"
        assert [m.name for m in hit.matches] == ["Ada", "Bob"]
        far = -ada[0]  # distance 2 from Ada's first face
        miss = g.identify(np.stack([far]), k=1, threshold=0.01)[0]
        assert miss.name is None and miss.distance > 0.01


def test_identify_on_an_empty_gallery_is_unknown(tmp_path):
    with Gallery.open(tmp_path, DIM) as g:
        (found,) = g.identify(unit(np.random.default_rng(1), 1), k=3, threshold=0.5)
    assert found.name is None and found.matches == [] and found.distance == float("inf")


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    sizes=st.lists(st.integers(1, 4), min_size=1, max_size=6),
    k=st.integers(1, 7),
    threshold=st.floats(0.0, 2.0),
)
def test_identify_matches_a_brute_force_oracle(tmp_path_factory, seed, sizes, k, threshold):
    rng = np.random.default_rng(seed)
    people = {f"p{i}": unit(rng, n) for i, n in enumerate(sizes)}
    queries = unit(rng, 3)
    with Gallery.open(tmp_path_factory.mktemp("g"), DIM) as g:
        for name, vectors in people.items():
            g.enroll(name, vectors)
        got = g.identify(queries, k=k, threshold=threshold)
    for q, found in zip(queries, got, strict=True):
        nearest = {n: float(np.linalg.norm(v - q, axis=1).min()) for n, v in people.items()}
        expected = sorted(nearest.items(), key=lambda item: item[1])[:k]
        assert [m.distance for m in found.matches] == pytest.approx([d for _, d in expected], 1e-4)
        assert {m.name for m in found.matches} <= set(people)
        best_name, best = expected[0]
        assert found.distance == pytest.approx(best, abs=1e-4)
        if best <= threshold - 1e-4:
            assert found.name is not None and nearest[found.name] == pytest.approx(best, 1e-4)
        elif best > threshold + 1e-4:
            assert found.name is None


def test_identify_finds_k_people_when_one_person_owns_the_nearest_faces(tmp_path):
    rng = np.random.default_rng(2)
    anchor = unit(rng, 1)[0]
    crowd = anchor + 0.01 * rng.normal(size=(100, DIM)).astype(np.float32)  # 100 near faces
    with Gallery.open(tmp_path, DIM) as g:
        g.enroll("crowd", crowd)
        g.enroll("far", -anchor[None])
        found = g.identify(anchor[None], k=2, threshold=0.5)[0]
    assert [m.name for m in found.matches] == ["crowd", "far"]


def test_rename_and_delete(tmp_path):
    rng = np.random.default_rng(3)
    a, b = unit(rng, 1), unit(rng, 1)
    with Gallery.open(tmp_path, DIM) as g:
        g.enroll("Ada", a)
        g.enroll("Bob", b)
        assert g.rename("Ada", "Ada L.").name == "Ada L."
        assert g.identify(a, k=1, threshold=0.5)[0].name == "Ada L."
        with pytest.raises(GalleryError, match="exists already") as err:
            g.rename("Ada L.", "Bob")
        assert err.value.kind == "conflict"
        with pytest.raises(GalleryError, match="no person named 'Nobody'") as err:
            g.rename("Nobody", "X")
        assert err.value.kind == "not_found"
        assert g.delete("Bob") == 1
        assert g.identify(b, k=3, threshold=0.5)[0].matches[0].name == "Ada L."
        assert len(g) == 1
        with pytest.raises(GalleryError, match="no person named 'Bob'"):
            g.delete("Bob")
        with pytest.raises(GalleryError, match="no person named 'Bob'"):
            g.person("Bob")


def test_enrolling_an_existing_name_adds_faces(tmp_path):
    rng = np.random.default_rng(4)
    with Gallery.open(tmp_path, DIM) as g:
        g.enroll("Ada", unit(rng, 1))
        person = g.enroll(" Ada ", unit(rng, 2))
    assert person.name == "Ada" and len(person.faces) == 3


def test_face_records_keep_box_source_and_thumbnail(tmp_path):
    rng = np.random.default_rng(5)
    record = FaceRecord(unit(rng, 1)[0], (1, 2, 30, 40), "me.jpg", b"\xff\xd8jpeg")
    with Gallery.open(tmp_path, DIM) as g:
        (face,) = g.enroll("Ada", [record]).faces
        assert (face.box, face.source, face.has_thumbnail) == ((1, 2, 30, 40), "me.jpg", True)
        assert g.thumbnail(face.id) == b"\xff\xd8jpeg"
        with pytest.raises(GalleryError, match="no thumbnail for face 999") as err:
            g.thumbnail(999)
    assert err.value.kind == "not_found"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("x" * 101, "101 characters"),
        ("a/b", "forbidden character '/'"),
        ("../etc/passwd", "forbidden character '/'"),
        ("tab\there", "forbidden character '\\\\t'"),
        ("nul\x00", "forbidden character"),
        (3, "must be a string"),
    ],
)
def test_bad_names_are_refused_with_the_rule(tmp_path, name, message):
    with pytest.raises(GalleryError, match=message):
        check_name(name)
    with Gallery.open(tmp_path, DIM) as g, pytest.raises(GalleryError, match=message):
        g.enroll(name, unit(np.random.default_rng(0), 1))


def test_names_never_touch_the_file_system(tmp_path):
    with Gallery.open(tmp_path / "g", DIM) as g:
        g.enroll("...", unit(np.random.default_rng(0), 1))
        g.enroll("~root", unit(np.random.default_rng(1), 1))
    allowed = {DB_FILE, INDEX_FILE, INDEX_META, "gallery.lock", f"{DB_FILE}-wal", f"{DB_FILE}-shm"}
    assert {p.name for p in (tmp_path / "g").iterdir()} <= allowed
    assert [p.name for p in tmp_path.iterdir()] == ["g"]


@pytest.mark.parametrize(
    ("faces", "message"),
    [
        (np.zeros((0, DIM)), "no faces"),
        (np.ones((1, DIM + 1)), r"shape \(n, 8\)"),
        (np.full((1, DIM), np.nan), "NaN"),
        (np.zeros((1, DIM)), "zero vector"),
    ],
)
def test_bad_embeddings_are_refused_and_nothing_is_stored(tmp_path, faces, message):
    with Gallery.open(tmp_path, DIM) as g:
        with pytest.raises(GalleryError, match=message):
            g.enroll("Ada", faces)
        assert g.people() == [] and len(g) == 0


def test_identify_refuses_bad_queries(tmp_path):
    with Gallery.open(tmp_path, DIM) as g:
        with pytest.raises(GalleryError, match="k must be >= 1"):
            g.identify(np.ones((1, DIM)), k=0, threshold=0.5)
        with pytest.raises(GalleryError, match=r"queries must have shape \(n, 8\)"):
            g.identify(np.ones((1, 3)), threshold=0.5)


def test_the_gallery_survives_a_restart_and_rebuilds_a_stale_or_missing_cache(tmp_path):
    rng = np.random.default_rng(6)
    with Gallery.open(tmp_path, DIM) as g:
        g.enroll("Ada", unit(rng, 2))
        g.enroll("Bob", unit(rng, 1))
    meta = json.loads((tmp_path / INDEX_META).read_text())
    assert meta["version"] == 2
    before = assert_consistent(tmp_path)
    (tmp_path / INDEX_FILE).unlink()
    assert assert_consistent(tmp_path).keys() == before.keys()
    (tmp_path / INDEX_META).write_text(json.dumps({"version": 1, "dim": DIM}))
    (tmp_path / INDEX_FILE).write_bytes(b"garbage")
    assert assert_consistent(tmp_path).keys() == before.keys()


def test_a_wrong_dimension_or_a_second_writer_is_refused(tmp_path):
    with Gallery.open(tmp_path, DIM) as g:
        g.enroll("Ada", unit(np.random.default_rng(0), 1))
        with pytest.raises(GalleryError, match="open in another process") as err:
            Gallery.open(tmp_path, DIM)
        assert err.value.kind == "conflict"
    with pytest.raises(GalleryError, match="holds 8-d embeddings, the model gives 4-d"):
        Gallery.open(tmp_path, 4)
    (tmp_path / "file").write_text("x")
    with pytest.raises(GalleryError, match="is a file"):
        Gallery.open(tmp_path / "file", DIM)


def test_a_file_that_is_not_a_database_is_named(tmp_path):
    (tmp_path / DB_FILE).write_bytes(b"not sqlite at all, just some bytes" * 100)
    with pytest.raises(GalleryError, match="not a gallery database"):
        Gallery.open(tmp_path, DIM)


def test_a_closed_gallery_refuses_calls(tmp_path):
    g = Gallery.open(tmp_path, DIM)
    g.close()
    g.close()  # twice is fine
    with pytest.raises(GalleryError, match="is closed"):
        g.people()


def test_concurrent_enrollments_from_threads_are_all_kept(tmp_path):
    rng = np.random.default_rng(7)
    vectors = unit(rng, 40)
    with Gallery.open(tmp_path, DIM) as g:

        def work(t: int) -> None:
            for i in range(t, 40, 4):
                g.enroll(f"p{i % 10}", vectors[i : i + 1])
                g.identify(vectors[i : i + 1], k=2, threshold=0.5)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(g) == 40 and len(g.people()) == 10
    assert len(assert_consistent(tmp_path)) == 40


# --- kill -9 ----------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from tripletkit.serve import gallery as G

    folder, point = sys.argv[1], sys.argv[2]

    def kill_after(name):
        original = getattr(G.Gallery, name)
        def wrapper(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
            return result
        setattr(G.Gallery, name, wrapper)

    rng = np.random.default_rng(0)
    def vectors(n):
        x = rng.normal(size=(n, 8)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    g = G.Gallery.open(folder, 8)
    if point == "loop":
        for i in range(10_000):
            g.enroll(f"p{i % 7}", vectors(1 + i % 3))
            print(f"ack {i}", flush=True)
    g.enroll("before", vectors(2))
    print("ack before", flush=True)
    if point == "close":
        # killed inside close: the cache file written, its version not yet
        G.write_json = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        g.close()
    kill_after(point)
    g.enroll("during", vectors(3))
    print("ack during", flush=True)
    """
)


def run_child(folder: Path, point: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), point],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    return result.stdout.split()


@pytest.mark.parametrize(
    ("point", "kept"),
    [
        ("_write_faces", False),  # rows inserted, transaction not committed
        ("_bump_version", False),  # version bumped, not committed
        ("_index_add", True),  # committed, index updated in memory, not acknowledged
        ("enroll", True),  # acknowledged by the return, cache never written
        ("close", False),  # no second enrollment: killed while writing the cache
    ],
)
def test_a_kill_9_inside_an_enrollment_leaves_the_gallery_consistent(tmp_path, point, kept):
    out = run_child(tmp_path, point)
    assert out[:2] == ["ack", "before"]
    assert "during" not in out or point == "enroll"
    faces = assert_consistent(tmp_path)
    names = {name for name, _ in faces.values()}
    assert "before" in names
    assert ("during" in names) == kept
    with Gallery.open(tmp_path, DIM) as g:  # and it takes writes again
        g.enroll("after", unit(np.random.default_rng(9), 1))
    assert len(assert_consistent(tmp_path)) == len(faces) + 1


def test_every_acknowledged_enrollment_survives_a_kill_9_at_a_random_moment(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), "loop"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    acked = -1
    for line in child.stdout:  # kill it once it has acknowledged 25 enrollments
        acked = int(line.split()[1])
        if acked >= 24:
            child.send_signal(signal.SIGKILL)
            break
    child.wait(timeout=60)
    child.stdout.close()
    assert child.stderr is not None
    child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    faces = assert_consistent(tmp_path)
    expected = sum(1 + i % 3 for i in range(acked + 1))
    assert len(faces) >= expected  # every acknowledged one, maybe one more in flight
    assert len(faces) <= expected + 3


# --- issue 20: names, retries, file modes ------------------------------------------------------


def test_gallery_files_are_readable_by_their_owner_only(tmp_path):
    """Face embeddings and thumbnails are biometric data: 0600 files in a 0700 folder, whatever
    the umask, and an older gallery's files are tightened when it opens."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        with Gallery.open(tmp_path / "g", DIM) as g:
            g.enroll("Ada", unit(np.random.default_rng(0), 2))
        files = sorted((tmp_path / "g").iterdir())
        assert {p.name for p in files} >= {DB_FILE, INDEX_FILE, INDEX_META, "gallery.lock"}
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
        assert modes == dict.fromkeys(modes, 0o600)
        assert stat.S_IMODE((tmp_path / "g").stat().st_mode) == 0o700
        (tmp_path / "g" / DB_FILE).chmod(0o644)  # as an older version left it
        Gallery.open(tmp_path / "g", DIM).close()
        assert stat.S_IMODE((tmp_path / "g" / DB_FILE).stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_names_are_one_person_whatever_their_case_or_width(tmp_path):
    rng = np.random.default_rng(10)
    with Gallery.open(tmp_path, DIM) as g:
        g.enroll("s1", unit(rng, 1))
        assert g.enroll("S1", unit(rng, 1)).name == "s1"
        assert len(g.enroll("Ｓ１", unit(rng, 1)).faces) == 3
        assert [p.name for p in g.people()] == ["s1"]
        assert g.person("Ｓ１").name == "s1"
        assert g.rename("S1", "S1").name == "S1"  # a person may change the case of their name
        g.enroll("s2", unit(rng, 1))
        with pytest.raises(GalleryError, match="a person named 'S1' exists already"):
            g.rename("s2", "ｓ１")
        assert g.delete("s1") == 3


@pytest.mark.parametrize("name", [".", "..", "‥", "．"])
def test_dot_names_are_refused(name):
    with pytest.raises(GalleryError, match="dropped from URLs"):
        check_name(name)


OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE people (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
                     created REAL NOT NULL);
CREATE TABLE faces (id INTEGER PRIMARY KEY AUTOINCREMENT,
                    person INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
                    embedding BLOB NOT NULL, box TEXT, source TEXT, thumbnail BLOB,
                    created REAL NOT NULL);
INSERT INTO meta VALUES ('dim', '8'), ('version', '2');
"""


def old_gallery(folder: Path, names: list[str]) -> None:
    """A gallery as the version before name keys wrote it."""
    folder.mkdir()
    db = sqlite3.connect(folder / DB_FILE)
    db.executescript(OLD_SCHEMA)
    rng = np.random.default_rng(11)
    for i, name in enumerate(names, 1):
        db.execute("INSERT INTO people (id, name, created) VALUES (?, ?, 0)", (i, name))
        blob = unit(rng, 1)[0].astype("<f4").tobytes()
        db.execute("INSERT INTO faces (person, embedding, created) VALUES (?, ?, 0)", (i, blob))
    db.commit()
    db.close()


def test_a_gallery_of_the_older_version_opens_with_its_names_compared_the_new_way(tmp_path):
    old_gallery(tmp_path / "g", ["s1", "Bob"])
    with Gallery.open(tmp_path / "g", DIM) as g:
        assert [p.name for p in g.people()] == ["Bob", "s1"]
        assert g.person("S1").name == "s1"
        assert len(g.enroll("S1", unit(np.random.default_rng(12), 1)).faces) == 2
    assert len(assert_consistent(tmp_path / "g")) == 3


def test_an_older_gallery_whose_names_now_clash_is_refused_naming_them(tmp_path):
    old_gallery(tmp_path / "g", ["s1", "S1", "Bob"])
    with pytest.raises(GalleryError, match="the people s1, S1 differ only in case") as err:
        Gallery.open(tmp_path / "g", DIM)
    assert "UPDATE people SET name" in str(err.value)
    db = sqlite3.connect(tmp_path / "g" / DB_FILE)  # nothing was changed
    assert [r[0] for r in db.execute("SELECT key FROM people")] == [None, None, None]
    db.execute("UPDATE people SET name = 'S1 (2)' WHERE name = 'S1'")  # the fix it names
    db.commit()
    db.close()
    with Gallery.open(tmp_path / "g", DIM) as g:
        assert [p.name for p in g.people()] == ["Bob", "s1", "S1 (2)"]


def test_enroll_once_stores_a_request_key_once(tmp_path):
    rng = np.random.default_rng(13)
    faces = unit(rng, 2)
    with Gallery.open(tmp_path, DIM) as g:
        first, replayed = g.enroll_once("Ada", faces, "key-1", "digest-a")
        assert not replayed and len(first.faces) == 2
        again, replayed = g.enroll_once("Ada", faces, "key-1", "digest-a")
        assert replayed and again == first and len(g) == 2
        assert g.replay("key-1", "digest-a") == first
        assert g.replay("key-2", "digest-a") is None
        with pytest.raises(GalleryError, match="used for another enrollment") as err:
            g.enroll_once("Ada", faces, "key-1", "digest-b")
        assert err.value.kind == "invalid" and len(g) == 2
        g.delete("Ada")
        with pytest.raises(GalleryError, match="has been deleted since") as err:
            g.replay("key-1", "digest-a")
        assert err.value.kind == "conflict"
    with (  # kept across a restart
        Gallery.open(tmp_path, DIM) as g,
        pytest.raises(GalleryError, match="has been deleted since"),
    ):
        g.enroll_once("Ada", faces, "key-1", "digest-a")
