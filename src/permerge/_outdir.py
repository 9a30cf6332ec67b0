"""An output folder is one unit: checked before any work, replaced as a whole, never half-written.

``train``, ``merge``, ``interpolate`` and ``merge-many`` write a *set* of files (weights,
metadata, permutation, report). Each file being atomic is not enough: a failure between two
files, or a second run with another method into the same ``--out``, used to leave a mix of
runs. Here the whole set is written into a temporary folder beside the destination
(``.<name>.<random>.tmp``, same filesystem) and swapped into place in one step
(``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere two renames), then the previous
contents are deleted. A reader sees the old set or the new set, never a mix; a failure (disk
full included) leaves the old set as it was and is reported on one line.

:class:`OutputFolder` validates the destination when it is created, i.e. before the
computation: it must not be a file, a symlink loop, read-only, an input's folder (unless
``force``) or a folder holding files permerge did not write (those are never deleted).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import OutputError

# What the folder commands write; a folder holding only these (and our temp files) is one of
# ours and may be replaced. result.json: a reproduce run folder being recomputed.
OWN_FILES = frozenset(
    {
        "model.safetensors",
        "model.json",
        "permutation.safetensors",
        "permutation.json",
        "merge.json",
        "interpolation.csv",
        "interpolation.png",
        "interpolation.json",
        "result.json",
    }
)
_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode a new file gets from ``open()``: 0666 less the umask (``mkstemp`` would give 0600)."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    return 0o777 & ~current_umask()


def reason(e: BaseException) -> str:
    """The OS reason of a failed write, from an OSError or safetensors' wrapped I/O error."""
    if isinstance(e, OSError):
        return e.strerror or str(e) or type(e).__name__
    text = str(e)
    m = re.search(r"os error (\d+)", text)
    if m:
        return os.strerror(int(m.group(1)))
    m = re.search(r'message: "([^"]+)"', text)
    if m:
        return m.group(1)
    return " ".join(text.split()) or type(e).__name__


def _write_errors() -> tuple[type[BaseException], ...]:
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - a dependency
        return (OSError,)
    return (OSError, SafetensorError)


def _resolve(p: Path, what: str) -> Path:
    try:
        return Path(os.path.abspath(p)).resolve(strict=False)
    except RuntimeError:  # Python < 3.13: "Symlink loop from ..."
        raise OutputError(f"cannot use {p} as {what}: symlink loop") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputError(f"cannot use {p} as {what}: symlink loop") from None
        raise OutputError(f"cannot use {p} as {what}: {reason(e)}") from None


def _nearest_existing(p: Path) -> Path:
    for a in (p, *p.parents):
        if os.path.lexists(a):
            return a
    return Path("/")


def _probe_writable(folder: Path, target: Path, verb: str) -> None:
    """Create and remove a temporary folder in ``folder``: the one honest writability test
    (root ignores permission bits but not a read-only mount)."""
    try:
        probe = tempfile.mkdtemp(prefix=".permerge-probe.", dir=folder)
    except OSError as e:
        raise OutputError(f"cannot {verb} {target}: {reason(e)}") from None
    with contextlib.suppress(OSError):
        os.rmdir(probe)


def check_parent(target: Path, shown: Path, verb: str = "create output folder") -> None:
    """The folder that will hold ``target`` exists or can be created, and is writable."""
    anc = _nearest_existing(target.parent)
    if not anc.is_dir():
        raise OutputError(f"cannot {verb} {shown}: {os.strerror(errno.ENOTDIR)}")
    _probe_writable(anc, shown, verb)


def _foreign(folder: Path, allowed: frozenset[str]) -> list[str]:
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        raise OutputError(f"cannot read output folder {folder}: {reason(e)}") from None
    # an own name that is a folder (or a link) is not ours either: it may hold anything
    keep = [n for n in names if not _TEMP_RE.match(n) and (n not in allowed or not _plain_file(folder / n))]
    return [n + "/" if (folder / n).is_dir() else n for n in keep]


def _plain_file(p: Path) -> bool:
    return p.is_file() and not p.is_symlink()


