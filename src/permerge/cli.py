"""The ``permerge`` command line: thin typer faces over :mod:`permerge.api`.

User errors (:class:`PermergeError`) print one line and exit 2; no traceback.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import api
from ._io import dumps
from .align.registry import available as align_methods
from .errors import PermergeError
from .merge.core import BASELINES
from .merge.core import methods as merge_methods
from .merge.distill import FinisherInfo
from .merge.methods import mergers
from .reduce import available_methods as reduce_methods
from .tables import scores_table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Merge neural networks trained on different datasets (permutation alignment).",
)
# markup off: a path or spec such as "o/[red]t" or "mnist[1,3]" is printed as written
console = Console(markup=False)
err_console = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON on stdout")]
DataRoot = Annotated[
    Path | None,
    typer.Option(
        "--data-root", envvar="PERMERGE_DATA", help="folder with MNIST/raw, FashionMNIST/raw, cifar-10-batches-bin"
    ),
]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]
Force = Annotated[
    bool, typer.Option("--force", help="write --out even if it is an input's folder (the input is replaced)")
]
Seed = Annotated[int, typer.Option("--seed", help="random seed, 0 to 4294967295")]
ArchCode = Annotated[
    str | None,
    typer.Option(
        "--arch-code",
        help="your own model: module:function returning the nn.Module (imported from the current folder or "
        "the environment because you name it here; model files never cause an import)",
    ),
]
ArchArg = Annotated[
    list[str] | None, typer.Option("--arch-arg", help="keyword argument for --arch-code's function, name=value")
]


def _split_specs(item: str) -> list[str]:
    """Split at commas outside brackets: ``mnist[1,3,5],fashion-mnist`` is two specs."""
    parts, depth, cur = [], 0, ""
    for ch in item:
        depth += ch == "["
        depth -= ch == "]" and depth > 0
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def _split_list(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for item in values for v in _split_specs(item) if v.strip()]


def _seeds(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        try:
            out.append(int(part.strip()))
        except ValueError:
            raise PermergeError(f"--seeds expects comma-separated integers such as 0,1,2, got {text!r}") from None
    return out


def _print_json(obj: Any) -> None:
    print(dumps(obj, default=str))


def _notes(r: dict[str, Any]) -> None:
    for note in r.get("notes") or []:
        err_console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)


def _options(pairs: list[str] | None, flag: str = "--opt") -> dict[str, Any] | None:
    """``--opt steps=500 --opt lr=0.5`` -> {"steps": 500, "lr": 0.5} (values parsed as JSON when possible)."""
    if not pairs:
        return None
    out: dict[str, Any] = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise PermergeError(f"{flag} expects key=value, got {p!r}")
        try:
            out[k.strip().replace("-", "_")] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip().replace("-", "_")] = v
    return out


def _train_default(name: str) -> object:
    """TrainConfig's default for ``name``: the CLI shows it but leaves the choice to the library
    (``permerge train`` and ``api.train`` train the same when given the same options)."""
    from .train import TrainConfig

    return TrainConfig.model_fields[name].default


# Long only by its signature: one typer option per parameter is the command's --help; the body
# hands them to api.train.
@app.command()
def train(
    dataset: Annotated[
        list[str],
        typer.Option("--dataset", "-d", help="dataset spec, e.g. mnist, cifar10[0-4]; repeat to train jointly"),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder for model.safetensors + model.json")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="mlp, mlp:256x256, cnn, vgg11:0.5, vgg16, resnet20:x2, vit:tiny")
    ] = "mlp",
    seed: Seed = 0,
    epochs: Annotated[int | None, typer.Option(help="default: chosen from the data (see below)")] = None,
    steps: Annotated[int | None, typer.Option(help="total optimisation steps, instead of --epochs")] = None,
    lr: Annotated[float | None, typer.Option(help="default 0.1 (SGD; 0.05 on small data) / 1e-3 (Adam)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="default 500 (256 on small data)")] = None,
    optimizer: Annotated[str | None, typer.Option(help=f"sgd or adam; default {_train_default('optimizer')}")] = None,
    weight_decay: Annotated[float | None, typer.Option(help=f"default {_train_default('weight_decay')}")] = None,
    schedule: Annotated[
        str | None, typer.Option(help=f"constant, cosine or warmup-linear; default {_train_default('schedule')}")
    ] = None,
    augment: Annotated[
        str | None,
        typer.Option(
            help="none, crop-flip (pad-4 crop + flip) or dsa (one random DSA operation per batch); default dsa "
            "for a reduced set or under 1,000 images, crop-flip for other colour images, else none"
        ),
    ] = None,
    val_fraction: Annotated[float | None, typer.Option(help="default 1/12 (0 for a reduced set)")] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="fp32, bf16 (mixed precision, CPU or GPU) or fp16 (mixed precision, CUDA); "
            f"default {_train_default('precision')}"
        ),
    ] = None,
    arch_code: ArchCode = None,
    arch_arg: ArchArg = None,
    data_root: DataRoot = None,
    device: Device = "cpu",
    quiet: Quiet = False,
    force: Force = False,
    json_out: JsonOpt = False,
) -> None:
    """Train a model on one dataset (a validation part is held out) and save it.

    Unset budget options are chosen from the data (permerge.budgets) and printed on one line:
    10,000+ images: 10 epochs at batch 500, lr 0.1; fewer: 3,000 steps at batch 256, lr 0.05;
    a reduced set (or under 1,000 images): also DSA augmentation (and no validation part).
    """
    ckpt = api.train(
        dataset[0] if len(dataset) == 1 else dataset,
        model=model,
        seed=seed,
        out=out,
        data_root=data_root,
        device=device,
        progress=not quiet and not json_out,
        epochs=epochs,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        optimizer=optimizer,
        weight_decay=weight_decay,
        schedule=schedule,
        augment=augment,
        val_fraction=val_fraction,
        precision=precision,
        force=force,
        arch_code=arch_code,
        arch_args=arch_arg,
    )
    s = ckpt.meta["scores"]
    if json_out:
        _print_json({"out": str(out), **ckpt.meta})
        return
    parts = [f"{k} {v['acc']:.2f}%" for k, v in s.items() if "acc" in v]
    console.print(
        f"trained {ckpt.config.describe()} on {dataset} (seed {seed}) in "
        f"{ckpt.meta['wall_seconds']:.1f}s: " + ", ".join(parts) + f" -> {out}"
    )


@app.command("eval")
def eval_(
    model: Annotated[Path, typer.Argument(help="checkpoint folder or model.safetensors")],
    datasets: Annotated[
        list[str] | None, typer.Option("--datasets", help="comma-separated specs; default: the model's own")
    ] = None,
    arch_code: ArchCode = None,
    arch_arg: ArchArg = None,
    data_root: DataRoot = None,
    device: Device = "cpu",
    json_out: JsonOpt = False,
) -> None:
    """Accuracy and loss on each test set and their mean (the merged-model metric)."""
    r = api.evaluate_model(
        model, _split_list(datasets), data_root=data_root, device=device, arch_code=arch_code, arch_args=arch_arg
    )
    if json_out:
        _print_json(r)
    else:
        console.print(scores_table(f"evaluation of {model}", {str(model): r}))


# Long only by its signature (one typer option per parameter); the body calls api.merge and prints.
@app.command()
def merge(
    model_a: Annotated[Path, typer.Argument(help="model A (the reference)")],
    model_b: Annotated[Path, typer.Argument(help="model B (permuted to match A)")],
    method: Annotated[str, typer.Option("--method", help=", ".join(merge_methods()))] = "wm",
    data: Annotated[
        list[str] | None, typer.Option("--data", help="merge data specs, e.g. mnist@10 fashion-mnist@10")
    ] = None,
    lam: Annotated[str, typer.Option("--lam", help="weight of B in [0,1], or 'auto' (chosen on merge data)")] = "0.5",
    bn_reset: Annotated[
        bool | None,
        typer.Option(
            "--bn-reset/--no-bn-reset", help="re-estimate BatchNorm stats on merge data (default: on when possible)"
        ),
    ] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="REPAIR: rescale hidden statistics toward the endpoints'")
    ] = False,
    opt: Annotated[
        list[str] | None, typer.Option("--opt", help="method option key=value, e.g. --opt steps=500 --opt lr=0.5")
    ] = None,
    finetune: Annotated[
        str,
        typer.Option("--finetune", help="after merging: none, or kd (distil both models into the merge on --data)"),
    ] = "none",
    ft_opt: Annotated[
        list[str] | None,
        typer.Option("--ft-opt", help="finisher option key=value, e.g. --ft-opt steps=1500 (see 'permerge methods')"),
    ] = None,
    datasets: Annotated[
        list[str] | None, typer.Option("--datasets", help="evaluation specs; default: both models' datasets")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o")] = None,
    arch_code: ArchCode = None,
    arch_arg: ArchArg = None,
    seed: Seed = 0,
    data_root: DataRoot = None,
    device: Device = "cpu",
    quiet: Quiet = False,
    force: Force = False,
    json_out: JsonOpt = False,
) -> None:
    """Align B to A with METHOD, interpolate at --lam, optionally distil (--finetune kd), evaluate."""
    lam_value: float | str = lam if lam == "auto" else _float(lam, "--lam")
    r = api.merge(
        model_a,
        model_b,
        method=method,
        lam=lam_value,
        data=_split_list(data),
        bn_reset=bn_reset,
        repair=repair,
        options=_options(opt),
        finetune=finetune,
        finetune_options=_options(ft_opt, flag="--ft-opt"),
        datasets=_split_list(datasets),
        out=out,
        data_root=data_root,
        seed=seed,
        device=device,
        progress=not quiet and not json_out,
        force=force,
        arch_code=arch_code,
        arch_args=arch_arg,
    )
    _notes(r)
    if json_out:
        _print_json(r)
        return
    _print_merge(r, method + ("+" + finetune if finetune != "none" else ""), out)


def _print_merge(r: dict[str, Any], name: str, out: Path | None) -> None:
    """The human-readable merge report: the finisher's budget, scores, size, time."""
    ft = r["info"].get("finetune")
    if ft:
        console.print(
            f"distillation: {ft['steps']} steps ({ft['reason']}), lr {ft['lr']:g}, T {ft['temperature']:g}, "
            f"augment {ft['augment']}, disagreement inputs {ft['adversarial']:g}, label weight {ft['label_weight']:g}, "
            f"feature hints {ft.get('hint', 0):g}; "
            f"{ft['seconds']:.1f}s"
        )
    console.print(scores_table(f"{name} merge at lam={r['lam']:.2f}", {name: r["scores"]}))
    known = r["sources"]
    console.print(
        f"the better source per test set averages {known['mean_acc']:.2f} "
        f"(model A {known['model_a']['mean_acc']:.2f}, model B {known['model_b']['mean_acc']:.2f} over both); "
        f"this merge {r['scores']['mean_acc'] - known['mean_acc']:+.2f}"
    )
    size = r["info"]["size"]
    console.print(
        f"size {size['params']:,} parameters ({size['relative']:.2f}x a source), {size['macs']:,} MACs/image"
        + (f": {size['model']}" if "model" in size else "")
    )
    align_info = r["info"].get("align", {})
    console.print(
        f"time {r['info']['seconds']:.1f}s"
        + (f" (alignment {align_info['seconds']:.1f}s)" if align_info else "")
        + (f"; saved to {out}" if out else "")
    )
    if r["merge_data"] and not ft and r["method"] != "ensemble":
        # the permutation alone leaves most of the gap between models trained on different data
        console.print(
            "tip: --finetune kd distils both models into this merge on the same --data "
            "(MNIST vs Fashion-MNIST, 10 images/class: 92.0 after WM, 54 without; docs/BEYOND_PERMUTATION.md)",
            style="dim",
        )


