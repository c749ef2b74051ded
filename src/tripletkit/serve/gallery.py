"""A face gallery in one folder: people, their enrolled face embeddings and a FAISS index.

Usable without HTTP::

    gallery = Gallery.open("my-gallery", dim=128)
    gallery.enroll("Ada", embeddings)                  # (n, 128) unit vectors
    gallery.identify(queries, k=3, threshold=0.367)    # nearest people per query
    gallery.rename("Ada", "Ada L."); gallery.delete("Ada L.")

Storage. SQLite (``gallery.sqlite``, write-ahead log, ``synchronous=FULL``) is the source of
truth: people, faces with their embedding (float32 bytes), box, source name and a small JPEG of
the aligned chip, and a ``version`` counter bumped by every write. One enrollment is one
transaction, so it is stored whole or not at all, and :meth:`Gallery.enroll` returns only after
the commit has reached the disk: an acknowledged enrollment is never lost, and a process killed
at any instant (kill -9) leaves the previous or the new gallery, never half of one.

The FAISS index (exact inner product over the unit embeddings, ids = face ids) is a cache:
``faces.faiss`` with the version it was built at in ``faces.json``. :meth:`Gallery.open`
loads it when that version is the database's, and rebuilds it from SQLite otherwise (a crash
between a commit and the cache write, a cache deleted or damaged); it is written atomically
when the gallery closes or is rebuilt.

Distances are Euclidean between unit vectors: ``d = sqrt(2 - 2 cos)``, in [0, 2]. A person's
distance to a query is the smallest over their faces.

Names. A person is found by the NFKC case-folded form of their name (:func:`name_key`): "s1",
"S1" and the fullwidth "Ｓ１" are one person, shown under the name first enrolled (or last
renamed to). "." and ".." are refused: URLs drop them as path segments, so such a person could
never be addressed again.

Retries. :meth:`Gallery.enroll_once` records a client's request key (the service's
``Idempotency-Key`` header) and a digest of the request in the enrollment's own transaction:
the same key again replays the stored answer instead of adding the faces twice, whether the
first answer was lost or not. Keys are kept :data:`KEY_DAYS` days.

Files are readable by their owner only (0600, the folder 0700): they hold biometric data.

Concurrency: one ``Gallery`` object may be shared by threads; its calls hold one lock (one
writer, and reads see whole enrollments). Several processes must not write to one folder: it
takes an exclusive ``fcntl`` lock on ``gallery.lock`` and refuses a second writer.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from .._io import atomic_write
from ..search.index import faiss_module

DB_FILE = "gallery.sqlite"
INDEX_FILE = "faces.faiss"
INDEX_META = "faces.json"
LOCK_FILE = "gallery.lock"
MAX_NAME_CHARS = 100
KEY_DAYS = 1
FILE_MODE, FOLDER_MODE = 0o600, 0o700
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS people (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    key TEXT
);
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    person INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS faces (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    person INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    embedding BLOB NOT NULL,
    box TEXT,
    source TEXT,
    thumbnail BLOB,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS faces_person ON faces(person);
"""


class GalleryError(ValueError):
    """A request the gallery refuses: a bad name or embedding, an unknown or taken name.

    Attributes:
        kind: "invalid", "not_found" or "conflict" (the service maps them to 422, 404, 409).
    """

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class EnrolledFace:
    """One stored face.

    Attributes:
        id: the face id (also its FAISS id).
        box: (left, top, right, bottom) in the source photo, or None.
        source: the photo's name as uploaded, or None.
        has_thumbnail: whether a JPEG of the aligned chip is stored.
    """

    id: int
    box: tuple[int, int, int, int] | None
    source: str | None
    has_thumbnail: bool


@dataclass(frozen=True)
class Person:
    """A person of the gallery and their faces, oldest first."""

    name: str
    created: float
    faces: list[EnrolledFace] = field(default_factory=list)


@dataclass(frozen=True)
class Match:
    """A person near a query face: ``distance`` is the smallest over their faces."""

    name: str
    distance: float
    face_id: int


