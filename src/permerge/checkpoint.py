"""The only module that reads or writes model files.

A checkpoint is a folder with ``model.safetensors`` (tensors only: loading it can never
execute code) and ``model.json`` (architecture config + metadata). Foreign ``.pt``/``.pth``
files are read with ``torch.load(weights_only=True)`` and need a ``model.json`` beside them.
Everything loaded is validated: architecture, key set, shapes, finiteness.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ._io import atomic_path
from .errors import ModelError
from .models import ModelConfig, build_model

WEIGHTS = "model.safetensors"
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


def check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ModelError(f"{where}: tensor {k!r} contains NaN or inf")


def save_checkpoint(
    out_dir: str | Path, model: nn.Module, config: ModelConfig, meta: dict[str, Any] | None = None
) -> Path:
    """Write ``model.safetensors`` + ``model.json`` atomically (each via temp file + rename)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(f"cannot create output folder {out}: {e.strerror}") from e
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    check_finite(state, "refusing to save model")
    # the config always describes the weights being written; a stale "config" in meta must not win
    record = {"config": config.model_dump(mode="json"), **{k: v for k, v in (meta or {}).items() if k != "config"}}
    try:
        # both files are staged before either is renamed into place, so a failure part-way
        # never pairs new weights with an old model.json (or the reverse)
        with atomic_path(out / WEIGHTS) as tmp_weights, atomic_path(out / META) as tmp_meta:
            save_file(state, str(tmp_weights), metadata={"format": "pt", "arch": config.arch})
            tmp_meta.write_text(json.dumps(record, indent=2, default=str) + "\n")
    except OSError as e:
        raise ModelError(f"cannot write checkpoint to {out}: {e.strerror or e}") from e
    return out


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path} is missing: a checkpoint needs its architecture config") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or "config" not in meta:
        raise ModelError(f"{path}: no 'config' entry (architecture) in model metadata")
    return meta


def _read_state(weights: Path) -> dict[str, torch.Tensor]:
    if not weights.is_file():
        raise ModelError(f"{weights}: no such model file")
    if weights.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            obj = torch.load(weights, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
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


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint folder, or a weights file with ``model.json`` beside it."""
    p = Path(path)
    if p.is_dir():
        weights, meta_path = p / WEIGHTS, p / META
    elif p.exists():
        weights, meta_path = p, p.with_name(META)
    else:
        raise ModelError(f"{p}: no such model file or folder")
    meta = _read_meta(meta_path)
    try:
        config = ModelConfig.model_validate(meta.pop("config"))
    except ValidationError as e:
        raise ModelError(f"{meta_path}: invalid architecture config ({e.errors()[0]['msg']})") from None
    state = _read_state(weights)
    # check keys and shapes against a storage-free skeleton first: a crafted model.json
    # must not make us allocate a huge model before the weights file is found not to match
    with torch.device("meta"):
        skeleton = build_model(config)
    validate_state(skeleton, state, str(weights))
    model = build_model(config)
    model.load_state_dict(state)
    model.eval()
    return Checkpoint(model=model, config=config, meta=meta, path=p)


def validate_state(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing:
        raise ModelError(f"{where}: missing tensors {missing[:4]}{'...' if len(missing) > 4 else ''}")
    if extra:
        raise ModelError(f"{where}: unexpected tensors {extra[:4]}{'...' if len(extra) > 4 else ''}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ModelError(
                f"{where}: tensor {k!r} has shape {tuple(state[k].shape)}, architecture expects {tuple(v.shape)}"
            )
        # float16/float64 weights are cast on load, but integer, bool or complex data in place
        # of float weights (or the reverse) is not a model of this architecture
        if state[k].is_floating_point() != v.is_floating_point() or state[k].is_complex():
            raise ModelError(f"{where}: tensor {k!r} has dtype {state[k].dtype}, architecture expects {v.dtype}")
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
