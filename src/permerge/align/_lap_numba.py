"""numba kernels of :mod:`permerge.align.lap` (imported only when that backend is used).

Minimisation of ``sign * cost`` over assignments of every row (``nr <= nc``), in float64
whatever the input dtype. ``u`` (rows) and ``v`` (columns) are the dual variables, kept
feasible (``c_ij - u_i - v_j >= 0``) for every assigned row and tight on its column;
``col4row`` / ``row4col`` the partial assignment (-1: free). Compiled on first use, cached
on disk (``cache=True``), so later processes only load the machine code.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit

NUMBA_VERSION: str = numba.__version__


@njit(cache=True)
def warm_start(cost, sign, u, v, col4row, row4col):
    """Keep the old prices ``v``; re-derive ``u``; keep the rows whose column is still best.

    ``u_i = min_j (c_ij - v_j)`` makes every row dual-feasible; row ``i`` keeps its old
    column when that column attains the minimum (complementary slackness). A freed row whose
    best column nobody kept takes it. Returns how many rows are left free (0: the assignment
    is optimal as it stands).
    """
    nr, nc = cost.shape
    best_col = np.empty(nr, dtype=np.int64)
    for j in range(nc):
        row4col[j] = -1
    for i in range(nr):
        low = np.inf
        arg = -1
        for j in range(nc):
            r = sign * cost[i, j] - v[j]
            if r < low:
                low = r
                arg = j
        u[i] = low
        best_col[i] = arg
        j0 = col4row[i]
        if j0 >= 0 and sign * cost[i, j0] - v[j0] == low:
            row4col[j0] = i
        else:
            col4row[i] = -1
    free = 0
    for i in range(nr):
        if col4row[i] == -1:
            j = best_col[i]
            if row4col[j] == -1:
                row4col[j] = i
                col4row[i] = j
            else:
                free += 1
    return free


@njit(cache=True)
def solve(cost, sign, u, v, col4row, row4col):  # one piece: a numba kernel, calls inside cost time
    """Augment every free row, in row order, along a shortest path of reduced costs.

    From an empty assignment with zero duals this is the algorithm of SciPy's
    ``linear_sum_assignment`` step for step (columns scanned in the same order, ties broken
    towards a free column the same way), hence the same result. Returns the number of rows
    augmented.
    """
    nr, nc = cost.shape
    shortest = np.empty(nc)
    path = np.full(nc, -1, dtype=np.int64)
    remaining = np.empty(nc, dtype=np.int64)
    in_rows = np.zeros(nr, dtype=np.bool_)
    in_cols = np.zeros(nc, dtype=np.bool_)
    augmented = 0
    for cur in range(nr):
        if col4row[cur] != -1:
            continue
        augmented += 1
        for k in range(nc):
            remaining[k] = nc - 1 - k  # reverse order: a constant matrix gives the identity
            shortest[k] = np.inf
            in_cols[k] = False
        for k in range(nr):
            in_rows[k] = False
        n_rem = nc
        min_val = 0.0
        i = cur
        sink = -1
        while sink == -1:
            in_rows[i] = True
            index = -1
            lowest = np.inf
            ui = u[i]
            for it in range(n_rem):
                j = remaining[it]
                r = min_val + sign * cost[i, j] - ui - v[j]
                if r < shortest[j]:
                    path[j] = i
                    shortest[j] = r
                s = shortest[j]
                if s < lowest or (s == lowest and row4col[j] == -1):
                    lowest = s
                    index = it
            min_val = lowest
            if index == -1:  # only non-finite reduced costs: the caller routes those to SciPy
                return -1
            j = remaining[index]
            if row4col[j] == -1:
                sink = j
            else:
                i = row4col[j]
            in_cols[j] = True
            n_rem -= 1
            remaining[index] = remaining[n_rem]
        # dual update: keeps every assigned row feasible and tight
        u[cur] += min_val
        for k in range(nr):
            if in_rows[k] and k != cur:
                u[k] += min_val - shortest[col4row[k]]
        for k in range(nc):
            if in_cols[k]:
                v[k] -= min_val - shortest[k]
        # flip the path
        j = sink
        while True:
            k = path[j]
            row4col[j] = k
            prev = col4row[k]
            col4row[k] = j
            j = prev
            if k == cur:
                break
    return augmented


@njit(cache=True)
def reduce_rows(cost, sign, u, v, col4row, row4col, max_steps):  # one piece: a numba kernel
    """Jonker-Volgenant augmenting row reduction of the free rows (square problems).

    A free row takes its best column at the current prices and lowers that column's price
    until the row is indifferent between it and its second best (an auction step with no
    epsilon); the column's previous owner becomes free. Lowering a price only raises other
    rows' reduced costs, so every assigned row stays dual-feasible and tight: the shortest
    augmenting paths that follow start from a valid state. At most ``max_steps`` row scans;
    returns how many rows are still free.
    """
    nr, nc = cost.shape
    free = np.empty(nr, dtype=np.int64)
    n_free = 0
    for i in range(nr):
        if col4row[i] == -1:
            free[n_free] = i
            n_free += 1
    steps = 0
    for _ in range(2):
        if n_free == 0 or steps >= max_steps:
            break
        k = 0
        pending = n_free
        n_free = 0
        while k < pending:
            i = free[k]
            k += 1
            if steps >= max_steps:  # out of budget: the rest stay free
                free[n_free] = i
                n_free += 1
                continue
            steps += 1
            u1 = sign * cost[i, 0] - v[0]
            j1 = 0
            u2 = np.inf
            j2 = -1
            for j in range(1, nc):
                h = sign * cost[i, j] - v[j]
                if h < u2:
                    if h >= u1:
                        u2 = h
                        j2 = j
                    else:
                        u2 = u1
                        u1 = h
                        j2 = j1
                        j1 = j
            i0 = row4col[j1]
            lowered = u1 < u2 and j2 >= 0
            if lowered:
                v[j1] = v[j1] - (u2 - u1)
            elif i0 >= 0 and j2 >= 0:
                j1 = j2  # tied: take the second best instead of evicting
                i0 = row4col[j1]
            row4col[j1] = i
            col4row[i] = j1
            u[i] = sign * cost[i, j1] - v[j1]
            if i0 >= 0:
                col4row[i0] = -1
                if lowered:
                    k -= 1
                    free[k] = i0  # the evicted row bids next, while prices are fresh
                else:
                    free[n_free] = i0
                    n_free += 1
    return n_free
