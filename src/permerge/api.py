"""Plain-function entry points: what the CLI calls, usable from Python as is.

from permerge import api
a = api.train("mnist", model="mlp", epochs=10, out="runs/mnist")
b = api.train("fashion-mnist", model="mlp", epochs=10, out="runs/fmnist")
report = api.merge("runs/mnist", "runs/fmnist", method="ste",
                   data=["mnist@10", "fashion-mnist@10"], out="runs/merged")
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ._io import atomic_path, atomic_write_text, dumps
from ._limits import check_seed
from ._outdir import OutputFolder
from .checkpoint import (
    Checkpoint,
    as_checkpoint,
    check_compatible,
    check_inputs,
    datasets_of,
    save_checkpoint,
    write_checkpoint,
)
from .data.imageset import ImageSet
from .data.mergedata import MergeData, load_merge_data
from .data.spec import test_sets, test_spec
from .device import resolve_device
from .errors import PermergeError
from .merge import merge_many as _merge_many
from .merge import merge_models
from .merge.bn import default_bn_reset
from .merge.core import BASELINES, MergeResult, align, aligned_copy, seeded
from .merge.interpolate import barrier, curve, plot, write_csv
from .merge.sameinit import same_init_notes
from .models import ModelConfig
from .permutation.spec import Permutation, PermutationSpec
from .runs import evaluate_checkpoint, load_model, train_checkpoint
from .train import evaluate_many

# The library's training run is the face's: one signature, one docstring
# (:func:`permerge.runs.train_checkpoint`).
train = train_checkpoint


def _model_paths(*models: str | Path | Checkpoint) -> list[str | Path | None]:
    return [m.path if isinstance(m, Checkpoint) else m for m in models]


# Scores of a model on test sets: one function, documented where it lives
# (:func:`permerge.runs.evaluate_checkpoint`).
evaluate_model = evaluate_checkpoint


def save_permutation(path_dir: Path, spec: PermutationSpec, perm: Permutation) -> None:
    with atomic_path(path_dir / "permutation.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in perm.items()}, str(tmp))
    atomic_write_text(path_dir / "permutation.json", json.dumps(spec.to_json(), indent=1) + "\n")


def _jsonable(x: Any) -> Any:
    """Plain JSON types, non-finite floats as None: reports never hold NaN/Infinity."""
    return json.loads(dumps(x, default=str))


@dataclass(frozen=True)
class _Pair:
    """What ``merge`` and ``interpolate`` both start from, every input checked."""

    folder: OutputFolder | None
    a: Checkpoint
    b: Checkpoint
    data: MergeData | None
    eval_specs: list[str]
    tests: list[ImageSet]
    device: torch.device


def _open_pair(
    a: str | Path | Checkpoint,
    b: str | Path | Checkpoint,
    data: Sequence[str] | MergeData | None,
    datasets: Sequence[str] | None,
    out: str | Path | None,
    force: bool,
    data_root: str | Path | None,
    seed: int,
    device: str,
    arch_code: str | None,
    arch_args: Any,
) -> _Pair:
    """Check the output folder, load both models, the merge data and the test sets, and check
    that they fit together, before any slow work (a bad input costs nothing)."""
    check_seed(seed)
    folder = OutputFolder(out, inputs=_model_paths(a, b), force=force) if out is not None else None
    hint = list(datasets or []) or (None if isinstance(data, MergeData) else list(data or []))
    ca, cb = (load_model(m, arch_code, arch_args, hint, data_root) for m in (a, b))
    md = data if isinstance(data, MergeData) or data is None else load_merge_data(data, data_root=data_root, seed=seed)
    eval_specs = list(datasets) if datasets else list(dict.fromkeys(datasets_of(ca) + datasets_of(cb)))
    tests = test_sets(eval_specs, data_root)  # fail on an unknown dataset before the slow part
    check_compatible(ca, cb)  # a mismatch of architectures is the clearer message; then the data
    check_inputs(ca, [*tests, *(md.sources if md else ())])
    return _Pair(folder, ca, cb, md, eval_specs, tests, resolve_device(device))


def merge(
    a: str | Path | Checkpoint,
    b: str | Path | Checkpoint,
    *,
    method: str = "wm",
    lam: float | str = 0.5,
    data: Sequence[str] | MergeData | None = None,
    bn_reset: bool | None = None,
    repair: bool = False,
    options: dict[str, Any] | None = None,
    finetune: str = "none",
    finetune_options: dict[str, Any] | None = None,
    datasets: Sequence[str] | None = None,
    out: str | Path | None = None,
    data_root: str | Path | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    force: bool = False,
    arch_code: str | None = None,
    arch_args: Any = None,
) -> dict[str, Any]:
    """Merge two checkpoints, evaluate on both models' test sets, optionally save.

    ``finetune="kd"`` distils both source models into the merged one on the merge data.
    ``out`` is one unit (model, permutation, ``merge.json``), checked before the work and
    replaced as a whole; writing over an input model's folder needs ``force``. ``notes`` in
    the report flag models that share their initialisation.
    """
    pair = _open_pair(a, b, data, datasets, out, force, data_root, seed, device, arch_code, arch_args)
    ca, cb, md, dev = pair.a, pair.b, pair.data, pair.device
    result = merge_models(
        ca,
        cb,
        method=method,
        lam=lam,
        data=md,
        bn_reset=bn_reset,
        use_repair=repair,
        options=options,
        finetune=finetune,
        finetune_options=finetune_options,
        device=dev,
        progress=progress,
        seed=seed,  # seeds the method and the finisher unless their options set one
    )
    report = _merge_report(pair, result, method, seed)
    if pair.folder is not None:
        _write_merge(pair.folder, result, result.config or ca.config, pair.eval_specs, report)
    return report


def _merge_report(pair: _Pair, result: MergeResult, method: str, seed: int) -> dict[str, Any]:
    """What ``merge`` returns and writes as merge.json: the scores on every test set, with what
    was merged from what (paths, merge data) and the method's own info."""
    ca, cb, md = pair.a, pair.b, pair.data
    return _jsonable(
        {
            "method": method,
            "lam": result.lam,
            "model_a": str(ca.path),
            "model_b": str(cb.path),
            "merge_data": md.names if md else None,
            "merge_data_size": len(md) if md else 0,
            "seed": seed,
            "scores": evaluate_many(result.model, pair.tests, device=pair.device),
            "sources": _what_sources_know(pair),
            "info": result.info,
            "notes": same_init_notes(ca, cb, result.perm, method),
        }
    )


