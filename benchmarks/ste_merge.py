"""STE merge of MNIST vs Fashion-MNIST MLPs (3x512) on 10 real images per class of each.

Target (issue 3): mean test accuracy >= 85 in <= 60 s on 2 cores. Source models are trained
once (10 epochs, paper recipe otherwise) and cached in ``benchmarks/.cache``; model A uses
init seed ``s``, model B ``s + 1`` and the merge data is sampled with seed ``s``. Nothing is
chosen on the test sets: STE keeps the permutation with the lowest merge-data loss.

    PERMERGE_DATA=../shared/data python benchmarks/ste_merge.py --seeds 0 1 2 --steps 500
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from permerge import api
from permerge.checkpoint import load_checkpoint

CACHE = Path(__file__).resolve().parent / ".cache"


def source_model(dataset: str, seed: int, epochs: int) -> Path:
    out = CACHE / f"{dataset}-mlp-s{seed}-e{epochs}"
    if not (out / "model.json").exists():
        api.train(dataset, model="mlp", seed=seed, epochs=epochs, out=out, progress=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=10, help="source-model training epochs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["average", "wm", "ste"])
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:
        a = load_checkpoint(source_model("mnist", seed, args.epochs))
        b = load_checkpoint(source_model("fashion-mnist", seed + 1, args.epochs))
        for method in args.methods:
            data = [f"mnist@{args.ipc}", f"fashion-mnist@{args.ipc}"] if method in ("ste", "am") else None
            opts = {"steps": args.steps, "lr": args.lr} if method == "ste" else None
            t0, c0 = time.perf_counter(), time.process_time()
            r = api.merge(a, b, method=method, data=data, options=opts, seed=seed, progress=False)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            per = {k: v["acc"] for k, v in r["scores"]["per_dataset"].items()}
            rows.append(
                {
                    "seed": seed,
                    "method": method,
                    "mean_acc": r["scores"]["mean_acc"],
                    **per,
                    "merge_seconds": r["info"]["seconds"],
                    "wall_seconds": wall,
                    "cpu_seconds": cpu,  # all threads; on a shared machine the honest measure of work
                }
            )
            print(
                f"seed {seed} {method:8s} mean {r['scores']['mean_acc']:6.2f}  "
                + "  ".join(f"{k} {v:5.1f}" for k, v in per.items())
                + f"  {r['info']['seconds']:6.1f}s (end to end {wall:.1f}s wall, {cpu:.1f}s CPU)",
                flush=True,
            )
    print(
        f"\nsummary over seeds {args.seeds} (STE: {args.steps} steps, lr {args.lr}, {args.ipc}/class, "
        f"{args.threads} threads)"
    )
    for method in args.methods:
        accs = [r["mean_acc"] for r in rows if r["method"] == method]
        secs = [r["merge_seconds"] for r in rows if r["method"] == method]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"  {method:8s} mean acc {statistics.mean(accs):6.2f} +- {sd:4.2f}   time {statistics.mean(secs):6.1f}s")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
