"""Exact linear assignment with a warm start: the hot loop of every alignment method.

One interface for weight matching, activation matching, STE and any new method:

* :func:`linear_sum_assignment` is a drop-in for SciPy's (``rows, cols``, ``maximize=``),
  for one-off problems (activation matching).
* :class:`AssignmentSolver` keeps the dual variables (row potentials ``u``, column prices
  ``v``) and the assignment of its last square problem. The next call starts from those
  prices: every row whose old column is still a best column at the old prices keeps it (a
  dual-feasible, complementary-slack partial solution), and only the other rows are
  augmented. When no row lost its column the old assignment is provably optimal and the call
  ends after one pass over the matrix. Weight matching keeps one solver per permutation
  group; STE keeps them across its steps.

The compiled backend is a shortest-augmenting-path solver (Crouse, "On implementing 2D
rectangular assignment algorithms", IEEE TAES 2016: Dijkstra on reduced costs, the
Jonker-Volgenant family) written for numba. A cold solve follows the same operations, row
order and tie-breaking as SciPy's implementation of that algorithm, so it returns the same
assignment as ``scipy.optimize.linear_sum_assignment`` bit for bit (checked in the tests);
a warm solve returns an optimal assignment too, possibly another one when several are tied.
Arithmetic is float64 whatever the input dtype: a float32 matrix is read as is (no float64
copy) and gives the same result as its float64 conversion.

Backend choice (``PERMERGE_LAP``): ``auto`` (the default) uses numba when it imports, for
problems of ``MIN_COMPILED_SIZE`` (256) rows or more, and SciPy otherwise (no warm start:
small problems are cheap and numba's start-up is not); ``numba`` uses it for every size;
``scipy`` never. :func:`backend_info` says which is used and why (``permerge methods`` prints
it). Matrices with non-finite entries always go to SciPy, which defines what ``inf`` (a
forbidden pair) and NaN (an error) mean. Both backends return an optimal assignment, and the
same one unless several are tied, so the choice changes speed, not results.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
import types
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment as _scipy_lsa

BACKENDS = ("numba", "scipy")
ENV_VAR = "PERMERGE_LAP"
# With PERMERGE_LAP=auto, problems smaller than this go to SciPy: one such solve takes a
# millisecond or two, less than numba's one-off start-up in a fresh process (about 0.5 s of
# CPU to import numba and load the cached kernels), and they seldom come in long series.
MIN_COMPILED_SIZE = 256


_kernel_failure: list[str] = []  # set when a kernel failed to compile or run: SciPy from then on


@cache
def _import_kernels() -> types.ModuleType | str:
    try:
        return importlib.import_module(f"{__package__}._lap_numba")
    except Exception as e:  # numba missing or broken: a reason to report, not a crash
        return f"numba unavailable ({type(e).__name__}: {str(e)[:120]})"


def _numba_kernels() -> types.ModuleType | str:
    """The module of compiled kernels, or why it is unavailable (imported on first use)."""
    return _kernel_failure[0] if _kernel_failure else _import_kernels()


def _mode() -> str:
    want = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    return want if want in (*BACKENDS, "auto") else "invalid"


def backend_info() -> dict[str, str]:
    """Which assignment backend is used and why: ``{"backend", "reason", "version", "min_size"}``.

    ``min_size``: the smallest problem (rows or columns, whichever is more) the compiled
    backend takes; smaller ones are solved by SciPy."""
    mode = _mode()
    if mode == "invalid":
        given = os.environ.get(ENV_VAR, "")
        why = f"{ENV_VAR}={given!r} is not numba|scipy|auto; using scipy"
        return {"backend": "scipy", "reason": why, "version": _scipy_version(), "min_size": "-"}
    if mode == "scipy":
        return {
            "backend": "scipy",
            "reason": f"forced by {ENV_VAR}=scipy",
            "version": _scipy_version(),
            "min_size": "-",
        }
    kernels = _numba_kernels()
    if isinstance(kernels, str):
        why = kernels + ("" if mode == "auto" else f" although {ENV_VAR}=numba")
        return {"backend": "scipy", "reason": why, "version": _scipy_version(), "min_size": "-"}
    what = "compiled shortest augmenting path, warm-started"
    if mode == "numba":
        return {
            "backend": "numba",
            "reason": f"{what}, every size ({ENV_VAR}=numba)",
            "version": kernels.NUMBA_VERSION,
            "min_size": "1",
        }
    return {
        "backend": "numba",
        "reason": f"{what}, for problems of {MIN_COMPILED_SIZE}+ rows (smaller: SciPy)",
        "version": kernels.NUMBA_VERSION,
        "min_size": str(MIN_COMPILED_SIZE),
    }


def backend() -> str:
    return backend_info()["backend"]


def _scipy_version() -> str:
    import scipy

    return scipy.__version__


def _as_matrix(cost: np.ndarray | torch.Tensor) -> np.ndarray:
    """A C-contiguous float32/float64 numpy matrix (tensors are moved to the CPU once)."""
    if isinstance(cost, torch.Tensor):
        t = cost.detach()
        if t.dtype not in (torch.float32, torch.float64):
            t = t.double()
        cost = t.cpu().numpy()
    a = np.asarray(cost)
    if a.ndim != 2:
        raise ValueError(f"expected a matrix, got shape {a.shape}")
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    return np.ascontiguousarray(a)


def _all_finite(c: np.ndarray) -> bool:
    # Any inf or NaN makes the sum non-finite; a finite sum is the common, cheap answer (no
    # boolean copy of the matrix). Only an overflowing sum of finite values takes the long way.
    return bool(np.isfinite(c.sum())) or bool(np.isfinite(c).all())


@dataclass
class SolverStats:
    calls: int = 0
    compiled_calls: int = 0  # solved by the numba kernels
    scipy_calls: int = 0  # solved by SciPy (small, non-finite, or no numba)
    warm_calls: int = 0  # compiled calls that started from the previous solution
    warm_optimal: int = 0  # warm calls that ended after the optimality check (nothing to augment)
    augmented_rows: int = 0  # rows that needed a shortest augmenting path (compiled calls)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


@dataclass
class AssignmentSolver:
    """Repeated exact assignment problems, each warm-started from the previous one's duals.

    ``solve`` returns ``(rows, cols)`` exactly like SciPy's ``linear_sum_assignment``. Warm
    starts apply to square problems of the size last solved; anything else is solved cold.
    ``mode`` is ``PERMERGE_LAP`` at creation (see :func:`backend_info`).
    """

    mode: str = field(default_factory=_mode)
    stats: SolverStats = field(default_factory=SolverStats)
    _u: np.ndarray | None = field(default=None, repr=False)
    _v: np.ndarray | None = field(default=None, repr=False)
    _col4row: np.ndarray | None = field(default=None, repr=False)
    _maximize: bool = field(default=True, repr=False)

    def reset(self) -> None:
        """Forget the last solution (the next call is cold)."""
        self._u = self._v = self._col4row = None

    def used(self) -> str:
        """Which backends solved this solver's problems so far: numba, scipy, numba+scipy, none."""
        used = [b for b, n in (("numba", self.stats.compiled_calls), ("scipy", self.stats.scipy_calls)) if n]
        return "+".join(used) or "none"

    def _kernels(self, size: int) -> types.ModuleType | None:
        if self.mode == "auto" and size < MIN_COMPILED_SIZE or self.mode not in ("auto", "numba"):
            return None
        kernels = _numba_kernels()
        return kernels if isinstance(kernels, types.ModuleType) else None

    def solve(
        self, cost: np.ndarray | torch.Tensor, *, maximize: bool = True, warm: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        c = _as_matrix(cost)
        self.stats.calls += 1
        try:
            return self._solve(c, maximize, warm)
        finally:
            self.stats.seconds += time.perf_counter() - t0

    def _scipy(self, c: np.ndarray, maximize: bool) -> tuple[np.ndarray, np.ndarray]:
        self.reset()
        self.stats.scipy_calls += 1
        rows, cols = _scipy_lsa(c, maximize=maximize)
        return rows.astype(np.int64), cols.astype(np.int64)

    def _solve(self, c: np.ndarray, maximize: bool, warm: bool) -> tuple[np.ndarray, np.ndarray]:
        nr, nc = c.shape
        kernels = self._kernels(max(nr, nc))
        if kernels is None or nr == 0 or nc == 0 or not _all_finite(c):
            return self._scipy(c, maximize)
        try:
            out = self._compiled(kernels, c, maximize, warm)
        except Exception as e:  # e.g. numba cannot compile for this machine: fall back, and say why
            _kernel_failure[:] = [f"numba kernels failed ({type(e).__name__}: {str(e)[:120]})"]
            out = None
        return self._scipy(c, maximize) if out is None else out

    def _compiled(
        self, kernels: types.ModuleType, c: np.ndarray, maximize: bool, warm: bool
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Solve with the numba kernels; ``None`` when they report an infeasible problem."""
        nr, nc = c.shape
        sign = -1.0 if maximize else 1.0
        if nr != nc:
            self.reset()  # warm starts are for square problems (the permutation groups)
            transpose = nr > nc
            m = np.ascontiguousarray(c.T) if transpose else c
            u = np.zeros(m.shape[0])
            v = np.zeros(m.shape[1])
            col4row = np.full(m.shape[0], -1, dtype=np.int64)
            row4col = np.full(m.shape[1], -1, dtype=np.int64)
            augmented = kernels.solve(m, sign, u, v, col4row, row4col)
            if augmented < 0:  # cannot happen with finite costs; SciPy then says what is wrong
                return None
            self.stats.compiled_calls += 1
            self.stats.augmented_rows += augmented
            if transpose:
                order = np.argsort(col4row, kind="stable")
                return col4row[order].astype(np.int64), order.astype(np.int64)
            return np.arange(nr, dtype=np.int64), col4row
        n = nr
        if (
            warm
            and self._v is not None
            and self._col4row is not None
            and self._u is not None
            and len(self._v) == n
            and self._maximize == maximize
        ):
            u, v, col4row = self._u, self._v, self._col4row
            row4col = np.full(n, -1, dtype=np.int64)
            self.stats.warm_calls += 1
            free = kernels.warm_start(c, sign, u, v, col4row, row4col)
            if free == 0:
                self.stats.warm_optimal += 1
            else:
                kernels.reduce_rows(c, sign, u, v, col4row, row4col, 4 * n)
        else:
            u, v = np.zeros(n), np.zeros(n)
            col4row = np.full(n, -1, dtype=np.int64)
            row4col = np.full(n, -1, dtype=np.int64)
        self.reset()  # until this solve has finished, the state is not a solution
        augmented = kernels.solve(c, sign, u, v, col4row, row4col)
        if augmented < 0:
            return None
        self.stats.compiled_calls += 1
        self.stats.augmented_rows += augmented
        self._u, self._v, self._col4row, self._maximize = u, v, col4row, maximize
        return np.arange(n, dtype=np.int64), col4row.copy()


MAX_THREADS = 4  # solve_many's cap: the calling thread plus MAX_THREADS - 1 pool workers
_pools: dict[int, ThreadPoolExecutor] = {}  # per process: a pool does not survive a fork
_pools_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get(os.getpid())
        if pool is None:
            pool = _pools[os.getpid()] = ThreadPoolExecutor(MAX_THREADS - 1, thread_name_prefix="permerge-lap")
        return pool


def solve_many(
    jobs: Sequence[tuple[AssignmentSolver, np.ndarray | torch.Tensor]], *, maximize: bool = True, threads: int = 1
) -> list[np.ndarray]:
    """``cols`` of each ``(solver, cost)`` job, solved on up to ``threads`` cores at once.

    Each job has its own solver (its own warm-start state), so the answers are exactly those
    of solving the jobs one after another: only the time changes. The compiled kernels
    release the GIL; jobs SciPy takes (small or non-finite problems) mostly wait on it, which
    costs nothing but the thread hand-over. With ``threads`` 1 or one job, no thread is used.
    """
    threads = min(threads, len(jobs), MAX_THREADS)
    if threads <= 1:
        return [s.solve(c, maximize=maximize)[1] for s, c in jobs]
    futures = [_pool().submit(s.solve, c, maximize=maximize) for s, c in jobs[1:]]
    first = jobs[0][0].solve(jobs[0][1], maximize=maximize)[1]
    return [first, *(f.result()[1] for f in futures)]


def linear_sum_assignment(cost: np.ndarray | torch.Tensor, *, maximize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One cold solve with the selected backend; same answer as SciPy's (``rows, cols``)."""
    return AssignmentSolver().solve(cost, maximize=maximize, warm=False)


def assignment_score(cost: torch.Tensor, cols: torch.Tensor) -> float:
    """``sum_i cost[i, cols[i]]`` in float64 (the objective the solvers maximise)."""
    return float(cost[torch.arange(len(cols), device=cost.device), cols.to(cost.device)].double().sum())