@dataclass(frozen=True)
class Identification:
    """The answer for one query face.

    Attributes:
        name: the nearest person when within the threshold, else None ("unknown").
        distance: distance to the nearest person (inf when the gallery is empty).
        matches: up to k nearest people, nearest first.
    """

    name: str | None
    distance: float
    matches: list[Match]


@dataclass(frozen=True)
class FaceRecord:
    """What :meth:`Gallery.enroll` stores per face: a (d,) embedding and optional details."""

    embedding: np.ndarray
    box: tuple[int, int, int, int] | None = None
    source: str | None = None
    thumbnail: bytes | None = None


def check_name(name: object, what: str = "name") -> str:
    """A person's name, stripped and NFC-normalised.

    Names are stored in SQLite only and never become file paths. A name is 1 to
    ``MAX_NAME_CHARS`` characters, with no control characters and no "/" (it appears in URLs),
    and is not "." or ".." (nor a name whose :func:`name_key` is: URLs drop those segments).

    Raises:
        GalleryError: naming ``what`` and the rule broken.
    """
    if not isinstance(name, str):
        raise GalleryError(f"{what} must be a string, got {type(name).__name__}")
    clean = unicodedata.normalize("NFC", name).strip()
    if not clean:
        raise GalleryError(f"{what} is empty")
    if len(clean) > MAX_NAME_CHARS:
        raise GalleryError(f"{what} has {len(clean)} characters, more than {MAX_NAME_CHARS}")
    bad = [c for c in clean if c == "/" or unicodedata.category(c).startswith("C")]
    if bad:
        raise GalleryError(f"{what} {clean!r} contains a forbidden character {bad[0]!r}")
    if name_key(clean) in (".", ".."):
        raise GalleryError(
            f"{what} {clean!r} is not allowed: '.' and '..' are dropped from URLs as path "
            "segments, so the person could not be found or deleted again"
        )
    return clean


