"""Choose the distillation finisher's recipe on a validation split (never on a test set).

Merges a trained pair (weight matching), then distils with each candidate setting on the merge
data and scores the result on the *validation* parts of both training sets (the 1/12 that
``permerge train`` holds out, minus any merge image). Test accuracy is printed for information
only. Used to set ``DistillOptions`` defaults (docs/RESULTS.md §8).

    python benchmarks/distill_recipe.py runs/mnist0 runs/fmnist1 --data mnist@10 fashion-mnist@10 \
        --grid steps=600,1500 lr=3e-4,1e-3 temperature=2,4
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import time

import torch

from permerge.checkpoint import load_checkpoint
from permerge.data import load_dataset
from permerge.data.mergedata import MergeData
from permerge.merge import merge_models
from permerge.merge.distill import DistillOptions, distill
from permerge.train import evaluate_many, train_val_split


def parse_grid(items: list[str]) -> list[dict[str, object]]:
    keys, values = [], []
    for it in items:
        k, v = it.split("=", 1)
        keys.append(k)
        values.append(
            [json.loads(x) if x[0].isdigit() or x[0] == "-" or x in ("true", "false") else x for x in v.split(",")]
        )
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--method", default="wm")
    p.add_argument("--grid", nargs="*", default=[])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    a, b = load_checkpoint(args.a), load_checkpoint(args.b)
    md = MergeData(tuple(load_dataset(s, "train", seed=args.seed) for s in args.data))
    vals, tests = [], []
    for ck in (a, b):
        full = load_dataset(ck.dataset, "train")
        val = train_val_split(full, 1 / 12, seed=0).val
        assert val is not None
        vals.append(val)
        tests.append(load_dataset(ck.dataset, "test"))
    start = merge_models(a, b, method=args.method, data=md, progress=False).model
    print(f"start {args.method}: val {evaluate_many(start, vals)['mean_acc']:.2f}")
    for name, ck in (("A", a), ("B", b)):
        ev = evaluate_many(ck.model, vals)["per_dataset"]
        print(f"teacher {name}: val " + " / ".join(f"{x['acc']:.2f}" for x in ev.values()))
    for setting in parse_grid(args.grid) or [{}]:
        opts = DistillOptions(**{**setting, "seed": args.seed})
        student = copy.deepcopy(start)
        t0 = time.perf_counter()
        info = distill(student, [a.model, b.model], md, opts, progress=False)
        v = evaluate_many(student, vals)["mean_acc"]
        te = evaluate_many(student, tests)["mean_acc"]
        print(
            f"{setting} steps={info['steps']} aug={info['augment']}: val {v:.2f}  (test {te:.2f})  "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
