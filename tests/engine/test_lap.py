"""The linear-assignment solver: SciPy's optimum on every kind of matrix, warm starts, fallback."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment as scipy_lsa

from permerge.align import lap

NUMBA = not isinstance(lap._numba_kernels(), str)


@pytest.fixture(autouse=True)
def _compiled_for_every_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled kernels take small matrices too (``auto`` would hand them to SciPy)."""
    monkeypatch.setenv("PERMERGE_LAP", "numba")


def _matrices(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    out: list[tuple[str, np.ndarray]] = [
        ("1x1", np.array([[3.5]])),
        ("1x1 negative float32", np.array([[-2.0]], dtype=np.float32)),
        ("1x4", rng.normal(size=(1, 4))),
        ("4x1", rng.normal(size=(4, 1))),
        ("all equal", np.ones((7, 7))),
        ("all zero float32", np.zeros((5, 5), dtype=np.float32)),
        ("identity", np.eye(9)),
    ]
    for k in range(12):
        n = int(rng.integers(2, 40))
        m = n if k % 3 else int(rng.integers(1, 40))
        out += [
            (f"normal {n}x{m}", rng.normal(size=(n, m))),
            (f"normal float32 {n}x{m}", rng.normal(size=(n, m)).astype(np.float32)),
            (f"integers 0..2 {n}x{m}", rng.integers(0, 3, size=(n, m)).astype(np.float64)),
            (f"integers -5..5 float32 {n}x{m}", rng.integers(-5, 5, size=(n, m)).astype(np.float32)),
            (f"near-permutation {n}x{m}", 5 * np.eye(n, m)[rng.permutation(n)] + 0.01 * rng.normal(size=(n, m))),
            (f"repeated rows {n}x{m}", np.repeat(rng.normal(size=(1, m)), n, axis=0)),
            (f"rank one {n}x{m}", np.outer(rng.normal(size=n), rng.normal(size=m))),
        ]
    return out


def _score(c: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> float:
    return float(np.asarray(c, dtype=np.float64)[rows, cols].sum())


def _check_assignment(c: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
    k = min(c.shape)
    assert len(rows) == len(cols) == k
    assert len(set(rows.tolist())) == k and len(set(cols.tolist())) == k
    assert np.all(np.diff(rows) > 0)  # sorted by row, like SciPy


@pytest.mark.parametrize("maximize", [False, True])
def test_cold_solve_is_scipy_bit_for_bit(maximize: bool) -> None:
    """Same algorithm, order and tie-breaking as SciPy: the same assignment, ties included."""
    rng = np.random.default_rng(0)
    for name, c in _matrices(rng):
        want = scipy_lsa(c.astype(np.float64), maximize=maximize)
        got = lap.linear_sum_assignment(c, maximize=maximize)
        _check_assignment(c, *got)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), name


def test_accepts_tensors_and_integer_matrices() -> None:
    rng = np.random.default_rng(1)
    c = rng.integers(0, 10, size=(6, 6))
    want = scipy_lsa(c, maximize=True)
    for x in (c, torch.from_numpy(c), torch.from_numpy(c.astype(np.float32))):
        rows, cols = lap.linear_sum_assignment(x, maximize=True)
        assert np.array_equal(cols, want[1])
    assert lap.linear_sum_assignment(np.zeros((0, 3)))[0].shape == (0,)


def test_non_finite_entries_keep_scipy_semantics() -> None:
    c = np.array([[np.inf, 1.0], [2.0, np.inf]])
    assert lap.linear_sum_assignment(c)[1].tolist() == [1, 0]  # inf: a forbidden pair
    with pytest.raises(ValueError):
        lap.linear_sum_assignment(np.array([[np.nan, 1.0], [1.0, 0.0]]))


def _perturbations(rng: np.random.Generator, c: np.ndarray, step: int) -> np.ndarray:
    kind = step % 4
    if kind == 0:
        return c + 0.05 * rng.normal(size=c.shape)  # the small drift of an STE step
    if kind == 1:
        return c[:, rng.permutation(c.shape[1])]  # a neighbour moved: columns reshuffled
    if kind == 2:
        return np.round(c)  # ties everywhere
    return c  # unchanged: the warm start must certify it without augmenting


@pytest.mark.parametrize("maximize", [False, True])
def test_warm_starts_reach_the_optimum(maximize: bool) -> None:
    rng = np.random.default_rng(2)
    checked = 0
    for trial in range(60):
        n = int(rng.integers(1, 50))
        c = rng.normal(size=(n, n)) * (3 if trial % 2 else 1)
        if trial % 5 == 0:
            c = c.astype(np.float32)
        solver = lap.AssignmentSolver()
        for step in range(8):
            c = _perturbations(rng, c, step)
            rows, cols = solver.solve(c, maximize=maximize)
            _check_assignment(c, rows, cols)
            want = scipy_lsa(c.astype(np.float64), maximize=maximize)
            best = _score(c, *want)
            assert _score(c, rows, cols) == pytest.approx(best, rel=1e-12, abs=1e-9), (trial, step)
            checked += 1
    assert checked == 60 * 8
    if NUMBA:
        assert solver.stats.warm_calls == 7 and solver.used() == "numba"


def test_warm_start_exits_early_when_still_optimal() -> None:
    if not NUMBA:
        pytest.skip("warm starts are a feature of the compiled backend")
    rng = np.random.default_rng(3)
    c = rng.normal(size=(64, 64)).astype(np.float32)
    solver = lap.AssignmentSolver()
    first = solver.solve(c)[1]
    augmented = solver.stats.augmented_rows
    again = solver.solve(c)[1]
    assert np.array_equal(first, again)
    assert solver.stats.warm_optimal == 1 and solver.stats.augmented_rows == augmented
    # a permuted cost: the optimum moves with the columns
    p = rng.permutation(64)
    moved = solver.solve(c[:, p])[1]
    assert np.array_equal(p[moved], first)


def test_warm_start_survives_shape_and_direction_changes() -> None:
    rng = np.random.default_rng(4)
    solver = lap.AssignmentSolver()
    for shape, maximize in [((8, 8), True), ((8, 8), False), ((5, 8), True), ((8, 5), True), ((6, 6), True)]:
        c = rng.normal(size=shape)
        rows, cols = solver.solve(c, maximize=maximize)
        want = scipy_lsa(c, maximize=maximize)
        assert _score(c, rows, cols) == pytest.approx(_score(c, *want), rel=1e-12)


def test_backend_is_chosen_and_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    small, large = rng.normal(size=(10, 10)), rng.normal(size=(lap.MIN_COMPILED_SIZE, lap.MIN_COMPILED_SIZE))
    monkeypatch.setenv("PERMERGE_LAP", "auto")
    info = lap.backend_info()
    assert info["backend"] == ("numba" if NUMBA else "scipy") and info["reason"]
    auto = lap.AssignmentSolver()
    for c in (small, large, small):
        assert np.array_equal(auto.solve(c)[1], scipy_lsa(c, maximize=True)[1])
    # auto: small problems to SciPy (numba's start-up is not worth it), large ones compiled
    assert (auto.stats.scipy_calls, auto.stats.compiled_calls) == ((2, 1) if NUMBA else (3, 0))
    assert auto.used() == ("numba+scipy" if NUMBA else "scipy")

    monkeypatch.setenv("PERMERGE_LAP", "scipy")
    assert lap.backend_info()["backend"] == "scipy" and "PERMERGE_LAP" in lap.backend_info()["reason"]
    forced = lap.AssignmentSolver()
    for c in (large, large):
        assert np.array_equal(forced.solve(c)[1], scipy_lsa(c, maximize=True)[1])
    assert forced.stats.scipy_calls == 2 and forced.stats.warm_calls == 0 and forced.used() == "scipy"
    monkeypatch.setenv("PERMERGE_LAP", "fast")
    assert lap.backend_info()["backend"] == "scipy" and "not numba|scipy|auto" in lap.backend_info()["reason"]


def test_falls_back_to_scipy_without_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    """numba not importable: SciPy is chosen automatically and says why."""
    monkeypatch.delenv("PERMERGE_LAP", raising=False)
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    monkeypatch.delitem(sys.modules, "permerge.align._lap_numba", raising=False)
    lap._import_kernels.cache_clear()
    try:
        info = lap.backend_info()
        assert info["backend"] == "scipy" and "numba unavailable" in info["reason"]
        monkeypatch.setenv("PERMERGE_LAP", "numba")
        assert "although PERMERGE_LAP=numba" in lap.backend_info()["reason"]
        c = np.random.default_rng(6).normal(size=(12, 9))
        solver = lap.AssignmentSolver()
        got = solver.solve(c, maximize=True)
        want = scipy_lsa(c, maximize=True)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        assert solver.used() == "scipy"
    finally:
        monkeypatch.undo()
        lap._import_kernels.cache_clear()


def test_methods_command_shows_the_solver(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from permerge.cli import methods

    monkeypatch.setenv("PERMERGE_LAP", "scipy")
    methods(json_out=True)
    rows = json.loads(capsys.readouterr().out)
    assert rows["wm"]["assignment_solver"]["backend"] == "scipy"
    assert "assignment_solver" not in rows["average"]


def test_a_failing_kernel_falls_back_to_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that cannot compile or run (an unsupported machine) must not break alignment."""
    import types

    def broken(*args: object) -> int:
        raise RuntimeError("no code for this CPU")

    fake = types.ModuleType("fake_kernels")
    fake.solve = fake.warm_start = fake.reduce_rows = broken  # type: ignore[attr-defined]
    fake.NUMBA_VERSION = "0"  # type: ignore[attr-defined]
    monkeypatch.setattr(lap, "_import_kernels", lambda: fake)
    try:
        c = np.random.default_rng(7).normal(size=(9, 9))
        solver = lap.AssignmentSolver()
        assert np.array_equal(solver.solve(c)[1], scipy_lsa(c, maximize=True)[1])
        assert solver.used() == "scipy"
        info = lap.backend_info()
        assert info["backend"] == "scipy" and "no code for this CPU" in info["reason"]
    finally:
        lap._kernel_failure.clear()


@pytest.mark.skipif(not NUMBA, reason="numba unavailable")
def test_row_scans_find_the_first_minimum_exactly() -> None:
    """The kernels' unrolled minimum and first-index scans agree with NumPy on ties and on
    lengths that are not a multiple of the unrolling."""
    from permerge.align import _lap_numba as k

    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 8, 9, 16, 31, 513):
        for h in (rng.normal(size=n), rng.integers(0, 3, size=n).astype(np.float64), np.full(n, -1.5)):
            low = k._min_of(h)
            assert low == h.min()
            assert k._first(h, low, 0) == int(np.argmin(h))
            ties = np.flatnonzero(h == low)
            want = int(ties[1]) if len(ties) > 1 else -1
            assert k._first(h, low, int(ties[0]) + 1) == want


@pytest.mark.parametrize("threads", [1, 2])
def test_solving_many_at_once_is_solving_them_in_turn(threads: int) -> None:
    """Each job keeps its own warm start: threads change the time, never an answer."""
    rng = np.random.default_rng(4)
    costs = [rng.normal(size=(300, 300)).astype(np.float32) for _ in range(3)]
    nudged = [c + 0.05 * rng.normal(size=c.shape).astype(np.float32) for c in costs]
    alone = [lap.AssignmentSolver() for _ in costs]
    together = [lap.AssignmentSolver() for _ in costs]
    for batch in (costs, nudged):  # the second round starts warm from the first
        want = [s.solve(c, maximize=True)[1] for s, c in zip(alone, batch, strict=True)]
        got = lap.solve_many(list(zip(together, batch, strict=True)), maximize=True, threads=threads)
        assert all(np.array_equal(w, g) for w, g in zip(want, got, strict=True))
    assert [s.stats.warm_calls for s in together] == [s.stats.warm_calls for s in alone]