def _float(v: str, name: str) -> float:
    try:
        return float(v)
    except ValueError:
        raise PermergeError(f"{name} must be a number or 'auto', got {v!r}") from None


@app.command()
def interpolate(
    model_a: Annotated[Path, typer.Argument()],
    model_b: Annotated[Path, typer.Argument()],
    out: Annotated[Path, typer.Option("--out", "-o")],
    method: str = "wm",
    points: int = 11,
    data: Annotated[list[str] | None, typer.Option("--data")] = None,
    bn_reset: Annotated[bool | None, typer.Option("--bn-reset/--no-bn-reset")] = None,
    repair: bool = False,
    opt: Annotated[list[str] | None, typer.Option("--opt")] = None,
    datasets: Annotated[list[str] | None, typer.Option("--datasets")] = None,
    arch_code: ArchCode = None,
    arch_arg: ArchArg = None,
    seed: Seed = 0,
    data_root: DataRoot = None,
    device: Device = "cpu",
    quiet: Quiet = False,
    force: Force = False,
    json_out: JsonOpt = False,
) -> None:
    """Accuracy/loss along lam (naive, aligned, ensemble), barriers, CSV + PNG plot."""
    r = api.interpolate(
        model_a,
        model_b,
        method=method,
        points=points,
        data=_split_list(data),
        bn_reset=bn_reset,
        repair=repair,
        options=_options(opt),
        datasets=_split_list(datasets),
        out=out,
        data_root=data_root,
        seed=seed,
        device=device,
        progress=not quiet and not json_out,
        force=force,
        arch_code=arch_code,
        arch_args=arch_arg,
    )
    if json_out:
        _print_json(r)
        return
    t = Table(title=f"barriers ({points} points)")
    for c in ("line", "mean acc at 0.5", "acc barrier", "loss barrier"):
        t.add_column(c, justify="right")
    for line, b in r["barriers"].items():
        t.add_row(line, f"{b['mid_mean_acc']:.2f}", f"{b['acc_barrier']:.2f}", f"{b['loss_barrier']:.3f}")
    console.print(t)
    console.print(f"wrote {out}/interpolation.csv and interpolation.png")


