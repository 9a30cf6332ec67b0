"""Choose the distillation finisher's recipe on a validation split (never on a test set).

Merges a trained pair (weight matching), then distils with each candidate setting on the merge
data and scores the result on the *validation* parts of both training sets (the 1/12 that
``permerge train`` holds out; with ``--disjoint`` no merge image is in it). Test accuracy is printed for information
only. Used to set ``DistillOptions`` defaults (docs/RESULTS.md §8).

    python benchmarks/distill_recipe.py runs/mnist0 runs/fmnist1 --data mnist@10 fashion-mnist@10 \
        --grid steps=600,1500 lr=3e-4,1e-3 temperature=2,4

More pairs (``--pair A B``, repeatable) give a mean over pairs per setting. A full training set
as merge data (a spec without ``@``) is used without its validation part, so the score stays
on images the finisher never saw; ``--disjoint`` does the same for ``@K`` samples (needed for
large ones such as the grids' capped "full" data, ``cifar10[0-4]@1000``).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
import time

import torch

from permerge.checkpoint import load_checkpoint
from permerge.data import ImageSet, load_dataset
from permerge.data.mergedata import MergeData
from permerge.data.spec import balanced_sample, parse_spec
from permerge.merge import merge_models, reset_bn
from permerge.merge.core import finisher_teachers, sources_augmented
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
    p.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"), help="more pairs")
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--method", default="wm")
    p.add_argument("--lam", type=float, default=0.5, help="the start's interpolation weight toward B")
    p.add_argument("--grid", nargs="*", default=[])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--disjoint", action="store_true", help="draw @K merge sets from the training part only (not validation)"
    )
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    settings = parse_grid(args.grid) or [{}]
    scores: dict[int, list[float]] = {i: [] for i in range(len(settings))}
    for pa, pb in [(args.a, args.b), *args.pair]:
        for i, v in enumerate(run_pair(pa, pb, args, settings)):
            scores[i].append(v)
    if len(scores[0]) > 1:
        for i, setting in enumerate(settings):
            vs = scores[i]
            print(f"MEAN {setting}: val {statistics.mean(vs):.2f} +- {statistics.stdev(vs):.2f} over {len(vs)} pairs")


def merge_source(spec: str, seed: int, disjoint: bool = False) -> ImageSet:
    """The merge set of ``spec``. ``disjoint``: an ``@K`` sample is drawn from the training part
    only, so no merge image is in the validation part it is scored on (without it, about 1/12
    of the merge images are: negligible at 10 per class, a fifth of the validation part at
    1,000 per class)."""
    s = parse_spec(spec)
    if ":" in spec or (s.per_class is not None and not disjoint):
        return load_dataset(spec, "train", seed=seed)
    train = train_val_split(load_dataset(str(s.without_sampling()), "train"), 1 / 12, seed=0).train
    return train if s.per_class is None else balanced_sample(train, s.per_class, seed)


def run_pair(pa: str, pb: str, args: argparse.Namespace, settings: list[dict[str, object]]) -> list[float]:
    a, b = load_checkpoint(pa), load_checkpoint(pb)
    md = MergeData(tuple(merge_source(s, args.seed, args.disjoint) for s in args.data))
    vals, tests = [], []
    for ck in (a, b):
        full = load_dataset(ck.dataset, "train")
        val = train_val_split(full, 1 / 12, seed=0).val
        assert val is not None
        vals.append(val)
        tests.append(load_dataset(ck.dataset, "test"))
    merged = merge_models(a, b, method=args.method, lam=args.lam, data=md, progress=False)
    start = merged.model
    print(f"pair {pa} {pb}; start {args.method} lam {args.lam:g}: val {evaluate_many(start, vals)['mean_acc']:.2f}")
    for name, ck in (("A", a), ("B", b)):
        ev = evaluate_many(ck.model, vals)["per_dataset"]
        print(f"teacher {name}: val " + " / ".join(f"{x['acc']:.2f}" for x in ev.values()))
    out = []
    for setting in settings:
        opts = DistillOptions(**{**setting, "seed": args.seed})
        student = copy.deepcopy(start)
        t0 = time.perf_counter()
        teachers, nodes = finisher_teachers(a, b, merged, opts, md)  # as merge_models does
        augmented = sources_augmented(a, b)
        info = distill(student, teachers, md, opts, progress=False, hint_nodes=nodes, sources_augmented=augmented)
        student = reset_bn(student, md.combined())
        ev = evaluate_many(student, vals)
        v, per = ev["mean_acc"], " / ".join(f"{x['acc']:.2f}" for x in ev["per_dataset"].values())
        te = evaluate_many(student, tests)["mean_acc"]
        out.append(v)
        print(
            f"{setting} steps={info['steps']} aug={info['augment']} hint={info['hint']}: "
            f"val {v:.2f} ({per})  (test {te:.2f})  "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )
    return out


if __name__ == "__main__":
    main()
