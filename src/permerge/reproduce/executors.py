"""Executors run a batch of independent tasks and return their results in order.

The interface is one method, ``run(tasks, ctx, on_result) -> results``; the planner hands over
one stage at a time (a stage's tasks depend only on earlier stages). Executors register by
name, so ``--executor ray`` is one more small file (``ray_executor.py``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Protocol

from ..errors import PermergeError
from ..registry import Registry
from .tasks import RunContext, Task, execute

OnResult = Callable[[Task, dict[str, Any]], None]


class Executor(Protocol):
    name: str

    def run(
        self, tasks: Sequence[Task], ctx: RunContext, on_result: OnResult | None = None
    ) -> list[dict[str, Any]]: ...

    def close(self, abort: bool = False) -> None: ...


EXECUTORS: Registry[Callable[..., Executor]] = Registry("executor")
# registered by its module on first use: importing it needs the optional ``ray`` extra
_LAZY = {"ray": f"{__package__}.ray_executor"}


def register_executor(name: str) -> Callable[[Callable[..., Executor]], Callable[..., Executor]]:
    return EXECUTORS.register(name)


def check_executor(name: str) -> None:
    """An unknown executor name is refused before anything is written (or Ray imported)."""
    if name not in EXECUTORS and name not in _LAZY:
        raise PermergeError(f"unknown executor {name!r}; known: {', '.join(sorted({*EXECUTORS.names(), *_LAZY}))}")


def get_executor(name: str, **kwargs: Any) -> Executor:
    check_executor(name)
    if name not in EXECUTORS:
        import importlib

        importlib.import_module(_LAZY[name])  # registers itself
    return EXECUTORS.get(name)(**kwargs)


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """Make this worker process exit when ``parent_pid`` (the command) dies, even by SIGKILL,
    when nothing gets to run in the parent.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` has the kernel kill us when the parent dies.
    Everywhere: a daemon thread polls the parent pid (a dead parent's children are
    re-parented) and exits the process. A parent that died before this ran is caught by the
    first check.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no libc symbol: the watchdog below still works
            pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="permerge-parent-watchdog", daemon=True).start()


def _init_worker(threads: int, parent_pid: int | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # see _workers_ignore_sigint (a pool started off the main thread)
    if parent_pid is not None:
        die_with_parent(parent_pid)
    import torch

    torch.set_num_threads(threads)


@contextmanager
def _workers_ignore_sigint() -> Iterator[None]:
    """Worker processes started inside this block ignore SIGINT from their first instruction.

    Ctrl-C in a terminal reaches the whole process group. The command stops its workers
    (SIGTERM) at once; a worker that got the SIGINT itself raised KeyboardInterrupt and printed
    a traceback after "interrupted" whenever it won that race, even while still importing
    (about 1 interrupted run in 20 on a 2-core machine, more often under load). An ignored
    signal stays ignored across exec, and Python then installs no handler of its own. The pool
    spawns its workers in ``submit``, so the block wraps the submits; a Ctrl-C to the command
    within it (milliseconds) is lost."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread; _init_worker still ignores it
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


@register_executor("local")
class LocalExecutor:
    """A process pool sized to the cores (``workers=1``: in this process, simplest to debug).

    Each worker gets ``cores // workers`` torch threads so the machine is used but not
    oversubscribed, never more than this process was given (``OMP_NUM_THREADS`` or
    ``torch.set_num_threads``): a lone worker beside another job on 2 cores otherwise ran 2
    threads on one free core, and OpenMP's spin-waits made it ~7x slower. Processes are
    spawned, not forked: forking a process that already ran torch's thread pools can deadlock.
    """

    name = "local"

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        if address:
            raise PermergeError("--address only applies to --executor ray")
        cores = os.cpu_count() or 1
        self.workers = max(1, workers or cores)
        import torch

        self.threads = max(1, min(cores // self.workers, torch.get_num_threads()))
        self._pool: ProcessPoolExecutor | None = None

    def run(self, tasks: Sequence[Task], ctx: RunContext, on_result: OnResult | None = None) -> list[dict[str, Any]]:
        ctx = replace(ctx, threads=self.threads)
        results: list[dict[str, Any] | None] = [None] * len(tasks)
        if self.workers == 1 or len(tasks) <= 1:
            import torch

            threads = torch.get_num_threads()
            try:
                for i, t in enumerate(tasks):
                    results[i] = execute(t, ctx)
                    if on_result:
                        on_result(t, results[i])  # type: ignore[arg-type]
            finally:
                torch.set_num_threads(threads)  # in-process: leave the caller's setting as it was
            return [r for r in results if r is not None]
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=mp.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.threads, os.getpid()),
            )
        with _workers_ignore_sigint():
            futures: dict[Future[dict[str, Any]], int] = {
                self._pool.submit(execute, t, ctx): i for i, t in enumerate(tasks)
            }
        pending = set(futures)
        broken = False
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    i = futures[f]
                    try:
                        results[i] = f.result()
                    except BrokenProcessPool:
                        # A worker died (OOM kill, kill -9): every run still in the pool fails
                        # with it. Report them as failed runs, like the Ray executor does, and
                        # start a new pool for what follows; nothing was written for them.
                        results[i] = failed_result(tasks[i], "worker process died (killed, or out of memory?)")
                        broken = True
                    if on_result:
                        on_result(tasks[i], results[i])  # type: ignore[arg-type]
        except BaseException:
            self.close(abort=True)  # Ctrl-C: stop the workers now, not after their runs
            raise
        if broken:
            self.close(abort=True)
        return [r for r in results if r is not None]

    def close(self, abort: bool = False) -> None:
        """Shut the pool down; ``abort`` terminates running workers instead of waiting for them
        (safe: a run only becomes visible when its ``result.json`` is renamed into place)."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        if not abort:
            pool.shutdown(cancel_futures=True)
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())  # private, but stable since 3.2
        manager = getattr(pool, "_executor_manager_thread", None)
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            proc.terminate()
        for proc in processes:
            proc.join(timeout=10)
        if manager is not None:
            # The pool's manager thread holds its queues; their semaphores are unlinked when it
            # lets go of them. Interrupted, the CLI then leaves by os._exit: were the thread still
            # between unlinking a semaphore and telling the resource tracker, the tracker printed
            # a "leaked semaphore" warning after our last line (seen once in CI, on SIGTERM).
            manager.join(timeout=10)


def failed_result(task: Task, error: str) -> dict[str, Any]:
    """The result of a run whose worker died: reported like a failed run, so the grid goes on;
    nothing was written for it, so a rerun retries it."""
    return {
        "status": "error",
        "key": task.key,
        "kind": task.kind,
        "label": task.label,
        "error": f"{error}; rerun to retry",
        "traceback": None,
    }
