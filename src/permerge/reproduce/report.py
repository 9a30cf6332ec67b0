"""Turn finished runs into results.csv / results.json / results.md and plots.

Every number here is a test-set score of a model whose every choice (lam, permutation,
hyperparameters) was made before looking at the test set; the report only aggregates.
"""

from __future__ import annotations

import csv
import io
import math
import re
import shutil
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._io import atomic_path, atomic_write_text, dumps
from ..data import parse_spec
from .params import ReduceParams
from .plan import Plan


def _acc(scores: dict[str, Any], i: int) -> float:
    per = list(scores["per_dataset"].values())
    return float(per[i]["acc"])


def rows_from(plan: Plan, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per finished table run (failed runs carry their error instead)."""
    rows = []
    for key, ident in plan.rows.items():
        r = results.get(key)
        if r is None:
            continue
        row: dict[str, Any] = {"experiment": plan.config.name, **ident, "key": key, "status": r.get("status")}
        if r.get("status") != "ok":
            row["error"] = r.get("error")
            rows.append(row)
            continue
        ev = r.get("eval") or {}
        if ev:
            row["acc_a"], row["acc_b"] = _acc(ev, 0), _acc(ev, 1)
            row["acc_mean"] = float(ev["mean_acc"])
            row["loss_mean"] = float(ev["mean_loss"])
        row["seconds"] = float(r.get("merge_seconds") or r.get("train_seconds") or r.get("wall_seconds") or 0.0)
        if "lam" in r:
            row["lam"] = r["lam"]
        crit = r.get("criteria") or {}
        row["wm_distance"] = crit.get("wm_distance")
        row["am_correlation"] = crit.get("am_correlation")
        al = r.get("align") or {}
        row["align_seconds"] = al.get("seconds")
        row["seconds_per_step"] = al.get("seconds_per_step")
        if r.get("size"):  # runs made before sizes were recorded have none
            row["params"], row["macs"] = r["size"]["params"], r["size"]["macs"]
        if r.get("finetune"):
            row["finetune_steps"] = r["finetune"]["steps"]
        rows.append(row)
    return rows


def _mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (pair, method, merge data), with the gain over data-free WM."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("status") == "ok" and "acc_mean" in r:
            groups[(r["pair"], r["method"], r["data"])].append(r)
    wm = {
        pair: _mean_std([x["acc_mean"] for x in g])[0]
        for (pair, m, d), g in groups.items()
        if m == "wm" and d == "none"
    }
    out = []
    for (pair, method, data), g in groups.items():
        s: dict[str, Any] = {"pair": pair, "method": method, "data": data, "seeds": len(g), "ipc": g[0].get("ipc")}
        for k in ("acc_a", "acc_b", "acc_mean", "seconds"):
            s[f"{k}_mean"], s[f"{k}_std"] = _mean_std([float(x[k]) for x in g])
        if all(x.get("params") for x in g):
            s["params"] = g[0]["params"]
        s["gain_over_wm"] = s["acc_mean_mean"] - wm[pair] if pair in wm else math.nan
        out.append(s)
    order = {"source A": 0, "source B": 1, "joint": 2, "ensemble": 3, "average": 4, "wm": 5, "am": 6, "ste": 7}
    out.sort(key=lambda s: (s["pair"], order.get(s["method"].split("+")[0], 8), s["method"], _data_order(s["data"])))
    return out


def _data_order(d: str) -> tuple[int, str, int]:
    if d in ("-", "none"):
        return (0, "", 0)
    if d == "full":
        return (1, "", 0)
    m, _, ipc = d.partition("@")
    return (2, m, int(ipc) if ipc.isdigit() else 0)


def _fmt(m: float, s: float) -> str:
    return "n/a" if math.isnan(m) else f"{m:.2f} ± {s:.2f}"


def markdown(summary: list[dict[str, Any]], title: str) -> str:
    lines = [f"## {title}", ""]
    for pair in dict.fromkeys(s["pair"] for s in summary):
        a, b = (str(parse_spec(x).without_sampling()) for x in pair.split(" vs "))
        lines += [
            f"### {pair}",
            "",
            f"| method | merge data | seeds | acc {a} | acc {b} | mean acc | gain over WM | seconds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in (x for x in summary if x["pair"] == pair):
            gain = "" if math.isnan(s["gain_over_wm"]) else f"{s['gain_over_wm']:+.2f}"
            lines.append(
                f"| {s['method']} | {s['data']} | {s['seeds']} | {_fmt(s['acc_a_mean'], s['acc_a_std'])} | "
                f"{_fmt(s['acc_b_mean'], s['acc_b_std'])} | **{_fmt(s['acc_mean_mean'], s['acc_mean_std'])}** | "
                f"{gain} | {s['seconds_mean']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def _spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    if len(xs) < 3:
        return math.nan
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    den = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / den if den else math.nan


def analysis(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The paper's two analyses: the 'flipped' indicator and how alignment criteria track loss."""
    ok = [r for r in rows if r.get("status") == "ok" and "acc_mean" in r]
    merged = [r for r in ok if r["method"] not in ("source A", "source B", "joint", "reduced-only", "ensemble")]
    crit: dict[str, Any] = {}
    for name in ("wm_distance", "am_correlation"):
        pts = [(float(r[name]), float(r["loss_mean"])) for r in merged if r.get(name) is not None]
        crit[name] = {"n": len(pts), "spearman_vs_merged_loss": _spearman([p[0] for p in pts], [p[1] for p in pts])}
    # flipped: each source model scored on the *other* dataset (A on B's test set, B on A's)
    flipped = []
    by: defaultdict[tuple[str, int], dict[tuple[str, str], dict[str, Any]]] = defaultdict(dict)
    for r in ok:
        by[(r["pair"], r["seed"])][(r["method"], r["data"])] = r
    for (pair, seed), d in sorted(by.items()):
        sa, sb = d.get(("source A", "-")), d.get(("source B", "-"))
        if not sa or not sb:
            continue
        entry = {"pair": pair, "seed": seed, "a_on_b": sa["acc_b"], "b_on_a": sb["acc_a"]}
        entry["flipped"] = (entry["a_on_b"] + entry["b_on_a"]) / 2
        for (m, data), r in d.items():
            if m in ("wm", "ste", "am", "average") and data in ("none", "full"):
                entry[f"{m}[{data}]"] = r["acc_mean"]
        flipped.append(entry)
    return {"criteria": crit, "flipped": flipped}


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _angle(spec: str) -> float | None:
    m = re.search(r"rotated-mnist:(-?\d+(?:\.\d+)?)", spec)
    return float(m.group(1)) if m else None


def plots(
    out: Path,
    rows: list[dict[str, Any]],
    summary: list[dict[str, Any]],
    results: dict[str, Any],
    plan: Plan,
    store: Path,
) -> list[str]:
    """Every figure of the report (PNG files under ``out``); returns their names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[str] = []

    def save(fig: Any, name: str) -> None:
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        made.append(name)

    # 1. interpolation curves (first seed) per pair
    for pair in dict.fromkeys(r["pair"] for r in rows):
        _curve_plot(plt, pair, results, plan, save)
    # 2. accuracy vs rotation angle: one panel for the methods without reduced data (bounds,
    # data-free and full-data merges), then one per method that uses reduced sets, with one
    # colour per merge-data kind across panels; 18 lines in one axes are unreadable
    angled = [s for s in summary if _angle(s["pair"].split(" vs ")[1]) is not None]
    if len({s["pair"] for s in angled}) > 1:
        _angle_plot(plt, angled, save)
    # 3. accuracy vs merge-data size (IPC): one panel per method, one line per reduction method
    for pair in dict.fromkeys(s["pair"] for s in summary):
        _ipc_plot(plt, [s for s in summary if s["pair"] == pair], pair, save)
    # 3b. accuracy vs model size: merges wider than a source are a different product
    for pair in dict.fromkeys(s["pair"] for s in summary):
        _size_plot(plt, [s for s in summary if s["pair"] == pair], pair, save)
    # 4. the reduced sets themselves (first seed, largest IPC): one grid per dataset and method
    made += _copy_grids(out, plan, store)
    # 5. alignment criteria vs merged loss
    _criteria_plot(plt, [r for r in rows if r.get("status") == "ok" and r.get("wm_distance") is not None], save)
    return made


def _curve_plot(plt: Any, pair: str, results: dict[str, Any], plan: Plan, save: Callable[[Any, str], None]) -> None:
    curves = []
    for key, ident in plan.rows.items():
        r = results.get(key) or {}
        if ident["pair"] == pair and r.get("curve"):
            curves.append((f"{ident['method']} [{ident['data']}]", r["curve"]))
    if not curves:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, pts in curves:
        ax.plot([p["lam"] for p in pts], [p["mean_acc"] for p in pts], marker="o", ms=3, label=label)
    ax.set_xlabel("lambda (0 = model A, 1 = aligned model B)")
    ax.set_ylabel("mean test accuracy of both datasets (%)")
    ax.set_title(f"interpolation, {pair} (seed {plan.config.seeds[0]})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, f"interpolation_{_slug(pair)}.png")


def _copy_grids(out: Path, plan: Plan, store: Path) -> list[str]:
    """The image grids of the first seed's reduced sets at the largest ipc, copied into the report."""
    reduce_tasks = [(t, ReduceParams.model_validate(t.params)) for t in plan.tasks if t.kind == "reduce"]
    if not reduce_tasks:
        return []
    made = []
    top = max(p.ipc for _, p in reduce_tasks)
    for t, p in reduce_tasks:
        src = t.directory(store) / "reduced.png"
        if p.seed == plan.config.seeds[0] and p.ipc == top and src.is_file():
            name = f"grids/{_slug(p.dataset)}_{p.method}{top}.png"
            with atomic_path(out / name) as tmp:
                shutil.copyfile(src, tmp)
            made.append(name)
    return made


def _criteria_plot(plt: Any, merged: list[dict[str, Any]], save: Callable[[Any, str], None]) -> None:
    if not merged:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name in zip(axes, ("wm_distance", "am_correlation"), strict=True):
        pts = [r for r in merged if r.get(name) is not None]
        for m in dict.fromkeys(r["method"] for r in pts):
            sel = [r for r in pts if r["method"] == m]
            ax.scatter([r[name] for r in sel], [r["loss_mean"] for r in sel], s=10, label=m)
        ax.set_xlabel(name.replace("_", " "))
        ax.set_ylabel("merged model: mean test loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save(fig, "criteria_vs_loss.png")


def _angle_plot(plt: Any, angled: list[dict[str, Any]], save: Callable[[Any, str], None]) -> None:
    def line(m: str, d: str) -> list[tuple[Any, float, float]]:
        return sorted(
            (_angle(s["pair"].split(" vs ")[1]), s["acc_mean_mean"], s["acc_mean_std"])
            for s in angled
            if s["method"] == m and s["data"] == d
        )

    kinds = list(dict.fromkeys((s["method"], s["data"]) for s in angled))
    plain = [(m, d) for m, d in kinds if "@" not in d and m not in ("source A", "source B")]
    reducing = list(dict.fromkeys(m for m, d in kinds if "@" in d))
    datas = list(dict.fromkeys(d for _, d in kinds if "@" in d))
    colour = {d: plt.get_cmap("tab10")(i % 10) for i, d in enumerate(datas)}
    n = 1 + len(reducing)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.2), sharey=True, squeeze=False)
    ax = axes[0][0]
    for i, (m, d) in enumerate(plain):
        pts = line(m, d)
        if len(pts) > 1:
            _errorbar(ax, pts, color=plt.get_cmap("tab10")(i % 10), label=f"{m} [{d}]")
    ax.set_title("no or full merge data")
    for ax, m in zip(axes[0][1:], reducing, strict=True):
        for ref, style in ((("wm", "none"), "--"), ((m, "full"), ":")):
            pts = line(*ref)
            if len(pts) > 1:
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    color="black",
                    ls=style,
                    lw=1,
                    label=f"{ref[0]} [{ref[1]}]",
                )
        for d in datas:
            pts = line(m, d)
            if len(pts) > 1:
                _errorbar(ax, pts, color=colour[d], label=d)
        ax.set_title("trained on the reduced sets alone" if m == "reduced-only" else f"{m} with reduced merge data")
    for ax in axes[0]:
        ax.set_xlabel("rotation of dataset B (degrees)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0][0].set_ylabel("mean test accuracy of both datasets (%)")
    save(fig, "accuracy_vs_angle.png")


def _errorbar(ax: Any, pts: list[tuple[Any, float, float]], **style: Any) -> None:
    """One line of (x, mean, std) points with error bars, in the report's common style."""
    ax.errorbar(
        [p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", ms=3, capsize=2, **style
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-").lower()


def write_report(
    out: Path, plan: Plan, results: dict[str, dict[str, Any]], meta: dict[str, Any], store: Path | None = None
) -> dict[str, Any]:
    rows = rows_from(plan, results)
    summary = summarise(rows)
    ana = analysis(rows)
    write_csv(rows, out / "results.csv")
    made = plots(out, rows, summary, results, plan, store or out)
    doc = {"experiment": plan.config.model_dump(), "meta": meta, "rows": rows, "summary": summary, "analysis": ana}
    atomic_write_text(out / "results.json", dumps(doc, indent=1, default=str) + "\n")
    md = [f"# permerge reproduce {plan.config.name}", "", plan.config.description.strip(), ""]
    md.append(
        f"Model `{plan.config.model}`, seeds {list(plan.config.seeds)} (model B uses seed + "
        f"{plan.config.b_seed_offset}); {meta.get('finished', 0)} runs finished, {meta.get('failed', 0)} failed; "
        f"{meta.get('cached', 0)} reused from earlier invocations; this invocation {meta.get('wall_seconds', 0):.0f} s "
        f"wall, all runs together {meta.get('run_seconds', 0):.0f} s of worker time, on {meta.get('host', '?')} "
        f"({meta.get('cpus', '?')} CPUs, executor {meta.get('executor', '?')}). "
        "Scores are test accuracies (%), mean ± std over seeds; "
        "'mean acc' is the paper's metric (mean of the two test sets)."
    )
    md += ["", markdown(summary, "Results"), "## Analysis", ""]
    c = ana["criteria"]
    md.append(
        "Alignment criteria vs the merged model's mean test loss over all merges (Spearman rank correlation): "
        + ", ".join(f"{k} ρ = {v['spearman_vs_merged_loss']:.2f} (n={v['n']})" for k, v in c.items())
    )
    if ana["flipped"]:
        md += ["", "'Flipped' indicator (each source model's accuracy on the other dataset) per pair and seed:", ""]
        keys = list(dict.fromkeys(k for e in ana["flipped"] for k in e))
        md.append("| " + " | ".join(keys) + " |")
        md.append("|" + "---|" * len(keys))
        for e in ana["flipped"]:
            md.append(
                "| "
                + " | ".join(f"{e[k]:.2f}" if isinstance(e.get(k), float) else str(e.get(k, "")) for k in keys)
                + " |"
            )
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        md += ["", "## Failed runs", ""] + [
            f"- {r['method']} [{r['data']}] {r['pair']} seed {r['seed']}: {r.get('error')}" for r in failed
        ]
    md += ["", "## Plots", ""] + [f"![{m}]({m})" for m in made]
    atomic_write_text(out / "results.md", "\n".join(md) + "\n")
    return {"rows": rows, "summary": summary, "analysis": ana, "plots": made}


def _ipc_plot(plt: Any, ss: list[dict[str, Any]], pair: str, save: Callable[[Any, str], None]) -> None:
    sized = [s for s in ss if s["ipc"]]
    if not sized:
        return
    methods = list(dict.fromkeys(s["method"] for s in sized))
    reducers = list(dict.fromkeys(s["data"].split("@")[0] for s in sized))
    colours = {r: plt.get_cmap("tab10")(i % 10) for i, r in enumerate(reducers)}
    cols = min(4, len(methods))
    nrows = -(-len(methods) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 4 * nrows), sharey=True, squeeze=False)
    for ax, m in zip(axes.flat, methods, strict=False):
        for red in reducers:
            pts = sorted(
                (s["ipc"], s["acc_mean_mean"], s["acc_mean_std"])
                for s in sized
                if s["method"] == m and s["data"].startswith(red + "@")
            )
            if pts:
                _errorbar(ax, pts, color=colours[red], label=red)
        full = next((s for s in ss if s["method"] == m and s["data"] == "full"), None)
        if full:
            ax.axhline(full["acc_mean_mean"], color="black", ls=":", lw=1, label="full data")
        ax.set_xscale("log")
        ax.set_xlabel("merge data: images per class of each dataset")
        ax.set_title(f"{m}, {pair}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(methods) :]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("mean test accuracy (%), mean ± std over seeds")
    save(fig, f"accuracy_vs_ipc_{_slug(pair)}.png")


def _size_plot(plt: Any, ss: list[dict[str, Any]], pair: str, save: Callable[[Any, str], None]) -> None:
    """Accuracy against parameters relative to one source, one panel per merge data; the
    joint model and the output ensemble are the reference lines."""
    unit = _source_params(ss)
    if unit is None:
        return
    datas = [d for d in dict.fromkeys(s["data"] for s in ss if s.get("params")) if d not in ("none", "-")]
    if not datas:
        return
    joint = next((s["acc_mean_mean"] for s in ss if s["method"] == "joint"), None)
    ens = next((s for s in ss if s["method"] == "ensemble" and s.get("params")), None)
    fams = list(dict.fromkeys(size_family(s["method"]) for s in ss if s.get("params") and s["data"] in datas))
    colour = {f: plt.get_cmap("tab10")(i % 10) for i, f in enumerate(fams)}  # the same in every panel
    cols = min(4, len(datas))
    nrows = -(-len(datas) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 4 * nrows), sharey=True, squeeze=False)
    for ax, d in zip(axes.flat, datas, strict=False):
        families: dict[str, list[tuple[float, float, float]]] = {}
        for s in ss:
            if s["data"] == d and s.get("params"):
                fam = size_family(s["method"])
                families.setdefault(fam, []).append((s["params"] / unit, s["acc_mean_mean"], s["acc_mean_std"]))
        for fam, pts in families.items():
            _errorbar(ax, sorted(pts), label=fam, color=colour[fam])
        if joint is not None:
            ax.axhline(joint, color="black", ls="--", lw=1, label="joint model (1x)")
        if ens is not None:
            ax.axhline(ens["acc_mean_mean"], color="tab:orange", ls=":", lw=1, label="output ensemble (2x)")
        ax.set_xlabel("parameters / one source model")
        ax.set_title(f"merge data {d}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(datas) :]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel(f"mean test accuracy (%), {pair}")
    save(fig, f"accuracy_vs_size_{_slug(pair)}.png")


def _source_params(ss: list[dict[str, Any]]) -> float | None:
    """One source model's parameters: a WM merge's, else half the output ensemble's (both
    sources), else the smallest merge (none is smaller than a source)."""
    sized = [s for s in ss if s.get("params")]
    wm = [s["params"] for s in sized if s["method"] == "wm"]
    ens = [s["params"] / 2 for s in sized if s["method"] == "ensemble"]
    return min(wm or ens or [s["params"] for s in sized], default=None)


def size_family(row: str) -> str:
    """The line a row joins in the size plot: its name without a width suffix, finisher kept
    (``pleas`` and ``pleas-1.5x`` are one line, ``pleas-1.5x+kd`` another, ``wm+kd`` its own);
    a budget suffix (``pleas-p1.5`` parameters, ``pleas-m1.5`` multiply-adds: per-layer widths)
    makes a line of its own."""
    base, _, rest = row.partition("-")
    budgets = {"p": " params budget", "m": " MACs budget"}
    budget = budgets.get(rest[:1], "") if rest[1:2].isdigit() else ""
    return base + budget + ("+" + rest.split("+", 1)[1] if "+" in rest else "")
