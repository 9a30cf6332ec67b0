"""``permerge reproduce``: configs validate, grids expand, quick runs finish, kills resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from permerge.errors import ConfigError
from permerge.reproduce import builtin_experiments, load_experiment
from permerge.reproduce.plan import make_plan
from permerge.reproduce.runner import reproduce
from permerge.reproduce.tasks import Task


def test_builtin_configs_validate_and_expand() -> None:
    assert {"mnist-fmnist", "mnist-usps", "rotated-mnist", "split-cifar10", "split-mnist"} <= set(builtin_experiments())
    for name in builtin_experiments():
        for quick in (False, True):
            plan = make_plan(load_experiment(name, quick=quick))
            keys = [t.key for t in plan.tasks]
            assert len(keys) == len(set(keys)), "every run is planned once"
            done: set[str] = set()
            for stage in plan.stages:  # dependencies always sit in an earlier stage
                assert all(d in done for t in stage for d in t.deps)
                done |= {t.key for t in stage}


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[2] / "benchmarks" / "configs").glob("*.yaml")), ids=lambda p: p.name
)
def test_benchmark_configs_validate_and_plan(path: Path) -> None:
    """The sweeps behind docs/RESULTS.md stay runnable as the config schema evolves."""
    plan = make_plan(load_experiment(path))
    assert plan.tasks and len({t.key for t in plan.tasks}) == len(plan.tasks)


def test_full_mnist_fmnist_grid_has_every_required_run() -> None:
    plan = make_plan(load_experiment("mnist-fmnist"))
    rows = list(plan.rows.values())
    assert {r["seed"] for r in rows} == {0, 1, 2}
    methods = {(r["method"], r["data"]) for r in rows}
    for m in ("average", "ensemble", "wm", "source A", "source B", "joint"):
        assert any(x[0] == m for x in methods), m
    for red in ("random", "herding", "kcenter", "el2n", "uncertainty", "dc", "dsa", "dm", "mtt"):
        for ipc in (1, 10):
            assert ("ste", f"{red}@{ipc}") in methods and ("am", f"{red}@{ipc}") in methods
            assert ("reduced-only", f"{red}@{ipc}") in methods
    assert ("ste", "full") in methods and ("am", "full") in methods


def test_split_cifar10_grid_has_every_required_run() -> None:
    """The builtin CIFAR grid: IPC 1/10/50 for each reducing method, BN-reset WM, joint at its own budget."""
    cfg = load_experiment("split-cifar10")
    plan = make_plan(cfg)
    methods = {(r["method"], r["data"]) for r in plan.rows.values()}
    for red in cfg.reduce.methods:
        for ipc in (1, 10, 50):
            for m in ("ste", "am", "reduced-only"):
                assert (m, f"{red}@{ipc}") in methods
    assert {("wm", "none"), ("wm", "full"), ("ste", "full"), ("joint", "full"), ("ensemble", "none")} <= methods
    joint = [t for t in plan.tasks if plan.rows.get(t.key, {}).get("method") == "joint"]
    sources = [t for t in plan.tasks if t.kind == "train" and len(t.params["datasets"]) == 1]
    assert len(joint) == 3 and len(sources) == 6
    assert all(t.params["train"] == {**cfg.train, "epochs": 6} for t in joint)
    assert all(t.params["train"] == cfg.train for t in sources), "the override touches only the joint model"


def test_joint_train_default_keeps_existing_keys() -> None:
    """No override means the joint task's key is what it was before the option existed (runs are reused)."""
    cfg = load_experiment("mnist-fmnist")
    joint = next(t for t in make_plan(cfg).tasks if t.kind == "train" and len(t.params["datasets"]) == 2)
    expected = Task(
        "train",
        {
            "datasets": list(cfg.pairs[0]),
            "model": cfg.model,
            "seed": 0,
            "train": dict(cfg.train),
            "eval": list(cfg.pairs[0]),
        },
    )
    assert joint.key == expected.key


