"""A training run and an evaluation from dataset specs: the library side of ``permerge train``
and ``permerge eval``.

:func:`train_checkpoint` is what :func:`permerge.api.train` (the CLI's ``train``) and the
grids' train tasks both call, so a model trained from the command line and one trained in a
grid differ only in the options they are given. Unset options come from
:func:`permerge.budgets.train_budget` (data-dependent) and :class:`~permerge.train.TrainConfig`
(fixed defaults): the one source of training defaults.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from ._io import finite
from ._limits import check_seed
from ._outdir import OutputFolder
from .budgets import Budget, train_budget
from .checkpoint import Checkpoint, as_checkpoint, check_inputs, datasets_of, load_checkpoint, save_checkpoint
from .data import ImageSet, load_dataset, parse_spec
from .data.imageset import concat
from .data.spec import input_paths, test_sets, test_spec
from .device import resolve_device
from .errors import PermergeError, first_error
from .models import ModelConfig, build_model, check_size, model_config_for
from .train import TrainConfig, check_trained, evaluate, evaluate_many, train_model, train_size, train_val_split


def check_train_options(options: dict[str, Any]) -> None:
    """Unknown names and bad values of :class:`TrainConfig` fields, as one line, before loading."""
    try:
        TrainConfig(**{k: v for k, v in options.items() if v is not None})
    except ValidationError as e:  # one line for the CLI, not pydantic's multi-line report
        where, msg = first_error(e)
        line = f"invalid training option {where!r}: {msg}" if where else f"training options: {msg}"
        raise PermergeError(line) from None


def _training_data(specs: list[str], data_root: str | Path | None, seed: int) -> ImageSet:
    """The training split of each spec; several are one joint set (their union)."""
    parts = [load_dataset(s, "train", data_root=data_root, seed=seed) for s in specs]
    return parts[0] if len(parts) == 1 else concat(parts)


def _new_model(
    model: str, arch_code: str | None, arch_args: Any, shape: tuple[int, int, int], seed: int
) -> tuple[ModelConfig, nn.Module]:
    """A freshly initialised model (seeded) for inputs of ``shape``; ``arch_code``, the user's
    own factory (see :mod:`permerge.models.code`), replaces ``model``."""
    name = "code:" + arch_code if arch_code is not None else model
    mcfg = model_config_for(name, shape, **({"code_args": arch_args} if arch_args else {}))
    check_size(mcfg, copies=3)
    torch.manual_seed(seed)
    return mcfg, build_model(mcfg)


def train_checkpoint(
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

    ``arch_code`` names the user's own factory (``module:function``, see
    :mod:`permerge.models.code`); it replaces ``model``. ``permerge.api.train`` is this function.
    """
    check_seed(seed)
    specs = [dataset] if isinstance(dataset, str) else list(dataset)
    folder = OutputFolder(out, inputs=input_paths(specs), force=force) if out is not None else None
    check_train_options(train_options)  # bad names fail before loading
    if not specs:
        raise PermergeError("train needs at least one dataset")
    data = _training_data(specs, data_root, seed)
    cfg, budget = _budget(train_options, data, specs)
    split = train_val_split(data, cfg.val_fraction, seed=0)  # same validation part for every seed
    mcfg, net = _new_model(model, arch_code, arch_args, data.image_shape, seed)
    dev = resolve_device(device)
    if cfg.precision == "fp16" and dev.type != "cuda":
        raise PermergeError("precision fp16 needs a CUDA device; use bf16 for mixed precision on a CPU")
    t0 = time.perf_counter()
    what = f"train {mcfg.describe()} on {'+'.join(specs)}"
    stats = train_model(net, split.train, cfg, seed=seed, device=dev, progress=progress, description=what)
    net = net.cpu()
    scores = _scores(net, split.train, split.val, specs, data_root)
    check_trained(net, float(stats["final_train_loss"]), scores)
    meta = _trained_meta(specs, seed, cfg, budget, data, scores, stats, time.perf_counter() - t0)
    ckpt = Checkpoint(model=net, config=mcfg, meta=finite(meta))
    if folder is not None:
        ckpt.path = save_checkpoint(folder, net, mcfg, ckpt.meta)
    return ckpt


