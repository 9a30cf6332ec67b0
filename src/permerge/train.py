"""Training and evaluation loops shared by the CLI, reduction baselines and experiments."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from .augment import default_augment
from .data import ImageSet
from .data.transforms import random_crop_flip
from .errors import TrainingError
from .progress import progress_bar


class TrainConfig(BaseModel):
    """Optimiser settings. Defaults follow the paper's MLP recipe, with fewer epochs for CPUs.

    These are fixed defaults; :func:`permerge.budgets.train_budget` (what ``api.train`` and
    ``permerge train`` use) chooses the unset ones from the data instead.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(10, ge=1)
    steps: int | None = Field(None, ge=1, description="total optimisation steps (instead of epochs)")
    batch_size: int = Field(500, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine", "warmup-linear"] = "constant"
    warmup_epochs: int = Field(0, ge=0)
    # "crop-flip": pad-4 crop + horizontal flip (the CIFAR standard); "dsa": one random DSA
    # operation per batch (crop/scale/rotate/cutout/colour, no flip for grayscale), for
    # training on a few images per class. true/false in older configs mean crop-flip/none.
    augment: Literal["none", "crop-flip", "dsa"] = "none"
    val_fraction: float = Field(1 / 12, ge=0, lt=1)  # 5,000 of MNIST's 60,000
    # Mixed precision: forward/backward under autocast, weights and optimiser state stay fp32.
    # bf16 needs no loss scaling and works on CPU and recent GPUs; fp16 (CUDA only) uses a
    # dynamic loss scaler. Evaluation and merging always run in fp32.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    @model_validator(mode="after")
    def _length(self) -> TrainConfig:
        if self.steps is not None and "epochs" in self.model_fields_set:
            raise ValueError("give steps or epochs, not both")
        return self

    @field_validator("augment", mode="before")
    @classmethod
    def _bool_augment(cls, v: object) -> object:
        return {True: "crop-flip", False: "none"}.get(v, v) if isinstance(v, bool) else v


@dataclass
class Split:
    train: ImageSet
    val: ImageSet | None


def _held_out_per_class(labels: torch.Tensor, fraction: float) -> list[tuple[int, torch.Tensor, int]]:
    """(class, its indices, how many of them are held out) for every class present."""
    if fraction <= 0 or len(labels) < 20:
        return []
    out = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        k = int(round(len(idx) * fraction))
        out.append((c, idx, k if 0 < k < len(idx) else 0))
    return out


def train_size(labels: torch.Tensor, fraction: float) -> int:
    """How many images :func:`train_val_split` leaves for training (without splitting)."""
    return len(labels) - sum(k for _, _, k in _held_out_per_class(labels, fraction))


def train_val_split(data: ImageSet, fraction: float, seed: int = 0) -> Split:
    """Hold out a stratified validation part; fixed by ``seed`` so it is reproducible."""
    if fraction <= 0 or len(data) < 20:
        return Split(data, None)
    g = torch.Generator().manual_seed(10_007 + seed)
    val_idx = []
    for _, idx, k in _held_out_per_class(data.labels, fraction):
        if k:
            val_idx.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    if not val_idx:
        return Split(data, None)
    val = torch.cat(val_idx)
    mask = torch.ones(len(data), dtype=torch.bool)
    mask[val] = False
    return Split(data.subset(mask.nonzero().flatten()), data.subset(val.sort().values))


def _lr_at(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    warm = cfg.warmup_epochs * steps_per_epoch
    if warm and step < warm:
        return cfg.lr * (step + 1) / warm  # never lr 0 on the first step
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))
    if cfg.schedule == "warmup-linear":
        return cfg.lr * max(0.0, 1 - (step - warm) / max(1, total - warm))
    return cfg.lr