def _is_within(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # a filesystem without it (some network mounts): fall back
    raise OSError(err, os.strerror(err), str(b))


def remove_stale(parent: Path, name: str) -> None:
    """Delete the staging folders/temp files a SIGKILLed writer of ``name`` left in ``parent``."""
    with contextlib.suppress(OSError):
        for p in parent.glob(f".{glob_escape(name)}.*.tmp"):
            if not _TEMP_RE.match(p.name):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


class OutputFolder:
    """A destination folder for one set of output files; see the module docstring.

    ``inputs`` are paths the command reads (model folders or files); writing over one of
    them needs ``force``. ``allowed`` are the file names a previous permerge output may hold.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        inputs: Iterable[str | os.PathLike[str] | None] = (),
        force: bool = False,
        allowed: frozenset[str] = OWN_FILES,
    ) -> None:
        self.path = Path(path)  # as the user wrote it: used in messages and returned
        self.allowed = allowed
        self.real = _resolve(self.path, "output folder")
        self.check()
        if not force:
            for i in inputs:
                if i is None:
                    continue
                ip = _resolve(Path(i), "input")
                folder = ip if ip.is_dir() else ip.parent
                if _is_within(folder, self.real):
                    raise OutputError(
                        f"--out {self.path} would overwrite the input {i}; choose another folder or pass --force"
                    )

    def check(self) -> None:
        """Everything that can be known before the work: called at creation and before writing."""
        real, shown = self.real, self.path
        with contextlib.suppress(OSError):
            if _is_within(Path.cwd().resolve(), real):
                raise OutputError(f"--out {shown} is the current folder (or holds it); choose a folder inside it")
        if os.path.lexists(real) and not real.exists():  # a dangling link inside the path
            raise OutputError(f"cannot create output folder {shown}: {os.strerror(errno.ENOENT)}")
        if real.exists():
            if not real.is_dir():
                raise OutputError(f"cannot create output folder {shown}: {os.strerror(errno.EEXIST)}")
            if not os.access(real, os.W_OK | os.X_OK):
                raise OutputError(f"cannot write {shown}: {os.strerror(errno.EACCES)}")
            foreign = self.foreign()
            if foreign:
                more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
                raise OutputError(
                    f"--out {shown} holds files permerge did not write ({', '.join(foreign[:3])}{more}); "
                    "choose a new or empty folder (nothing is deleted)"
                )
            _probe_writable(real.parent, shown, "replace output folder")
        else:
            check_parent(real, shown)

    def foreign(self) -> list[str]:
        return _foreign(self.real, self.allowed) if self.real.is_dir() else []

    @contextlib.contextmanager
    def staged(self) -> Iterator[Path]:
        """Yield an empty staging folder beside the destination; on success it replaces the
        destination as a whole. Any failure removes it and leaves the destination as it was;
        an OS write error (disk full, quota, read-only) becomes one :class:`OutputError`."""
        self.check()
        real, shown = self.real, self.path
        try:
            real.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create output folder {shown}: {reason(e)}") from None
        remove_stale(real.parent, real.name)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent))
        except OSError as e:
            raise OutputError(f"cannot create output folder {shown}: {reason(e)}") from None
        errors = _write_errors()
        try:
            yield tmp
            fmode = file_mode()  # some writers (safetensors) create 0600 files whatever the umask
            for f in tmp.rglob("*"):
                if f.is_file() and not f.is_symlink():
                    os.chmod(f, fmode)
            mode = dir_mode()
            with contextlib.suppress(OSError):
                if real.is_dir():  # keep a setgid bit (shared group folders) and the user's mode
                    mode = stat.S_IMODE(real.stat().st_mode)
                elif real.parent.stat().st_mode & stat.S_ISGID:
                    mode |= stat.S_ISGID
            os.chmod(tmp, mode)
            self._commit(tmp)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, errors) and not isinstance(e, OutputError):
                raise OutputError(f"cannot write {shown}: {reason(e)}; its previous contents are kept") from None
            raise

    def _commit(self, tmp: Path) -> None:
        real = self.real
        try:
            os.rename(tmp, real)  # absent, or an empty folder: replaced in one step
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        foreign = self.foreign()  # files may have appeared during the work
        if foreign:
            raise OutputError(
                f"--out {self.path} now holds files permerge did not write ({', '.join(foreign[:3])}); "
                "nothing was changed"
            )
        if _exchange(tmp, real):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous contents
            return
        old = Path(tempfile.mkdtemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent))
        os.rmdir(old)
        os.rename(real, old)
        try:
            os.rename(tmp, real)
        except BaseException:
            os.rename(old, real)
            raise
        shutil.rmtree(old, ignore_errors=True)


def check_output_file(
    path: str | os.PathLike[str], *, sidecars: Iterable[Path] = (), inputs: Iterable[str] = (), force: bool = False
) -> Path:
    """Validate a single-file destination (and its sidecar files) before the work."""
    shown = Path(path)
    real = _resolve(shown, "output file")
    for p, s in ((real, shown), *((_resolve(x, "output file"), x) for x in sidecars)):
        if p.is_dir():
            raise OutputError(f"cannot write {s}: {os.strerror(errno.EISDIR)}")
        if p.exists() and not os.access(p.parent, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write {s}: {os.strerror(errno.EACCES)}")
    check_parent(real, shown, "write")
    if not force:
        for i in inputs:
            if _resolve(Path(i), "input") == real:
                raise OutputError(f"--out {shown} would overwrite the input {i}; choose another name or pass --force")
    return real
