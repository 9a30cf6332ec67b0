"""Why are DM images worse merge data than random real images on split CIFAR-10?

On BatchNorm-free MLPs (MNIST vs Fashion-MNIST) DM condensed images are the best 10-per-class
merge data; on split CIFAR-10 (ResNet-20 with BatchNorm) they are worse than the same number of
random real images. A merged BN network needs its running statistics re-estimated on *some*
data, and in the grid that data is the merge data itself. This script separates the two roles:
it learns each STE permutation on one set (DM or random, 10 per class, the grid's own sets and
options) and then re-estimates BatchNorm on each of: the DM set, the random set, and 1,000 real
training images per class. If the BN data explains the gap, "STE on DM, BN on real" recovers
the random-data score.

It reads the source models and reduced sets of a `permerge reproduce split-cifar10` store (run
that first) and runs nothing on the test sets except the final evaluation of each fixed
combination: no choice is made on them.

    PERMERGE_DATA=../shared/data python benchmarks/cifar_bn_data.py --store runs/reproduce/split-cifar10
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from permerge import api
from permerge.data import parse_spec
from permerge.merge.core import aligned_copy, interpolate_pair, merge_models
from permerge.reproduce.config import ExperimentConfig, load_experiment
from permerge.reproduce.plan import Plan, make_plan
from permerge.reproduce.tasks import RunContext
from permerge.train import evaluate_many


def _keys(cfg: ExperimentConfig, plan: Plan, seed: int) -> dict[str, str]:
    """Task keys of the grid's seed-``seed`` source models and 10-per-class reduced sets."""
    out: dict[str, str] = {}
    for t in plan.tasks:
        p = t.params
        if t.kind == "train" and len(p["datasets"]) == 1 and p["seed"] in (seed, seed + cfg.b_seed_offset):
            out["a" if p["seed"] == seed else "b"] = t.key
        if t.kind == "reduce" and p["seed"] == seed and p["ipc"] == 10 and p["method"] in ("dm", "random"):
            side = "a" if p["dataset"] == str(parse_spec(cfg.pairs[0][0]).without_sampling()) else "b"
            out[f"{p['method']}_{side}"] = t.key
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, required=True, help="the reproduce store (holds runs/)")
    ap.add_argument("--experiment", default="split-cifar10")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_experiment(args.experiment)
    plan = make_plan(cfg)
    ste_opts = next(m for m in cfg.merges if m.method == "ste")
    opts = dict(ste_opts.reduced_options or ste_opts.options)
    ctx = RunContext(root=str(args.store.resolve()), data_root=args.data_root)
    pair = [str(s) for s in cfg.pairs[0]]
    tests = api.test_sets(pair, args.data_root)
    rows = []
    for seed in args.seeds:
        k = _keys(cfg, plan, seed)
        a = api.as_checkpoint(ctx.task_dir("train", k["a"]))
        b = api.as_checkpoint(ctx.task_dir("train", k["b"]))

        def reduced(method: str, k: dict[str, str] = k) -> list[str]:
            return [f"reduced:{ctx.task_dir('reduce', k[f'{method}_{s}']) / 'reduced.safetensors'}" for s in "ab"]

        bn_sets = {
            "dm@10": api.load_merge_data(reduced("dm"), data_root=args.data_root, seed=seed),
            "random@10": api.load_merge_data(reduced("random"), data_root=args.data_root, seed=seed),
            "real 1000/class": api.load_merge_data(
                [f"{s}@{cfg.full_data_per_class or 1000}" for s in pair], data_root=args.data_root, seed=seed
            ),
        }
        for ste_data in ("dm@10", "random@10"):
            md = bn_sets[ste_data]
            r = merge_models(a, b, method="ste", data=md, options={**opts, "seed": seed}, progress=False)
            assert r.spec is not None and r.perm is not None
            aligned = aligned_copy(b, r.spec, r.perm)
            for bn_name, bn_data in bn_sets.items():
                merged = interpolate_pair(a.model, aligned, r.lam, bn_data, bn_reset=True, use_repair=False)
                scores = evaluate_many(merged, tests)
                row = {"seed": seed, "ste_data": ste_data, "bn_data": bn_name, "mean_acc": scores["mean_acc"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\nSTE data   | BN data          | mean acc (mean ± std over seeds)")
    for ste_data in ("dm@10", "random@10"):
        for bn_name in ("dm@10", "random@10", "real 1000/class"):
            v = [r["mean_acc"] for r in rows if r["ste_data"] == ste_data and r["bn_data"] == bn_name]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            print(f"{ste_data:10} | {bn_name:16} | {statistics.mean(v):.2f} ± {sd:.2f} (n={len(v)})")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
