"""Seconds per iteration of the condensation methods (MNIST, 10 images per class), seconds of
a coreset method, and where the time goes (cProfile, top functions by cumulative time).

Run it before and after a change to a method's loop, on an otherwise idle machine::

    PERMERGE_DATA=../shared/data python benchmarks/condense_profile.py --methods dm dc herding --iterations 20

Condensation: wall seconds per iteration, matching only (set-up and image saving excluded);
coresets (e.g. ``herding``, also the default initialisation of DM/DC): wall seconds of the
whole reduction. Median of ``--repeats`` runs; each method's defaults otherwise.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import torch

from permerge.data import load_dataset
from permerge.reduce import available_methods, reduce_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--methods", nargs="+", default=["dm", "dc"])
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--net", default="auto", help="matching network (auto, convnet, mlp, ...)")
    ap.add_argument("--profile", action="store_true", help="also print the cProfile top functions")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, "train")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.dataset} ipc {args.ipc}, net {args.net}")
    for method in args.methods:
        condensing = available_methods()[method].kind == "condensation"
        opts = {"iterations": args.iterations, "net": args.net} if condensing else {}
        times = []
        for _ in range(args.repeats):
            rs = reduce_dataset(data, method, args.ipc, seed=0, progress=False, **opts)
            info = rs.meta["info"]
            times.append(info["seconds_matching"] / args.iterations if condensing else rs.meta["wall_time_s"])
        runs = ", ".join(f"{x:.3f}" for x in times)
        if condensing:
            final = f"final loss {rs.meta['info']['loss_history'][-1]:.4g}"
            print(f"{method}: {statistics.median(times):.3f} s/iteration (runs: {runs}); {final}")
        else:
            print(f"{method}: {statistics.median(times):.3f} s per reduction (runs: {runs})")
        if args.profile:
            prof = cProfile.Profile()
            t0 = time.perf_counter()
            prof.enable()
            reduce_dataset(data, method, args.ipc, seed=0, progress=False, **opts)
            prof.disable()
            print(f"  profiled run: {time.perf_counter() - t0:.1f} s")
            pstats.Stats(prof).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
