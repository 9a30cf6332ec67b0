"""Linux process-table helpers for the tests that start, kill and inspect real processes."""

from __future__ import annotations

import signal
from pathlib import Path


def default_sigint() -> None:
    """``preexec_fn`` for a child that must react to Ctrl-C. A shell starts background jobs with
    SIGINT ignored and children inherit that; Python then never raises KeyboardInterrupt, so a
    suite launched in the background (``nohup make test &``) would fail every SIGINT test."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state first, then ppid), or None."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (0 if it is gone)."""
    import os

    fields = stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> dict[int, bytes]:
    """Direct children of ``pid`` with their command lines."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        fields = stat_fields(int(d.name))
        if fields is None or int(fields[1]) != pid:
            continue
        try:
            out[int(d.name)] = (d / "cmdline").read_bytes()
        except OSError:
            continue
    return out


def descendants(pid: int) -> set[int]:
    out: set[int] = set()
    todo = [pid]
    while todo:
        for c in children(todo.pop()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def alive(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"
