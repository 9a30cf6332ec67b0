"""A thin progress bar (rich) that is silent when disabled or when output is not a terminal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class _Bar:
    def __init__(self, progress: Progress | None, task: object) -> None:
        self._p, self._t = progress, task

    def advance(self, n: int = 1, **fields: float) -> None:
        if self._p is None:
            return
        info = "  ".join(f"{k} {v:.4g}" for k, v in fields.items())
        self._p.update(self._t, advance=n, info=info)  # type: ignore[arg-type]


@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator[_Bar]:
    if not enabled or not sys.stderr.isatty():
        yield _Bar(None, None)
        return
    from rich.console import Console

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(stderr=True),
        transient=True,
    ) as p:
        yield _Bar(p, p.add_task(description, total=total, info=""))
