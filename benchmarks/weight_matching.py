"""Weight-matching speed and quality: permerge vs git-re-basin and the ``rebasin`` package.

Same two weight sets for every tool, one process, same threads, calls interleaved (each
repeat runs every tool once, in a rotating order), medians reported. Prints wall time, the L2
distance between A and the permuted B before/after, and each peer's time over permerge's.

Peers (neither is a permerge dependency; without them only permerge runs):

* git-re-basin (Ainsworth et al.; JAX + SciPy), the reference implementation, run from a
  copy of its source that you fetched yourself, never vendored here:
  ``git clone https://github.com/samuela/git-re-basin`` and ``pip install jax jaxlib``, then
  ``--git-re-basin PATH`` (the clone, its ``src/`` or ``src/weight_matching.py``). Its
  ``weight_matching.py`` is imported as is; the one helper it takes from ``utils.py``
  (``rngmix``, whose module also imports flax) is supplied with the same definition. The
  MLP's weights are handed over in its layout (``Dense_i/kernel`` = our weight transposed);
  only the MLP is compared (the ResNet would need a name mapping of every layer).
* ``rebasin`` (snimu, PyPI): ``pip install rebasin``; both models.

    python benchmarks/weight_matching.py --git-re-basin ../git-re-basin [--threads 2] [--repeats 5]
    python benchmarks/weight_matching.py --compile-time     # numba compile / cache-load cost

Models are freshly initialised (torch default init, seeds 0 and 1) unless ``--trained-mlp``
is given, in which case the MLPs are first trained for one epoch on MNIST and on
Fashion-MNIST. permerge's time includes deriving the permutation spec; its assignment solver
is warmed up (compiled or loaded from numba's cache) before timing, and that one-off cost is
printed on its own.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from permerge.align import l2_distance, lap, weight_matching
from permerge.models import build_model, model_config_for
from permerge.permutation.fx import derive_spec
from permerge.permutation.spec import apply_permutation

Result = tuple[float, float]  # seconds, L2 after


def _pair(arch: str, shape: tuple[int, int, int], trained_root: str | None) -> tuple[torch.nn.Module, torch.nn.Module]:
    cfg = model_config_for(arch, shape)
    models = []
    for seed, ds in ((0, "mnist"), (1, "fashion-mnist")):
        torch.manual_seed(seed)
        m = build_model(cfg)
        if trained_root and arch.startswith("mlp"):
            from permerge.data import load_dataset
            from permerge.train import TrainConfig, train_model

            train_model(
                m, load_dataset(ds, data_root=trained_root), TrainConfig(epochs=1, lr=0.05), seed=seed, progress=False
            )
        models.append(m.eval())
    return models[0], models[1]


def warm_up_solver() -> float:
    """Compile (or load from numba's cache) every assignment kernel; seconds taken."""
    t0 = time.perf_counter()
    mode = "numba" if lap.backend() == "numba" else "scipy"
    for dtype in (np.float32, np.float64):
        s = lap.AssignmentSolver(mode=mode)  # numba even for these tiny matrices
        c = np.arange(9, dtype=dtype).reshape(3, 3) % 4
        s.solve(c)
        s.solve(c[::-1].copy())  # a warm start that has rows to re-assign
    lap.AssignmentSolver(mode=mode).solve(np.ones((2, 3)))
    return time.perf_counter() - t0


def run_permerge(a: torch.nn.Module, b: torch.nn.Module, shape: tuple[int, int, int]) -> Result:
    t0 = time.perf_counter()
    spec = derive_spec(a, torch.zeros(1, *shape))
    perm, _ = weight_matching(spec, a.state_dict(), b.state_dict(), seed=0)
    seconds = time.perf_counter() - t0
    return seconds, l2_distance(a.state_dict(), apply_permutation(spec, perm, b.state_dict()))


def rebasin_peer(a: torch.nn.Module, b: torch.nn.Module, shape: tuple[int, int, int]) -> Callable[[], Result] | str:
    try:
        from rebasin import PermutationCoordinateDescent
    except ImportError:
        return "not installed (pip install rebasin)"

    def run() -> Result:
        bb = copy.deepcopy(b)
        t0 = time.perf_counter()
        pcd = PermutationCoordinateDescent(a, bb, torch.zeros(1, *shape))
        pcd.rebasin()
        seconds = time.perf_counter() - t0
        return seconds, l2_distance(a.state_dict(), bb.state_dict())

    return run


def _load_git_re_basin(path: str) -> types.ModuleType:
    p = Path(path).expanduser().resolve()
    for cand in (p, p / "weight_matching.py", p / "src" / "weight_matching.py"):
        if cand.is_file():
            break
    else:
        raise FileNotFoundError(f"no weight_matching.py at {p} (give the clone, its src/ or the file)")
    from jax import random

    # weight_matching.py does `from utils import rngmix`; utils.py also imports flax, which
    # the matching does not use. Same definition as git-re-basin's utils.py.
    utils = types.ModuleType("utils")
    utils.rngmix = lambda rng, x: random.fold_in(rng, hash(x))  # type: ignore[attr-defined]
    sys.modules.setdefault("utils", utils)
    import importlib.util

    spec = importlib.util.spec_from_file_location("git_re_basin_weight_matching", cand)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def git_re_basin_peer(path: str | None, a: torch.nn.Module, b: torch.nn.Module) -> Callable[[], Result] | str:
    if path is None:
        return "not run (--git-re-basin PATH to a clone of samuela/git-re-basin)"
    try:
        import jax.numpy as jnp
        from jax import random

        grb = _load_git_re_basin(path)
    except ImportError as e:
        return f"not runnable ({e}; pip install jax jaxlib)"

    def params(m: torch.nn.Module) -> dict[str, Any]:
        lins = [x for x in m.modules() if isinstance(x, torch.nn.Linear)]
        out: dict[str, Any] = {}
        for i, lin in enumerate(lins):
            out[f"Dense_{i}/kernel"] = jnp.asarray(lin.weight.detach().numpy().T)
            out[f"Dense_{i}/bias"] = jnp.asarray(lin.bias.detach().numpy())
        return out

    pa, pb = params(a), params(b)
    ps = grb.mlp_permutation_spec(num_hidden_layers=len(pa) // 2 - 1)

    def l2(x: dict[str, Any], y: dict[str, Any]) -> float:
        return float(
            np.sqrt(sum(((np.asarray(x[k], np.float64) - np.asarray(y[k], np.float64)) ** 2).sum() for k in x))
        )

    def run() -> Result:
        t0 = time.perf_counter()
        perm = grb.weight_matching(random.PRNGKey(0), ps, pa, pb, silent=True)
        jnp.asarray(perm[next(iter(perm))]).block_until_ready()
        seconds = time.perf_counter() - t0
        return seconds, l2(pa, grb.apply_permutation(ps, perm, pb))

    return run


def compile_time() -> dict[str, float]:
    """Fresh processes with an empty numba cache: first use that compiles, then one that loads."""
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); "
        "from weight_matching import warm_up_solver; print(warm_up_solver())"
    )
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        root = Path(__file__).resolve().parents[1]
        for label in ("compile_seconds", "cache_load_seconds"):
            r = subprocess.run(
                [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True
            )
            out[label] = float(r.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trained-mlp", metavar="DATA_ROOT", default=None)
    ap.add_argument("--git-re-basin", metavar="PATH", default=None, help="a clone of samuela/git-re-basin")
    ap.add_argument("--no-rebasin", action="store_true", help="skip the rebasin package")
    ap.add_argument("--models", nargs="+", default=["mlp:2048x2048x2048", "resnet20:x4"])
    ap.add_argument("--compile-time", action="store_true", help="only measure the solver's compile / cache-load time")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.compile_time:
        print(json.dumps({**lap.backend_info(), **compile_time()}, indent=2))
        return
    torch.set_num_threads(args.threads)
    info = lap.backend_info()
    warm = warm_up_solver()
    if not args.json:
        print(f"assignment solver: {info['backend']} {info['version']} ({info['reason']}); first use {warm:.2f} s")
    shapes = {"mlp": (1, 28, 28), "resnet20": (3, 32, 32)}
    results = []
    for arch in args.models:
        shape = shapes[arch.split(":")[0]]
        a, b = _pair(arch, shape, args.trained_mlp)
        tools: dict[str, Callable[[], Result] | str] = {"permerge": lambda a=a, b=b, s=shape: run_permerge(a, b, s)}
        if arch.startswith("mlp"):
            tools["git-re-basin"] = git_re_basin_peer(args.git_re_basin, a, b)
        if not args.no_rebasin:
            tools["rebasin"] = rebasin_peer(a, b, shape)
        runnable = {k: v for k, v in tools.items() if callable(v)}
        times: dict[str, list[float]] = {k: [] for k in runnable}
        l2_after: dict[str, float | str] = {}
        names = list(runnable)
        for r in range(args.repeats):
            for k in names[r % len(names) :] + names[: r % len(names)]:  # rotate who goes first
                try:
                    seconds, dist = runnable[k]()
                except Exception as e:  # a peer's failure is a result to report, not a crash
                    l2_after[k] = f"failed: {type(e).__name__}: {str(e)[:80]}"
                    continue
                times[k].append(seconds)
                l2_after.setdefault(k, dist)
        row: dict[str, Any] = {
            "model": arch,
            "threads": args.threads,
            "repeats": args.repeats,
            "l2_before": l2_distance(a.state_dict(), b.state_dict()),
            "lap_backend": info["backend"],
            "solver_first_use_seconds": warm,
        }
        for k in tools:
            if not callable(tools[k]):
                row[k] = tools[k]
            elif times[k]:
                row[f"{k}_seconds_median"] = statistics.median(times[k])
                row[f"{k}_seconds"] = times[k]
                row[f"{k}_l2_after"] = l2_after[k]
            else:
                row[k] = l2_after.get(k, "no result")
        ours = row.get("permerge_seconds_median")
        for k in tools:
            if k != "permerge" and ours and f"{k}_seconds_median" in row:
                row[f"{k}_over_permerge"] = row[f"{k}_seconds_median"] / ours
        results.append(row)
        if not args.json:
            print(f"{arch}: L2 before {row['l2_before']:.2f}; medians of {args.repeats} interleaved calls")
            for k in tools:
                if f"{k}_seconds_median" in row:
                    ratio = f"  ({row[f'{k}_over_permerge']:.2f}x permerge's time)" if k != "permerge" else ""
                    runs = ", ".join(f"{t:.2f}" for t in row[f"{k}_seconds"])
                    print(
                        f"  {k:13s} {row[f'{k}_seconds_median']:7.2f} s  L2 after {row[f'{k}_l2_after']:9.2f}"
                        f"  [{runs}]{ratio}"
                    )
                else:
                    print(f"  {k:13s} {row[k]}")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