def _budget(train_options: dict[str, Any], data: ImageSet, specs: list[str]) -> tuple[TrainConfig, Budget]:
    """The training recipe: options left unset (or None) are chosen from the data (see
    :mod:`permerge.budgets`), and what was chosen is announced."""
    cfg, budget = train_budget(
        train_options,
        n_images=len(data),
        n_train=lambda fraction: train_size(data.labels, fraction),
        reduced=all(parse_spec(s).kind == "reduced" for s in specs),
        channels=data.image_shape[0],
    )
    budget.announce()
    return cfg, budget


def _trained_meta(
    specs: list[str],
    seed: int,
    cfg: TrainConfig,
    budget: Budget,
    data: ImageSet,
    scores: dict[str, Any],
    stats: dict[str, float],
    wall: float,
) -> dict[str, Any]:
    """What a trained checkpoint records: the data, seed, recipe and the budget chosen for it,
    the normalisation every later use of the model must apply, and its scores."""
    return {
        "dataset": "+".join(specs),
        **({"datasets": specs} if len(specs) > 1 else {}),
        "seed": seed,
        "train": cfg.model_dump(),
        "budget": budget.to_dict(),
        "normalization": data.normalization.to_dict(),
        "scores": scores,
        "wall_seconds": wall,
        **stats,
        "permerge_kind": "trained",
    }


def _scores(
    net: torch.nn.Module, train: ImageSet, val: ImageSet | None, specs: list[str], data_root: str | Path | None
) -> dict[str, Any]:
    """Accuracy and loss on the training part, the validation part and the test set(s)."""
    scores: dict[str, Any] = {"train": evaluate(net, train)}
    if val is not None:
        scores["val"] = evaluate(net, val)
    try:
        if len(specs) == 1:
            scores["test"] = evaluate(net, load_dataset(test_spec(specs[0]), "test", data_root=data_root))
        else:
            scores["test"] = evaluate_many(net, test_sets(specs, data_root))
    except PermergeError as e:  # e.g. a user npz without a test part
        scores["test"] = {"error": str(e)}
    return scores


def evaluate_checkpoint(
    model: str | Path | Checkpoint,
    datasets: Sequence[str] | None = None,
    *,
    data_root: str | Path | None = None,
    device: str = "cpu",
    arch_code: str | None = None,
    arch_args: Any = None,
) -> dict[str, Any]:
    """Scores of a checkpoint on the test sets of ``datasets`` (default: what it was trained on)."""
    ckpt = load_model(model, arch_code, arch_args, datasets, data_root)
    specs = list(datasets) if datasets else datasets_of(ckpt)
    sets = test_sets(specs, data_root)
    check_inputs(ckpt, sets)
    return evaluate_many(ckpt.model, sets, device=resolve_device(device))


def load_model(
    model: str | Path | Checkpoint,
    arch_code: str | None = None,
    arch_args: Any = None,
    specs: Sequence[str] | None = None,
    data_root: str | Path | None = None,
) -> Checkpoint:
    """A loaded checkpoint; with ``arch_code`` (a factory the user named) the model is built
    by it, and a weights file without ``model.json`` takes its input shape from ``specs``."""
    if isinstance(model, Checkpoint) or arch_code is None:
        return as_checkpoint(model)

    def in_shape() -> tuple[int, int, int]:
        if not specs:
            raise PermergeError(f"{model}: no model.json beside it; pass --datasets (the input shape comes from them)")
        return load_dataset(test_spec(specs[0]), "test", data_root=data_root).image_shape

    return load_checkpoint(model, arch_code, arch_args, in_shape)
