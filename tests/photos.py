"""The real photos of the face tests: obama.jpg, obama2.jpg, obama3.jpg and biden.jpg from the
``face_recognition==1.3.0`` source distribution (MIT licence; only the sdist has them).

``fetch_photos()`` downloads the sdist once with pip (PyPI only), checks its sha256, and
extracts the four photos (each checked too) into a cache folder, ``.venv/test-photos/`` by
default or ``$TRIPLETKIT_TEST_PHOTOS``. From a shell or the Makefile:

    python tests/photos.py [FOLDER]
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tripletkit._io import atomic_write

SDIST = "face_recognition==1.3.0"
SDIST_NAME = "face_recognition-1.3.0.tar.gz"
SDIST_SHA256 = "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec"
MEMBER_DIR = "face_recognition-1.3.0/tests/test_images"
PHOTOS = {
    "obama.jpg": "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6",
    "obama2.jpg": "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6",
    "obama3.jpg": "76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3",
    "biden.jpg": "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c",
}


def default_folder() -> Path:
    """``$TRIPLETKIT_TEST_PHOTOS`` or ``<repository>/.venv/test-photos``."""
    env = os.environ.get("TRIPLETKIT_TEST_PHOTOS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / ".venv" / "test-photos"


def fetch_photos(folder: str | Path | None = None) -> dict[str, Path]:
    """The four photos, by file name, downloaded into ``folder`` unless already there.

    Raises:
        RuntimeError: with pip's message when the download fails, or naming a file whose
            sha256 is not the pinned one.
    """
    folder = Path(folder) if folder is not None else default_folder()
    paths = {name: folder / name for name in PHOTOS}
    if all(_digest(path) == PHOTOS[name] for name, path in paths.items()):
        return paths
    with tempfile.TemporaryDirectory() as tmp:
        tarball = _download(Path(tmp))
        with tarfile.open(tarball) as tar:
            for name, path in paths.items():
                member = tar.extractfile(f"{MEMBER_DIR}/{name}")
                if member is None:
                    raise RuntimeError(f"{SDIST_NAME}: {MEMBER_DIR}/{name} is not a file")
                data = member.read()
                _check(f"{SDIST_NAME}:{name}", hashlib.sha256(data).hexdigest(), PHOTOS[name])
                atomic_write(path, lambda tmp_path, data=data: tmp_path.write_bytes(data))
    return paths


def _download(folder: Path) -> Path:
    """pip-download the sdist into ``folder`` and check its digest."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    result = subprocess.run(
        [*command, SDIST, "-d", str(folder)], capture_output=True, text=True, check=False
    )
    tarball = folder / SDIST_NAME
    if result.returncode != 0 or not tarball.is_file():
        raise RuntimeError(
            f"could not download the {SDIST} source distribution with pip (it needs PyPI):\n"
            f"{result.stderr.strip()[-2000:]}"
        )
    _check(SDIST_NAME, _digest(tarball), SDIST_SHA256)
    return tarball


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _check(what: str, digest: str | None, expected: str) -> None:
    if digest != expected:
        raise RuntimeError(f"{what}: sha256 {digest} is not the pinned {expected}")


if __name__ == "__main__":
    for name, path in fetch_photos(sys.argv[1] if len(sys.argv) > 1 else None).items():
        print(f"{name}: {path}")
