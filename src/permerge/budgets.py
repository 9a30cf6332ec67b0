"""Default optimisation budgets, chosen from the data: the one source of them for the API,
the CLI and the methods.

A budget is counted in optimisation steps. Whatever the caller sets explicitly (an API
keyword, a CLI flag, an ``--opt``) is kept; the policy fills in only what was left unset:

* **training** (``permerge train``, :func:`permerge.api.train`)

  - 10,000 training images or more ("full data"): the paper's recipe, 10 epochs at batch 500,
    SGD lr 0.1 (MNIST: 1,100 steps);
  - fewer (a small dataset): 3,000 steps at batch ``min(256, N)``, lr 0.05, so a 7,000-image
    set is not left at ~150 steps;
  - a reduced set (``reduced:PATH``) or a set under 1,000 images also gets DSA augmentation
    (one random crop / scale / rotate / cutout / colour operation per batch) and, for a
    reduced set, no validation part: the recipe measured in docs/REDUCTION.md (DM 10 images
    per class of MNIST: 24 % with the full-data recipe, about 90 % with this one);
  - other colour (3-channel) images get crop + flip augmentation; Adam's lr is 1e-3.

* **STE merging** (``--method ste``): merge data under 5,000 images gets the reduced-data
  recipe of the reproduced grids (500 steps, lr 0.5, batch 200: MNIST + Fashion-MNIST with
  10 images per class, mean 84.3); more data gets the full-data recipe (2,000 steps, lr 0.1,
  batch 500). ``epochs=E`` instead of ``steps`` means E passes over the largest source.

Fewer than :data:`MIN_STEPS` steps is logged as a warning. The chosen budget is logged
(logger ``permerge.budget``; the CLI prints it as one line) and recorded in the output JSON
(``model.json`` ``budget``; ``merge.json`` ``info.align.budget``).

The reproduce grids do not use this policy for training: a grid's ``train:`` fields are
complete :class:`~permerge.train.TrainConfig` values (unset ones take its fixed defaults), so
a grid's runs never change when the policy does. Its STE entries set steps, lr and batch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from .data.mergedata import MergeData
    from .train import TrainConfig

log = logging.getLogger("permerge.budget")

MIN_STEPS = 50  # fewer optimisation steps than this is a warning

# training
SMALL_TRAIN = 10_000  # fewer training images: the small-data recipe
TINY_TRAIN = 1_000  # fewer training images (or any reduced set): DSA augmentation too
FULL_TRAIN = {"epochs": 10, "batch_size": 500, "lr": 0.1}  # the paper's MLP recipe, 10 epochs on CPU
SMALL_TRAIN_STEPS = 3_000
SMALL_TRAIN_BATCH = 256  # capped at the number of training images
SMALL_TRAIN_LR = 0.05
ADAM_LR = 1e-3

# STE merging (the recipes of configs/mnist-fmnist.yaml)
SMALL_MERGE = 5_000  # fewer merge images: the reduced-data recipe
STE_SMALL = {"steps": 500, "lr": 0.5, "batch_size": 200}
STE_FULL = {"steps": 2_000, "lr": 0.1, "batch_size": 500}


@dataclass(frozen=True)
class Budget:
    """What an optimisation will run: its steps and settings, and which of them were chosen."""

    what: str  # "train" | "ste"
    steps: int
    settings: dict[str, Any]  # the budget's settings in force (batch_size, lr, augment, ...)
    chosen: tuple[str, ...]  # the settings the policy filled in
    given: tuple[str, ...]  # the settings the caller set
    rule: str  # the data regime that decided, in words
    warning: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """One line for people: ``budget (train): 3000 steps, batch 100, lr 0.05, augment dsa ...``."""
        s = self.settings
        parts = [f"{self.steps} steps"]
        if s.get("epochs") is not None:
            parts[0] += f" ({s['epochs']} epochs)"
        parts += [f"batch {s['batch_size']}", f"lr {s['lr']:g}", f"augment {s.get('augment', 'none')}"]
        if "val_fraction" in s:
            parts.append(f"validation {s['val_fraction']:.3g}")
        how = f"chosen for {self.rule}" if self.chosen else "as given"
        if self.chosen and self.given:
            how += f"; given: {', '.join(self.given)}"
        return f"{self.what} budget: {', '.join(parts)} ({how})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            **self.settings,
            "chosen": list(self.chosen),
            "given": list(self.given),
            "rule": self.rule,
            "warning": self.warning,
            "line": self.line(),
            **self.extra,
        }

    def announce(self) -> None:
        log.info(self.line())
        if self.warning:
            log.warning(self.warning)


def _few_steps(what: str, steps: int, fix: str) -> str | None:
    if steps >= MIN_STEPS:
        return None
    return f"{what} runs only {steps} optimisation steps (< {MIN_STEPS}): too few to mean much; {fix}"


def _count(n: int) -> str:
    return f"{n:,}"


def _train_choices(given: Mapping[str, Any], n: int, *, small: bool, reduced: bool, channels: int) -> dict[str, Any]:
    """Batch size, learning rate, length and augmentation for what ``given`` leaves unset:
    small data (a reduced set, or under ``SMALL_TRAIN`` images) trains a fixed number of steps
    with small batches, large data the paper's epochs; few images get DSA, colour images crop+flip."""
    chosen: dict[str, Any] = {}
    if "batch_size" not in given:
        chosen["batch_size"] = max(1, min(SMALL_TRAIN_BATCH, n)) if small else FULL_TRAIN["batch_size"]
    if "lr" not in given:
        if given.get("optimizer") == "adam":
            chosen["lr"] = ADAM_LR
        else:
            chosen["lr"] = SMALL_TRAIN_LR if small else FULL_TRAIN["lr"]
    if "steps" not in given and "epochs" not in given:
        if small:
            chosen["steps"] = SMALL_TRAIN_STEPS
        else:
            chosen["epochs"] = FULL_TRAIN["epochs"]
    if "augment" not in given:
        if reduced or n < TINY_TRAIN:
            chosen["augment"] = "dsa"
        elif channels == 3:
            chosen["augment"] = "crop-flip"
        else:
            chosen["augment"] = "none"
    return chosen


