"""Atomic writes of files and folders: write under a fresh temporary name beside the target,
then publish it with one rename, so an interrupted run never leaves a half-written output and a
reader always finds a complete old or a complete new one.

Temporary names are unique (a random suffix, created with ``O_EXCL`` / ``mkdir``), so writers
running side by side never share one. Files and folders are created with the modes ``open``
and ``mkdir`` give (0o666 and 0o777, less the umask), not the 0o600 / 0o700 of
:mod:`tempfile`.

A folder is published by swapping it with the old one in a single ``renameat2`` call with
``RENAME_EXCHANGE`` (Linux 3.15+, glibc 2.28+; ext4, xfs, btrfs, tmpfs among others), after
which the old folder, now under the temporary name, is removed. Where that call is unavailable
(another system, a file system that refuses the flag) the old folder is first renamed aside to
a unique name and the new one renamed into place: a reader may then, for the instant between
the two renames, find no folder, and a crash in that instant leaves the old folder under its
``.<name>.<random>.old`` name (never a mix of the two).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _unique(parent: Path, name: str, suffix: str, make: Callable[[Path], None]) -> Path:
    """``make(candidate)`` on ``parent/.name.<random>suffix`` until one did not exist yet."""
    while True:
        candidate = parent / f".{name}.{secrets.token_hex(6)}{suffix}"
        try:
            make(candidate)
        except FileExistsError:
            continue
        return candidate


def _new_file(path: Path) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` on a fresh empty file beside ``path``, then rename it to
    ``path`` (replacing an old file). On failure the temporary file is removed and ``path``
    is untouched. The file gets mode 0o666 less the umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _unique(path.parent, path.name, ".tmp", _new_file)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """A fresh empty folder beside ``path`` to write into, published at ``path`` when the block
    succeeds (replacing an old folder there, see the module docstring), removed when it fails,
    leaving the old folder untouched.

    Raises:
        ValueError: when ``path`` exists and is not a folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _unique(path.parent, path.name, ".tmp", lambda p: p.mkdir(0o777))
    try:
        yield tmp
        _publish(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, path: Path) -> None:
    """Move the folder ``tmp`` to ``path``; an old folder there ends up at ``tmp`` (swapped in
    one step where the system can), and is then removed."""
    while True:
        swapped = _renameat2(tmp, path, _RENAME_EXCHANGE)
        if swapped is None:
            _publish_in_two_renames(tmp, path)
            return
        if swapped == 0:
            _remove(tmp)  # what was at `path`
            return
        if swapped != errno.ENOENT:
            raise OSError(swapped, f"cannot move {tmp} to {path}: {os.strerror(swapped)}")
        # no folder at `path` yet: move in, unless another writer just did (then swap again)
        moved = _renameat2(tmp, path, _RENAME_NOREPLACE)
        if moved is None:
            _publish_in_two_renames(tmp, path)
            return
        if moved == 0:
            return
        if moved != errno.EEXIST:
            raise OSError(moved, f"cannot move {tmp} to {path}: {os.strerror(moved)}")


def _remove(path: Path) -> None:
    """Remove a folder, or a file or link (a concurrent writer may have put one there)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _publish_in_two_renames(tmp: Path, path: Path) -> None:
    """The fallback without ``renameat2``: the old folder aside (under a unique name), the new
    one in, the old one removed; on failure the old folder goes back."""
    if not path.exists():
        os.rename(tmp, path)  # fails on a non-empty folder a concurrent writer put there
        return
    old = _unique(path.parent, path.name, ".old", lambda p: p.mkdir(0o700))
    try:
        os.replace(path, old)  # onto the empty placeholder
    except BaseException:
        old.rmdir()
        raise
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _renameat2(source: Path, target: Path, flags: int) -> int | None:
    """``renameat2(source, target, flags)``: 0 on success, else the errno; None where the call
    or the flag is not available (not Linux, an old C library, a file system without it)."""
    function = _renameat2_function()
    if function is None:
        return None
    result = function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags)
    if result == 0:
        return 0
    code = ctypes.get_errno()
    return None if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP) else code


@functools.cache
def _renameat2_function() -> Any:
    """The C library's ``renameat2``, or None."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):  # TypeError: no CDLL(None) on Windows
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return function


def legend(ax: Any, **options: Any) -> None:
    """``ax.legend(**options)`` when something on ``ax`` has a label (matplotlib warns
    otherwise, e.g. for a curve no fold could draw)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**options)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write a matplotlib figure as PNG at ``path``, atomically (110 dpi, tight bounding box)."""
    return atomic_write(
        path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    )
