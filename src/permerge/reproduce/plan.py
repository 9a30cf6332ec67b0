"""Expand an experiment config into tasks, grouped into stages by their dependencies.

Stage 1 trains the source models (and the joint upper bound); stage 2 reduces each source
dataset with each method (coresets read features from that dataset's source model); stage 3
merges and evaluates. Every row of the final table comes from exactly one stage-3 task (or
the joint training task) and carries its ``row`` description. The parameters of each task
are the typed classes of :mod:`.params`, which the runners in :mod:`.tasks` read back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..data import parse_spec
from ..merge.core import options_class
from ..merge.distill import RECIPE
from ..reduce import available_methods
from .config import DataKind, ExperimentConfig, MergeEntry
from .params import EvaluateParams, MergeParams, ReduceParams, TaskParams, TrainParams, reduced_ref
from .tasks import Task


@dataclass
class Plan:
    config: ExperimentConfig
    stages: list[list[Task]] = field(default_factory=list)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # task key -> table row identity

    @property
    def tasks(self) -> list[Task]:
        return [t for s in self.stages for t in s]


@dataclass(frozen=True)
class MergeDataChoice:
    """One kind of merge data of a pair: what a merge task is given, and what it waits for."""

    kind: DataKind
    specs: list[str]  # [A's, B's] dataset specs (or reduced-task refs); empty for none
    deps: tuple[str, ...] = ()  # reduce task keys
    ipc: int | None = None


def task(params: TaskParams, *, deps: tuple[str, ...] = (), label: str = "") -> Task:
    """The task of typed ``params`` (its key hashes ``params.to_dict()``)."""
    return Task(params.kind, params.to_dict(), deps=deps, label=label)


def _full_spec(spec: str, per_class: int | None) -> str:
    base = str(parse_spec(spec).without_sampling())
    return f"{base}@{per_class}" if per_class else base


@dataclass
class _Builder:
    """The plan under construction: tasks of each stage by key (a task planned twice is one)."""

    cfg: ExperimentConfig
    plan: Plan
    trains: dict[str, Task] = field(default_factory=dict)
    reduces: dict[str, Task] = field(default_factory=dict)
    finals: dict[str, Task] = field(default_factory=dict)

    def train(
        self, datasets: list[str], seed: int, opts: dict[str, Any], eval_on: list[str] | None, label: str
    ) -> Task:
        params = TrainParams(
            datasets=datasets,
            model=self.cfg.model,
            seed=seed,
            train=opts,
            eval=eval_on or None,
            model_args=dict(self.cfg.model_args) or None,  # a user factory's arguments
        )
        t = task(params, label=label)
        self.trains.setdefault(t.key, t)
        return t

    def final(self, t: Task, **row: Any) -> None:
        self.finals.setdefault(t.key, t)
        self.plan.rows[t.key] = row


def make_plan(cfg: ExperimentConfig) -> Plan:
    """Every task of the grid, in three stages: train; reduce; merge / evaluate."""
    b = _Builder(cfg, Plan(cfg))
    for a_spec, b_spec in cfg.pairs:
        for seed in cfg.seeds:
            _plan_pair_seed(b, a_spec, b_spec, seed)
    stages = (list(b.trains.values()), list(b.reduces.values()), list(b.finals.values()))
    b.plan.stages = [s for s in stages if s]
    return b.plan


def _plan_pair_seed(b: _Builder, a_spec: str, b_spec: str, seed: int) -> None:
    cfg, pair = b.cfg, [a_spec, b_spec]
    name = f"{a_spec} vs {b_spec}"
    ta = b.train([a_spec], seed, dict(cfg.train), None, f"train {a_spec} seed {seed}")
    tb = b.train([b_spec], seed + cfg.b_seed_offset, dict(cfg.train), None, f"train {b_spec} seed {seed}")
    row = {"pair": name, "dataset_a": a_spec, "dataset_b": b_spec, "seed": seed}
    _plan_baselines(b, ta, tb, pair, seed, row)
    choices: dict[str, MergeDataChoice] = {
        "none": MergeDataChoice("none", []),
        "full": MergeDataChoice("full", [_full_spec(s, cfg.full_data_per_class) for s in pair]),
    }
    choices.update(_plan_reductions(b, ta, tb, pair, seed, row))
    for entry in cfg.merges:
        for kind in entry.data:
            for dlabel, choice in choices.items():
                if choice.kind == kind:
                    _plan_merge(b, entry, ta, tb, pair, seed, dlabel, choice, row)


def _plan_baselines(b: _Builder, ta: Task, tb: Task, pair: list[str], seed: int, row: dict[str, Any]) -> None:
    """Stage 1 and 3 rows that merge nothing: each source model, and the joint upper bound."""
    cfg, name = b.cfg, row["pair"]
    if cfg.baselines.sources:
        for side, t in (("source A", ta), ("source B", tb)):
            ev = task(EvaluateParams(model=t.key, datasets=pair), deps=(t.key,), label=f"{side} {name}")
            b.final(ev, **row, method=side, data="-", ipc=None)
    if cfg.baselines.joint:
        joint_opts = {**cfg.train, **cfg.baselines.joint_train}
        tj = b.train(pair, seed, joint_opts, pair, f"joint {name} seed {seed}")
        b.plan.rows[tj.key] = {**row, "method": "joint", "data": "full", "ipc": None}


def _plan_reductions(
    b: _Builder, ta: Task, tb: Task, pair: list[str], seed: int, row: dict[str, Any]
) -> dict[str, MergeDataChoice]:
    """Stage 2: each source reduced by each method at each ipc (and the reduced-only rows)."""
    cfg, out = b.cfg, {}
    for method in cfg.reduce.methods:
        # Coresets select by the source model's features/scores; condensation matches with
        # freshly initialised networks (its own 'net' option).
        use_model = cfg.reduce.use_source_model and available_methods()[method].kind == "coreset"
        for ipc in cfg.reduce.ipcs:
            keys = []
            for spec, src in zip(pair, (ta, tb), strict=True):
                params = ReduceParams(
                    dataset=str(parse_spec(spec).without_sampling()),
                    method=method,
                    ipc=ipc,
                    seed=seed,
                    model=src.key if use_model else None,
                    options=cfg.reduce.options.get(method, {}),
                )
                rt = task(params, deps=(src.key,) if use_model else (), label=f"reduce {spec} {method}@{ipc}")
                b.reduces.setdefault(rt.key, rt)
                keys.append(rt.key)
            refs = [reduced_ref(k) for k in keys]
            out[f"{method}@{ipc}"] = MergeDataChoice("reduced", refs, tuple(keys), ipc)
            if cfg.baselines.reduced_only:
                params_r = TrainParams(
                    datasets=refs, model=cfg.model, seed=seed, train=cfg.baselines.reduced_only_train, eval=pair
                )
                label = f"reduced-only {method}@{ipc} {row['pair']} seed {seed}"
                tr = task(params_r, deps=tuple(keys), label=label)
                b.final(tr, **row, method="reduced-only", data=f"{method}@{ipc}", ipc=ipc)
    return out


def _plan_merge(
    b: _Builder,
    entry: MergeEntry,
    ta: Task,
    tb: Task,
    pair: list[str],
    seed: int,
    dlabel: str,
    choice: MergeDataChoice,
    row: dict[str, Any],
) -> None:
    """Stage 3: one merge of the pair's models on one kind of merge data."""
    reduced = choice.kind == "reduced"
    params = MergeParams(
        a=ta.key,
        b=tb.key,
        pair=pair,
        eval=pair,
        seed=seed,
        method=entry.method,
        lam=entry.lam,
        data=choice.specs,
        options=(entry.reduced_options or entry.options) if reduced else entry.options,
        curve=entry.curve and seed == b.cfg.seeds[0] and not reduced,
        # absent unless set: earlier runs keep their keys
        finetune=entry.finetune if entry.finetune != "none" else None,
        finetune_options=entry.finetune_options if entry.finetune != "none" else None,
        seeded=True if seed != 0 and _newly_seeded(entry.method) else None,
        finisher_recipe=RECIPE if entry.finetune != "none" else None,
    )
    label = f"{entry.label} [{dlabel}] {row['pair']} seed {seed}"
    mt = task(params, deps=(ta.key, tb.key, *choice.deps), label=label)
    b.final(mt, **row, method=entry.label, data=dlabel, ipc=choice.ipc)


def _newly_seeded(method: str) -> bool:
    """Whether the run's seed reaches ``method`` only since seeds are forwarded in one place
    (it has a ``seed`` option; ste, am and the finisher were already given the seed)."""
    cls = options_class(method)
    return method not in ("ste", "am") and cls is not None and "seed" in cls.model_fields
