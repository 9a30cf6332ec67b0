"""Weight-matching speed and quality: permerge vs the pip package ``rebasin`` (snimu).

Same two weight sets for both tools, same run, same threads. Prints wall time and the L2
distance between A and the permuted B before/after. Install the peer with
``pip install rebasin`` (it is not a permerge dependency); without it only permerge runs.

    python benchmarks/weight_matching.py [--threads 2] [--repeats 3] [--trained-mlp DATA_ROOT]

Models are freshly initialised from two seeds unless ``--trained-mlp`` is given, in which
case the wide MLPs are first trained for one epoch on MNIST and on Fashion-MNIST.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from permerge.align import l2_distance, weight_matching
from permerge.models import build_model, model_config_for
from permerge.permutation.fx import derive_spec
from permerge.permutation.spec import apply_permutation


def _pair(arch: str, shape: tuple[int, int, int], trained_root: str | None) -> tuple[torch.nn.Module, torch.nn.Module]:
    cfg = model_config_for(arch, shape)
    models = []
    for seed, ds in ((0, "mnist"), (1, "fashion-mnist")):
        torch.manual_seed(seed)
        m = build_model(cfg)
        if trained_root and arch.startswith("mlp"):
            from permerge.data import load_dataset
            from permerge.train import TrainConfig, train_model

            train_model(
                m, load_dataset(ds, data_root=trained_root), TrainConfig(epochs=1, lr=0.05), seed=seed, progress=False
            )
        models.append(m.eval())
    return models[0], models[1]


def run_permerge(a: torch.nn.Module, b: torch.nn.Module, shape: tuple[int, int, int]) -> tuple[float, float]:
    t0 = time.perf_counter()
    spec = derive_spec(a, torch.zeros(1, *shape))
    perm, _ = weight_matching(spec, a.state_dict(), b.state_dict(), seed=0)
    seconds = time.perf_counter() - t0
    return seconds, l2_distance(a.state_dict(), apply_permutation(spec, perm, b.state_dict()))


def run_rebasin(a: torch.nn.Module, b: torch.nn.Module, shape: tuple[int, int, int]) -> tuple[float, float] | str:
    try:
        from rebasin import PermutationCoordinateDescent
    except ImportError:
        return "not installed (pip install rebasin)"
    b = copy.deepcopy(b)
    try:
        t0 = time.perf_counter()
        pcd = PermutationCoordinateDescent(a, b, torch.zeros(1, *shape))
        pcd.rebasin()
        seconds = time.perf_counter() - t0
    except Exception as e:  # a peer's failure is a result to report, not a crash
        return f"failed: {type(e).__name__}: {str(e)[:80]}"
    return seconds, l2_distance(a.state_dict(), b.state_dict())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trained-mlp", metavar="DATA_ROOT", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = [("mlp:2048x2048x2048", (1, 28, 28)), ("resnet20:x4", (3, 32, 32))]
    results = []
    for arch, shape in cases:
        a, b = _pair(arch, shape, args.trained_mlp)
        before = l2_distance(a.state_dict(), b.state_dict())
        ours = [run_permerge(a, b, shape) for _ in range(args.repeats)]
        peer = [run_rebasin(a, b, shape) for _ in range(args.repeats)]
        row = {
            "model": arch,
            "l2_before": before,
            "permerge_seconds": min(s for s, _ in ours),
            "permerge_l2_after": ours[0][1],
        }
        if isinstance(peer[0], tuple):
            row["rebasin_seconds"] = min(p[0] for p in peer if isinstance(p, tuple))
            row["rebasin_l2_after"] = peer[0][1]
            row["speedup"] = row["rebasin_seconds"] / row["permerge_seconds"]
        else:
            row["rebasin"] = peer[0]
        results.append(row)
        if not args.json:
            print(
                f"{arch:22s} L2 before {before:9.2f} | permerge {row['permerge_seconds']:7.2f}s L2 "
                f"{row['permerge_l2_after']:9.2f} | "
                + (
                    f"rebasin {row['rebasin_seconds']:7.2f}s L2 {row['rebasin_l2_after']:9.2f} | "
                    f"speedup x{row['speedup']:.1f}"
                    if "speedup" in row
                    else f"rebasin {row['rebasin']}"
                )
            )
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
