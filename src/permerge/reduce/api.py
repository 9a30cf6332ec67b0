"""``reduce_dataset``: the one entry point for making merge data (coresets and condensed sets)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._limits import check_seed
from .._outdir import check_output_file
from ..data import ImageSet, load_dataset
from ..data.spec import input_paths
from ..errors import DataError, DivergedError, ModelError, PermergeError
from .condense import reinit_factory
from .reduced_set import ReducedSet, sidecar
from .registry import Method, MethodResult, ReduceContext, ReduceOptions, get_method

CONDENSE_ARCHS = ("convnet",)


def _resolve_model(model: str | Path | nn.Module | None, data: ImageSet) -> tuple[nn.Module | None, Any, str | None]:
    """(trained model or None, factory for the same architecture or None, a name for it).

    ``model`` is a checkpoint path (folder or weights file), a live module, or, for
    condensation only, an architecture spec such as ``mlp`` or ``convnet:128``.
    """
    if model is None:
        return None, None, None
    if isinstance(model, nn.Module):
        return model.eval(), reinit_factory(model), type(model).__name__
    p = Path(model)
    if p.exists():
        from ..checkpoint import load_checkpoint
        from ..models import build_model

        ckpt = load_checkpoint(p)
        if tuple(ckpt.config.in_shape) != data.image_shape:
            raise ModelError(
                f"{p}: model expects inputs {tuple(ckpt.config.in_shape)} but {data.name} has {data.image_shape}"
            )
        cfg = ckpt.config
        return ckpt.model, (lambda: build_model(cfg)), cfg.arch
    return None, None, str(model)  # an architecture name; checked by the method


def _check_sizes(data: ImageSet, classes: list[int], ipc: int, method: str) -> None:
    counts = data.class_counts()
    for c in classes:
        if int(counts[c]) < ipc:
            raise DataError(
                f"{method}: asked for {ipc} images per class but class {c} of {data.name} has only {int(counts[c])}"
            )


def reduce_dataset(
    dataset: str | ImageSet,
    method: str,
    ipc: int,
    *,
    model: str | Path | nn.Module | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    out: str | Path | None = None,
    data_root: str | os.PathLike[str] | None = None,
    force: bool = False,
    **options: Any,
) -> ReducedSet:
    """Reduce ``dataset`` (a spec such as ``mnist`` or an :class:`ImageSet`; its training split
    is used) to ``ipc`` images per class with ``method``.

    ``model`` gives coreset methods their feature space / scores (a trained checkpoint) and
    condensation methods their matching architecture (a checkpoint's architecture, freshly
    initialised each iteration, or an architecture spec such as ``mlp``). ``options`` are the
    method's hyperparameters (fields of ``available_methods()[name].options``). Deterministic for
    a given seed on a given device. With ``out`` the set is also saved (plus ``.json`` and
    ``.png``).
    """
    m = get_method(method)
    if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
        raise PermergeError(f"images per class must be a positive integer, got {ipc!r}")
    check_seed(seed)
    opts = m.resolve(options)
    if out is not None:  # before the work: a bad destination must not cost a condensation run
        inputs = [] if isinstance(dataset, ImageSet) else input_paths([dataset])
        check_output_file(out, sidecars=(sidecar(Path(out), ".json"), sidecar(Path(out), ".png")),
                          inputs=inputs, force=force)  # fmt: skip
    data, source = _source(dataset, data_root, seed)
    classes = sorted(int(c) for c in data.labels.unique())
    _check_sizes(data, classes, ipc, m.name)
    trained, factory, model_name, opts = _method_model(m, model, opts, data)
    ctx = ReduceContext(
        data=data,
        ipc=ipc,
        classes=classes,
        generator=torch.Generator().manual_seed(int(seed)),
        seed=int(seed),
        device=torch.device(device),
        progress=progress,
        model=trained if m.kind == "coreset" else None,
        net_factory=factory,
        net_name=model_name,
    )
    t0 = time.perf_counter()
    result = m.fn(ctx, opts)
    model_text = None if model is None else (model_name if isinstance(model, nn.Module) else str(model))
    meta = _meta(
        ctx, m.name, m.kind, source, model_text, opts.model_dump(), time.perf_counter() - t0, dict(result.info)
    )
    rs = _reduced_set(result, m.name, meta)
    if out is not None:
        rs.save(out)
    return rs


def _method_model(
    m: Method, model: str | Path | nn.Module | None, opts: ReduceOptions, data: ImageSet
) -> tuple[nn.Module | None, Any, str | None, ReduceOptions]:
    """What ``--model`` gives the method: a coreset method needs a trained checkpoint (its
    feature space); a condensation method with ``net=auto`` condenses with the named
    architecture. Returns (trained model or None, net factory, its name, the options)."""
    trained, factory, model_name = _resolve_model(model, data)
    if m.kind == "coreset" and model is not None and trained is None:
        raise ModelError(f"{m.name}: --model must be a trained checkpoint, got {model!r} (no such file)")
    if m.kind == "condensation" and model is not None and trained is None and getattr(opts, "net", None) == "auto":
        opts = opts.model_copy(update={"net": model_name})
    return trained, factory, model_name, opts


def _source(dataset: str | ImageSet, data_root: str | os.PathLike[str] | None, seed: int) -> tuple[ImageSet, str]:
    """The images to reduce (a spec's training split) and the name the reduced set records."""
    if isinstance(dataset, ImageSet):
        data, source = dataset, str(dataset.meta.get("spec", dataset.name))
    else:
        data, source = load_dataset(dataset, "train", data_root=data_root, seed=seed), str(dataset)
    if len(data) == 0:
        raise DataError(f"{data.name}: dataset is empty, nothing to reduce")
    return data, source


def _reduced_set(result: MethodResult, method: str, meta: dict[str, Any]) -> ReducedSet:
    """A method's output as a saved-ready set: images in [0, 1] on the CPU, checked finite (a
    condensation that diverged must not become someone's merge data)."""
    images = result.images.detach().float().cpu().clamp(0.0, 1.0).contiguous()
    if not bool(torch.isfinite(images).all()):
        raise DivergedError(f"{method}: produced non-finite images")
    return ReducedSet(
        images=images,
        labels=result.labels.long().cpu(),
        meta=meta,
        source_indices=None if result.source_indices is None else result.source_indices.long().cpu(),
        weights=result.weights,
    )


def _meta(
    ctx: ReduceContext,
    method: str,
    kind: str,
    source: str,
    model: str | None,
    hyper: dict[str, Any],
    wall: float,
    info: dict[str, Any],
) -> dict[str, Any]:
    """What a reduced set records about how it was made (its ``.json`` sidecar)."""
    data = ctx.data
    return {
        "method": method,
        "kind": kind,
        "ipc": ctx.ipc,
        "seed": ctx.seed,
        "source": source,
        "source_name": data.name,
        "source_size": len(data),
        "model": model,
        "hyperparameters": hyper,
        "normalization": data.normalization.to_dict(),
        "image_shape": list(data.image_shape),
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "classes": ctx.classes,
        "wall_time_s": round(wall, 3),
        "device": str(ctx.device),
        "torch": torch.__version__,
        "host": platform.node(),
        "threads": torch.get_num_threads(),
        "info": info,
    }
