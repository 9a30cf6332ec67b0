"""Expand an experiment config into tasks, grouped into stages by their dependencies.

Stage 1 trains the source models (and the joint upper bound); stage 2 reduces each source
dataset with each method (coresets read features from that dataset's source model); stage 3
merges and evaluates. Every row of the final table comes from exactly one stage-3 task (or
the joint training task) and carries its ``row`` description.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..data import parse_spec
from ..reduce import available_methods
from .config import ExperimentConfig
from .tasks import Task


@dataclass
class Plan:
    config: ExperimentConfig
    stages: list[list[Task]] = field(default_factory=list)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # task key -> table row identity

    @property
    def tasks(self) -> list[Task]:
        return [t for s in self.stages for t in s]


def _full_spec(spec: str, per_class: int | None) -> str:
    base = str(parse_spec(spec).without_sampling())
    return f"{base}@{per_class}" if per_class else base


def make_plan(cfg: ExperimentConfig) -> Plan:
    plan = Plan(cfg)
    train_opts = dict(cfg.train)
    trains: dict[str, Task] = {}
    reduces: dict[str, Task] = {}
    finals: dict[str, Task] = {}

    def train_task(datasets: list[str], seed: int, opts: dict[str, Any], eval_on: list[str] | None, label: str) -> Task:
        params: dict[str, Any] = {"datasets": datasets, "model": cfg.model, "seed": seed, "train": opts}
        if cfg.model_args:  # a user factory's arguments (absent otherwise: existing keys unchanged)
            params["model_args"] = dict(cfg.model_args)
        if eval_on:
            params["eval"] = eval_on
        t = Task("train", params, label=label)
        trains.setdefault(t.key, t)
        return t

    def add_row(t: Task, bucket: dict[str, Task], **row: Any) -> None:
        bucket.setdefault(t.key, t)
        plan.rows[t.key] = row

    for a_spec, b_spec in cfg.pairs:
        pair = [a_spec, b_spec]
        pair_name = f"{a_spec} vs {b_spec}"
        for seed in cfg.seeds:
            ta = train_task([a_spec], seed, train_opts, None, f"train {a_spec} seed {seed}")
            tb = train_task([b_spec], seed + cfg.b_seed_offset, train_opts, None, f"train {b_spec} seed {seed}")
            base = {"pair": pair_name, "dataset_a": a_spec, "dataset_b": b_spec, "seed": seed}
            if cfg.baselines.sources:
                for side, t in (("source A", ta), ("source B", tb)):
                    ev = Task(
                        "evaluate", {"model": t.key, "datasets": pair}, deps=(t.key,), label=f"{side} {pair_name}"
                    )
                    add_row(ev, finals, **base, method=side, data="-", ipc=None)
            if cfg.baselines.joint:
                joint_opts = {**train_opts, **cfg.baselines.joint_train}
                tj = train_task(pair, seed, joint_opts, pair, f"joint {pair_name} seed {seed}")
                plan.rows[tj.key] = {**base, "method": "joint", "data": "full", "ipc": None}

            # merge data, by label: [A spec, B spec] and the tasks they depend on
            data_sets: dict[str, tuple[str, list[str], tuple[str, ...], int | None]] = {
                "none": ("none", [], (), None),
                "full": (
                    "full",
                    [_full_spec(a_spec, cfg.full_data_per_class), _full_spec(b_spec, cfg.full_data_per_class)],
                    (),
                    None,
                ),
            }
            for method in cfg.reduce.methods:
                for ipc in cfg.reduce.ipcs:
                    keys = []
                    # Coresets select by the source model's features/scores; condensation
                    # matches with freshly initialised networks (its own 'net' option).
                    use_model = cfg.reduce.use_source_model and available_methods()[method].kind == "coreset"
                    for spec, src in ((a_spec, ta), (b_spec, tb)):
                        params = {
                            "dataset": str(parse_spec(spec).without_sampling()),
                            "method": method,
                            "ipc": ipc,
                            "seed": seed,
                            "model": src.key if use_model else None,
                            "options": cfg.reduce.options.get(method, {}),
                        }
                        rt = Task(
                            "reduce",
                            params,
                            deps=(src.key,) if use_model else (),
                            label=f"reduce {spec} {method}@{ipc}",
                        )
                        reduces.setdefault(rt.key, rt)
                        keys.append(rt.key)
                    data_sets[f"{method}@{ipc}"] = ("reduced", [f"reduced-task:{k}" for k in keys], tuple(keys), ipc)
                    if cfg.baselines.reduced_only:
                        tr = Task(
                            "train",
                            {
                                "datasets": [f"reduced-task:{k}" for k in keys],
                                "model": cfg.model,
                                "seed": seed,
                                "train": cfg.baselines.reduced_only_train,
                                "eval": pair,
                                **({"model_args": dict(cfg.model_args)} if cfg.model_args else {}),
                            },
                            deps=tuple(keys),
                            label=f"reduced-only {method}@{ipc} {pair_name} seed {seed}",
                        )
                        add_row(tr, finals, **base, method="reduced-only", data=f"{method}@{ipc}", ipc=ipc)

            for entry in cfg.merges:
                for kind in entry.data:
                    labels = [k for k, v in data_sets.items() if v[0] == kind]
                    for dlabel in labels:
                        _, specs, dep_keys, data_ipc = data_sets[dlabel]
                        opts = entry.options if kind != "reduced" else (entry.reduced_options or entry.options)
                        params = {
                            "a": ta.key,
                            "b": tb.key,
                            "pair": pair,
                            "eval": pair,
                            "seed": seed,
                            "method": entry.method,
                            "lam": entry.lam,
                            "data": specs,
                            "options": opts,
                            "curve": entry.curve and seed == cfg.seeds[0] and kind != "reduced",
                        }
                        if entry.finetune != "none":  # absent otherwise: earlier runs keep their keys
                            params["finetune"] = entry.finetune
                            params["finetune_options"] = entry.finetune_options
                        mt = Task(
                            "merge",
                            params,
                            deps=(ta.key, tb.key, *dep_keys),
                            label=f"{entry.label} [{dlabel}] {pair_name} seed {seed}",
                        )
                        add_row(mt, finals, **base, method=entry.label, data=dlabel, ipc=data_ipc)

    plan.stages = [s for s in (list(trains.values()), list(reduces.values()), list(finals.values())) if s]
    return plan