@app.command("merge-many")
def merge_many(
    models: Annotated[list[Path], typer.Argument(help="two or more checkpoints")],
    out: Annotated[Path | None, typer.Option("--out", "-o")] = None,
    datasets: Annotated[list[str] | None, typer.Option("--datasets")] = None,
    seed: Seed = 0,
    data_root: DataRoot = None,
    device: Device = "cpu",
    quiet: Quiet = False,  # noqa: ARG001 - accepted like every computing command; MergeMany shows no bar
    force: Force = False,
    json_out: JsonOpt = False,
) -> None:
    """Align N models into one basin by weight matching (MergeMany) and average them."""
    r = api.merge_many(
        models, datasets=_split_list(datasets), out=out, data_root=data_root, seed=seed, device=device, force=force
    )
    if json_out:
        _print_json(r)
    else:
        console.print(scores_table(f"merge of {len(models)} models ({r['rounds']} rounds)", {"merged": r["scores"]}))


@app.command()
def reduce(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="dataset spec whose training split is reduced")],
    method: Annotated[str, typer.Option("--method", help=", ".join(reduce_methods()))],
    ipc: Annotated[int, typer.Option("--ipc", help="images per class")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output .safetensors (a .json and .png are written beside)")],
    model: Annotated[str | None, typer.Option("--model", help="checkpoint or architecture")] = None,
    opt: Annotated[list[str] | None, typer.Option("--opt", help="method hyperparameter key=value")] = None,
    seed: Seed = 0,
    data_root: DataRoot = None,
    device: Device = "cpu",
    quiet: Quiet = False,
    force: Annotated[bool, typer.Option("--force", help="write --out even if it is the input reduced set")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Build a reduced set (coreset or condensed images); use it as merge data via reduced:FILE."""
    from .reduce import reduce_dataset

    dev = str(api.resolve_device(device))
    options = _options(opt) or {}
    for k in options.keys() & {"seed", "model", "device", "out", "data_root", "progress", "force", "ipc", "method"}:
        raise PermergeError(f"--opt {k}=...: {k} is not a method option; use --{k.replace('_', '-')}")
    r = reduce_dataset(
        dataset,
        method,
        ipc,
        model=model,
        seed=seed,
        device=dev,
        progress=not quiet and not json_out,
        out=out,
        data_root=data_root,
        force=force,
        **options,
    )
    if json_out:
        _print_json({"out": str(out), **r.meta})
        return
    console.print(f"{method} reduced {dataset} to {ipc} images per class -> {out} (use as reduced:{out})")


@app.command()
def reproduce(
    experiment: Annotated[
        str, typer.Argument(help="mnist-fmnist, rotated-mnist, split-cifar10, split-mnist, or a YAML file")
    ],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="default: runs/reproduce/<name>[-quick]")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="the config's reduced version (CI smoke run)")] = False,
    executor: Annotated[str, typer.Option("--executor", help="local (process pool) or ray")] = "local",
    workers: Annotated[int | None, typer.Option("--workers", help="parallel runs (default: all cores)")] = None,
    address: Annotated[str | None, typer.Option("--address", help="ray: auto or HOST:PORT")] = None,
    gpus_per_run: Annotated[
        float, typer.Option("--gpus-per-run", help="ray with --device cuda: GPUs each run reserves (0.25: 4 per GPU)")
    ] = 1.0,
    seeds: Annotated[str | None, typer.Option("--seeds", help="override the seeds, e.g. 0,1")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the runs and stop")] = False,
    store: Annotated[Path | None, typer.Option("--store", help="where runs are kept (default: --out)")] = None,
    data_root: DataRoot = None,
    device: Device = "cpu",
    quiet: Quiet = False,
    json_out: JsonOpt = False,
) -> None:
    """Run an experiment grid (resumable: finished runs are reused) and write results + plots."""
    from .reproduce.runner import reproduce as run

    seed_list = _seeds(seeds) if seeds else None
    name = Path(experiment).stem if experiment.endswith((".yaml", ".yml")) else experiment
    target = out or Path("runs/reproduce") / (name + ("-quick" if quick else ""))
    r = run(
        experiment,
        out=target,
        quick=quick,
        executor=executor,
        workers=workers,
        address=address,
        gpus_per_run=gpus_per_run,
        data_root=data_root,
        device=device,
        seeds=seed_list,
        progress=not quiet and not json_out,
        dry_run=dry_run,
        store=store,
    )
    if dry_run:
        if json_out:
            _print_json(r)
        else:
            console.print(f"{r['experiment']}: {r['tasks']} runs in {len(r['stages'])} stages")
            for i, stage in enumerate(r["stages"], 1):
                console.print(f"stage {i}: {len(stage)} runs")
                for label in stage:
                    console.print(f"  {label}")
        return
    if json_out:
        _print_json({k: r[k] for k in ("experiment", "out", "finished", "cached", "failed", "wall_seconds")})
    else:
        print((Path(r["out"]) / "results.md").read_text())  # plain: rich would eat [brackets]
        console.print(
            f"{r['finished']} runs ({r['cached']} reused), {r['failed']} failed, {r['wall_seconds']:.0f}s -> {r['out']}"
        )
    if r["failed"]:
        raise typer.Exit(1)


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="YAML grid with the fields of configs/*.yaml")],
    out: Annotated[Path, typer.Option("--out", "-o")],
    executor: Annotated[str, typer.Option("--executor", help="local (process pool) or ray")] = "local",
    workers: Annotated[int | None, typer.Option("--workers", help="parallel runs (default: all cores)")] = None,
    address: Annotated[str | None, typer.Option("--address", help="ray: auto or HOST:PORT")] = None,
    gpus_per_run: Annotated[
        float, typer.Option("--gpus-per-run", help="ray with --device cuda: GPUs each run reserves (0.25: 4 per GPU)")
    ] = 1.0,
    store: Annotated[Path | None, typer.Option("--store", help="where runs are kept (default: --out)")] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="override the seeds, e.g. 0,1,2")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the runs and stop")] = False,
    data_root: DataRoot = None,
    device: Device = "cpu",
    quiet: Quiet = False,
    json_out: JsonOpt = False,
) -> None:
    """Run a user-defined grid: the same engine as reproduce, for your own YAML file."""
    if config.suffix not in (".yaml", ".yml"):
        raise PermergeError(f"{config}: sweep takes a .yaml config file (see configs/ for examples)")
    reproduce(
        str(config),
        out=out,
        executor=executor,
        workers=workers,
        address=address,
        gpus_per_run=gpus_per_run,
        store=store,
        seeds=seeds,
        dry_run=dry_run,
        data_root=data_root,
        device=device,
        quiet=quiet,
        json_out=json_out,
    )


def _default_text(default: object, description: str | None) -> str:
    """``None`` documented as "default: ..." is chosen at run time (STE's budget): 'auto'."""
    return "auto" if default is None and "default:" in (description or "") else str(default)


@app.command()
def methods(json_out: JsonOpt = False) -> None:
    """List merge methods and their options."""
    rows: dict[str, dict[str, Any]] = {
        name: {"needs_data": False, "summary": summary, "options": {}} for name, summary in BASELINES.items()
    }
    from .align.lap import backend_info

    solver = backend_info()  # the linear-assignment backend every alignment method uses
    registered: list[tuple[str, Any]] = [*align_methods().items(), *mergers().items()]
    registered.append(("--finetune kd", FinisherInfo))
    for name, m in registered:
        rows[name] = {
            "needs_data": m.needs_data,
            "summary": m.summary,
            "options": {k: _default_text(f.default, f.description) for k, f in m.options.model_fields.items()},
            "assignment_solver": solver,
        }
    if json_out:
        _print_json(rows)
        return
    version = f" {solver['version']}" if solver["version"] else ""
    t = Table(
        title="merge methods (options: --opt key=value; the finisher's: --ft-opt key=value)",
        caption=f"linear assignment: {solver['backend']}{version} ({solver['reason']}); PERMERGE_LAP=scipy|numba|auto",
    )
    for c in ("method", "needs data", "what", "options"):
        t.add_column(c)
    for k, v in rows.items():
        t.add_row(
            k, "yes" if v["needs_data"] else "no", v["summary"], ", ".join(f"{a}={b}" for a, b in v["options"].items())
        )
    console.print(t)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("runs/demo"),
    dataset_a: str = "mnist-5k",
    dataset_b: str = "fashion-mnist@400",
    epochs: Annotated[int, typer.Option(min=1, help="training epochs of each source model")] = 20,
    merge_ipc: Annotated[int, typer.Option(min=1, help="merge data: images per class from each dataset")] = 10,
    ste_steps: Annotated[int, typer.Option(min=1, help="STE optimisation steps")] = 300,
    kd_steps: Annotated[
        int | None, typer.Option(min=1, help="distillation finisher steps (default: chosen from the merge data)")
    ] = None,
    seed: Seed = 0,
    data_root: DataRoot = None,
    quiet: Quiet = False,
    json_out: JsonOpt = False,
) -> None:
    """Train on two real datasets, then compare averaging, WM, STE and WM + the finisher side by side."""
    from .demo import run_demo

    r = run_demo(
        out=out,
        dataset_a=dataset_a,
        dataset_b=dataset_b,
        epochs=epochs,
        merge_ipc=merge_ipc,
        ste_steps=ste_steps,
        kd_steps=kd_steps,
        seed=seed,
        data_root=data_root,
        progress=not quiet and not json_out,
        console=None if json_out else Console(),  # the demo's own [bold] markup
    )
    if json_out:
        _print_json(r)


_MULTI = ("--data",)


def _expand_multi(argv: list[str]) -> list[str]:
    """Let ``--data A B`` mean ``--data A --data B`` (click options take one value each).

    Values are taken until the next token that starts with ``-``; put model paths before
    ``--data``.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        out.append(tok)
        i += 1
        if tok in _MULTI:
            first = True
            while i < len(argv) and not argv[i].startswith("-"):
                if not first:
                    out.append(tok)
                out.append(argv[i])
                first = False
                i += 1
    return out


def _terminated(signum: int, _frame: object) -> None:
    """SIGTERM (``kill``, a scheduler's time limit) unwinds like Ctrl-C: temporary files are
    removed and a grid's workers are stopped instead of being orphaned; exit status 143."""
    raise SystemExit(128 + signum)


class _LogLines(logging.Handler):
    """The library's log lines (the chosen budget; warnings) as plain lines: information on
    stdout (not with --json, whose stdout is JSON only), warnings on stderr."""

    def __init__(self, show_info: bool) -> None:
        super().__init__(logging.INFO)
        self.show_info = show_info

    def emit(self, record: logging.LogRecord) -> None:
        msg = escape(record.getMessage())
        if record.levelno >= logging.WARNING:
            err_console.print(f"[yellow]warning:[/yellow] {msg}", highlight=False, soft_wrap=True)
        elif self.show_info:
            console.print(msg, highlight=False, soft_wrap=True)


def _show_log_lines(args: list[str]) -> None:
    logger = logging.getLogger("permerge")
    for h in [h for h in logger.handlers if isinstance(h, _LogLines)]:
        logger.removeHandler(h)  # main() may run more than once in one process (tests)
    logger.addHandler(_LogLines(show_info="--json" not in args))
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> None:
    if argv is None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)  # only as the program, not when called in tests
        try:
            _main(argv)
        except SystemExit as e:
            if e.code in (130, 143):
                # Interrupted or killed: everything has unwound (temporary files removed,
                # workers stopped). Skip the interpreter's exit handlers: the process pool's
                # one writes to a pipe its stopped manager closed and prints a traceback.
                _release_semaphores()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(int(e.code))
            raise
        return
    _main(argv)


def _release_semaphores() -> None:
    """Unlink the process pool's named semaphores, as the interpreter's exit handlers would have.

    Skipping those handlers (``os._exit``) left the semaphores to multiprocessing's resource
    tracker, a process of its own that outlives this one and printed a "leaked semaphore
    objects" warning after our last line. Only the semaphores' own finalizers run here."""
    from multiprocessing import synchronize, util

    registry = getattr(util, "_finalizer_registry", {})
    for fin in list(registry.values()):
        if getattr(fin, "_callback", None) is synchronize.SemLock._cleanup:  # type: ignore[attr-defined]
            fin()


def _main(argv: list[str] | None) -> None:
    args = _expand_multi(list(sys.argv[1:] if argv is None else argv))
    _show_log_lines(args)
    try:
        # Outside standalone mode typer *returns* the code of a typer.Exit, and turns Ctrl-C
        # into Exit(130): both must become the process's exit status.
        code = app(args=args, standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool) and code != 0:
            if code == 130:
                err_console.print("interrupted")
            sys.exit(code)
    except PermergeError as e:
        # escape: a message quoting "mnist[0-4]" or a path with brackets is not rich markup
        err_console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as e:
        # click usage errors (typer vendors click) carry their own message and exit code
        if hasattr(e, "exit_code") and hasattr(e, "format_message"):
            message = " ".join(e.format_message().split())
            if not message:  # bare `permerge`: click printed the help already; no empty "error:"
                sys.exit(int(e.exit_code))
            err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
            sys.exit(int(e.exit_code))
        raise


if __name__ == "__main__":
    main()
