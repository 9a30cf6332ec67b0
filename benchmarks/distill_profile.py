"""Where a distillation-finisher step spends its time (torch profiler), MNIST vs Fashion-MNIST.

By default merges nothing: the student is a copy of model A, taught by both models on 10 real
images per class, with the default finisher settings (no hints: no units are paired). With
``--merge wm`` the student is the weight-matching merge and the teachers and feature hints are
what ``permerge merge --finetune kd`` uses (hints on, for small merge data). Prints ms per step
and the top operators by self CPU time (docs/RESULTS.md §8b).

    PERMERGE_DATA=../shared/data python benchmarks/distill_profile.py runs/mnist runs/fmnist --steps 100 --threads 2
    PERMERGE_DATA=../shared/data python benchmarks/distill_profile.py A B --data "cifar10[0-4]@50" "cifar10[5-9]@50" \
        --merge wm --precision bf16 --hint 0 10 --steps 20 --threads 1 --no-profile
"""

from __future__ import annotations

import argparse
import copy

import torch

from permerge.checkpoint import load_checkpoint
from permerge.data import load_dataset
from permerge.data.mergedata import MergeData
from permerge.merge.core import finisher_teachers, merge_models
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
    ap.add_argument("--merge", choices=["none", "wm"], default="none", help="wm: the student is the WM merge")
    ap.add_argument("--hint", type=float, nargs="+", default=[None], help="hint weights to time in turn (--merge wm)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    a, b = load_checkpoint(args.a), load_checkpoint(args.b)
    data = MergeData(tuple(load_dataset(s, "train", seed=0) for s in args.data))
    merged = merge_models(a, b, method="wm", data=data, progress=False) if args.merge == "wm" else None
    for hint in args.hint:
        opts = DistillOptions(steps=args.steps, precision=args.precision, hint=hint)
        if merged is None:
            nodes: tuple[str, ...] = ()
            student, teachers = copy.deepcopy(a.model), [a.model, b.model]
        else:
            student, (teachers, nodes) = copy.deepcopy(merged.model), finisher_teachers(a, b, merged, opts, data)
        if args.no_profile:
            info = distill(student, teachers, data, opts, progress=False, hint_nodes=nodes)
        else:
            with torch.profiler.profile() as prof:
                info = distill(student, teachers, data, opts, progress=False, hint_nodes=nodes)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
        print(
            f"hint {info['hint']:g} ({len(nodes)} probes): {1000 * info['seconds'] / args.steps:.1f} ms/step "
            f"over {args.steps} steps, {args.threads} threads"
        )


if __name__ == "__main__":
    main()
