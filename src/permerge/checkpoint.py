"""The only module that reads or writes model files.

A checkpoint is a folder with ``model.safetensors`` (tensors only: loading it can never
execute code) and ``model.json`` (architecture config + metadata). Foreign ``.pt``/``.pth``
files are read with ``torch.load(weights_only=True)`` and need a ``model.json`` beside them.
Everything loaded is validated: architecture, key set, shapes, finiteness.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ._io import dumps
from ._outdir import OutputFolder
from .errors import ModelError, first_error
from .models import ModelConfig, build_model, check_size

WEIGHTS = "model.safetensors"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# dtypes a weight tensor may be stored in (cast to the model's on load); float8 and other
# exotic types cannot even be checked for NaN by torch
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
META = "model.json"


@dataclass
class Checkpoint:
    model: nn.Module
    config: ModelConfig
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def dataset(self) -> str | None:
        d = self.meta.get("dataset")
        return str(d) if d else None

    @property
    def trained_with_augmentation(self) -> bool:
        """Whether the recorded training recipe augmented its data (False when unknown, e.g. a
        model imported from another framework)."""
        train = self.meta.get("train")
        return isinstance(train, dict) and train.get("augment") not in (None, False, "none")


def check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ModelError(f"{where}: tensor {k!r} contains NaN or inf")


def save_checkpoint(
    out_dir: str | Path | OutputFolder,
    model: nn.Module,
    config: ModelConfig,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` + ``model.json`` as one unit: both are staged in a folder
    beside ``out_dir`` that then replaces it (see :mod:`permerge._outdir`), so a failure
    part-way never pairs new weights with an old ``model.json`` and never leaves stale files."""
    folder = out_dir if isinstance(out_dir, OutputFolder) else OutputFolder(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    check_finite(state, "refusing to save model")
    with folder.staged() as tmp:
        write_checkpoint(tmp, state, config, meta)
    return folder.path


def write_checkpoint(
    folder: Path, state: dict[str, torch.Tensor] | nn.Module, config: ModelConfig, meta: dict[str, Any] | None = None
) -> None:
    """Write the two checkpoint files into ``folder`` (a staging folder: no atomicity here)."""
    if isinstance(state, nn.Module):
        state = {k: v.detach().cpu().contiguous() for k, v in state.state_dict().items()}
        check_finite(state, "refusing to save model")
    # the config always describes the weights being written; a stale "config" in meta must not win
    record = {"config": config.model_dump(mode="json"), **{k: v for k, v in (meta or {}).items() if k != "config"}}
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt", "arch": config.arch})
    (folder / META).write_text(dumps(record, indent=2, default=str) + "\n")


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path} is missing: a checkpoint needs its architecture config") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise ModelError(f"{path}: not valid model metadata (JSON nested too deeply)") from None
    if not isinstance(meta, dict) or "config" not in meta:
        raise ModelError(f"{path}: no 'config' entry (architecture) in model metadata")
    if "dataset" in meta and meta["dataset"] is not None and not isinstance(meta["dataset"], str):
        raise ModelError(f"{path}: 'dataset' must be a dataset spec string, got {type(meta['dataset']).__name__}")
    ds = meta.get("datasets")
    if isinstance(ds, str):  # one spec where a list belongs: read as a list of one
        meta["datasets"] = [ds]
    elif ds is not None and (not isinstance(ds, list) or not all(isinstance(d, str) for d in ds)):
        raise ModelError(f"{path}: 'datasets' must be a list of dataset spec strings, got {json.dumps(ds)[:60]}")
    return meta


