"""Where a distillation-finisher step spends its time (torch profiler), MNIST vs Fashion-MNIST.

Merges nothing: the student is a copy of model A, taught by both models on 10 real images per
class, with the default finisher settings. Prints ms per step and the top operators by self CPU
time (docs/RESULTS.md §8b).

    PERMERGE_DATA=../shared/data python benchmarks/distill_profile.py runs/mnist runs/fmnist --steps 100 --threads 2
"""

from __future__ import annotations

import argparse
import copy

import torch

from permerge.checkpoint import load_checkpoint
from permerge.data import load_dataset
from permerge.data.mergedata import MergeData
from permerge.merge.distill import DistillOptions, distill


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--data", nargs="+", default=["mnist@10", "fashion-mnist@10"])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--no-profile", action="store_true", help="time only (the profiler adds overhead)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    a, b = load_checkpoint(args.a), load_checkpoint(args.b)
    data = MergeData(tuple(load_dataset(s, "train", seed=0) for s in args.data))
    student = copy.deepcopy(a.model)
    opts = DistillOptions(steps=args.steps, precision=args.precision)
    if args.no_profile:
        info = distill(student, [a.model, b.model], data, opts, progress=False)
    else:
        with torch.profiler.profile() as prof:
            info = distill(student, [a.model, b.model], data, opts, progress=False)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    print(f"{1000 * info['seconds'] / args.steps:.1f} ms/step over {args.steps} steps, {args.threads} threads")


if __name__ == "__main__":
    main()