def _what_sources_know(pair: _Pair) -> dict[str, Any]:
    """Both source models on every test set, and per test set the better of the two: the mean of
    those is what a merge that only inherits can reach (degradation is measured against it, not
    against a source that never saw the other dataset). Two evaluations of models already
    loaded; the CLI prints the merge's distance to it."""
    a, b = (evaluate_many(c.model, pair.tests, device=pair.device) for c in (pair.a, pair.b))
    acc = {d.name: [_acc(s, d.name) for s in (a, b)] for d in pair.tests}
    best = {d: max(v) for d, v in acc.items()}
    return {"model_a": a, "model_b": b, "best_per_dataset": best, "mean_acc": sum(best.values()) / len(best)}


def _acc(scores: dict[str, Any], dataset: str) -> float:
    """The accuracy on ``dataset`` in an :func:`evaluate_many` result."""
    return float(scores["per_dataset"][dataset]["acc"])


def _write_merge(
    folder: OutputFolder, result: MergeResult, config: ModelConfig, eval_specs: list[str], report: dict[str, Any]
) -> None:
    """The merge's files as one unit: model (not for the ensemble), permutation, merge.json."""
    with folder.staged() as tmp:
        if result.method != "ensemble":
            meta = {"datasets": eval_specs, "permerge_kind": "merged", **report}
            write_checkpoint(tmp, result.model, config, meta)
        if result.perm is not None and result.spec is not None:
            save_permutation(tmp, result.spec, result.perm)
        (tmp / "merge.json").write_text(dumps(report, indent=2) + "\n")
    report["out"] = str(folder.path)