def name_key(name: str) -> str:
    """What two names are compared by: NFKC, case-folded, NFKC again (Unicode's
    NFKC_Casefold, closely): "S1", "s1" and "Ｓ１" have one key."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def distance_from_similarity(similarity: np.ndarray) -> np.ndarray:
    """Euclidean distance between unit vectors from their inner product: sqrt(2 - 2 s)."""
    return np.sqrt(np.clip(2.0 - 2.0 * similarity, 0.0, 4.0))


class Gallery:
    """People and face embeddings in a folder; see the module docstring for the guarantees.

    Open with :meth:`open`; use as a context manager or call :meth:`close`.
    """

    def __init__(self, folder: Path, dim: int, db: sqlite3.Connection, lock_file: IO[str]):
        self.folder = folder
        self.dim = dim
        self._db = db
        self._lock_file = lock_file
        self._lock = threading.RLock()
        self._index: Any = None
        self._owner: dict[int, str] = {}  # face id -> person name, mirrors the database
        self._dirty = False

    # --- opening and closing -------------------------------------------------------------------

    @classmethod
    def open(cls, folder: str | Path, dim: int = 128) -> Gallery:
        """Open the gallery in ``folder``, creating it when absent.

        Args:
            folder: the gallery folder.
            dim: embedding dimension; must match the one the gallery was created with.

        Raises:
            GalleryError: when the folder is a file, is written by another process, is not a
                gallery database, or holds embeddings of another dimension.
        """
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise GalleryError(f"gallery folder {folder} is a file")
        if not 1 <= dim <= 65536:
            raise GalleryError(f"dim must be in 1..65536, got {dim}")
        if not folder.exists():
            folder.mkdir(parents=True, mode=FOLDER_MODE)
        lock_file = _exclusive_lock(folder / LOCK_FILE)
        try:
            db = _connect(folder / DB_FILE)
            gallery = cls(folder, dim, db, lock_file)
            gallery._check_dim()
            gallery._load_index()
        except BaseException:
            lock_file.close()
            raise
        return gallery

    def close(self) -> None:
        """Write the index cache when it changed, close the database and release the folder."""
        with self._lock:
            if self._db is None:
                return
            if self._dirty:
                self._save_index()
            self._db.close()
            self._db = None  # type: ignore[assignment]
            self._lock_file.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writes ---------------------------------------------------------------------------------

    def enroll(self, name: str, faces: Sequence[FaceRecord] | np.ndarray) -> Person:
        """Add faces to a person, creating the person when new; all or nothing.

        Args:
            name: see :func:`check_name`.
            faces: FaceRecords, or an (n, dim) array of embeddings; n >= 1. Embeddings are
                L2-normalised here (a zero vector is refused).

        Returns:
            the person with all their faces, once the transaction is on disk.

        Raises:
            GalleryError: a bad name, no faces, or an embedding of the wrong shape, not finite
                or zero.
        """
        return self.enroll_once(name, faces)[0]

    def enroll_once(
        self,
        name: str,
        faces: Sequence[FaceRecord] | np.ndarray,
        key: str | None = None,
        digest: str = "",
    ) -> tuple[Person, bool]:
        """:meth:`enroll`, recording the request ``key`` with ``digest`` (what the request
        held) in the same transaction; when ``key`` was recorded already, nothing is added.

        Returns:
            (the person, whether the answer is a replay of an earlier request with ``key``).

        Raises:
            GalleryError: as :meth:`enroll`; and as :meth:`replay` for a recorded key.
        """
        name = check_name(name)
        records = _records(faces, self.dim)
        with self._lock:
            self._open_db()
            now = time.time()
            with self._db:  # one transaction: committed on success, rolled back on error
                self._db.execute("BEGIN IMMEDIATE")
                if key is not None:
                    earlier = self._replay(key, digest)
                    if earlier is not None:
                        return earlier, True
                person = self._person_id(name) or self._insert_person(name, now)
                ids = self._write_faces(person, records, now)
                if key is not None:
                    self._db.execute(
                        "DELETE FROM requests WHERE created < ?", (now - KEY_DAYS * 86400,)
                    )
                    self._db.execute(
                        "INSERT INTO requests (key, digest, person, created) VALUES (?, ?, ?, ?)",
                        (key, digest, person, now),
                    )
                self._bump_version()
            self._index_add(ids, np.stack([r.embedding for r in records]))
            stored = self._name_of(person)
            self._owner.update(dict.fromkeys(ids, stored))
            return self._person(stored), False

    def replay(self, key: str, digest: str) -> Person | None:
        """The person a request recorded under ``key`` enrolled (as they are now), or None
        when ``key`` is new.

        Raises:
            GalleryError: ``key`` was recorded with another digest (invalid: another request
                reuses it), or its person has been deleted since (conflict).
        """
        with self._lock:
            self._open_db()
            return self._replay(key, digest)

    def rename(self, old: str, new: str) -> Person:
        """Give a person another name.

        Raises:
            GalleryError: bad names, ``old`` unknown (not_found) or ``new`` taken (conflict).
        """
        old, new = check_name(old, "old name"), check_name(new, "new name")
        with self._lock:
            self._open_db()
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                person = self._require(old)
                stored = self._name_of(person)
                other = self._person_id(new)
                if other is not None and other != person:
                    taken = self._name_of(other)
                    raise GalleryError(f"a person named {taken!r} exists already", "conflict")
                self._db.execute(
                    "UPDATE people SET name = ?, key = ? WHERE id = ?", (new, name_key(new), person)
                )
                self._bump_version()
            self._owner = {f: new if who == stored else who for f, who in self._owner.items()}
            return self._person(new)

    def delete(self, name: str) -> int:
        """Remove a person and their faces; returns how many faces were removed.

        Raises:
            GalleryError: a bad name or an unknown person (not_found).
        """
        name = check_name(name)
        with self._lock:
            self._open_db()
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                person = self._require(name)
                rows = self._db.execute("SELECT id FROM faces WHERE person = ?", (person,))
                ids = [row[0] for row in rows]
                self._db.execute("DELETE FROM faces WHERE person = ?", (person,))
                self._db.execute("DELETE FROM people WHERE id = ?", (person,))
                self._bump_version()
            if ids:
                self._index.remove_ids(np.asarray(ids, dtype=np.int64))
            for face in ids:
                self._owner.pop(face, None)
            self._dirty = True
            return len(ids)

    # --- reads ----------------------------------------------------------------------------------

    def people(self) -> list[Person]:
        """Every person with their faces, by name."""
        with self._lock:
            self._open_db()
            rows = self._db.execute("SELECT name FROM people ORDER BY key, name")
            names = [row[0] for row in rows]
            return [self._person(name) for name in names]

    def person(self, name: str) -> Person:
        """One person. Raises GalleryError (not_found) when unknown."""
        name = check_name(name)
        with self._lock:
            self._open_db()
            return self._person(self._name_of(self._require(name)))

    def thumbnail(self, face_id: int) -> bytes:
        """The JPEG of a face's aligned chip. Raises GalleryError (not_found) when absent."""
        with self._lock:
            self._open_db()
            row = self._db.execute("SELECT thumbnail FROM faces WHERE id = ?", (face_id,))
            found = row.fetchone()
        if found is None or found[0] is None:
            raise GalleryError(f"no thumbnail for face {face_id}", "not_found")
        return bytes(found[0])

    def __len__(self) -> int:
        """Number of enrolled faces."""
        with self._lock:
            return int(self._index.ntotal)

    def identify(
        self, queries: np.ndarray, k: int = 3, *, threshold: float
    ) -> list[Identification]:
        """The nearest people of each query face.

        Args:
            queries: (q, dim) embeddings (normalised here).
            k: people per query, >= 1.
            threshold: the largest distance at which the nearest person is named.

        Returns:
            one Identification per query; ``name`` is None ("unknown") when the nearest person
            is farther than ``threshold`` or the gallery is empty.
        """
        if k < 1:
            raise GalleryError(f"k must be >= 1, got {k}")
        q = _unit_rows(np.asarray(queries, dtype=np.float32), self.dim, "queries")
        with self._lock:
            matches = self._nearest_people(q, k)
        out = []
        for found in matches:
            best = found[0].distance if found else math.inf
            name = found[0].name if found and best <= threshold else None
            out.append(Identification(name, best, found))
        return out

    # --- internals ------------------------------------------------------------------------------

    def _open_db(self) -> None:
        if self._db is None:
            raise GalleryError(f"the gallery {self.folder} is closed")

    def _check_dim(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()
        if row is None:
            with self._db:
                self._db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('dim', ?), ('version', '0')",
                    (str(self.dim),),
                )
        elif int(row[0]) != self.dim:
            raise GalleryError(
                f"gallery {self.folder} holds {row[0]}-d embeddings, the model gives {self.dim}-d"
            )

    def _version(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        return int(row[0]) if row else 0

    def _bump_version(self) -> None:
        self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='version'")

    def _person_id(self, name: str) -> int | None:
        """The person whose name has ``name``'s key, or None."""
        row = self._db.execute("SELECT id FROM people WHERE key = ?", (name_key(name),))
        found = row.fetchone()
        return None if found is None else int(found[0])

    def _name_of(self, person: int) -> str:
        return str(
            self._db.execute("SELECT name FROM people WHERE id = ?", (person,)).fetchone()[0]
        )

    def _replay(self, key: str, digest: str) -> Person | None:
        row = self._db.execute("SELECT digest, person FROM requests WHERE key = ?", (key,))
        found = row.fetchone()
        if found is None:
            return None
        if found[0] != digest:
            raise GalleryError(
                f"Idempotency-Key {key!r} was used for another enrollment (another name or "
                "other photos); use a new key for a new request"
            )
        person = self._db.execute("SELECT name FROM people WHERE id = ?", (found[1],)).fetchone()
        if person is None:
            raise GalleryError(
                f"the enrollment of Idempotency-Key {key!r} was stored, but its person has been "
                "deleted since",
                "conflict",
            )
        return self._person(str(person[0]))

    def _require(self, name: str) -> int:
        person = self._person_id(name)
        if person is None:
            raise GalleryError(f"no person named {name!r} in the gallery", "not_found")
        return person

    def _insert_person(self, name: str, now: float) -> int:
        cursor = self._db.execute(
            "INSERT INTO people (name, created, key) VALUES (?, ?, ?)", (name, now, name_key(name))
        )
        return int(cursor.lastrowid or 0)

    def _write_faces(self, person: int, records: list[FaceRecord], now: float) -> list[int]:
        """Insert the faces inside the open transaction; their new ids."""
        ids = []
        for r in records:
            cursor = self._db.execute(
                "INSERT INTO faces (person, embedding, box, source, thumbnail, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    person,
                    r.embedding.astype("<f4").tobytes(),
                    json.dumps(list(r.box)) if r.box is not None else None,
                    r.source,
                    r.thumbnail,
                    now,
                ),
            )
            ids.append(int(cursor.lastrowid or 0))
        return ids

    def _person(self, name: str) -> Person:
        row = self._db.execute("SELECT id, created FROM people WHERE name = ?", (name,)).fetchone()
        rows = self._db.execute(
            "SELECT id, box, source, thumbnail IS NOT NULL FROM faces WHERE person = ? ORDER BY id",
            (row[0],),
        )
        faces = [
            EnrolledFace(int(i), tuple(json.loads(box)) if box else None, source, bool(thumb))
            for i, box, source, thumb in rows
        ]
        return Person(name, float(row[1]), faces)

    def _nearest_people(self, q: np.ndarray, k: int) -> list[list[Match]]:
        """Up to k people per query, nearest first. Searches k * 8 faces (at least 64), and
        all of them when those faces hold fewer than k people."""
        total = int(self._index.ntotal)
        if total == 0:
            return [[] for _ in range(len(q))]
        owner = self._owner
        depth = min(total, max(64, 8 * k))
        while True:
            scores, ids = self._index.search(q, depth)
            found = [_collapse(s, i, owner, k) for s, i in zip(scores, ids, strict=True)]
            if depth == total or all(len(f) >= k for f in found):
                return found
            depth = total

    def _index_add(self, ids: list[int], embeddings: np.ndarray) -> None:
        self._index.add_with_ids(embeddings.astype(np.float32), np.asarray(ids, dtype=np.int64))
        self._dirty = True

    def _load_index(self) -> None:
        """The cached index when its version is the database's; else rebuilt from SQLite.
        Also reads which person each face belongs to."""
        query = "SELECT f.id, p.name FROM faces f JOIN people p ON p.id = f.person"
        self._owner = {int(face): str(name) for face, name in self._db.execute(query)}
        version = self._version()
        cached = _read_cache(self.folder, version, self.dim)
        if cached is not None:
            self._index = cached
            return
        self._index = _empty_index(self.dim)
        rows = list(self._db.execute("SELECT id, embedding FROM faces ORDER BY id"))
        if rows:
            vectors = np.stack([np.frombuffer(blob, dtype="<f4") for _, blob in rows])
            self._index.add_with_ids(vectors, np.asarray([i for i, _ in rows], dtype=np.int64))
        self._save_index()

    def _save_index(self) -> None:
        """Write the index cache, then the version it holds (a crash between the two leaves an
        older version recorded, so the next open rebuilds)."""
        faiss = faiss_module()

        def index(tmp: Path) -> None:
            os.chmod(tmp, FILE_MODE)
            faiss.write_index(self._index, str(tmp))

        atomic_write(self.folder / INDEX_FILE, index)
        meta = {"version": self._version(), "dim": self.dim}
        write_json(self.folder / INDEX_META, meta, mode=FILE_MODE)
        self._dirty = False


