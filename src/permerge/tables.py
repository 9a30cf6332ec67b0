"""Rich tables shared by the CLI and the demo."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def scores_table(title: str, rows: dict[str, dict[str, Any]], seconds: dict[str, float] | None = None) -> Table:
    """rows: name -> ``evaluate_many`` result; optional wall time per row."""
    datasets = list(dict.fromkeys(d for r in rows.values() for d in r["per_dataset"]))
    t = Table(title=title)
    t.add_column("model")
    for d in datasets:
        t.add_column(f"acc {d}", justify="right")
    t.add_column("mean acc", justify="right", style="bold")
    t.add_column("mean loss", justify="right")
    if seconds is not None:
        t.add_column("time (s)", justify="right")
    for name, r in rows.items():
        cells = [f"{r['per_dataset'][d]['acc']:.2f}" if d in r["per_dataset"] else "-" for d in datasets]
        cells += [f"{r['mean_acc']:.2f}", f"{r['mean_loss']:.3f}"]
        if seconds is not None:
            cells.append(f"{seconds[name]:.1f}" if name in seconds else "")
        t.add_row(name, *cells)
    return t
