"""A reduced set on disk: one ``.safetensors`` file that is self-describing.

The file holds ``images`` (float32, N x C x H x W, [0, 1] pixel scale), ``labels`` (int64)
and, when present, ``source_indices`` (int64, coresets) and ``weights`` (float32). Its
header metadata carries the full JSON record (method, every hyperparameter, seed, source
dataset spec, normalisation, image shape, classes, wall time), so ``reduced:PATH`` needs
nothing else. Beside it go a copy of that JSON (``<stem>.json``, for people and tools) and
a PNG grid of the images, one row per class (``<stem>.png``). Every file is written to a
temporary name and renamed, so a reader never sees a half-written set. Loading never runs
code (safetensors is plain tensors).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .._io import atomic_path, dumps
from .._outdir import reason
from ..data import ImageSet, Normalization
from ..data.kinds import register_kind
from ..errors import DataError

FORMAT = "permerge.reduced/1"
META_KEY = "permerge.reduced"


@dataclass(frozen=True)
class ReducedSet:
    """Reduced data in memory: the images plus the record of how they were made."""

    images: torch.Tensor  # float32 in [0, 1]
    labels: torch.Tensor  # int64
    meta: dict[str, Any] = field(default_factory=dict)
    source_indices: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def normalization(self) -> Normalization:
        norm = self.meta.get("normalization")
        return Normalization.from_dict(norm) if isinstance(norm, dict) else Normalization()

    def to_imageset(self, name: str | None = None) -> ImageSet:
        """An :class:`ImageSet` that feeds a model exactly like the source data did."""
        classes = self.meta.get("class_names") or ()
        return ImageSet(
            images=self.images.float().contiguous(),
            labels=self.labels.long(),
            name=name or f"reduced:{self.meta.get('method', '?')}@{self.meta.get('ipc', '?')}",
            normalization=self.normalization,
            num_classes=int(self.meta.get("num_classes", 10)),
            class_names=tuple(str(c) for c in classes),
            weights=self.weights,
            source_indices=self.source_indices,
            meta=dict(self.meta),
        )

    # --- disk ---------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {
            "images": self.images.detach().float().cpu().contiguous(),
            "labels": self.labels.detach().long().cpu().contiguous(),
        }
        if self.source_indices is not None:
            out["source_indices"] = self.source_indices.detach().long().cpu().contiguous()
        if self.weights is not None:
            out["weights"] = self.weights.detach().float().cpu().contiguous()
        return out

    def save(self, path: str | Path, *, grid: bool = True) -> Path:
        """Write ``path`` (+ ``.json`` and, with ``grid``, ``.png`` beside it) atomically."""
        target = Path(path)
        record = {"format": FORMAT, **self.meta, "num_images": len(self)}
        text = dumps(record, indent=2, sort_keys=True, default=str)
        try:
            # all files are staged before any is renamed (the set file last), so a failure
            # part-way (disk full) leaves the previous set, sidecars included, as it was
            with contextlib.ExitStack() as stack:
                tmp = stack.enter_context(atomic_path(target))
                tmp_json = stack.enter_context(atomic_path(sidecar(target, ".json")))
                tmp_png = stack.enter_context(atomic_path(sidecar(target, ".png"))) if grid else None
                save_file(self.tensors(), str(tmp), metadata={META_KEY: text})
                tmp_json.write_text(text + "\n")
                if tmp_png is not None:
                    save_grid(self, tmp_png, atomic=False)
        except (OSError, SafetensorError) as e:
            raise DataError(f"cannot write reduced set to {target}: {reason(e)}") from None
        return target


def sidecar(path: Path, suffix: str) -> Path:
    """``x.safetensors`` -> ``x.json``; a name without that suffix just gets one appended."""
    return path.with_suffix(suffix) if path.suffix == ".safetensors" else path.with_name(path.name + suffix)


def _fail(path: Path, why: str) -> DataError:
    return DataError(f"{path}: not a readable reduced set ({' '.join(why.split())})")


def read_reduced(path: str | Path) -> ReducedSet:
    """Load and validate a reduced set file; any defect is a one-line :class:`DataError`."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such reduced-set file")
    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _fail(p, f"corrupt or truncated: {e}") from None
    if META_KEY not in header:
        raise _fail(p, "no permerge metadata; was it written by permerge reduce?")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as e:
        raise _fail(p, f"bad metadata JSON: {e}") from None
    if not isinstance(meta, dict):
        raise _fail(p, "metadata is not a JSON object")
    for key in ("images", "labels"):
        if key not in tensors:
            raise _fail(p, f"missing tensor {key!r}")
    images, labels = tensors["images"], tensors["labels"]
    if images.dtype != torch.float32 or images.ndim != 4:
        raise _fail(p, f"images must be float32 N x C x H x W, got {images.dtype} {tuple(images.shape)}")
    if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
        raise _fail(p, f"labels must be int64 of length {images.shape[0]}, got {labels.dtype} {tuple(labels.shape)}")
    if not bool(torch.isfinite(images).all()) or (images.numel() and (images.min() < 0 or images.max() > 1)):
        raise _fail(p, "images must be finite and within [0, 1]")
    n = images.shape[0]
    for key in ("source_indices", "weights"):
        if key in tensors and tensors[key].shape != (n,):
            raise _fail(p, f"{key} must have length {n}, got {tuple(tensors[key].shape)}")
    meta.pop("format", None)
    meta.pop("num_images", None)
    _check_meta(p, meta)
    return ReducedSet(
        images=images,
        labels=labels,
        meta=meta,
        source_indices=tensors.get("source_indices"),
        weights=tensors.get("weights"),
    )