def _collapse(scores: np.ndarray, ids: np.ndarray, owner: dict[int, str], k: int) -> list[Match]:
    """Nearest faces -> the first k distinct people, each at their nearest face."""
    out: list[Match] = []
    seen: set[str] = set()
    for distance, face in zip(distance_from_similarity(scores), ids, strict=True):
        name = owner.get(int(face))
        if face < 0 or name is None or name in seen:
            continue
        seen.add(name)
        out.append(Match(name, float(distance), int(face)))
        if len(out) == k:
            break
    return out


def _records(faces: Sequence[FaceRecord] | np.ndarray, dim: int) -> list[FaceRecord]:
    """FaceRecords with unit float32 (dim,) embeddings, checked."""
    if isinstance(faces, np.ndarray):
        faces = [FaceRecord(row) for row in np.atleast_2d(faces)]
    records = list(faces)
    if not records:
        raise GalleryError("no faces to enroll")
    vectors = np.stack([np.asarray(r.embedding, dtype=np.float32).reshape(-1) for r in records])
    vectors = _unit_rows(vectors, dim, "embeddings")
    return [
        FaceRecord(v, r.box, r.source, r.thumbnail) for v, r in zip(vectors, records, strict=True)
    ]


def _unit_rows(x: np.ndarray, dim: int, what: str) -> np.ndarray:
    """(n, dim) rows scaled to unit length. Raises GalleryError on a bad shape, non-finite
    values or a zero row."""
    if x.ndim != 2 or x.shape[1] != dim:
        raise GalleryError(f"{what} must have shape (n, {dim}), got {x.shape}")
    if not np.isfinite(x).all():
        raise GalleryError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise GalleryError(f"{what} contain a zero vector")
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def _empty_index(dim: int) -> Any:
    faiss = faiss_module()
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _read_cache(folder: Path, version: int, dim: int) -> Any | None:
    """The cached FAISS index when ``faces.json`` records ``version`` and ``dim``, else None."""
    try:
        meta = json.loads((folder / INDEX_META).read_text(encoding="utf-8"))
        if meta.get("version") != version or meta.get("dim") != dim:
            return None
        index = faiss_module().read_index(str(folder / INDEX_FILE))
    except (OSError, ValueError, RuntimeError, AttributeError):
        return None
    return index if index.d == dim else None