def interpolate(
    a: str | Path | Checkpoint,
    b: str | Path | Checkpoint,
    *,
    method: str = "wm",
    points: int = 11,
    data: Sequence[str] | None = None,
    bn_reset: bool | None = None,
    repair: bool = False,
    options: dict[str, Any] | None = None,
    datasets: Sequence[str] | None = None,
    out: str | Path | None = None,
    data_root: str | Path | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    force: bool = False,
    arch_code: str | None = None,
    arch_args: Any = None,
) -> dict[str, Any]:
    """Accuracy/loss along lam for naive, aligned and ensemble lines; CSV + PNG in ``out``."""
    if isinstance(points, bool) or not isinstance(points, int) or points < 3 or points % 2 == 0 or points > 1001:
        raise PermergeError("--points must be an odd number from 3 to 1001 (the barrier needs lam = 0.5)")
    pair = _open_pair(a, b, data, datasets, out, force, data_root, seed, device, arch_code, arch_args)
    reset = default_bn_reset(pair.a.model, pair.data is not None) if bn_reset is None else bn_reset
    rows, info = _interpolation_rows(pair, method, points, reset, repair, options, seed, progress)
    lines = list(dict.fromkeys(r["line"] for r in rows))
    barriers = {ln: barrier([r for r in rows if r["line"] == ln]) for ln in lines}
    report = _jsonable(
        {
            "method": method,
            "points": points,
            "barriers": barriers,
            "rows": rows,
            "align": {k: v for k, v in info.items() if k != "history"},
        }
    )
    if pair.folder is not None:
        title = f"{Path(str(pair.a.path)).name} -> {Path(str(pair.b.path)).name} ({method})"
        with pair.folder.staged() as tmp:
            write_csv(rows, tmp / "interpolation.csv")
            plot(rows, tmp / "interpolation.png", title)
            (tmp / "interpolation.json").write_text(dumps(report, indent=2) + "\n")
        report["out"] = str(pair.folder.path)
    return report


def _interpolation_rows(
    pair: _Pair,
    method: str,
    points: int,
    reset: bool,
    repair: bool,
    options: dict[str, Any] | None,
    seed: int,
    progress: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The naive line, the aligned line (unless ``method`` is a baseline, which aligns nothing)
    and the output ensemble's, one row per (line, lam, test set); and the alignment's info."""
    ca, cb, md, dev, tests = pair.a, pair.b, pair.data, str(pair.device), pair.tests
    lams = [i / (points - 1) for i in range(points)]
    common: dict[str, Any] = {"data": md, "bn_reset": reset, "use_repair": repair, "device": dev}
    rows = curve(ca.model, cb.model, lams, tests, kind="naive", **common)
    info: dict[str, Any] = {}
    if method not in BASELINES:
        perm, spec, info = align(
            ca, cb, method, md, options=seeded(method, options, seed), device=pair.device, progress=progress
        )
        aligned = aligned_copy(cb, spec, perm)
        rows += [dict(r, line="aligned") for r in curve(ca.model, aligned, lams, tests, kind="aligned", **common)]
    rows += curve(ca.model, cb.model, lams, tests, kind="ensemble", data=None, bn_reset=False, device=dev)
    return rows, info


def merge_many(
    models: Sequence[str | Path],
    *,
    datasets: Sequence[str] | None = None,
    out: str | Path | None = None,
    data_root: str | Path | None = None,
    seed: int = 0,
    device: str = "cpu",
    force: bool = False,
) -> dict[str, Any]:
    """Weight-match N models into one basin and average them (MergeMany)."""
    check_seed(seed)
    folder = OutputFolder(out, inputs=_model_paths(*models), force=force) if out is not None else None
    dev = resolve_device(device)
    ckpts = [as_checkpoint(m) for m in models]
    if len(ckpts) < 2:
        raise PermergeError("merge-many needs at least two models")
    eval_specs = list(datasets) if datasets else list(dict.fromkeys(d for c in ckpts for d in datasets_of(c)))
    tests = test_sets(eval_specs, data_root)
    merged, _, info = _merge_many(ckpts, seed=seed)
    check_inputs(ckpts[0], tests)
    scores = evaluate_many(merged, tests, device=dev)
    report = _jsonable({"method": "merge-many/wm", "models": [str(c.path) for c in ckpts], "scores": scores, **info})
    if folder is not None:
        meta = {"datasets": eval_specs, "permerge_kind": "merged", **report}
        report["out"] = str(save_checkpoint(folder, merged, ckpts[0].config, meta))
    return report


__all__ = [
    "as_checkpoint",
    "datasets_of",
    "evaluate_model",
    "interpolate",
    "load_merge_data",
    "merge",
    "merge_many",
    "resolve_device",
    "test_sets",
    "test_spec",
    "train",
]
