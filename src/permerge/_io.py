"""Atomic file writes: a reader never sees a half-written file."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import OutputError


def _unwritable(target: Path, e: OSError) -> OutputError:
    return OutputError(f"cannot write {target}: {e.strerror or e}")


def ensure_dir(path: str | os.PathLike[str]) -> Path:
    """Create an output folder; an unusable destination is the user's to fix, not a traceback."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create output folder {p}: {e.strerror or e}") from None
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    The temp file lives in the same directory so the final ``os.replace`` is atomic, and an
    exception (or Ctrl-C) leaves the previous content of ``path`` untouched. A destination
    that cannot be written at all (read-only folder, a file where a folder should be, a
    folder where the file should go) raises :class:`OutputError`; errors raised by the
    caller's writing code pass through unchanged.
    """
    target = Path(path)
    ensure_dir(target.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise _unwritable(target, e) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        try:
            # mkstemp creates 0600; the file gets the mode open() would give it (the umask's),
            # so other users and cluster workers can read results on a shared filesystem
            from ._outdir import file_mode

            with contextlib.suppress(FileNotFoundError):
                os.chmod(tmp_path, file_mode())
            os.replace(tmp_path, target)
        except OSError as e:
            raise _unwritable(target, e) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def remove_stale_temps(directory: str | os.PathLike[str], names: tuple[str, ...] = ("*",)) -> None:
    """Delete the temp files ``atomic_path`` left behind for ``names`` when a process was killed.

    ``atomic_path`` cleans up after exceptions and Ctrl-C, but nothing runs after SIGKILL or a
    power cut. Call this only on files the caller owns right now (a run directory about to be
    recomputed, a report about to be rewritten): a second process writing the same file at the
    same moment would lose its temp file and fail with a clear error, not corrupt anything.
    ``names`` are glob patterns of the final file names; only ``.<name>.<random>.tmp`` matches.
    """
    d = Path(directory)
    if not d.is_dir():
        return
    for name in names:
        for p in d.glob(f".{name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                p.unlink()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)


def finite(obj: Any) -> Any:
    """``obj`` with every NaN / infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that always writes valid JSON: non-finite floats become ``null``."""
    default = kwargs.pop("default", None)
    if default is not None:  # objects converted by ``default`` may hold floats too
        obj = json.loads(json.dumps(obj, default=default))
    return json.dumps(finite(obj), allow_nan=False, **kwargs)
