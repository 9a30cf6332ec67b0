"""Weight matching: data-free coordinate descent over permutation groups.

Each step solves one linear assignment problem for one group, whose cost is the summed
similarity ``W_a W_b^T`` over every weight axis in the group, with B's other axes already
permuted by the current permutations of the other groups (git-re-basin, Ainsworth et al.).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..permutation.spec import Permutation, PermutationSpec, permute_param
from .lap import AssignmentSolver, assignment_score, solve_many
from .registry import Alignment, AlignProblem, register

_STAT_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


class WMOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    max_iter: int = Field(100, ge=1, description="maximum sweeps over all groups")
    seed: int = 0


def _unit_rows(w: torch.Tensor, axis: int, n: int, outer: int = 1) -> torch.Tensor:
    """``w`` as ``n x rest``: row ``i`` holds every weight attached to unit ``i`` (in each of
    the ``outer`` repeats of the units, e.g. every attention head)."""
    if outer == 1:
        return w.movedim(axis, 0).reshape(n, -1)
    return w.movedim(axis, 0).reshape(outer, n, -1).transpose(0, 1).reshape(n, -1)


@dataclass
class _Product:
    others: tuple[bytes, ...]  # the neighbours' permutations it was computed for
    prod: torch.Tensor  # W_a W_b^T for one axis of a group
    src: torch.Tensor  # column map of B's unit rows it was computed with (see _columns)
    updates: int  # rank-d updates since the last fresh product


class WeightMatcher:
    """Weight matching against a fixed B, reusable across many calls (STE calls it every step).

    Per group and axis it caches B's unit rows with the *other* groups' permutations applied,
    keyed by those permutations, and the products ``W_a W_b^T`` within a call. When a
    neighbour's permutation moved only a few units, a product is updated by a low-rank term
    instead of recomputed (see ``_product``). Within a call, a group none of whose neighbours
    moved since it was last solved is skipped: its cost matrix, hence its answer, is the
    same. Costs are built in float32 (float64 on request) on ``device`` and handed to the
    assignment solver as they are (it computes in float64, so this changes nothing). Each
    group keeps an :class:`~permerge.align.lap.AssignmentSolver`, which starts from the dual
    variables of that group's previous problem, in this call or the last one.
    """

    MAX_UPDATES = 16  # low-rank updates of a product before it is recomputed from scratch
    UPDATE_FRACTION = 4  # update a product when at most 1/4 of B's columns moved

    def __init__(
        self,
        spec: PermutationSpec,
        state_b: dict[str, torch.Tensor],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        self.spec = spec
        self.dtype = dtype
        self.device = torch.device(device if device is not None else "cpu")
        self.b = {
            k: v.detach().to(device=self.device, dtype=dtype)
            for k, v in state_b.items()
            if not k.endswith(_STAT_SUFFIXES)
        }
        self.names = list(spec.groups)
        # the groups whose permutation enters group p's cost (other axes of the same weights)
        self.neighbours = {
            p: tuple(
                sorted({q for ref in g.axes if ref.param in self.b for _, q, _ in spec.by_param[ref.param] if q != p})
            )
            for p, g in spec.groups.items()
        }
        self.solvers = {p: AssignmentSolver() for p in self.names}
        self.skipped = 0  # group solves skipped because no neighbour had moved (all calls)
        self.parallel = 0  # solves run at the same time as another group's (all calls)
        self.products = {"fresh": 0, "updated": 0}  # how products were obtained (all calls)
        self._orig_rows: dict[tuple[str, int], torch.Tensor] = {}
        # _columns per axis, for the neighbours' permutations it was computed for. Kept across
        # match() calls: STE projects every step, mostly with unchanged neighbours, and
        # rebuilding these index maps was a fifth of its step time.
        self._src: dict[tuple[str, int], tuple[tuple[bytes, ...], torch.Tensor]] = {}
        self._rows_b: dict[tuple[str, int], tuple[tuple[bytes, ...], torch.Tensor]] = {}
        # Products W_a W_b^T per (group, axis), valid while A is unchanged; cleared at every
        # match() because A may differ between calls.
        self._products: dict[tuple[str, int], _Product] = {}

    def _others(self, p: str, i: int, perm: Permutation) -> tuple[bytes, ...]:
        ref = self.spec.groups[p].axes[i]
        return tuple(perm[g].numpy().tobytes() for _, g, _ in self.spec.by_param[ref.param] if g != p)

    def _columns(self, p: str, i: int, perm: Permutation) -> torch.Tensor:
        """Column ``c`` of B's permuted unit rows is column ``src[c]`` of its unpermuted ones.

        Found by permuting an index tensor laid out like one unit's slice of the weight (the
        unit axis holds the ``block`` entries of one unit), which only the other groups move.
        """
        ref = self.spec.groups[p].axes[i]
        shape = list(self.b[ref.param].shape)
        shape[ref.axis] = ref.block * ref.outer
        rest = shape[: ref.axis] + shape[ref.axis + 1 :]
        index = torch.arange(math.prod(shape)).reshape(shape[ref.axis], *rest).movedim(0, ref.axis)
        return permute_param(self.spec, ref.param, index, perm, skip_group=p).movedim(ref.axis, 0).reshape(-1)

    def _unpermuted_rows(self, p: str, i: int) -> torch.Tensor:
        rows = self._orig_rows.get((p, i))
        if rows is None:
            ref = self.spec.groups[p].axes[i]
            rows = _unit_rows(self.b[ref.param], ref.axis, self.spec.groups[p].size, ref.outer).contiguous()
            self._orig_rows[(p, i)] = rows
        return rows

    def _b_rows(self, p: str, i: int, src: torch.Tensor, others: tuple[bytes, ...]) -> torch.Tensor:
        hit = self._rows_b.get((p, i))
        if hit is not None and hit[0] == others:
            return hit[1]
        rows = self._unpermuted_rows(p, i).index_select(1, src.to(self.device))
        self._rows_b[(p, i)] = (others, rows)
        return rows

    def cost(self, p: str, a: dict[str, torch.Tensor], perm: Permutation) -> torch.Tensor:
        """Group ``p``'s ``n x n`` similarity on ``self.device`` (``perm`` lives on the CPU).

        The result may be a cached product: read it before the next call, never modify it."""
        g = self.spec.groups[p]
        n = g.size
        prods = []
        for i, ref in enumerate(g.axes):
            if ref.param not in self.b:
                continue  # BN running statistics are not part of the cost
            others = self._others(p, i, perm)
            hit = self._products.get((p, i))
            if hit is None or hit.others != others:
                wa = _unit_rows(a[ref.param].detach().to(device=self.device, dtype=self.dtype), ref.axis, n, ref.outer)
                cols = self._src.get((p, i))
                if cols is None or cols[0] != others:
                    cols = self._src[(p, i)] = (others, self._columns(p, i, perm))
                src = cols[1]
                hit = self._product(p, i, wa, src, others, hit)
                self._products[(p, i)] = hit
            prods.append(hit.prod)
        if not prods:
            return torch.zeros(n, n, dtype=self.dtype, device=self.device)
        if len(prods) == 1:
            return prods[0]
        # the same additions in the same order as summing onto zeros (0 + x == x exactly)
        c = torch.add(prods[0], prods[1])
        for x in prods[2:]:
            c.add_(x)
        return c

    def _product(
        self, p: str, i: int, wa: torch.Tensor, src: torch.Tensor, others: tuple[bytes, ...], old: _Product | None
    ) -> _Product:
        """``W_a W_b^T`` for one axis, updated from ``old`` when few of B's columns moved.

        When a neighbour's permutation changes in ``d`` of its ``m`` positions, only ``d``
        columns of B's unit rows change, and the product changes by a rank-``d`` term,
        ``wa[:, K] @ (new_b[:, K] - old_b[:, K]).T``, which costs ``d / m`` of a fresh product.
        Late in the descent few units move, so most products are such updates. An update
        equals the fresh product up to float32 rounding (the order of the additions differs);
        a fresh one is computed when more than ``1 / UPDATE_FRACTION`` of the columns moved
        or after ``MAX_UPDATES`` updates in a row.
        """
        if old is not None and old.updates < self.MAX_UPDATES:
            moved = (src != old.src).nonzero().squeeze(1)
            if len(moved) * self.UPDATE_FRACTION <= len(src):
                self.products["updated"] += 1
                if len(moved):
                    rows = self._unpermuted_rows(p, i)
                    new_cols = rows.index_select(1, src[moved].to(self.device))
                    delta = new_cols.sub_(rows.index_select(1, old.src[moved].to(self.device)))
                    # in place: the cost built from the old product has been used up by now
                    old.prod.addmm_(wa.index_select(1, moved.to(self.device)), delta.T)
                return _Product(others, old.prod, src, old.updates + 1)
        self.products["fresh"] += 1
        return _Product(others, wa @ self._b_rows(p, i, src, others).T, src, 0)

    def match(
        self,
        a: dict[str, torch.Tensor],
        *,
        init: Permutation | None = None,
        max_iter: int = 100,
        generator: torch.Generator | None = None,
    ) -> tuple[Permutation, dict[str, float]]:
        """Coordinate descent: per sweep, every group in a random order solves its assignment
        given the others' current permutations; stops when a sweep changes nothing.

        Consecutive groups of the order that are not neighbours (their costs do not depend on
        each other, e.g. the first and last hidden layer of an MLP) are solved at the same
        time on ``torch.get_num_threads()`` cores; the result is exactly the sequential one.
        """
        self._products.clear()
        perm = {k: v.clone() for k, v in (init or self.spec.identity()).items()}
        g = generator or torch.Generator().manual_seed(0)
        threads = torch.get_num_threads()
        moves = dict.fromkeys(self.names, 0)  # times each group's permutation changed in this call
        solved_at: dict[str, tuple[int, ...]] = {}  # neighbours' move counts when a group was last solved
        sweeps = 0
        for sweeps in range(1, max_iter + 1):  # noqa: B007  (sweeps is reported)
            improved = False
            order = [self.names[i] for i in torch.randperm(len(self.names), generator=g).tolist()]
            for run in self._independent_runs(order):
                improved |= self._solve_run(run, a, perm, moves, solved_at, threads)
            if not improved:
                break
        return perm, {"sweeps": sweeps}

    def _solve_run(
        self,
        run: list[str],
        a: dict[str, torch.Tensor],
        perm: Permutation,
        moves: dict[str, int],
        solved_at: dict[str, tuple[int, ...]],
        threads: int,
    ) -> bool:
        """Solve the groups of ``run`` (no two are neighbours) and keep each improvement in
        ``perm``; whether any group moved."""
        todo = []
        for p in run:
            stamp = tuple(moves[q] for q in self.neighbours[p])
            if solved_at.get(p) == stamp:
                # Same cost as at p's last solve and perm[p] unchanged since (only p's own
                # solve moves it): the assignment would be the same again.
                self.skipped += 1
                continue
            solved_at[p] = stamp
            todo.append((p, self.cost(p, a, perm).cpu()))  # one n x n copy when costs are on a GPU
        answers = solve_many([(self.solvers[p], c) for p, c in todo], maximize=True, threads=threads)
        self.parallel += len(todo) if threads > 1 and len(todo) > 1 else 0
        improved = False
        for (p, c), cols in zip(todo, answers, strict=True):
            new = torch.from_numpy(cols)
            old_score = assignment_score(c, perm[p])
            if assignment_score(c, new) > old_score + 1e-9 * max(1.0, abs(old_score)):
                perm[p] = new
                moves[p] += 1
                improved = True
        return improved

    def _independent_runs(self, order: list[str]) -> list[list[str]]:
        """``order`` cut into consecutive runs of groups no two of which are neighbours."""
        runs: list[list[str]] = []
        for p in order:
            if runs and not any(q in self.neighbours[p] for q in runs[-1]):
                runs[-1].append(p)
            else:
                runs.append([p])
        return runs

    @property
    def assignment_backend(self) -> str:
        """The backends that solved this matcher's problems (numba, scipy, numba+scipy, none)."""
        used = {b for s in self.solvers.values() for b in s.used().split("+") if b != "none"}
        return "+".join(sorted(used)) or "none"

    def solver_stats(self) -> dict[str, float]:
        """Assignment work summed over the groups' solvers, plus the skipped solves and those
        run in parallel with another."""
        total: dict[str, float] = {}
        for s in self.solvers.values():
            for k, v in s.stats.as_dict().items():
                total[k] = total.get(k, 0.0) + v
        total["skipped"] = float(self.skipped)
        total["parallel"] = float(self.parallel)
        total.update({f"products_{k}": float(v) for k, v in self.products.items()})
        return total


