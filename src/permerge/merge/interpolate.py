"""Interpolation curves between two models and the loss/accuracy barrier.

Lines: ``naive`` (B as is), ``aligned`` (B permuted by the chosen method) and ``ensemble``
(output averaging). Barrier = loss at lam=0.5 minus the mean of the endpoint losses (and
for accuracy: mean endpoint accuracy minus the midpoint accuracy), on the mean over the
evaluation datasets.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .._io import atomic_path
from ..data import ImageSet
from ..data.mergedata import MergeData
from ..train import evaluate
from .core import interpolate_pair
from .ensemble import OutputEnsemble


def curve(
    model_a: nn.Module,
    model_b: nn.Module,
    lams: Sequence[float],
    test_sets: Sequence[ImageSet],
    *,
    kind: str,
    data: MergeData | None,
    bn_reset: bool,
    use_repair: bool = False,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    rows = []
    for lam in lams:
        if kind == "ensemble":
            m: nn.Module = OutputEnsemble(model_a, model_b, lam).eval()
        else:
            m = interpolate_pair(model_a, model_b, lam, data, bn_reset=bn_reset, use_repair=use_repair, device=device)
        per = {t.name: evaluate(m, t, device=device) for t in test_sets}
        rows.append(
            {
                "line": kind,
                "lam": lam,
                **{f"acc[{k}]": v["acc"] for k, v in per.items()},
                **{f"loss[{k}]": v["loss"] for k, v in per.items()},
                "mean_acc": sum(v["acc"] for v in per.values()) / len(per),
                "mean_loss": sum(v["loss"] for v in per.values()) / len(per),
            }
        )
    return rows


def barrier(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Barrier of one line; needs lam 0, 0.5 and 1 among its points."""
    by = {round(r["lam"], 6): r for r in rows}
    if not {0.0, 0.5, 1.0} <= set(by):
        raise ValueError("barrier needs lam = 0, 0.5 and 1 (use an odd number of points)")
    ends_loss = (by[0.0]["mean_loss"] + by[1.0]["mean_loss"]) / 2
    ends_acc = (by[0.0]["mean_acc"] + by[1.0]["mean_acc"]) / 2
    return {
        "loss_barrier": by[0.5]["mean_loss"] - ends_loss,
        "acc_barrier": ends_acc - by[0.5]["mean_acc"],
        "mid_mean_acc": by[0.5]["mean_acc"],
    }


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [k[4:-1] for k in rows[0] if k.startswith("acc[")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"naive": "tab:gray", "aligned": "tab:blue", "ensemble": "tab:orange"}
    styles = ["--", ":", "-."]
    for line in dict.fromkeys(r["line"] for r in rows):
        rs = [r for r in rows if r["line"] == line]
        lam = [r["lam"] for r in rs]
        c = colors.get(line)
        axes[0].plot(lam, [r["mean_acc"] for r in rs], color=c, lw=2.2, label=f"{line} (mean)")
        axes[1].plot(lam, [r["mean_loss"] for r in rs], color=c, lw=2.2, label=f"{line} (mean)")
        for d, st in zip(datasets, styles * 4, strict=False):
            axes[0].plot(lam, [r[f"acc[{d}]"] for r in rs], color=c, ls=st, lw=1, alpha=0.7, label=f"{line}: {d}")
            axes[1].plot(lam, [r[f"loss[{d}]"] for r in rs], color=c, ls=st, lw=1, alpha=0.7)
    axes[0].set(xlabel="lambda (0 = model A, 1 = model B)", ylabel="test accuracy (%)", title=title)
    axes[1].set(xlabel="lambda", ylabel="test loss", yscale="log")
    axes[0].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
