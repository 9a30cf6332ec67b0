"""PLeaS' least-squares refit on real models: time, fit and accuracy per ``positions`` setting.

Merges one pair with ``--method pleas`` once per ``--positions`` value (patch rows each image
gives each conv layer; ``all`` keeps every position, ``default`` passes no option, so the same
command also times code from before the option existed) and prints the merger's seconds, the
mean relative residual of the refit's layers and, for information only, the mean test accuracy
of the two datasets. Nothing here is chosen on the test accuracy: the refit's residuals say
whether sampling changed the fit (docs/RESULTS.md §8i).

    PERMERGE_DATA=../shared/data python benchmarks/pleas_refit.py A B --data "cifar10[0-4]@50" "cifar10[5-9]@50" \
        --positions default all 16 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from permerge.checkpoint import load_checkpoint
from permerge.data import load_dataset
from permerge.data.mergedata import MergeData
from permerge.merge.core import merge_models
from permerge.train import evaluate_many


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--data", nargs=2, default=["cifar10[0-4]@50", "cifar10[5-9]@50"])
    ap.add_argument("--positions", nargs="+", default=["default", "all"])
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0, help="sampling seed of the merge data")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = MergeData(tuple(load_dataset(s, "train", seed=args.seed) for s in args.data))
    a, b = load_checkpoint(args.a), load_checkpoint(args.b)
    tests = [load_dataset(str(ck.dataset), "test") for ck in (a, b)]
    for p in args.positions:
        options: dict[str, object] = {"width": args.width}
        if p != "default":
            options["positions"] = 10**9 if p == "all" else int(p)
        t0 = time.perf_counter()
        merged = merge_models(a, b, method="pleas", data=data, options=options, progress=False)
        seconds = time.perf_counter() - t0
        residuals = merged.info["merger"]["refit_residual"]
        acc = evaluate_many(merged.model, tests)["mean_acc"]
        print(
            f"positions {p}: {seconds:.1f} s (merger {merged.info['merger']['seconds']:.1f} s), "
            f"mean residual {statistics.mean(residuals.values()):.4f} over {len(residuals)} layers, "
            f"test mean acc (information) {acc:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