def test_local_workers_never_get_more_threads_than_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone in-process worker used every core's threads even under OMP_NUM_THREADS=1: beside
    another job that oversubscribed the cores (~7x slower finisher steps)."""
    import torch

    from permerge.reproduce.executors import LocalExecutor

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert LocalExecutor(workers=1).threads == 1
        assert LocalExecutor(workers=4).threads == 1
        torch.set_num_threads(8)
        assert LocalExecutor(workers=1).threads == 8
        assert LocalExecutor(workers=4).threads == 2
    finally:
        torch.set_num_threads(before)


def test_pool_workers_start_with_ctrl_c_ignored() -> None:
    """A terminal's Ctrl-C reaches the workers too; while still importing they printed a
    KeyboardInterrupt traceback after the command's "interrupted" (~1 run in 20 on 2 cores). Processes
    started while the pool submits inherit SIGINT ignored; the command's own handler is back after."""
    from _procs import default_sigint
    from permerge.reproduce.executors import _workers_ignore_sigint

    show = [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)"]
    before = signal.getsignal(signal.SIGINT)
    with _workers_ignore_sigint():
        inside = subprocess.run(show, capture_output=True, text=True).stdout.strip()
    # (the command's own Ctrl-C set as a terminal would, even if this suite runs in the background)
    outside = subprocess.run(show, capture_output=True, text=True, preexec_fn=default_sigint).stdout.strip()
    assert (inside, outside) == ("True", "False")
    assert signal.getsignal(signal.SIGINT) is before


def test_task_key_is_content_addressed() -> None:
    a = Task("train", {"datasets": ["mnist"], "seed": 0})
    assert a.key == Task("train", {"seed": 0, "datasets": ["mnist"]}).key
    assert a.key != Task("train", {"datasets": ["mnist"], "seed": 1}).key


def test_a_rerun_clears_temp_files_a_killed_attempt_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL skips ``atomic_path``'s cleanup; the next attempt at the task removes the debris."""
    from permerge.reproduce import tasks

    def fake(task: Task, ctx: tasks.RunContext, directory: Path) -> dict[str, object]:
        (directory / "artifact.txt").write_text("x")
        return {"value": 1}

    monkeypatch.setattr(tasks.RUNNERS, "_entries", {**tasks.RUNNERS._entries, "fake": fake})
    task = Task("fake", {"a": 1})
    d = task.directory(tmp_path)
    d.mkdir(parents=True)
    stale = d / ".reduced.safetensors.abc123.tmp"
    stale.write_bytes(b"half a file")
    keep = d / "notes.tmp"  # not one of ours: no leading dot
    keep.write_text("user file")
    out = tasks.execute(task, tasks.RunContext(root=str(tmp_path)))
    assert out["status"] == "ok" and out["value"] == 1
    assert not stale.exists() and keep.exists()
    assert (d / "result.json").is_file()


