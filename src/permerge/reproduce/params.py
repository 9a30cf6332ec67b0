"""The parameters of each kind of grid task: the contract between the planner and the runners.

``plan.py`` builds these, ``tasks.py`` reads them back; neither reads the other's dicts by
string keys. A task's key hashes :meth:`TaskParams.to_dict`, which is exactly the dict the
planner used to build by hand (optional fields that are unset are left out, not written as
null), so the runs already in a store keep their keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

REDUCED_TASK = "reduced-task:"  # a dataset spec naming a reduce task's output by its key


def reduced_ref(key: str) -> str:
    """The spec of a reduce task's output, resolved to a file by :func:`resolve_spec`."""
    return f"{REDUCED_TASK}{key}"


def resolve_spec(spec: str, root: str | Path) -> str:
    """``reduced-task:<key>`` as the ``reduced:PATH`` of that task's set; any other spec as is."""
    if spec.startswith(REDUCED_TASK):
        return f"reduced:{Path(root) / 'runs' / 'reduce' / spec[len(REDUCED_TASK) :] / 'reduced.safetensors'}"
    return spec


class TaskParams(BaseModel):
    """Base of the per-kind parameters; ``kind`` names the runner."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: ClassVar[str]
    # fields written to the key only when set (older runs were planned without them)
    optional: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump()
        for k in self.optional:
            if d.get(k) is None:
                d.pop(k, None)
        return d


class TrainParams(TaskParams):
    """Train ``model`` on ``datasets`` (jointly when several) with exactly ``train``."""

    kind: ClassVar[str] = "train"
    optional: ClassVar[tuple[str, ...]] = ("eval", "model_args")
    datasets: list[str]  # dataset specs or reduced_ref(...)
    model: str
    seed: int
    train: dict[str, Any]  # TrainConfig fields; unset ones take TrainConfig's fixed defaults
    eval: list[str] | None = None  # also score on these (the pair's) test sets: joint / reduced-only
    model_args: dict[str, Any] | None = None  # arguments of a user factory (model: code:...)


class ReduceParams(TaskParams):
    """Reduce ``dataset`` with ``method`` to ``ipc`` images per class."""

    kind: ClassVar[str] = "reduce"
    dataset: str
    method: str
    ipc: int
    seed: int
    model: str | None  # key of the train task whose model drives a coreset, or None
    options: dict[str, Any]


class EvaluateParams(TaskParams):
    """Score a trained model on the test sets of ``datasets``."""

    kind: ClassVar[str] = "evaluate"
    model: str  # key of the train task
    datasets: list[str]


class MergeParams(TaskParams):
    """Merge the models of train tasks ``a`` and ``b`` with ``method`` on ``data``."""

    kind: ClassVar[str] = "merge"
    optional: ClassVar[tuple[str, ...]] = ("finetune", "finetune_options", "seeded", "finisher_recipe")
    a: str  # train task keys
    b: str
    pair: list[str]  # the two source dataset specs
    eval: list[str]
    seed: int
    method: str
    lam: float
    data: list[str]  # merge data specs (or reduced_ref(...)); empty: none
    options: dict[str, Any]
    curve: bool
    finetune: str | None = None
    finetune_options: dict[str, Any] | None = None
    # True when ``seed`` is not 0 and reaches a method that used seed 0 before seeds were
    # forwarded in one place (wm, pleas, zipit): the marker changes those runs' keys, so a store
    # never mixes their old results with new ones (seed-0 runs keep their keys).
    seeded: bool | None = None
    # The finisher's default recipe (``merge.distill.RECIPE``) when a finisher runs: unset
    # finisher options mean what that version's defaults say, so a change of defaults changes
    # the key instead of reusing a run of the old ones.
    finisher_recipe: int | None = None


PARAMS: dict[str, type[TaskParams]] = {p.kind: p for p in (TrainParams, ReduceParams, EvaluateParams, MergeParams)}
