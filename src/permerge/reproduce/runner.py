"""``reproduce()``: plan an experiment, run its stages on an executor, write the report.

Resumable by construction: finished tasks are found by key and never recomputed, so
rerunning the same command after a crash or a kill continues where it stopped.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .._io import atomic_write_text, dumps, remove_stale_temps
from .._limits import MAX_TASKS, check_seed
from ..errors import PermergeError, first_error
from ..progress import progress_bar
from .config import ExperimentConfig, load_experiment
from .executors import Executor, check_executor, get_executor
from .plan import Plan, make_plan
from .report import write_report
from .tasks import RunContext, Task


def reproduce(
    experiment: str | Path | ExperimentConfig,
    *,
    out: str | Path,
    quick: bool = False,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    data_root: str | Path | None = None,
    device: str = "cpu",
    seeds: list[int] | None = None,
    progress: bool = True,
    dry_run: bool = False,
    store: str | Path | None = None,
    gpus_per_run: float = 1.0,
) -> dict[str, Any]:
    """Run ``experiment`` into ``out``; runs live in ``store`` (default ``out``) under ``runs/``.

    Runs are keyed by their full config, so several experiments (or a sweep of extra merges)
    can share one ``store`` and reuse each other's trained models and reduced sets.
    """
    check_executor(executor)  # before anything is written to --out
    cfg = _config(experiment, quick, seeds)
    plan = make_plan(cfg)
    if len(plan.tasks) > MAX_TASKS:
        raise PermergeError(
            f"{cfg.name}: {len(plan.tasks):,} runs; at most {MAX_TASKS:,} per grid (split it into several)"
        )
    root = Path(out)
    if dry_run:
        return {"experiment": cfg.name, "stages": [[t.label for t in s] for s in plan.stages], "tasks": len(plan.tasks)}
    _prepare_out(root, cfg)
    store_root = Path(store) if store is not None else root
    ctx = RunContext(
        root=str(store_root.resolve()),
        data_root=None if data_root is None else str(data_root),
        device=device,
        # a factory the config names (model: code:mypkg.models:build_net) may be imported by the workers
        allow_code=(cfg.model[5:],) if cfg.model.startswith("code:") else (),
    )
    ex = (
        get_executor(executor, workers=workers, address=address, gpus_per_run=gpus_per_run)
        if executor == "ray"
        else get_executor(executor, workers=workers, address=address)
    )
    t0 = time.perf_counter()
    try:
        results, failed = _run_stages(plan, ex, ctx, progress)
    finally:
        ex.close()
    meta = _run_meta(results, failed, time.perf_counter() - t0, executor, quick)
    report = write_report(root, plan, results, meta, store=Path(ctx.root))
    return {"experiment": cfg.name, "out": str(root), **meta, "failures": list(failed.values()), **report}


def _run_meta(
    results: dict[str, dict[str, Any]], failed: dict[str, Any], wall: float, executor: str, quick: bool
) -> dict[str, Any]:
    """How the grid ran: runs finished, reused and failed, wall time, and the summed time of
    every run (reused ones included: what the grid cost from scratch), on which host."""
    return {
        "finished": sum(1 for r in results.values() if r.get("status") == "ok"),
        "cached": sum(1 for r in results.values() if r.get("cached")),
        "failed": len(failed),
        "wall_seconds": wall,
        "run_seconds": sum(float(r.get("wall_seconds") or 0.0) for r in results.values()),
        "executor": executor,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "quick": quick,
    }


def _config(experiment: str | Path | ExperimentConfig, quick: bool, seeds: list[int] | None) -> ExperimentConfig:
    """The experiment's config, with ``--seeds`` in place of its own seeds when given."""
    cfg = experiment if isinstance(experiment, ExperimentConfig) else load_experiment(experiment, quick=quick)
    if seeds:
        for s in seeds:
            check_seed(s, "--seeds")
        try:
            cfg = ExperimentConfig.model_validate({**cfg.model_dump(), "seeds": tuple(seeds)})
        except ValidationError as e:
            raise PermergeError(f"--seeds: {first_error(e)[1]}") from None
    return cfg


def _prepare_out(root: Path, cfg: ExperimentConfig) -> None:
    """``--out`` created and writable, a killed report's temp files gone, the config written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermergeError(f"cannot create output folder {root}: {e.strerror}") from None
    except RuntimeError:  # Python < 3.13: a symlink loop
        raise PermergeError(f"cannot create output folder {root}: symlink loop") from None
    if not os.access(root, os.W_OK):
        raise PermergeError(f"output folder {root} is not writable")
    # a report write cut short by SIGKILL (the report is rewritten below); --out may be a folder
    # the user shares with other files, so only our own report names
    for folder in (root, root / "grids"):
        remove_stale_temps(folder, ("config.json", "results.*", "*.png"))
    atomic_write_text(root / "config.json", dumps(cfg.model_dump(), indent=1) + "\n")


def _run_stages(
    plan: Plan, ex: Executor, ctx: RunContext, progress: bool
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Each stage's runs through the executor; a run whose dependency failed is skipped.
    Returns (result by task key, error line by failed task key)."""
    t0 = time.perf_counter()
    log = progress and not sys.stderr.isatty()  # a line per run for logs and CI
    results: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    with progress_bar(len(plan.tasks), f"reproduce {plan.config.name}", enabled=progress) as bar:

        def done(t: Task, r: dict[str, Any]) -> None:
            results[t.key] = r
            if r.get("status") != "ok":
                failed[t.key] = f"{t.label}: {r.get('error')}"
            bar.advance()
            if log:
                print(f"[{len(results)}/{len(plan.tasks)} {time.perf_counter() - t0:6.0f}s] {_log_line(t, r)}",
                      file=sys.stderr, flush=True)  # fmt: skip

        for stage in plan.stages:
            ready: list[Task] = []
            for t in stage:
                bad = [d for d in t.deps if d in failed]
                if bad:
                    results[t.key] = {"status": "error", "error": f"skipped: a run it needs failed ({failed[bad[0]]})"}
                    failed[t.key] = results[t.key]["error"]
                    bar.advance()
                else:
                    ready.append(t)
            ex.run(ready, ctx, on_result=done)
    return results, failed


def _log_line(t: Task, r: dict[str, Any]) -> str:
    state = "cached" if r.get("cached") else r.get("status")
    extra = f" {r['eval']['mean_acc']:.2f}%" if r.get("status") == "ok" and r.get("eval") else ""
    return f"{t.label}: {state}{extra}" + (f" ({r.get('error')})" if r.get("status") != "ok" else "")
