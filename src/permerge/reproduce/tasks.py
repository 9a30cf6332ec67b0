"""One experiment run = one :class:`Task`: content-addressed, idempotent, written atomically.

A task's key is a hash of its kind and full parameters (which name the keys of the tasks it
depends on, so the hash covers the whole chain). Its artifacts live in
``<root>/runs/<kind>/<key>/`` and ``result.json`` is written last, by rename: a directory
without it is unfinished and is simply recomputed, a directory with it is never recomputed.
That is what makes an interrupted grid resumable and lets any executor (a local process
pool, Ray workers) run tasks in any order within a stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._io import atomic_write_text, dumps, remove_stale_temps
from ..registry import Registry
from .params import EvaluateParams, MergeParams, ReduceParams, TrainParams, resolve_spec

if TYPE_CHECKING:
    from ..checkpoint import Checkpoint
    from ..permutation.spec import PermutationSpec

RESULT = "result.json"


@dataclass(frozen=True)
class Task:
    kind: str  # train | reduce | merge | evaluate (the runner registered under that name)
    params: dict[str, Any]  # a TaskParams' to_dict() (see .params); hashed into the key
    deps: tuple[str, ...] = ()
    label: str = ""

    @property
    def key(self) -> str:
        blob = json.dumps({"kind": self.kind, "params": self.params}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def directory(self, root: Path) -> Path:
        return root / "runs" / self.kind / self.key


@dataclass(frozen=True)
class RunContext:
    """What a task needs from its environment; never part of the task's key."""

    root: str
    data_root: str | None = None
    device: str = "cpu"
    threads: int = 1
    # user factories the config named (model: code:mypkg.models:build_net): workers may import them
    allow_code: tuple[str, ...] = ()

    def task_dir(self, kind: str, key: str) -> Path:
        return Path(self.root) / "runs" / kind / key


def load_result(directory: Path) -> dict[str, Any] | None:
    p = directory / RESULT
    if not p.is_file():
        return None
    try:
        out = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # treat as unfinished; it is rewritten atomically
    return out if isinstance(out, dict) else None


def _write_result(directory: Path, result: dict[str, Any]) -> None:
    atomic_write_text(directory / RESULT, dumps(result, indent=1, default=str) + "\n")


Runner = Callable[["Task", "RunContext", Path], dict[str, Any]]
RUNNERS: Registry[Runner] = Registry("task kind")


def _runner(kind: str) -> Callable[[Runner], Runner]:
    return RUNNERS.register(kind)


def execute(task: Task, ctx: RunContext) -> dict[str, Any]:
    """Run ``task`` unless its result exists; never raises (errors come back as a result).

    Errors are not written to disk, so a rerun retries them.
    """
    directory = task.directory(Path(ctx.root))
    done = load_result(directory)
    if done is not None:
        return {**done, "cached": True}
    # this directory has no result, so it is ours: clear what a SIGKILLed attempt left
    remove_stale_temps(directory)
    torch.set_num_threads(max(1, ctx.threads))
    for code in ctx.allow_code:  # the config named it (``model: code:...``)
        from ..models.code import allow

        allow(code)
    t0 = time.perf_counter()
    # A grid's runs record their budgets in their results; its log lines (one per run, and
    # warnings about the deliberately tiny --quick budgets) would only clutter the output.
    budget_log = logging.getLogger("permerge.budget")
    was_disabled, budget_log.disabled = budget_log.disabled, True
    try:
        out = RUNNERS.get(task.kind)(task, ctx, directory)
    except Exception as e:  # noqa: BLE001 - reported per task; the grid goes on
        from ..errors import PermergeError

        msg = str(e) if isinstance(e, PermergeError) else f"{type(e).__name__}: {e}"
        return {
            "status": "error",
            "key": task.key,
            "kind": task.kind,
            "label": task.label,
            "error": msg,
            "traceback": None if isinstance(e, PermergeError) else traceback.format_exc(),
        }
    finally:
        budget_log.disabled = was_disabled
    result = {
        "status": "ok",
        "key": task.key,
        "kind": task.kind,
        "label": task.label,
        "params": task.params,
        "wall_seconds": time.perf_counter() - t0,
        "host": os.uname().nodename,
        **out,
    }
    _write_result(directory, result)
    return {**result, "cached": False}


# --- the four kinds of run ---------------------------------------------------------------


@_runner("train")
def _train(task: Task, ctx: RunContext, directory: Path) -> dict[str, Any]:
    from ..data.spec import test_spec
    from ..runs import evaluate_checkpoint, train_checkpoint
    from ..train import TrainConfig

    p = TrainParams.model_validate(task.params)
    specs = [resolve_spec(s, ctx.root) for s in p.datasets]
    # A grid's training is exactly its config: fields it leaves unset take TrainConfig's fixed
    # defaults, never the data-dependent budget of permerge.budgets (so runs stay comparable).
    fixed = TrainConfig(**p.train).model_dump(exclude={"steps"} if "steps" not in p.train else {"epochs"})
    ckpt = train_checkpoint(
        specs[0] if len(specs) == 1 else specs,
        model=p.model,
        arch_args=p.model_args,
        seed=p.seed,
        out=directory,
        data_root=ctx.data_root,
        device=ctx.device,
        progress=False,
        **fixed,
    )
    scores = ckpt.meta["scores"]
    out: dict[str, Any] = {"scores": scores, "train_seconds": ckpt.meta["wall_seconds"]}
    if p.eval:  # score on a pair's test sets (joint and reduced-only baselines)
        # training already scored the test sets of what it trained on; when those are the
        # pair's (always, for the planned baselines) reuse them instead of a second CIFAR pass.
        test = scores.get("test") or {}
        same = [test_spec(s) for s in specs] == [test_spec(s) for s in p.eval]
        if same and "per_dataset" in test:
            out["eval"] = test
        else:
            out["eval"] = evaluate_checkpoint(ckpt, p.eval, data_root=ctx.data_root, device=ctx.device)
    return out