def make_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train_model(
    model: nn.Module,
    data: ImageSet,
    cfg: TrainConfig,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    description: str = "train",
) -> dict[str, float]:
    """Train ``model`` in place on ``data`` (already the training part); return final stats.

    Deterministic for a seed on CPU: the model's init is the caller's business, shuffling and
    augmentation use a private generator.
    """
    model.to(device).train()
    dev_type = torch.device(device).type
    if cfg.precision == "fp16" and dev_type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device (use bf16 on CPU)")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    g = torch.Generator().manual_seed(seed)
    opt = make_optimizer(model.parameters(), cfg)
    steps_per_epoch = max(1, math.ceil(len(data) / cfg.batch_size))
    total = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    epochs = math.ceil(total / steps_per_epoch)
    weights = data.weights
    dsa = default_augment(data.image_shape[0]) if cfg.augment == "dsa" else None
    step, last_loss = 0, float("nan")
    t0 = time.perf_counter()
    with progress_bar(total, description, enabled=progress) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(data), generator=g)
            for start in range(0, len(data), cfg.batch_size):
                if step == total:  # a step budget may end inside an epoch
                    break
                idx = order[start : start + cfg.batch_size]
                x = data.to_input(data.images[idx], device, augment=dsa, generator=g)
                if cfg.augment == "crop-flip":
                    x = random_crop_flip(x.cpu(), g).to(device)
                y = data.labels[idx].to(device)
                for group in opt.param_groups:
                    group["lr"] = _lr_at(cfg, step, total, steps_per_epoch)
                w = weights[idx].to(device) if weights is not None else None
                last_loss = _train_step(model, opt, scaler, x, y, w, amp_dtype, step)
                step += 1
                bar.advance(loss=last_loss)
    model.eval()
    check_trained(model, last_loss)
    return {"final_train_loss": last_loss, "train_seconds": time.perf_counter() - t0, "steps": step}


def _train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor | None,
    amp_dtype: torch.dtype | None,
    step: int,
) -> float:
    """One optimisation step on a batch (weighted cross-entropy where a reduced set carries
    image weights); the forward in ``amp_dtype`` if set, the loss always in fp32. A non-finite
    loss stops training before it reaches the weights."""
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = model(x)
    logits = logits.float()
    if w is not None:
        loss = (F.cross_entropy(logits, y, reduction="none") * w).sum() / w.sum()
    else:
        loss = F.cross_entropy(logits, y)
    if not torch.isfinite(loss):
        raise TrainingError(f"training diverged at step {step} (loss {loss.item()}); lower --lr; nothing was saved")
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    return loss.item()


# Weights this large make float32 activations overflow on ordinary inputs: the model only
# outputs inf/NaN. Trained nets here stay below ~10^2.
DIVERGED_WEIGHT = 1e12
# Mean cross-entropy in nats: 2.3 for a blind 10-way guess; 10^4 means logits gaps of 10^4,
# i.e. a model that blew up, not one that learnt badly.
DIVERGED_LOSS = 1e4


@torch.no_grad()
def check_trained(model: nn.Module, last_loss: float = 0.0, scores: dict[str, object] | None = None) -> None:
    """Raise :class:`TrainingError` when training diverged: non-finite (or exploded) weights,
    a non-finite final loss, or non-finite losses when the trained model is scored."""
    biggest = 0.0
    for name, p in model.state_dict().items():
        if not p.is_floating_point() or p.numel() == 0:
            continue
        if not bool(torch.isfinite(p).all()):
            raise TrainingError(f"training diverged: weights {name!r} are NaN or inf; lower --lr; nothing was saved")
        biggest = max(biggest, float(p.abs().max()))
    bad = not math.isfinite(last_loss) or biggest > DIVERGED_WEIGHT
    part_name, part_loss = None, 0.0
    for part, s in (scores or {}).items():
        if isinstance(s, dict) and "loss" in s and s.get("n") and part in ("train", "val"):
            loss = float(s["loss"])
            if not math.isfinite(loss) or loss > DIVERGED_LOSS:
                bad, part_name, part_loss = True, part, loss
                break
    if bad:
        where = f"; its {part_name} loss is {part_loss:.3g}" if part_name else ""
        raise TrainingError(f"training diverged (largest weight {biggest:.3g}{where}); lower --lr; nothing was saved")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ImageSet,
    *,
    batch_size: int = 1000,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Accuracy (in %) and mean cross-entropy of ``model`` on ``data``."""
    model.to(device).eval()
    correct, loss_sum, n = 0, 0.0, 0
    for x, y in data.batches(batch_size, device=device):
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    if n == 0:
        return {"acc": float("nan"), "loss": float("nan"), "n": 0}
    return {"acc": 100.0 * correct / n, "loss": loss_sum / n, "n": n}


def evaluate_many(
    model: nn.Module, datasets: Sequence[ImageSet], *, device: str | torch.device = "cpu"
) -> dict[str, object]:
    """Per-dataset scores plus their means: the paper's metric for a merged model."""
    per = {d.name: evaluate(model, d, device=device) for d in datasets}
    return {
        "per_dataset": per,
        "mean_acc": sum(v["acc"] for v in per.values()) / len(per),
        "mean_loss": sum(v["loss"] for v in per.values()) / len(per),
    }
