import os
import stat
import threading
from pathlib import Path

import pytest

from tripletkit import _io
from tripletkit._io import atomic_folder, atomic_write, write_json, write_text

FILES = ("a.txt", "b.txt", "c.txt")


@pytest.fixture()
def umask():
    """Set a umask for the test and restore the old one after it."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def publish(path: Path, version: str) -> None:
    """A folder of FILES, each holding ``version``."""
    with atomic_folder(path) as tmp:
        for name in FILES:
            (tmp / name).write_text(version)


def version_of(path: Path) -> str | None:
    """The version of the complete folder at ``path``; None when there is no folder or an
    incomplete one. Reads as a reader must that should not mix an old and a new file: opens the
    folder once and reads its files from there, and when that folder was replaced (and then
    removed) while it read, reads the new one."""
    while True:
        try:
            folder = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return None
        try:
            texts = {read_in(folder, name) for name in FILES}
        except OSError:
            texts = set()
        finally:
            replaced = os.fstat(folder).st_ino != inode(path)
            os.close(folder)
        if not replaced:
            return texts.pop() if len(texts) == 1 else None


def inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def read_in(folder: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY, dir_fd=folder)
    with os.fdopen(fd) as file:
        return file.read()


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def swap_available() -> bool:
    return _io._renameat2_function() is not None


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_files_and_folders_get_the_modes_of_the_umask(tmp_path, umask, mask):
    umask(mask)
    write_text(tmp_path / "t.txt", "x")
    write_json(tmp_path / "j.json", {"a": 1})
    atomic_write(tmp_path / "b.bin", lambda tmp: tmp.write_bytes(b"\0"))
    publish(tmp_path / "folder", "1")
    for name in ("t.txt", "j.json", "b.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~mask


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    write_text(tmp_path / "t.txt", "old")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(tmp_path / "t.txt", fail)
    assert (tmp_path / "t.txt").read_text() == "old"
    assert leftovers(tmp_path) == []


def test_folder_is_published_replaced_and_kept_on_failure(tmp_path):
    path = tmp_path / "sub" / "out"
    publish(path, "1")
    assert version_of(path) == "1"
    publish(path, "2")
    assert version_of(path) == "2" and sorted(p.name for p in path.iterdir()) == list(FILES)
    with pytest.raises(RuntimeError, match="boom"), atomic_folder(path) as tmp:
        (tmp / "a.txt").write_text("3")
        raise RuntimeError("boom")
    assert version_of(path) == "2"
    assert leftovers(path.parent) == [] and [p.name for p in path.parent.iterdir()] == ["out"]


def test_folder_over_a_file_is_refused_before_writing(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(ValueError, match="out exists and is not a folder"):
        publish(tmp_path / "out", "1")
    assert (tmp_path / "out").read_text() == "a file" and leftovers(tmp_path) == []


def failing_moves(monkeypatch, fail_at: int, swap: bool) -> None:
    """Make the ``fail_at``-th call (1-based) to any primitive that moves a folder raise, as a
    crash there would stop the publication; without ``swap``, the fallback of systems with no
    ``renameat2``."""
    calls = [0]

    def wrap(function):
        def moved(*args, **kwargs):
            calls[0] += 1
            if calls[0] == fail_at:
                raise OSError("injected failure")
            return function(*args, **kwargs)

        return moved

    monkeypatch.setattr(_io.os, "replace", wrap(os.replace))
    monkeypatch.setattr(_io.os, "rename", wrap(os.rename))
    if swap:
        monkeypatch.setattr(_io, "_renameat2", wrap(_io._renameat2))
    else:
        monkeypatch.setattr(_io, "_renameat2", lambda *args: None)


@pytest.mark.parametrize("swap", [True, False])
@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_failure_at_any_step_of_publishing_keeps_a_complete_folder(
    tmp_path, monkeypatch, fail_at, swap
):
    if swap and not swap_available():
        pytest.skip("no renameat2 here")
    path = tmp_path / "out"
    publish(path, "old")
    failing_moves(monkeypatch, fail_at, swap)
    try:
        publish(path, "new")
    except OSError as err:
        assert "injected" in str(err)
        assert version_of(path) == "old"
    else:
        assert version_of(path) == "new"
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(not swap_available(), reason="no renameat2 here")
def test_a_reader_always_finds_a_complete_folder_while_it_is_republished(tmp_path):
    path = tmp_path / "out"
    publish(path, "0")
    seen: list[str | None] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append(version_of(path))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for version in range(1, 40):
            publish(path, str(version))
    finally:
        done.set()
        reader.join()
    assert seen and None not in seen
    assert version_of(path) == "39" and leftovers(tmp_path) == []


@pytest.mark.skipif(not swap_available(), reason="no renameat2 here")
def test_concurrent_writers_do_not_collide(tmp_path):
    path = tmp_path / "out"
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def write(writer: int) -> None:
        start.wait()
        try:
            for i in range(10):
                publish(path, f"{writer}-{i}")
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert version_of(path) in {f"{w}-9" for w in range(4)}
    assert leftovers(tmp_path) == []


class FakeModel:
    """Writes a sentence-transformers-like folder; fails when asked to."""

    def __init__(self, version: str, fail: bool = False) -> None:
        self.version, self.fail = version, fail

    def save(self, folder: str) -> None:
        (Path(folder) / "modules.json").write_text(self.version)
        if self.fail:
            raise RuntimeError("save failed")
        (Path(folder) / "model.safetensors").write_text(self.version)


def test_save_encoder_replaces_the_model_in_one_step(tmp_path, monkeypatch):
    from tripletkit.search.encoder import save_encoder

    folder = tmp_path / "model"
    save_encoder(FakeModel("1"), folder)
    with pytest.raises(RuntimeError, match="save failed"):
        save_encoder(FakeModel("2", fail=True), folder)
    assert (folder / "model.safetensors").read_text() == "1"
    failing_moves(monkeypatch, 1, swap_available())  # the move of the new model in fails
    with pytest.raises(OSError, match="injected"):
        save_encoder(FakeModel("3"), folder)
    assert {p.name: p.read_text() for p in folder.iterdir()} == {
        "modules.json": "1",
        "model.safetensors": "1",
    }
    monkeypatch.undo()
    save_encoder(FakeModel("4"), folder)
    assert (folder / "model.safetensors").read_text() == "4" and leftovers(tmp_path) == []


@pytest.mark.skipif(not swap_available(), reason="no renameat2 here")
def test_a_link_to_a_folder_is_replaced_and_its_target_kept(tmp_path):
    publish(tmp_path / "target", "1")
    (tmp_path / "out").symlink_to(tmp_path / "target")
    publish(tmp_path / "out", "2")
    assert not (tmp_path / "out").is_symlink() and version_of(tmp_path / "out") == "2"
    assert version_of(tmp_path / "target") == "1" and leftovers(tmp_path) == []
