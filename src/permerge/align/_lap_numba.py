"""numba kernels of :mod:`permerge.align.lap` (imported only when that backend is used).

Minimisation of ``sign * cost`` over assignments of every row (``nr <= nc``), in float64
whatever the input dtype. ``u`` (rows) and ``v`` (columns) are the dual variables, kept
feasible (``c_ij - u_i - v_j >= 0``) for every assigned row and tight on its column;
``col4row`` / ``row4col`` the partial assignment (-1: free). Compiled on first use, cached
on disk (``cache=True``), so later processes only load the machine code. They release the
GIL (``nogil=True``): weight matching solves independent groups in parallel threads.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit

NUMBA_VERSION: str = numba.__version__


@njit(cache=True, nogil=True)
def _reduced_row(cost, i, sign, v, h):
    """``h[j] = sign * c_ij - v_j``: row ``i``'s costs at the column prices (a loop the
    compiler vectorises; the scans below read ``h`` instead of recomputing it)."""
    for j in range(h.shape[0]):
        h[j] = sign * cost[i, j] - v[j]


@njit(cache=True, nogil=True)
def _min_of(h):
    """``min(h)``, exact. Eight running minima instead of one: one chain of compares waits on
    each previous compare, eight independent ones keep the core busy (2-3x faster on 512)."""
    n = h.shape[0]
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = np.inf
    j = 0
    while j + 8 <= n:
        m0 = h[j] if h[j] < m0 else m0
        m1 = h[j + 1] if h[j + 1] < m1 else m1
        m2 = h[j + 2] if h[j + 2] < m2 else m2
        m3 = h[j + 3] if h[j + 3] < m3 else m3
        m4 = h[j + 4] if h[j + 4] < m4 else m4
        m5 = h[j + 5] if h[j + 5] < m5 else m5
        m6 = h[j + 6] if h[j + 6] < m6 else m6
        m7 = h[j + 7] if h[j + 7] < m7 else m7
        j += 8
    low = min(min(min(m0, m1), min(m2, m3)), min(min(m4, m5), min(m6, m7)))
    while j < n:
        low = h[j] if h[j] < low else low
        j += 1
    return low


@njit(cache=True, nogil=True)
def _first(h, x, start):
    """The first index ``j >= start`` with ``h[j] == x`` (-1: none)."""
    for j in range(start, h.shape[0]):
        if h[j] == x:
            return j
    return -1


@njit(cache=True, nogil=True)
def warm_start(cost, sign, u, v, col4row, row4col):
    """Keep the old prices ``v``; re-derive ``u``; keep the rows whose column is still best.

    ``u_i = min_j (c_ij - v_j)`` makes every row dual-feasible; row ``i`` keeps its old
    column when that column attains the minimum (complementary slackness). A freed row whose
    best column (the first one attaining the minimum) nobody kept takes it. Returns how many
    rows are left free (0: the assignment is optimal as it stands).
    """
    nr, nc = cost.shape
    best_col = np.empty(nr, dtype=np.int64)
    h = np.empty(nc)
    for j in range(nc):
        row4col[j] = -1
    for i in range(nr):
        _reduced_row(cost, i, sign, v, h)
        low = _min_of(h)
        u[i] = low
        j0 = col4row[i]
        if j0 >= 0 and h[j0] == low:
            row4col[j0] = i
            best_col[i] = j0
        else:
            col4row[i] = -1
            best_col[i] = _first(h, low, 0)
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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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
    h = np.empty(nc)
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
            # best (u1 at j1, its first column) and second best (u2) reduced cost of row i;
            # j2 >= 0 says a second column exists, and its index is used only on a tie
            # (u2 == u1), where it is the second column attaining the minimum
            _reduced_row(cost, i, sign, v, h)
            u1 = _min_of(h)
            j1 = _first(h, u1, 0)
            h[j1] = np.inf
            u2 = _min_of(h)
            j2 = _first(h, u1, j1 + 1) if u2 == u1 else (-1 if nc == 1 else j1)
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
