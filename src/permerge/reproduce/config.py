"""Experiment configs: one validated, frozen YAML file per reproduced experiment.

A config names the *grid* (dataset pairs x seeds x merge methods x merge data); the planner
(``plan.py``) expands it into independent runs. ``quick`` holds overrides that shrink any
experiment to a smoke test (fewer seeds, epochs and steps) so CI can run the real code path.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .._limits import MAX_SEED, MAX_SEEDS
from ..errors import ConfigError, first_error
from ..merge.distill import DistillOptions
from ..train import TrainConfig

DataKind = Literal["none", "full", "reduced"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ReduceGrid(_Frozen):
    """Reduced merge data: every method at every images-per-class count."""

    methods: tuple[str, ...] = ()
    ipcs: tuple[int, ...] = (1, 10)
    options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-method hyperparameters")
    # Coreset features / scores come from the source model trained on that dataset.
    use_source_model: bool = True

    @field_validator("ipcs")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(k < 1 for k in v):
            raise ValueError("images per class must be >= 1")
        return v

    @field_validator("options")
    @classmethod
    def _options_valid(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Each method's options checked when the config loads, not when its first run starts."""
        from ..errors import PermergeError
        from ..reduce import get_method

        for method, opts in v.items():
            try:
                get_method(method).resolve(opts)
            except PermergeError as e:  # reported at reduce.options.<method>
                raise ValidationError.from_exception_data(
                    "ReduceGrid", [{"type": "value_error", "loc": (method,), "input": opts, "ctx": {"error": str(e)}}]
                ) from None
        return v


class MergeEntry(_Frozen):
    """One merge method, run on each kind of merge data listed in ``data``."""

    method: str
    data: tuple[DataKind, ...] = ("none",)
    lam: float = Field(0.5, ge=0, le=1)
    options: dict[str, Any] = Field(default_factory=dict, description="options with full data")
    reduced_options: dict[str, Any] | None = Field(None, description="options with reduced data (default: options)")
    curve: bool = Field(False, description="also record the interpolation curve (first seed only)")
    name: str | None = Field(None, description="row label in the results (default: method, +finisher)")
    finetune: Literal["none", "kd"] = Field("none", description="finisher after the merge (kd: distillation)")
    finetune_options: dict[str, Any] = Field(default_factory=dict, description="options of the finisher")

    @field_validator("options", "reduced_options")
    @classmethod
    def _method_options(cls, v: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        """The method's own options class checks them when the config loads (an unknown method
        is reported by the experiment's check)."""
        from ..merge.core import BASELINES, options_class

        method = info.data.get("method", "")
        options = options_class(method)
        if v and method in BASELINES:
            raise ValueError(f"method {method} takes no options")
        if v and options is not None:
            options.model_validate(v)  # its errors keep their field's path
        return v

    @field_validator("finetune_options")
    @classmethod
    def _finisher_options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if info.data.get("finetune", "none") != "none":
            DistillOptions.model_validate(v)  # bad options fail when the config loads, with their path
        return v

    @model_validator(mode="after")
    def _finisher(self) -> MergeEntry:
        if self.finetune != "none":
            if "none" in self.data:
                raise ValueError("a finisher distils on merge data: 'none' cannot be in data")
        elif self.finetune_options:
            raise ValueError("finetune_options given without finetune")
        return self

    @property
    def label(self) -> str:
        """The method column of the results table: ``wm+kd`` for a finished merge."""
        if self.name:
            return self.name
        return self.method if self.finetune == "none" else f"{self.method}+{self.finetune}"


class Baselines(_Frozen):
    sources: bool = True  # each source model on both test sets (and the 'flipped' indicator)
    joint: bool = True  # one model trained on both training sets: the upper bound
    joint_train: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides of 'train' for the joint model (e.g. fewer epochs: it sees twice the data)",
    )
    reduced_only: bool = True  # a model trained on the reduced merge data alone
    reduced_only_train: dict[str, Any] = Field(
        default_factory=lambda: {"epochs": 300, "batch_size": 256, "lr": 0.01, "val_fraction": 0.0}
    )

    @field_validator("joint_train", "reduced_only_train")
    @classmethod
    def _train_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        TrainConfig(**v)  # unknown fields / bad values fail when the config loads, not hours in
        return v