@_runner("reduce")
def _reduce(task: Task, ctx: RunContext, directory: Path) -> dict[str, Any]:
    from ..reduce import reduce_dataset

    p = ReduceParams.model_validate(task.params)
    model = str(ctx.task_dir("train", p.model)) if p.model else None
    path = directory / "reduced.safetensors"
    rs = reduce_dataset(
        p.dataset,
        p.method,
        p.ipc,
        model=model,
        seed=p.seed,
        device=ctx.device,
        progress=False,
        out=path,
        data_root=ctx.data_root,
        **p.options,
    )
    return {"path": str(path.relative_to(ctx.root)), "reduce_seconds": rs.meta["wall_time_s"], "size": len(rs.labels)}


@_runner("evaluate")
def _evaluate(task: Task, ctx: RunContext, directory: Path) -> dict[str, Any]:
    from ..runs import evaluate_checkpoint

    p = EvaluateParams.model_validate(task.params)
    model = str(ctx.task_dir("train", p.model))
    return {"eval": evaluate_checkpoint(model, p.datasets, data_root=ctx.data_root, device=ctx.device)}


@_runner("merge")
def _merge(task: Task, ctx: RunContext, directory: Path) -> dict[str, Any]:
    from ..checkpoint import load_checkpoint
    from ..data.mergedata import load_merge_data
    from ..data.spec import test_sets
    from ..device import resolve_device
    from ..merge.core import aligned_copy, merge_models
    from ..train import evaluate_many

    p = MergeParams.model_validate(task.params)
    a, b = load_checkpoint(ctx.task_dir("train", p.a)), load_checkpoint(ctx.task_dir("train", p.b))
    md = load_merge_data([resolve_spec(s, ctx.root) for s in p.data], data_root=ctx.data_root, seed=p.seed)
    tests = test_sets(p.eval, ctx.data_root)
    dev = resolve_device(ctx.device)
    result = merge_models(
        a,
        b,
        method=p.method,
        lam=p.lam,
        data=md,
        options=p.options or None,
        finetune=p.finetune or "none",
        finetune_options=p.finetune_options or None,
        device=dev,
        progress=False,
        seed=p.seed,  # seeds the method and the finisher unless their options set one
    )
    out: dict[str, Any] = {
        "eval": evaluate_many(result.model, tests, device=dev),
        "lam": result.lam,
        "merge_seconds": result.info["seconds"],
        "merge_data_size": len(md) if md else 0,
        "align": {k: v for k, v in (result.info.get("align") or {}).items() if k != "history"},
        "size": {k: v for k, v in result.info["size"].items() if k != "relative"},
    }
    if "finetune" in result.info:
        out["finetune"] = result.info["finetune"]
    aligned = aligned_copy(b, result.spec, result.perm) if result.perm is not None and result.spec else b.model
    if p.method != "ensemble":
        out["criteria"] = _criteria(a, aligned, result.spec, p.pair, ctx)
    if p.curve:
        out.update(_curve(a.model, aligned, p.method, tests, md, bool(result.info.get("bn_reset")), str(dev)))
    return out


def _curve(
    model_a: torch.nn.Module,
    aligned: torch.nn.Module,
    method: str,
    tests: list[Any],
    md: Any,
    bn_reset: bool,
    device: str,
) -> dict[str, Any]:
    """Accuracy along lam = 0, 0.1, ..., 1 between A and aligned B, and its barrier."""
    from ..merge.interpolate import barrier, curve

    lams = [i / 10 for i in range(11)]
    kind = "ensemble" if method == "ensemble" else "aligned"
    rows = curve(model_a, aligned, lams, tests, kind=kind, data=md, bn_reset=bn_reset, device=device)
    return {"curve": rows, "barrier": barrier(rows)}


def _criteria(
    a: Checkpoint, aligned: torch.nn.Module, spec: PermutationSpec | None, pair: list[str], ctx: RunContext
) -> dict[str, Any]:
    """Alignment criteria of the permutation used, for the 'does the criterion track the merged
    loss' analysis: weight distance ||A - pi(B)|| (what WM minimises: the library's
    ``l2_distance``, BatchNorm statistics excluded) and the mean activation correlation of
    matched units (what AM maximises) on a fixed sample of both training sets."""
    import copy

    from ..align.activation_matching import AMOptions, activation_correlations
    from ..align.registry import AlignProblem
    from ..align.weight_matching import l2_distance
    from ..data import load_dataset, parse_spec
    from ..data.mergedata import load_merge_data
    from ..merge.core import spec_for

    sa, sb = a.model.state_dict(), aligned.state_dict()
    out: dict[str, Any] = {"wm_distance": l2_distance(sa, sb)}
    spec = spec or spec_for(a)
    if spec.probes:
        full = [str(parse_spec(s).without_sampling()) for s in pair]
        # 100 images per class, or what the smallest class has (a small dataset, a CI fixture)
        counts = [load_dataset(s, "train", data_root=ctx.data_root).class_counts() for s in full]
        k = min(100, *(int(c[c > 0].min()) for c in counts))
        probe = load_merge_data([f"{s}@{k}" for s in full], data_root=ctx.data_root, seed=12345)
        problem = AlignProblem(
            model=copy.deepcopy(a.model), state_a=sa, state_b=sb, spec=spec, data=probe, progress=False
        )
        sims = activation_correlations(problem, AMOptions(max_samples=2000))
        out["am_correlation"] = float(sum(float(s.diagonal().mean()) for s in sims.values()) / len(sims))
    return out
