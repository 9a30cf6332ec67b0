"""Plain-function entry points: what the CLI calls, usable from Python as is.

from permerge import api
a = api.train("mnist", model="mlp", epochs=10, out="runs/mnist")
b = api.train("fashion-mnist", model="mlp", epochs=10, out="runs/fmnist")
report = api.merge("runs/mnist", "runs/fmnist", method="ste",
                   data=["mnist@10", "fashion-mnist@10"], out="runs/merged")
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from ._io import atomic_path, atomic_write_text, dumps, finite
from ._limits import check_seed
from ._outdir import OutputFolder, data_paths
from .budgets import train_budget
from .checkpoint import Checkpoint, check_compatible, check_inputs, load_checkpoint, save_checkpoint, write_checkpoint
from .data import ImageSet, load_dataset, parse_spec
from .data.imageset import concat
from .data.mergedata import MergeData
from .errors import PermergeError
from .merge import merge_many as _merge_many
from .merge import merge_models
from .merge.core import MergeResult, align, aligned_copy
from .merge.interpolate import barrier, curve, plot, write_csv
from .merge.sameinit import same_init_notes
from .models import ModelConfig, build_model, check_size, model_config_for
from .permutation.spec import Permutation, PermutationSpec
from .train import TrainConfig, check_trained, evaluate, evaluate_many, train_model, train_size, train_val_split


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PermergeError("--device cuda requested but no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise PermergeError(f"unknown device {device!r} (use auto, cpu or cuda)")
    return torch.device(device)


def as_checkpoint(
    model: str | Path | Checkpoint,
    arch_code: str | None = None,
    arch_args: Any = None,
    specs: Sequence[str] | None = None,
    data_root: str | Path | None = None,
) -> Checkpoint:
    """A loaded checkpoint; with ``arch_code`` (a factory the user named) the model is built
    by it, and a weights file without ``model.json`` takes its input shape from ``specs``."""
    if isinstance(model, Checkpoint):
        return model
    if arch_code is None:
        return load_checkpoint(model)

    def in_shape() -> tuple[int, int, int]:
        if not specs:
            raise PermergeError(f"{model}: no model.json beside it; pass --datasets (the input shape comes from them)")
        return load_dataset(test_spec(specs[0]), "test", data_root=data_root).image_shape

    return load_checkpoint(model, arch_code, arch_args, in_shape)


def test_spec(train_spec: str) -> str:
    """The test set that goes with a training spec: same dataset and classes, no ``@K``."""
    s = parse_spec(train_spec)
    if s.kind == "reduced":
        from .reduce.reduced_set import load_reduced

        src = load_reduced(Path(s.base.split(":", 1)[1])).meta.get("source")
        if not src:
            raise PermergeError(f"{train_spec}: reduced set does not record its source dataset")
        t = parse_spec(test_spec(str(src)))  # a size / channel view of the set applies to its test set too
        return str(replace(t, size=s.size or t.size, channels=s.channels or t.channels))
    return str(s.without_sampling())


def test_sets(specs: Sequence[str], data_root: str | Path | None = None) -> list[ImageSet]:
    return [load_dataset(test_spec(s), "test", data_root=data_root) for s in specs]


def datasets_of(ckpt: Checkpoint) -> list[str]:
    """The datasets a checkpoint was trained on (merged models list both sources)."""
    ds = ckpt.meta.get("datasets")
    if isinstance(ds, str):  # one spec where a list belongs: not a list of one-letter specs
        return [ds]
    if ds:
        return [str(d) for d in ds]
    if ckpt.dataset:
        return [ckpt.dataset]
    raise PermergeError(f"{ckpt.path}: model metadata names no dataset; pass --datasets")


def _option_error(e: ValidationError) -> PermergeError:
    err = e.errors()[0]
    where = ".".join(map(str, err["loc"]))
    return PermergeError(
        f"invalid training option {where!r}: {err['msg']}" if where else f"training options: {err['msg']}"
    )


def train(
    dataset: str | Sequence[str],
    *,
    model: str = "mlp",
    seed: int = 0,
    out: str | Path | None = None,
    data_root: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    force: bool = False,
    arch_code: str | None = None,
    arch_args: Any = None,
    **train_options: Any,
) -> Checkpoint:
    """Train ``model`` on ``dataset`` (train split minus a validation part); save if ``out``.

    ``train_options`` are :class:`~permerge.train.TrainConfig` fields; those not given (or
    given as ``None``) are chosen from the data by :func:`permerge.budgets.train_budget`
    (e.g. a reduced set of 100 images: 3,000 steps with DSA augmentation), logged on the
    ``permerge.budget`` logger and recorded as ``meta["budget"]``.

    Several datasets train one model jointly on their union (the upper bound a merge is
    compared with); the model is then scored on each of their test sets. ``out`` is checked
    before training (see :class:`~permerge._outdir.OutputFolder`); a run that diverges raises
    :class:`~permerge.errors.TrainingError` and writes nothing.
    """
    check_seed(seed)
    folder = None
    if out is not None:
        specs_in = [dataset] if isinstance(dataset, str) else list(dataset)
        folder = OutputFolder(out, inputs=data_paths(specs_in), force=force)
    try:
        TrainConfig(**{k: v for k, v in train_options.items() if v is not None})  # bad names fail before loading
    except ValidationError as e:  # one line for the CLI, not pydantic's multi-line report
        raise _option_error(e) from None
    specs = [dataset] if isinstance(dataset, str) else list(dataset)
    if not specs:
        raise PermergeError("train needs at least one dataset")
    parts = [load_dataset(s, "train", data_root=data_root, seed=seed) for s in specs]
    data = parts[0] if len(parts) == 1 else concat(parts)
    # Options left unset (or None) are chosen from the data: see permerge.budgets.
    cfg, budget = train_budget(
        train_options,
        n_images=len(data),
        n_train=lambda fraction: train_size(data.labels, fraction),
        reduced=all(parse_spec(s).kind == "reduced" for s in specs),
        channels=data.image_shape[0],
    )
    budget.announce()
    dataset = "+".join(specs)
    split = train_val_split(data, cfg.val_fraction, seed=0)  # same validation part for every seed
    if arch_code is not None:  # the user's own factory (see permerge.models.code)
        model = "code:" + arch_code
    mcfg = model_config_for(model, data.image_shape, **({"code_args": arch_args} if arch_args else {}))
    check_size(mcfg, copies=3)
    torch.manual_seed(seed)
    net = build_model(mcfg)
    dev = resolve_device(device)
    if cfg.precision == "fp16" and dev.type != "cuda":
        raise PermergeError("precision fp16 needs a CUDA device; use bf16 for mixed precision on a CPU")
    t0 = time.perf_counter()
    stats = train_model(
        net, split.train, cfg, seed=seed, device=dev, progress=progress, description=f"train {model} on {dataset}"
    )
    net = net.cpu()
    scores: dict[str, Any] = {"train": evaluate(net, split.train)}
    if split.val is not None:
        scores["val"] = evaluate(net, split.val)
    try:
        if len(specs) == 1:
            scores["test"] = evaluate(net, load_dataset(test_spec(specs[0]), "test", data_root=data_root))
        else:
            scores["test"] = evaluate_many(net, test_sets(specs, data_root))
    except PermergeError as e:  # e.g. a user npz without a test part
        scores["test"] = {"error": str(e)}
    check_trained(net, float(stats["final_train_loss"]), scores)
    meta = {
        "dataset": dataset,
        **({"datasets": specs} if len(specs) > 1 else {}),
        "seed": seed,
        "train": cfg.model_dump(),
        "budget": budget.to_dict(),
        "normalization": data.normalization.to_dict(),
        "scores": scores,
        "wall_seconds": time.perf_counter() - t0,
        **stats,
        "permerge_kind": "trained",
    }
    ckpt = Checkpoint(model=net, config=mcfg, meta=finite(meta))
    if folder is not None:
        ckpt.path = save_checkpoint(folder, net, mcfg, ckpt.meta)
    return ckpt


def _model_paths(*models: str | Path | Checkpoint) -> list[str | Path | None]:
    return [m.path if isinstance(m, Checkpoint) else m for m in models]


def evaluate_model(
    model: str | Path | Checkpoint,
    datasets: Sequence[str] | None = None,
    *,
    data_root: str | Path | None = None,
    device: str = "cpu",
    arch_code: str | None = None,
    arch_args: Any = None,
) -> dict[str, Any]:
    ckpt = as_checkpoint(model, arch_code, arch_args, datasets, data_root)
    specs = list(datasets) if datasets else datasets_of(ckpt)
    sets = test_sets(specs, data_root)
    check_inputs(ckpt, sets)
    return evaluate_many(ckpt.model, sets, device=resolve_device(device))


def load_merge_data(
    specs: Sequence[str] | None, *, data_root: str | Path | None = None, seed: int = 0
) -> MergeData | None:
    """One source per spec (``mnist@10`` = 10 seeded training images per class)."""
    if not specs:
        return None
    return MergeData(tuple(load_dataset(s, "train", data_root=data_root, seed=seed) for s in specs))


def save_permutation(path_dir: Path, spec: PermutationSpec, perm: Permutation) -> None:
    with atomic_path(path_dir / "permutation.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in perm.items()}, str(tmp))
    atomic_write_text(path_dir / "permutation.json", json.dumps(spec.to_json(), indent=1) + "\n")


def _jsonable(x: Any) -> Any:
    """Plain JSON types, non-finite floats as None: reports never hold NaN/Infinity."""
    return json.loads(dumps(x, default=str))


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
    check_seed(seed)
    folder = OutputFolder(out, inputs=_model_paths(a, b), force=force) if out is not None else None
    hint = list(datasets or []) or (None if isinstance(data, MergeData) else list(data or []))
    ca, cb = (as_checkpoint(m, arch_code, arch_args, hint, data_root) for m in (a, b))
    md = data if isinstance(data, MergeData) or data is None else load_merge_data(data, data_root=data_root, seed=seed)
    eval_specs = list(datasets) if datasets else list(dict.fromkeys(datasets_of(ca) + datasets_of(cb)))
    tests = test_sets(eval_specs, data_root)  # fail on an unknown dataset before the slow part
    check_compatible(ca, cb)  # a mismatch of architectures is the clearer message; then the data
    check_inputs(ca, [*tests, *(md.sources if md else ())])
    dev = resolve_device(device)
    if method == "ste" and "seed" not in (options or {}):  # --seed also seeds STE without any --opt
        options = {**(options or {}), "seed": seed}
    if finetune != "none" and "seed" not in (finetune_options or {}):
        finetune_options = {**(finetune_options or {}), "seed": seed}
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
    )
    scores = evaluate_many(result.model, tests, device=dev)
    report = _jsonable(
        {
            "method": method,
            "lam": result.lam,
            "model_a": str(ca.path),
            "model_b": str(cb.path),
            "merge_data": md.names if md else None,
            "merge_data_size": len(md) if md else 0,
            "seed": seed,
            "scores": scores,
            "info": result.info,
            "notes": same_init_notes(ca, cb, result.perm, method),
        }
    )
    if folder is not None:
        _write_merge(folder, result, result.config or ca.config, eval_specs, report)
    return report


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
    check_seed(seed)
    folder = OutputFolder(out, inputs=_model_paths(a, b), force=force) if out is not None else None
    ca, cb = (as_checkpoint(m, arch_code, arch_args, list(datasets or data or []), data_root) for m in (a, b))
    md = load_merge_data(data, data_root=data_root, seed=seed)
    eval_specs = list(datasets) if datasets else list(dict.fromkeys(datasets_of(ca) + datasets_of(cb)))
    tests = test_sets(eval_specs, data_root)
    check_compatible(ca, cb)  # a mismatch of architectures is the clearer message; then the data
    check_inputs(ca, [*tests, *(md.sources if md else ())])
    dev = resolve_device(device)
    from .merge.bn import has_batchnorm

    reset = bool(md is not None and has_batchnorm(ca.model)) if bn_reset is None else bn_reset
    lams = [i / (points - 1) for i in range(points)]
    rows = curve(
        ca.model, cb.model, lams, tests, kind="naive", data=md, bn_reset=reset, use_repair=repair, device=str(dev)
    )
    info: dict[str, Any] = {}
    if method not in ("average", "ensemble"):
        perm, spec, info = align(ca, cb, method, md, options=options, device=dev, progress=progress)
        aligned = aligned_copy(cb, spec, perm)
        rows += [
            dict(r, line="aligned")
            for r in curve(
                ca.model,
                aligned,
                lams,
                tests,
                kind="aligned",
                data=md,
                bn_reset=reset,
                use_repair=repair,
                device=str(dev),
            )
        ]
    rows += curve(ca.model, cb.model, lams, tests, kind="ensemble", data=None, bn_reset=False, device=str(dev))
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
    if folder is not None:
        with folder.staged() as tmp:
            write_csv(rows, tmp / "interpolation.csv")
            plot(rows, tmp / "interpolation.png", f"{Path(str(ca.path)).name} -> {Path(str(cb.path)).name} ({method})")
            (tmp / "interpolation.json").write_text(dumps(report, indent=2) + "\n")
        report["out"] = str(folder.path)
    return report


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
    "evaluate_model",
    "interpolate",
    "load_merge_data",
    "merge",
    "merge_many",
    "resolve_device",
    "test_spec",
    "train",
]