def train_budget(
    options: Mapping[str, Any],
    *,
    n_images: int,
    n_train: Callable[[float], int],
    reduced: bool = False,
    channels: int = 1,
) -> tuple[TrainConfig, Budget]:
    """Complete the training options the caller left unset (``None`` counts as unset).

    ``n_images`` is the size of the training data before the validation part is held out;
    ``n_train(val_fraction)`` gives the size of what is trained on. ``reduced``: the data is a
    reduced set (coreset or condensed images). Returns the :class:`TrainConfig` and its budget.
    Unknown or invalid options raise pydantic's ``ValidationError`` (from ``TrainConfig``).
    """
    from .train import TrainConfig

    given = {k: v for k, v in options.items() if v is not None}
    TrainConfig(**given)  # unknown names and bad values fail here, before any choice is made
    chosen: dict[str, Any] = {}
    if "val_fraction" not in given and reduced:
        chosen["val_fraction"] = 0.0
    val = given.get("val_fraction", chosen.get("val_fraction", TrainConfig.model_fields["val_fraction"].default))
    n = int(n_train(val))
    small = reduced or n < SMALL_TRAIN
    if reduced:
        rule = f"a reduced set of {_count(n)} images"
    elif small:
        rule = f"{_count(n)} training images, under {_count(SMALL_TRAIN)}"
    else:
        rule = f"{_count(n)} training images: the paper's recipe"
    chosen.update(_train_choices(given, n, small=small, reduced=reduced, channels=channels))
    cfg = TrainConfig(**{**given, **chosen})
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    steps = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    epochs = cfg.epochs if cfg.steps is None else math.ceil(cfg.steps / steps_per_epoch)
    settings = {
        "epochs": epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "augment": cfg.augment,
        "val_fraction": cfg.val_fraction,
    }
    shown = set(chosen) | {"epochs"} if "steps" in chosen else set(chosen)
    budget = Budget(
        what="train",
        steps=steps,
        settings=settings,
        chosen=tuple(k for k in settings if k in shown),
        given=tuple(k for k in ("steps", "epochs", "batch_size", "lr", "augment", "val_fraction") if k in given),
        rule=rule,
        warning=_few_steps("training", steps, "raise --epochs or pass --steps"),
        extra={"train_images": n},
    )
    return cfg, budget


class _STEBudgetOptions(Protocol):
    """What :func:`ste_budget` reads of ``align.ste.STEOptions`` (typed structurally, so this
    module, which ``align.ste`` imports, imports nothing of it)."""

    @property
    def steps(self) -> int | None: ...
    @property
    def epochs(self) -> float | None: ...
    @property
    def lr(self) -> float | None: ...
    @property
    def batch_size(self) -> int | None: ...
    @property
    def augment(self) -> str: ...
    @property
    def model_fields_set(self) -> set[str]: ...
    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Any: ...


SteOpts = TypeVar("SteOpts", bound=_STEBudgetOptions)


def ste_budget(opts: SteOpts, data: MergeData) -> tuple[SteOpts, Budget]:
    """Complete STE's steps / lr / batch size from the merge data's size (what was set stays)."""
    given = opts.model_fields_set
    n = len(data)
    small = n < SMALL_MERGE
    recipe = STE_SMALL if small else STE_FULL
    rule = (
        f"{_count(n)} merge images, under {_count(SMALL_MERGE)}: the reduced-data recipe"
        if small
        else f"{_count(n)} merge images: the full-data recipe"
    )
    update: dict[str, Any] = {}
    for k in ("lr", "batch_size"):
        if k not in given or getattr(opts, k) is None:
            update[k] = recipe[k]
    batch = int(update.get("batch_size") or opts.batch_size or STE_SMALL["batch_size"])
    if opts.steps is not None:
        steps = opts.steps
    elif opts.epochs is not None:
        steps = max(1, round(opts.epochs * data.epoch_steps(batch)))
    else:
        steps = int(recipe["steps"])
        update["steps"] = steps
    resolved = opts.model_copy(update=update)
    settings = {"batch_size": resolved.batch_size, "lr": resolved.lr, "augment": resolved.augment}
    if opts.epochs is not None:
        settings["epochs"] = opts.epochs
    chosen = tuple(k for k in ("steps", "lr", "batch_size") if k in update)
    budget = Budget(
        what="STE",
        steps=steps,
        settings=settings,
        chosen=chosen,
        given=tuple(k for k in ("steps", "epochs", "lr", "batch_size", "augment") if k in given),
        rule=rule,
        warning=_few_steps("STE", steps, "pass --opt steps=N (the reduced-data recipe is 500)"),
        extra={"merge_images": n},
    )
    return resolved, budget