def test_stale_temp_cleanup_only_touches_the_named_files(tmp_path: Path) -> None:
    """A reproduce --out folder may hold the user's own files; only our report temps go."""
    from permerge._io import remove_stale_temps

    ours = [tmp_path / ".results.csv.k2j3.tmp", tmp_path / ".plot.png.a1.tmp"]
    theirs = [tmp_path / ".notes.txt.x9.tmp", tmp_path / "results.csv"]
    for p in ours + theirs:
        p.write_text("x")
    remove_stale_temps(tmp_path, ("config.json", "results.*", "*.png"))
    assert not any(p.exists() for p in ours) and all(p.exists() for p in theirs)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name: x\nmodel: mlp\npairs: [[mnist, fashion-mnist]]\nmerges: [{method: nope}]\n", "unknown merge method"),
        ("name: x\nmodel: mlp\npairs: [[mnist, fashion-mnist]]\nmerges: [{method: wm}]\nbogus: 1\n", "bogus"),
        ("name: x\nmodel: mlp\npairs: []\nmerges: [{method: wm}]\n", "pairs"),
        ("name: x\nmodel: mlp\npairs: [[a, b]]\nmerges: [{method: wm}]\ntrain: {epochs: 0}\n", "train"),
        ("name: x\nmodel: mlp\npairs: [[a, b]]\nmerges: [{method: wm, lam: 2}]\n", "lam"),
        (
            "name: x\nmodel: mlp\npairs: [[a, b]]\nmerges: [{method: wm}]\nbaselines: {joint_train: {epoch: 3}}\n",
            "joint_train",
        ),
        (
            "name: x\nmodel: mlp\npairs: [[a, b]]\nmerges: [{method: wm}]\nbaselines: {reduced_only_train: {lr: -1}}\n",
            "reduced_only_train",
        ),
        # merge, finisher and reduce options are checked when the config loads, with their YAML path
        (
            "name: x\nmodel: mlp\npairs: [[a, b]]\nmerges: [{method: ste, options: {lr: -1}}]\n",
            "invalid field 'merges.0.options.lr': Input should be greater than 0",
        ),
        (
            "name: x\nmodel: mlp\npairs: [[a, b]]\n"
            "merges: [{method: wm, data: [full], reduced_options: {max_it: 3}}]\n",
            "invalid field 'merges.0.reduced_options.max_it'",
        ),
        (
            "name: x\nmodel: mlp\npairs: [[a, b]]\nmerges: [{method: average, options: {x: 1}}]\n",
            "'merges.0.options': method average takes no options",
        ),
        (
            "name: x\nmodel: mlp\npairs: [[a, b]]\n"
            "merges: [{method: wm, data: [full], finetune: kd, finetune_options: {lr: -2}}]\n",
            "invalid field 'merges.0.finetune_options.lr'",
        ),
        (
            "name: x\nmodel: mlp\npairs: [[a, b]]\nmerges: [{method: wm}]\nreduce: {options: {dm: {lr_img: abc}}}\n",
            "invalid field 'reduce.options.dm': invalid option lr_img='abc' for method 'dm'",
        ),
        ("name: [unclosed\n", "invalid YAML"),
        ("- just\n- a list\n", "mapping"),
    ],
)
def test_invalid_configs_are_one_line_errors(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=needle) as e:
        load_experiment(p)
    assert "\n" not in str(e.value)


def test_unknown_experiment() -> None:
    with pytest.raises(ConfigError, match="unknown experiment"):
        load_experiment("no-such-experiment")


def _table(path: Path) -> list[dict[str, str]]:
    """The result rows minus what legitimately differs between runs (timings, cache flags)."""
    keep = ("pair", "method", "data", "seed", "acc_a", "acc_b", "acc_mean", "loss_mean", "lam", "status")
    with path.open() as f:
        rows = [{k: r.get(k, "") for k in keep} for r in csv.DictReader(f)]
    return sorted(rows, key=lambda r: (r["method"], r["data"], r["seed"]))