def _check_meta(p: Path, meta: dict[str, Any]) -> None:
    """The metadata fields that shape the loaded data must have the right types."""
    nc = meta.get("num_classes", 10)
    if isinstance(nc, bool) or not isinstance(nc, int) or not 1 <= nc <= 100_000:
        raise _fail(p, f"metadata num_classes must be a positive integer, got {json.dumps(nc)[:40]}")
    names = meta.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str | int) for n in names)):
        raise _fail(p, f"metadata class_names must be a list of names, got {json.dumps(names)[:40]}")
    norm = meta.get("normalization")
    if norm is not None:
        ok = isinstance(norm, dict) and all(
            isinstance(norm.get(k), list)
            and norm[k]
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in norm[k])
            for k in ("mean", "std")
        )
        if not ok or any(v <= 0 for v in norm["std"]):
            raise _fail(p, "metadata normalization must hold lists of finite numbers 'mean' and 'std' (std > 0)")
    for key in ("source", "method"):
        if key in meta and meta[key] is not None and not isinstance(meta[key], str):
            raise _fail(p, f"metadata {key} must be a string, got {json.dumps(meta[key])[:40]}")


def load_reduced(path: Path) -> ImageSet:
    """The ``reduced:PATH`` dataset: a saved reduced set as an :class:`ImageSet`.

    It keeps the source normalisation, and ``meta["source"]`` names the source dataset spec
    so evaluation can find the matching test set.
    """
    rs = read_reduced(path)
    try:
        return rs.to_imageset(name=f"reduced:{Path(path).name}")
    except DataError as e:
        raise _fail(Path(path), str(e)) from None


def _source_of(arg: str) -> str:
    src = load_reduced(Path(arg)).meta.get("source")
    if not src:
        raise DataError(f"reduced:{arg}: reduced set does not record its source dataset")
    return str(src)


@register_kind("reduced", summary="a reduced set saved by permerge reduce", source=_source_of)
def _load_kind(arg: str, split: str) -> ImageSet:
    """Both splits of ``reduced:PATH`` are the set itself; its test set is its source's
    (:func:`permerge.data.spec.test_spec`)."""
    return load_reduced(Path(arg))


def save_grid(rs: ReducedSet, path: Path, max_per_class: int = 10, atomic: bool = True) -> None:
    """A PNG with one row per class (up to ``max_per_class`` images each), via matplotlib's
    Agg canvas directly, so no global backend is switched and no display is needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    classes = sorted(set(rs.labels.tolist()))
    cols = max(1, min(max_per_class, max((int((rs.labels == c).sum()) for c in classes), default=1)))
    rows = max(1, len(classes))
    fig = Figure(figsize=(cols * 0.9 + 1.2, rows * 0.9 + 0.4))
    FigureCanvasAgg(fig)
    names = rs.meta.get("class_names") or []
    for r, c in enumerate(classes):
        idx = (rs.labels == c).nonzero().flatten()[:cols]
        for j in range(cols):
            ax = fig.add_subplot(rows, cols, r * cols + j + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(
                    str(names[c]) if c < len(names) else str(c), rotation=0, ha="right", va="center", fontsize=7
                )
            if j < len(idx):
                img = rs.images[idx[j]].detach().cpu().clamp(0, 1)
                if img.shape[0] == 1:
                    ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(img[:3].permute(1, 2, 0).numpy())
            else:
                ax.axis("off")
    fig.suptitle(f"{rs.meta.get('method', '')} ipc {rs.meta.get('ipc', '')}  {rs.meta.get('source', '')}", fontsize=8)
    fig.subplots_adjust(left=0.12, right=0.99, bottom=0.01, top=0.93, wspace=0.05, hspace=0.05)
    if not atomic:
        fig.savefig(path, format="png", dpi=80)
        return
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