def l2_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Euclidean distance between two weight sets (BN statistics excluded)."""
    total = 0.0
    for k, v in a.items():
        if v.is_floating_point() and not k.endswith(_STAT_SUFFIXES):
            total += float((v.double() - b[k].double()).pow(2).sum())
    return total**0.5


def weight_matching(
    spec: PermutationSpec,
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
    *,
    max_iter: int = 100,
    seed: int = 0,
    init: Permutation | None = None,
    device: torch.device | str | None = None,
) -> tuple[Permutation, dict[str, float]]:
    """The permutation of B's units that maximises ``sum <W_a, pi(W_b)>`` (a local optimum).

    ``device``: where the cost matrices are computed (default CPU); the assignment problems
    are solved on the CPU either way, each cost matrix copied over once as float32.
    """
    matcher = WeightMatcher(spec, state_b, device=device)
    return matcher.match(state_a, init=init, max_iter=max_iter, generator=torch.Generator().manual_seed(seed))


@register("wm", WMOptions, needs_data=False, summary="weight matching (data-free)")
def wm_method(problem: AlignProblem, opts: WMOptions) -> Alignment:
    t0 = time.perf_counter()
    matcher = WeightMatcher(problem.spec, problem.state_b, device=problem.device)
    perm, info = matcher.match(
        problem.state_a, max_iter=opts.max_iter, generator=torch.Generator().manual_seed(opts.seed)
    )
    return Alignment(
        perm,
        {
            **info,
            "seconds": time.perf_counter() - t0,
            "assignment_backend": matcher.assignment_backend,
            "assignment": matcher.solver_stats(),
        },
    )
