"""ZipIt! against the reference implementation's numbers (issue 19), over seed pairs.

The issue ran gstoica27/ZipIt at 1b6ca40 on one MNIST / Fashion-MNIST pair with ``mnist@10`` +
``fashion-mnist@10`` as merge data: full zip (alpha 0.3, beta 0.125) 55.71, beta 0 47.16,
partial zip of hidden layers 1-2 64.59, naive average 54.06, output ensemble 72.31. This runs
the same settings of ``--method zipit`` on each given pair (mean test accuracy of the two
datasets) and prints the mean over pairs (docs/RESULTS.md §8).

    PERMERGE_DATA=../shared/data python benchmarks/zipit_reference.py A0 B0 --pair A1 B1 --pair A2 B2
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch

from permerge.checkpoint import load_checkpoint
from permerge.data import load_dataset
from permerge.data.mergedata import MergeData
from permerge.merge.core import merge_models
from permerge.train import evaluate_many

SETTINGS: dict[str, tuple[str, dict[str, Any], float]] = {  # name: (method, options, reference)
    "average": ("average", {}, 54.06),
    "ensemble": ("ensemble", {}, 72.31),
    "zipit": ("zipit", {}, 55.71),
    "zipit beta=0": ("zipit", {"beta": 0.0}, 47.16),
    "zipit stop_layer=2": ("zipit", {"stop_layer": 2}, 64.59),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"))
    ap.add_argument("--data", nargs=2, default=["mnist@10", "fashion-mnist@10"])
    ap.add_argument("--seed", type=int, default=0, help="sampling seed of the merge data")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = MergeData(tuple(load_dataset(s, "train", seed=args.seed) for s in args.data))
    scores: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for pa, pb in [(args.a, args.b), *args.pair]:
        a, b = load_checkpoint(pa), load_checkpoint(pb)
        tests = [load_dataset(str(ck.dataset), "test") for ck in (a, b)]
        for name, (method, options, _) in SETTINGS.items():
            merged = merge_models(a, b, method=method, data=data, options=options, progress=False)
            mean_acc = evaluate_many(merged.model, tests)["mean_acc"]
            assert isinstance(mean_acc, float)
            scores[name].append(mean_acc)
        print(f"{pa} {pb}: " + " | ".join(f"{n} {v[-1]:.2f}" for n, v in scores.items()), flush=True)
    for name, vs in scores.items():
        spread = f" +- {statistics.stdev(vs):.2f}" if len(vs) > 1 else ""
        print(f"MEAN {name}: {statistics.mean(vs):.2f}{spread} over {len(vs)} pairs (reference {SETTINGS[name][2]})")


if __name__ == "__main__":
    main()