@pytest.fixture(scope="module")
def quick_split_mnist(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    data = shared_data
    out = tmp_path_factory.mktemp("split-mnist-quick")
    r = reproduce("split-mnist", out=out, quick=True, workers=1, data_root=data, progress=False)
    assert r["failed"] == 0, r["failures"]
    return out


def test_quick_split_mnist_writes_results(quick_split_mnist: Path) -> None:
    out = quick_split_mnist
    doc = json.loads((out / "results.json").read_text())
    by = {(s["method"], s["data"]): s for s in doc["summary"]}
    # Disjoint classes: each source model scores ~0 on the other half; a merge does both.
    assert by[("source A", "-")]["acc_b_mean"] < 5 and by[("source A", "-")]["acc_a_mean"] > 80
    assert by[("wm", "none")]["acc_mean_mean"] > by[("source A", "-")]["acc_mean_mean"]
    assert ("ste", "full") in by and ("ste", "random@2") in by and ("reduced-only", "random@2") in by
    md = (out / "results.md").read_text()
    assert "| ste | full |" in md and "gain over WM" in md
    assert any(p.suffix == ".png" for p in out.iterdir())


def test_baseline_scores_equal_a_fresh_evaluation(quick_split_mnist: Path, shared_data: Path) -> None:
    """Joint and reduced-only rows reuse the test scores api.train computed: they must be exactly
    what evaluating the saved model on the pair's test sets gives."""
    from permerge import api

    checked = 0
    for res in (quick_split_mnist / "runs" / "train").glob("*/result.json"):
        r = json.loads(res.read_text())
        if not r["params"].get("eval"):
            continue
        assert r["eval"] == r["scores"]["test"], "the planned baselines reuse api.train's test scores"
        fresh = api.evaluate_model(res.parent, r["params"]["eval"], data_root=shared_data)
        mine, theirs = r["eval"]["per_dataset"], fresh["per_dataset"]
        assert sorted(mine) == sorted(theirs)
        for name in mine:
            assert mine[name]["acc"] == pytest.approx(theirs[name]["acc"]) and mine[name]["n"] == theirs[name]["n"]
            assert mine[name]["loss"] == pytest.approx(theirs[name]["loss"], rel=1e-5)
        checked += 1
    assert checked >= 1  # the quick grid trains reduced-only models (its joint baseline is off)


def test_rerun_reuses_every_finished_run(quick_split_mnist: Path, shared_data: Path) -> None:
    data = shared_data
    before = _table(quick_split_mnist / "results.csv")
    r = reproduce("split-mnist", out=quick_split_mnist, quick=True, workers=1, data_root=data, progress=False)
    assert r["cached"] == r["finished"] > 0
    assert _table(quick_split_mnist / "results.csv") == before


def test_grid_training_is_exactly_its_config(quick_split_mnist: Path) -> None:
    """A grid's training never takes the data-dependent default budget: what the YAML leaves
    unset is TrainConfig's fixed default, so a policy change cannot change a grid's runs."""
    metas = [json.loads(p.read_text()) for p in (quick_split_mnist / "runs" / "train").glob("*/model.json")]
    assert metas and all(m["budget"]["chosen"] == [] for m in metas)
    assert {m["train"]["lr"] for m in metas if "@100" in m["dataset"]} == {0.1}  # not the small-data 0.05


def test_quick_mnist_usps_on_a_usps_fixture(tmp_path: Path, shared_data: Path) -> None:
    """The MNIST vs USPS grid at CI size: USPS from a fixture in the published libsvm format,
    resized to 28x28 by the spec (usps:28x28) for training, merge data and tests."""
    from _usps import write_usps_root

    root = write_usps_root(tmp_path / "data", train_per_class=30, test_per_class=10)
    (root / "MNIST").symlink_to(shared_data / "MNIST")
    r = reproduce("mnist-usps", out=tmp_path / "out", quick=True, workers=1, data_root=root, progress=False)
    assert r["failed"] == 0, r["failures"]
    by = {(s["method"], s["data"]): s for s in r["summary"]}
    assert {("wm", "none"), ("am", "full"), ("ste", "full"), ("ste", "random@2"), ("joint", "full")} <= set(by)
    assert by[("source B", "-")]["acc_b_mean"] > 90  # the fixture's 'digits' are learnable


def test_quick_mnist_fmnist_smoke(tmp_path: Path, shared_data: Path) -> None:
    data = shared_data
    r = reproduce("mnist-fmnist", out=tmp_path, quick=True, workers=1, data_root=data, progress=False)
    assert r["failed"] == 0, r["failures"]
    by = {(s["method"], s["data"]): s for s in r["summary"]}
    assert {("wm", "none"), ("am", "full"), ("ste", "full"), ("ste", "dm@2"), ("joint", "full")} <= set(by)
    assert (tmp_path / "interpolation_mnist-200-vs-fashion-mnist-200.png").is_file()


@pytest.mark.slow
def test_sigkill_mid_grid_then_resume_equals_uninterrupted(
    quick_split_mnist: Path, tmp_path: Path, shared_data: Path
) -> None:
    """Kill a real ``permerge reproduce`` process mid-way; the rerun finishes the same table."""
    data = shared_data
    out = tmp_path / "killed"
    env = {**os.environ, "PERMERGE_DATA": str(data), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "permerge.cli",
        "reproduce",
        "split-mnist",
        "--quick",
        "--workers",
        "1",
        "-q",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list((out / "runs").glob("*/*/result.json"))) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "finished before it could be killed: " + proc.stderr.read().decode()[-500:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    n_done = len(list((out / "runs").glob("*/*/result.json")))
    assert not (out / "results.csv").exists()
    for p in (out / "runs").glob("*/*/result.json"):  # whatever exists is complete JSON
        json.loads(p.read_text())
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads((out / "results.json").read_text())
    assert report["meta"]["cached"] >= n_done
    assert _table(out / "results.csv") == _table(quick_split_mnist / "results.csv")
    assert not list(out.rglob("*.tmp")), "no temp files left behind"


def test_sweep_runs_a_user_grid_from_the_cli(tmp_path: Path, shared_data: Path) -> None:
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(
        "name: my-grid\nmodel: 'mlp:16'\npairs: [['mnist@20', 'fashion-mnist@20']]\nseeds: [0, 1]\n"
        "train: {epochs: 2, batch_size: 50}\nmerges: [{method: average}, {method: wm}]\n"
        "baselines: {joint: false, reduced_only: false}\n"
    )
    env = {**os.environ, "PERMERGE_DATA": str(shared_data), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "permerge",
        "sweep",
        str(cfg),
        "--out",
        str(tmp_path / "o"),
        "--workers",
        "1",
        "--json",
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout)
    # 2 seeds x (2 trainings, 2 source evaluations, 2 merges)
    assert r["experiment"] == "my-grid" and r["failed"] == 0 and r["finished"] == 12
    # another report over the same run store (one of its seeds) reuses every run it needs
    p2 = subprocess.run(
        [*cmd[:5], "--out", str(tmp_path / "o2"), "--store", str(tmp_path / "o"), "--seeds", "0", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p2.returncode == 0, p2.stderr[-2000:]
    assert json.loads(p2.stdout)["cached"] == 6 and (tmp_path / "o2" / "results.md").is_file()
    bad = subprocess.run(
        [*cmd[:4], str(tmp_path / "nope.txt"), "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "yaml" in bad.stderr and "Traceback" not in bad.stderr


def test_a_failed_run_makes_the_command_fail(tmp_path: Path, shared_data: Path) -> None:
    """typer hands a ``typer.Exit(1)`` back as a return value outside standalone mode; the
    exit status used to be 0 when runs had failed."""
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(
        "name: diverges\nmodel: 'mlp:16'\npairs: [['mnist@20', 'fashion-mnist@20']]\nseeds: [0]\n"
        "train: {epochs: 1, batch_size: 50}\n"
        "merges: [{method: wm}, {method: ste, data: [full], options: {steps: 20, lr: 1.0e+30}}]\n"
        "baselines: {joint: false, reduced_only: false}\n"
    )
    env = {**os.environ, "PERMERGE_DATA": str(shared_data), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "permerge", "sweep", str(cfg), "--out", str(tmp_path / "o"), "--workers", "1"]
    p = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, (p.returncode, p.stderr[-2000:])
    r = json.loads(p.stdout)
    assert r["failed"] == 1 and r["finished"] >= 4  # the other runs finished and are reported
    assert "STE diverged at step" in (tmp_path / "o" / "results.md").read_text()


def test_angle_plot_has_a_panel_per_reducing_method(tmp_path: Path) -> None:
    """Rotated sweeps get one readable panel per method that uses reduced sets (not 18 lines in one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from permerge.reproduce.report import _angle_plot

    summary = [
        {
            "pair": f"mnist vs rotated-mnist:{a}",
            "method": m,
            "data": d,
            "acc_mean_mean": 90.0 - a / 10,
            "acc_mean_std": 1.0,
        }
        for a in (15, 45, 90)
        for m, d in [("wm", "none"), ("ste", "full"), ("ste", "dm@10"), ("ste", "random@1"), ("am", "dm@10")]
    ]
    figs: list[object] = []

    def save(fig: object, name: str) -> None:
        figs.append(fig)
        fig.savefig(tmp_path / name)  # type: ignore[attr-defined]

    _angle_plot(plt, summary, save)
    (fig,) = figs
    titles = [ax.get_title() for ax in fig.axes]  # type: ignore[attr-defined]
    assert titles == ["no or full merge data", "ste with reduced merge data", "am with reduced merge data"]
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]  # type: ignore[attr-defined]
    assert set(labels) == {"wm [none]", "ste [full]", "dm@10", "random@1"}
    assert (tmp_path / "accuracy_vs_angle.png").stat().st_size > 10_000


def test_runs_whose_method_now_gets_the_seed_have_new_keys() -> None:
    """wm/pleas/zipit used seed 0 before seeds were forwarded: their seed-1/2 runs get a marker
    (a new key, never an old stored result); seed-0 runs and STE/AM (always seeded) keep theirs."""
    plan = make_plan(load_experiment("mnist-fmnist"))
    merges = [t for t in plan.tasks if t.kind == "merge"]
    for t in merges:
        newly = t.params["method"] in ("wm", "pleas", "zipit") and t.params["seed"] != 0
        assert t.params.get("seeded") is (True if newly else None), (t.params["method"], t.params["seed"])
    assert any(t.params.get("seeded") for t in merges)
    assert any(t.params["method"] == "ste" and t.params["seed"] == 1 and "seeded" not in t.params for t in merges)


def test_a_change_of_the_finishers_defaults_changes_the_keys_of_finisher_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A store keys a run by the options it was given; the finisher's unset options mean what
    its current defaults say. The recipe version is in every finisher run's key, so bumping it
    (as a change of defaults must) never serves an old run as a new one; other runs keep theirs."""
    from permerge.merge.distill import RECIPE
    from permerge.reproduce import plan as plan_module

    cfg = load_experiment(Path(__file__).parents[2] / "benchmarks/configs/mnist-fmnist-beyond.yaml")
    before = {t.label: t for t in make_plan(cfg).tasks if t.kind == "merge"}
    assert {t.params.get("finisher_recipe") for t in before.values()} == {RECIPE, None}
    for t in before.values():
        assert ("finisher_recipe" in t.params) == ("finetune" in t.params), t.label
    monkeypatch.setattr(plan_module, "RECIPE", RECIPE + 1)
    after = {t.label: t for t in make_plan(cfg).tasks if t.kind == "merge"}
    assert before.keys() == after.keys()
    for label, t in before.items():
        assert (t.key != after[label].key) == ("finetune" in t.params), label


def test_size_plot_lines_join_widths_of_one_method_and_keep_finishers_apart() -> None:
    from permerge.reproduce.report import size_family

    assert size_family("pleas") == size_family("pleas-1.5x") == "pleas"
    assert size_family("pleas-1.5x+kd") == "pleas+kd" != size_family("pleas-1.5x")
    assert size_family("wm+kd") == "wm+kd" and size_family("source+kd") == "source+kd"
    assert size_family("pleas-p1.5") == "pleas params budget" != size_family("pleas-m1.5")
    assert size_family("pleas-p1.5+kd") == "pleas params budget+kd"


def test_size_plot_unit_is_one_source_with_or_without_a_plain_wm_row() -> None:
    from permerge.reproduce.report import _source_params

    wm = {"method": "wm", "params": 100}
    ens = {"method": "ensemble", "params": 200}
    wide = {"method": "pleas-1.5x", "params": 190}
    assert _source_params([wide, ens, wm]) == 100
    assert _source_params([wide, ens, {"method": "wm+kd", "params": 100}]) == 100  # half the ensemble
    assert _source_params([wide, {"method": "pleas", "params": 100}]) == 100
    assert _source_params([{"method": "joint"}]) is None