def _read_state(weights: Path) -> dict[str, torch.Tensor]:
    if not weights.is_file():
        raise ModelError(f"{weights}: no such model file")
    if weights.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            obj = torch.load(weights, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # torch's own text spans lines and advises weights_only=False, i.e. running the file's code
            raise ModelError(
                f"{weights}: refused or unreadable torch file (it holds Python objects besides tensors, and "
                "loading those could run code; save only the state dict's tensors, or convert to safetensors)"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            first = _ANSI.sub("", str(e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"{weights}: refused or unreadable torch file ({first})") from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ModelError(f"{weights}: expected a state dict of tensors")
        return dict(obj)
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{weights}: corrupt or truncated safetensors file ({e})") from None


def load_checkpoint(
    path: str | Path,
    code: str | None = None,
    code_args: Any = None,
    in_shape: Callable[[], tuple[int, int, int]] | None = None,
) -> Checkpoint:
    """Load a checkpoint folder, or a weights file with ``model.json`` beside it.

    ``code`` (``mypkg.models:build_net``, named by the user) builds the model with the user's
    factory and ``code_args`` instead of the architecture in ``model.json``, which may then be
    absent (a foreign safetensors file): the input shape comes from ``model.json`` if there
    is one, else from ``in_shape()`` (the data the command was given)."""
    p = Path(path)
    if p.is_dir():
        weights, meta_path = p / WEIGHTS, p / META
    elif p.exists():
        weights, meta_path = p, p.with_name(META)
    else:
        raise ModelError(f"{p}: no such model file or folder")
    if code is not None:
        meta, config = _code_config(weights, meta_path, code, code_args, in_shape)
    else:
        meta = _read_meta(meta_path)
        config = _stored_config(meta.pop("config"), meta_path)
    state = _read_state(weights)
    # check keys and shapes against a storage-free skeleton first: a crafted model.json
    # must not make us allocate a huge model before the weights file is found not to match
    try:
        with torch.device("meta"):
            skeleton = build_model(config)
    except (RuntimeError, ValueError) as e:  # e.g. images too small for the network's pooling
        raise ModelError(f"{meta_path}: cannot build {config.describe()} ({' '.join(str(e).split())[:200]})") from None
    validate_state(skeleton, state, str(weights))
    check_size(config)
    model = build_model(config)
    model.load_state_dict(state)
    model.eval()
    return Checkpoint(model=model, config=config, meta=meta, path=p)


def _stored_config(raw: Any, meta_path: Path) -> ModelConfig:
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as e:
        where, msg = first_error(e)
        raise ModelError(f"{meta_path}: invalid architecture config ({where + ': ' if where else ''}{msg})") from None


def _code_config(
    weights: Path, meta_path: Path, code: str, code_args: Any, in_shape: Callable[[], tuple[int, int, int]] | None
) -> tuple[dict[str, Any], ModelConfig]:
    """Metadata (if any) and the config of the user's factory for a weights file."""
    from .models.code import code_config

    meta = _read_meta(meta_path) if meta_path.is_file() else {"config": None}
    stored = meta.pop("config")
    shape = stored.get("in_shape") if isinstance(stored, dict) else None
    if shape is None:
        if in_shape is None:
            raise ModelError(f"{weights}: no {META} beside it; pass --datasets so the input shape is known")
        shape = in_shape()
    try:
        return meta, code_config(code, code_args, tuple(shape))
    except ValidationError as e:
        raise ModelError(f"{meta_path}: invalid input shape {shape!r} ({e.errors()[0]['msg']})") from None


def validate_state(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Keys, shapes, dtypes and finiteness of ``state`` against ``model``; the first few of
    each kind of mismatch on one line (a foreign file's names and shapes at a glance)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = [
        f"tensor {k!r} has shape {tuple(state[k].shape)}, architecture expects {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = [
        *([f"missing tensors {missing[:4]}{'...' if len(missing) > 4 else ''}"] if missing else []),
        *([f"unexpected tensors {extra[:4]}{'...' if len(extra) > 4 else ''}"] if extra else []),
        *shapes[:3],
        *([f"{len(shapes) - 3} more shape mismatches"] if len(shapes) > 3 else []),
    ]
    if problems:
        raise ModelError(f"{where}: " + "; ".join(problems))
    for k, v in expected.items():
        # float16/float64 weights are cast on load, but integer, bool or complex data in place
        # of float weights (or the reverse) is not a model of this architecture
        if state[k].is_floating_point() != v.is_floating_point() or state[k].is_complex():
            raise ModelError(f"{where}: tensor {k!r} has dtype {state[k].dtype}, architecture expects {v.dtype}")
        if state[k].is_floating_point() and state[k].dtype not in FLOAT_DTYPES:
            raise ModelError(
                f"{where}: tensor {k!r} has dtype {state[k].dtype}; weights must be float16, bfloat16, "
                "float32 or float64"
            )
    check_finite(state, where)


def check_compatible(a: Checkpoint, b: Checkpoint) -> None:
    """Two models can be merged only if they share the exact architecture."""
    if a.config != b.config:
        da, db = a.config.model_dump(), b.config.model_dump()
        diff = {k: (da[k], db[k]) for k in da if da[k] != db[k]}
        raise ModelError(f"models have different architectures: {diff}")


def check_inputs(ckpt: Checkpoint, sets: Iterable[Any]) -> None:
    """Refuse data whose image shape is not the one the model was built for (e.g. CIFAR-10
    for an MNIST model); otherwise the first layer fails with a bare matrix-shape error."""
    want = tuple(ckpt.config.in_shape)
    for s in sets:
        if tuple(s.image_shape) != want:
            raise ModelError(
                f"{ckpt.path or ckpt.config.describe()}: model takes images of shape {want}, "
                f"but {s.name} has {tuple(s.image_shape)}"
            )


def as_checkpoint(model: str | Path | Checkpoint) -> Checkpoint:
    """A checkpoint as is, or loaded from its folder or weights file."""
    return model if isinstance(model, Checkpoint) else load_checkpoint(model)


def datasets_of(ckpt: Checkpoint) -> list[str]:
    """The datasets a checkpoint was trained on (merged models list both sources)."""
    ds = ckpt.meta.get("datasets")
    if isinstance(ds, str):  # one spec where a list belongs: not a list of one-letter specs
        return [ds]
    if ds:
        return [str(d) for d in ds]
    if ckpt.dataset:
        return [ckpt.dataset]
    raise ModelError(f"{ckpt.path}: model metadata names no dataset; pass --datasets")
