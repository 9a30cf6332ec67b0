"""The assignment solver on STE's own problems, replayed; and spec derivation in a fresh process.

Runs STE (MNIST vs Fashion-MNIST MLPs 3x512, 10 images/class, same cached source models as
``ste_merge.py``), keeps the last ``--problems`` warm-started 512 x 512 problems with the
solver state each one started from, then times on them, single-threaded: the warm start alone,
the whole warm solve (warm start, row reduction, augmenting paths), and pairs of problems
solved one after the other vs side by side (``lap.solve_many``, 2 threads). Last, the time of
``derive_spec`` on the MLP in a fresh Python process (its first-import costs included).

    PERMERGE_DATA=../shared/data python benchmarks/lap_replay.py
    # another commit's kernels: PYTHONPATH=<checkout>/src python benchmarks/lap_replay.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ste_merge import source_model  # noqa: E402

from permerge import api  # noqa: E402
from permerge.align import _lap_numba as kernels  # noqa: E402
from permerge.align import lap  # noqa: E402
from permerge.merge.core import align  # noqa: E402

Problem = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # cost, u, v, col4row


def capture(steps: int, keep: int) -> list[Problem]:
    """The last ``keep`` warm-started problems of an STE run, with their starting duals."""
    seen: list[Problem] = []
    compiled = lap.AssignmentSolver._compiled

    def spy(self, k, c, maximize, warm):  # type: ignore[no-untyped-def]
        if self._v is not None and c.shape[0] == c.shape[1]:
            seen.append((c.copy(), self._u.copy(), self._v.copy(), self._col4row.copy()))
        return compiled(self, k, c, maximize, warm)

    lap.AssignmentSolver._compiled = spy  # type: ignore[method-assign]
    try:
        a = api.as_checkpoint(source_model("mnist", 0, 10))
        b = api.as_checkpoint(source_model("fashion-mnist", 1, 10))
        data = api.load_merge_data(["mnist@10", "fashion-mnist@10"])
        align(a, b, "ste", data, options={"steps": steps, "lr": 0.5}, progress=False)
    finally:
        lap.AssignmentSolver._compiled = compiled  # type: ignore[method-assign]
    return seen[-keep:]


def time_kernels(problems: list[Problem], repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` milliseconds per problem: (warm start alone, whole warm solve)."""
    best_warm = best_all = float("inf")
    for _ in range(repeats):
        t_warm = t_all = 0.0
        for c, u0, v0, col0 in problems:
            u, v, col = u0.copy(), v0.copy(), col0.copy()
            row4col = np.full(len(v), -1, dtype=np.int64)
            t0 = time.perf_counter()
            free = kernels.warm_start(c, -1.0, u, v, col, row4col)
            t1 = time.perf_counter()
            if free:
                kernels.reduce_rows(c, -1.0, u, v, col, row4col, 4 * len(v))
            kernels.solve(c, -1.0, u, v, col, row4col)
            t2 = time.perf_counter()
            t_warm, t_all = t_warm + t1 - t0, t_all + t2 - t0
        best_warm, best_all = min(best_warm, t_warm), min(best_all, t_all)
    return 1e3 * best_warm / len(problems), 1e3 * best_all / len(problems)


def time_pairs(problems: list[Problem], threads: int) -> float:
    """Milliseconds per pair of problems through ``lap.solve_many`` (solvers primed warm)."""
    if not hasattr(lap, "solve_many"):
        return float("nan")  # a commit before parallel solves
    total = 0.0
    for p, q in zip(problems[::2], problems[1::2], strict=False):
        jobs = []
        for c, u, v, col in (p, q):
            s = lap.AssignmentSolver()
            s._u, s._v, s._col4row, s._maximize = u.copy(), v.copy(), col.copy(), True
            jobs.append((s, c))
        t0 = time.perf_counter()
        lap.solve_many(jobs, maximize=True, threads=threads)
        total += time.perf_counter() - t0
    return 1e3 * total / (len(problems) // 2)


def derive_seconds() -> float:
    code = (
        "import time, torch\n"
        "from permerge.models import build_model, model_config_for\n"
        "from permerge.permutation.fx import derive_spec\n"
        "m = build_model(model_config_for('mlp', (1, 28, 28)))\n"
        "t = time.perf_counter(); derive_spec(m, torch.zeros(1, 1, 28, 28)); print(time.perf_counter() - t)\n"
    )
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150, help="STE steps to capture problems from")
    ap.add_argument("--problems", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    problems = capture(args.steps, args.problems)
    time_kernels(problems[:10], 1)  # compile or load the kernels
    warm, whole = time_kernels(problems, args.repeats)
    print(f"{len(problems)} replayed 512x512 problems: warm start {warm:.3f} ms, whole warm solve {whole:.3f} ms")
    time_pairs(problems[:10], 2)
    print(f"pairs: one after the other {time_pairs(problems, 1):.3f} ms, side by side {time_pairs(problems, 2):.3f} ms")
    print(f"derive_spec in a fresh process: {derive_seconds():.2f} s")


if __name__ == "__main__":
    main()
