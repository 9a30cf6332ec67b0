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

from ._io import atomic_path, atomic_write_text, ensure_dir
from .budgets import train_budget
from .checkpoint import Checkpoint, check_compatible, check_inputs, load_checkpoint, save_checkpoint
from .data import ImageSet, load_dataset, parse_spec
from .data.imageset import concat
from .data.mergedata import MergeData
from .errors import PermergeError
from .merge import merge_many as _merge_many
from .merge import merge_models
from .merge.core import align, aligned_copy
from .merge.interpolate import barrier, curve, plot, write_csv
from .models import build_model, model_config_for
from .permutation.spec import Permutation, PermutationSpec
from .train import TrainConfig, evaluate, evaluate_many, train_model, train_size, train_val_split


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PermergeError("--device cuda requested but no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise PermergeError(f"unknown device {device!r} (use auto, cpu or cuda)")
    return torch.device(device)


def as_checkpoint(model: str | Path | Checkpoint) -> Checkpoint:
    return model if isinstance(model, Checkpoint) else load_checkpoint(model)


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
    if ckpt.meta.get("datasets"):
        return [str(d) for d in ckpt.meta["datasets"]]
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
    **train_options: Any,
) -> Checkpoint:
    """Train ``model`` on ``dataset`` (train split minus a validation part); save if ``out``.

    ``train_options`` are :class:`~permerge.train.TrainConfig` fields; those not given (or
    given as ``None``) are chosen from the data by :func:`permerge.budgets.train_budget`
    (e.g. a reduced set of 100 images: 3,000 steps with DSA augmentation), logged on the
    ``permerge.budget`` logger and recorded as ``meta["budget"]``.

    Several datasets train one model jointly on their union (the upper bound a merge is
    compared with); the model is then scored on each of their test sets.
    """
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
    mcfg = model_config_for(model, data.image_shape)
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
    ckpt = Checkpoint(model=net, config=mcfg, meta=meta)
    if out is not None:
        ckpt.path = save_checkpoint(out, net, mcfg, meta)
    return ckpt


def evaluate_model(
    model: str | Path | Checkpoint,
    datasets: Sequence[str] | None = None,
    *,
    data_root: str | Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    ckpt = as_checkpoint(model)
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
    return json.loads(json.dumps(x, default=str))


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
    datasets: Sequence[str] | None = None,
    out: str | Path | None = None,
    data_root: str | Path | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Merge two checkpoints, evaluate on both models' test sets, optionally save."""
    ca, cb = as_checkpoint(a), as_checkpoint(b)
    md = data if isinstance(data, MergeData) or data is None else load_merge_data(data, data_root=data_root, seed=seed)
    eval_specs = list(datasets) if datasets else list(dict.fromkeys(datasets_of(ca) + datasets_of(cb)))
    tests = test_sets(eval_specs, data_root)  # fail on an unknown dataset before the slow part
    check_compatible(ca, cb)  # a mismatch of architectures is the clearer message; then the data
    check_inputs(ca, [*tests, *(md.sources if md else ())])
    dev = resolve_device(device)
    if method == "ste" and "seed" not in (options or {}):  # --seed also seeds STE without any --opt
        options = {**(options or {}), "seed": seed}
    result = merge_models(
        ca,
        cb,
        method=method,
        lam=lam,
        data=md,
        bn_reset=bn_reset,
        use_repair=repair,
        options=options,
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
        }
    )
    if out is not None:
        out_dir = Path(out)
        if method == "ensemble":
            ensure_dir(out_dir)
        else:
            save_checkpoint(
                out_dir, result.model, ca.config, {"datasets": eval_specs, "permerge_kind": "merged", **report}
            )
        if result.perm is not None and result.spec is not None:
            save_permutation(out_dir, result.spec, result.perm)
        atomic_write_text(out_dir / "merge.json", json.dumps(report, indent=2) + "\n")
        report["out"] = str(out_dir)
    return report


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
) -> dict[str, Any]:
    """Accuracy/loss along lam for naive, aligned and ensemble lines; CSV + PNG in ``out``."""
    if points < 3 or points % 2 == 0:
        raise PermergeError("--points must be an odd number >= 3 (the barrier needs lam = 0.5)")
    ca, cb = as_checkpoint(a), as_checkpoint(b)
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
    if out is not None:
        out_dir = ensure_dir(out)
        write_csv(rows, out_dir / "interpolation.csv")
        plot(rows, out_dir / "interpolation.png", f"{Path(str(ca.path)).name} -> {Path(str(cb.path)).name} ({method})")
        atomic_write_text(out_dir / "interpolation.json", json.dumps(report, indent=2) + "\n")
        report["out"] = str(out_dir)
    return report


def merge_many(
    models: Sequence[str | Path],
    *,
    datasets: Sequence[str] | None = None,
    out: str | Path | None = None,
    data_root: str | Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Weight-match N models into one basin and average them (MergeMany)."""
    ckpts = [as_checkpoint(m) for m in models]
    if len(ckpts) < 2:
        raise PermergeError("merge-many needs at least two models")
    eval_specs = list(datasets) if datasets else list(dict.fromkeys(d for c in ckpts for d in datasets_of(c)))
    tests = test_sets(eval_specs, data_root)
    merged, _, info = _merge_many(ckpts, seed=seed)
    check_inputs(ckpts[0], tests)
    scores = evaluate_many(merged, tests)
    report = _jsonable({"method": "merge-many/wm", "models": [str(c.path) for c in ckpts], "scores": scores, **info})
    if out is not None:
        save_checkpoint(out, merged, ckpts[0].config, {"datasets": eval_specs, "permerge_kind": "merged", **report})
        report["out"] = str(out)
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