class ExperimentConfig(_Frozen):
    name: str
    description: str = ""
    model: str
    # keyword arguments of a user factory named as ``model: code:mypkg.models:build_net``
    model_args: dict[str, str | int | float | bool] = Field(default_factory=dict)
    pairs: tuple[tuple[str, str], ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    # Model B of seed s is trained with seed s + b_seed_offset: two models from one
    # initialisation share a basin and would flatter naive averaging.
    b_seed_offset: int = 1000
    train: dict[str, Any] = Field(default_factory=dict)
    full_data_per_class: int | None = Field(
        None, ge=1, description="cap 'full' merge data at this many images per class (None: all)"
    )
    reduce: ReduceGrid = Field(default_factory=ReduceGrid)
    merges: tuple[MergeEntry, ...]
    baselines: Baselines = Field(default_factory=Baselines)
    quick: dict[str, Any] = Field(default_factory=dict, description="overrides applied by --quick")

    @field_validator("train")
    @classmethod
    def _train_valid(cls, v: dict[str, Any]) -> dict[str, Any]:
        TrainConfig(**v)  # raises on unknown fields / bad values
        return v

    @field_validator("pairs")
    @classmethod
    def _pairs(cls, v: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        if not v:
            raise ValueError("at least one dataset pair is needed")
        return v

    @model_validator(mode="after")
    def _methods_known(self) -> ExperimentConfig:
        from ..merge.core import methods
        from ..reduce import available_methods

        seen: set[tuple[str, str]] = set()
        for m in self.merges:
            if m.method not in methods():
                raise ValueError(f"unknown merge method {m.method!r}; known: {', '.join(methods())}")
            for kind in m.data:  # two entries in one table row would be averaged together
                if (m.label, kind) in seen:
                    raise ValueError(f"two merges are labelled {m.label!r} on {kind} data: give one a 'name'")
                seen.add((m.label, kind))
        known = available_methods()
        for r in self.reduce.methods:
            if r not in known:
                raise ValueError(f"unknown reduce method {r!r}; known: {', '.join(sorted(known))}")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        if len(self.seeds) > MAX_SEEDS:
            raise ValueError(f"{len(self.seeds):,} seeds; at most {MAX_SEEDS} per grid (split it into several)")
        top = MAX_SEED - max(0, self.b_seed_offset)
        bad = [s for s in self.seeds if not 0 <= s <= top]
        if bad or self.b_seed_offset < 0:
            raise ValueError(f"seeds must lie in [0, {top}] and b_seed_offset must be >= 0 (got seed {bad[:1] or ''})")
        # an architecture or dataset spec that cannot work fails here, not in every run of the grid
        from ..data import parse_spec
        from ..errors import PermergeError
        from ..models import model_config_for

        try:
            model_config_for(self.model, (1, 28, 28), **({"code_args": self.model_args} if self.model_args else {}))
            for pair in self.pairs:
                for spec in pair:
                    parse_spec(spec)
        except PermergeError as e:
            raise ValueError(str(e)) from None
        return self

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.train)


def _deep_update(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def builtin_experiments() -> list[str]:
    root = resources.files("permerge") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_experiment(name_or_path: str | Path, *, quick: bool = False) -> ExperimentConfig:
    """A built-in experiment by name (``mnist-fmnist``) or a YAML file; ``quick`` applies its overrides."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"{path}: no such experiment config file")
        text = path.read_text()
    else:
        res = resources.files("permerge") / "configs" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown experiment {str(name_or_path)!r}; built-in: {', '.join(builtin_experiments())}")
        text = res.read_text()
    try:
        raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # C parser when built
    except yaml.YAMLError as e:
        raise ConfigError(f"{name_or_path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{name_or_path}: an experiment config must be a YAML mapping")
    if quick:
        raw = _deep_update(raw, raw.get("quick") or {})
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        where, msg = first_error(e)
        raise ConfigError(f"{name_or_path}: invalid field {where or 'config'!r}: {msg}") from None