def write_json(path: Path, data: Any, mode: int = FILE_MODE) -> None:
    """``data`` as JSON at ``path``, atomically, readable by the owner only."""

    def write(tmp: Path) -> None:
        os.chmod(tmp, mode)
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    atomic_write(path, write)


def _owner_only(path: Path) -> None:
    """Create ``path`` empty with mode 0600 when absent; else take away group and other bits
    (SQLite gives its -wal and -shm files the database file's mode)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
    except FileExistsError:
        os.chmod(path, FILE_MODE)


def _connect(path: Path) -> sqlite3.Connection:
    """SQLite in WAL mode with full sync, foreign keys on, usable from any thread (the
    gallery's lock serialises the calls), transactions managed explicitly; its files 0600."""
    _owner_only(path)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.chmod(side, FILE_MODE)
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(SCHEMA)
        _add_name_keys(db, path)
    except sqlite3.DatabaseError as err:
        raise GalleryError(f"{path}: not a gallery database ({err})") from None
    return db


def _add_name_keys(db: sqlite3.Connection, path: Path) -> None:
    """Fill the name keys of people enrolled before names were compared by :func:`name_key`
    (a gallery of an older version), and index them as unique.

    Raises:
        GalleryError: when two people of such a gallery have names with one key, naming them.
    """
    if "key" not in {row[1] for row in db.execute("PRAGMA table_info(people)")}:
        db.execute("ALTER TABLE people ADD COLUMN key TEXT")
    rows = list(db.execute("SELECT id, name FROM people WHERE key IS NULL"))
    if rows:
        with db:
            db.execute("BEGIN IMMEDIATE")
            for person, name in rows:
                db.execute("UPDATE people SET key = ? WHERE id = ?", (name_key(name), person))
            clash = db.execute(
                "SELECT group_concat(name, ', ') FROM people GROUP BY key HAVING count(*) > 1"
            ).fetchone()
            if clash is not None:
                raise GalleryError(
                    f"{path}: the people {clash[0]} differ only in case or character width, and "
                    "names are now compared without them: rename all but one (e.g. sqlite3 "
                    f"{path} \"UPDATE people SET name = 'new name' WHERE name = 'old name'\") "
                    "and open the gallery again",
                    "conflict",
                )
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS people_key ON people(key)")


def _exclusive_lock(path: Path) -> IO[str]:
    """An open file holding an exclusive lock on ``path``; refuses a second holder."""
    fd = os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, FILE_MODE)
    os.chmod(path, FILE_MODE)
    handle = os.fdopen(fd, "a")  # kept open while the gallery is
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise GalleryError(
            f"the gallery {path.parent} is open in another process (one writer at a time)",
            "conflict",
        ) from None
    os.set_inheritable(handle.fileno(), False)
    return handle
