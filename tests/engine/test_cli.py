"""The command line end to end, in real subprocesses (exit codes, stdout JSON, no tracebacks)."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str, data_root: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PERMERGE_DATA": str(data_root), "PERMERGE_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    p = subprocess.run(
        [sys.executable, "-m", "permerge.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )
    if ok:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture(scope="module")
def two_models(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("cli")
    for name, ds, seed in (("a", "mnist@30", "0"), ("b", "fashion-mnist@30", "1")):
        p = run(
            "train",
            "--dataset",
            ds,
            "--model",
            "mlp:32",
            "--epochs",
            "2",
            "--seed",
            seed,
            "--out",
            str(out / name),
            "--json",
            data_root=data_root,
        )
        meta = json.loads(p.stdout)
        assert meta["dataset"] == ds and "test" in meta["scores"]
        assert (out / name / "model.safetensors").is_file()
    return out / "a", out / "b"


def test_eval_json(two_models: tuple[Path, Path], data_root: Path) -> None:
    a, _ = two_models
    r = json.loads(run("eval", str(a), "--datasets", "mnist,fashion-mnist", "--json", data_root=data_root).stdout)
    assert set(r["per_dataset"]) == {"mnist", "fashion-mnist"}
    assert r["mean_acc"] == pytest.approx(sum(v["acc"] for v in r["per_dataset"].values()) / 2)


@pytest.mark.parametrize(
    "method,extra",
    [("average", []), ("wm", []), ("ste", ["--data", "mnist@5", "--data", "fashion-mnist@5", "--opt", "steps=5"])],
)
def test_merge_writes_model_and_report(
    two_models: tuple[Path, Path], data_root: Path, tmp_path: Path, method: str, extra: list[str]
) -> None:
    a, b = two_models
    out = tmp_path / "merged"
    r = json.loads(
        run(
            "merge", str(a), str(b), "--method", method, *extra, "--out", str(out), "--json", data_root=data_root
        ).stdout
    )
    assert r["method"] == method and set(r["scores"]["per_dataset"]) == {"mnist", "fashion-mnist"}
    # what the sources know: per test set the better source, the mean of those the reference
    known = r["sources"]
    for d in ("mnist", "fashion-mnist"):
        accs = [known[m]["per_dataset"][d]["acc"] for m in ("model_a", "model_b")]
        assert known["best_per_dataset"][d] == pytest.approx(max(accs))
    assert known["mean_acc"] == pytest.approx(sum(known["best_per_dataset"].values()) / 2)
    source_a = json.loads(
        run("eval", str(a), "--datasets", "mnist,fashion-mnist", "--json", data_root=data_root).stdout
    )
    assert known["model_a"]["mean_acc"] == pytest.approx(source_a["mean_acc"])
    assert (out / "model.safetensors").is_file() and (out / "merge.json").is_file()
    if method != "average":
        assert (out / "permutation.safetensors").is_file()
    # the merged checkpoint evaluates on both source datasets by default
    again = json.loads(run("eval", str(out), "--json", data_root=data_root).stdout)
    assert again["mean_acc"] == pytest.approx(r["scores"]["mean_acc"])
    # the human-readable report points a merge with data but no finisher at the finisher
    text = run("merge", str(a), str(b), "--method", method, *extra, data_root=data_root).stdout
    assert ("tip: --finetune kd" in text) == bool(extra), text
    assert f"the better source per test set averages {known['mean_acc']:.2f}" in text, text


def test_interpolate_writes_csv_and_plot(two_models: tuple[Path, Path], data_root: Path, tmp_path: Path) -> None:
    a, b = two_models
    r = json.loads(
        run(
            "interpolate",
            str(a),
            str(b),
            "--method",
            "wm",
            "--points",
            "5",
            "--out",
            str(tmp_path),
            "--json",
            data_root=data_root,
        ).stdout
    )
    assert set(r["barriers"]) == {"naive", "aligned", "ensemble"}
    assert (tmp_path / "interpolation.csv").read_text().count("\n") == 1 + 3 * 5
    assert (tmp_path / "interpolation.png").read_bytes()[:4] == b"\x89PNG"


def _assert_user_error(p: subprocess.CompletedProcess[str], needle: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    assert needle in p.stderr
    assert len([ln for ln in p.stderr.strip().splitlines() if ln.strip()]) <= 3  # one message (may wrap)


def test_user_errors_are_one_line(two_models: tuple[Path, Path], data_root: Path, tmp_path: Path) -> None:
    a, b = two_models
    _assert_user_error(run("eval", str(a), "--datasets", "imagenet", data_root=data_root, ok=False), "unknown dataset")
    _assert_user_error(run("merge", str(a), str(b), "--lam", "2", data_root=data_root, ok=False), "[0, 1]")
    _assert_user_error(run("merge", str(a), str(b), "--method", "ste", data_root=data_root, ok=False), "merge data")
    _assert_user_error(run("merge", str(a), str(tmp_path / "nope"), data_root=data_root, ok=False), "no such model")
    # a model of another width
    other = tmp_path / "c"
    run(
        "train",
        "--dataset",
        "mnist@5",
        "--model",
        "mlp:16",
        "--epochs",
        "1",
        "--out",
        str(other),
        "-q",
        data_root=data_root,
    )
    _assert_user_error(run("merge", str(a), str(other), data_root=data_root, ok=False), "different architectures")


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {os.environ.get('PM_MARKER', '/tmp/permerge-pwned')}",))


def test_malicious_pickle_is_refused(two_models: tuple[Path, Path], data_root: Path, tmp_path: Path) -> None:
    a, b = two_models
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "model.json").write_text((a / "model.json").read_text())
    os.environ["PM_MARKER"] = str(marker)
    try:
        with (evil / "model.pt").open("wb") as f:
            pickle.dump({"x": _Evil()}, f)
    finally:
        del os.environ["PM_MARKER"]
    p = run("merge", str(a), str(evil / "model.pt"), data_root=data_root, ok=False)
    _assert_user_error(p, "refused or unreadable")
    assert not marker.exists()


@pytest.mark.parametrize("command", ["merge", "reduce"])
def test_help_lists_every_registered_method(command: str) -> None:
    """A method added as one registered file shows up in ``--help`` without touching the CLI."""
    from typer.testing import CliRunner

    from permerge.align.registry import available as align_methods
    from permerge.cli import app
    from permerge.reduce import available_methods

    p = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "300"})
    assert p.exit_code == 0, p.output
    names = available_methods() if command == "reduce" else ["average", "ensemble", *align_methods()]
    line = next(ln for ln in p.output.splitlines() if "--method" in ln)
    listed = set(re.findall(r"[a-z0-9]+", line.split("<str>", 1)[1]))
    assert set(names) <= listed, set(names) - listed


def test_wider_pleas_merge_saves_loads_and_evaluates(
    two_models: tuple[Path, Path], data_root: Path, tmp_path: Path
) -> None:
    """A 1.5x partial merge is a checkpoint like any other: saved, reloaded by eval, same scores."""
    a, b = two_models
    out = tmp_path / "pleas"
    data = ["--data", "mnist@5", "--data", "fashion-mnist@5"]
    r = json.loads(
        run(
            "merge",
            str(a),
            str(b),
            "--method",
            "pleas",
            *data,
            "--opt",
            "width=1.5",
            "--out",
            str(out),
            "--json",
            data_root=data_root,
        ).stdout
    )
    assert r["info"]["size"]["relative"] == pytest.approx(1.5, abs=0.05)
    assert json.loads((out / "model.json").read_text())["config"]["hidden"] == [48]
    assert r["info"]["size"]["model"].startswith("mlp ") and "-48-" in r["info"]["size"]["model"]
    e = json.loads(run("eval", str(out), "--json", data_root=data_root).stdout)
    assert e["mean_acc"] == pytest.approx(r["scores"]["mean_acc"])
    budget = ["--opt", "params=1.2", "--out", str(tmp_path / "budget")]
    p = run("merge", str(a), str(b), "--method", "pleas", *data, *budget, data_root=data_root)
    assert re.search(r"\(1\.(1\d|20)x a source\), [\d,]+ MACs/image: mlp 784-\d+-10", p.stdout), p.stdout  # its widths


def test_merge_with_distillation_finisher_prints_its_budget(two_models: tuple[Path, Path], data_root: Path) -> None:
    a, b = two_models
    p = run(
        "merge",
        str(a),
        str(b),
        "--method",
        "wm",
        "--data",
        "mnist@5",
        "--data",
        "fashion-mnist@5",
        "--finetune",
        "kd",
        "--ft-opt",
        "steps=20",
        "-q",
        data_root=data_root,
    )
    assert "distillation: 20 steps (given)" in p.stdout and "augment dsa" in p.stdout
    assert "1.00x a source" in p.stdout
    bad = run("merge", str(a), str(b), "--method", "wm", "--finetune", "kd", data_root=data_root, ok=False)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and "--data" in bad.stderr


def test_demo_runs_end_to_end_and_the_finisher_beats_weight_matching(data_root: Path, tmp_path: Path) -> None:
    """``permerge demo`` (the README's main job) at a small budget: every row of its table, the
    saved models and merges, and the product's best row (WM + the finisher) above data-free WM
    on the same real test sets."""
    out = tmp_path / "demo"
    p = run(
        "demo",
        "--dataset-b",
        "fashion-mnist@100",
        "--epochs",
        "2",
        "--merge-ipc",
        "5",
        "--ste-steps",
        "5",
        "--kd-steps",
        "200",
        "--out",
        str(out),
        "--json",
        data_root=data_root,
    )
    r = json.loads(p.stdout)
    rows = r["results"]
    finisher = "WM + finisher (5/class)"
    assert list(rows) == [
        "model A",
        "model B",
        "naive average",
        "output ensemble (2x compute)",
        "weight matching (no data)",
        "STE (5/class)",
        finisher,
    ]
    assert r["merge_data"] == ["mnist-5k@5", "fashion-mnist@5"]
    assert rows[finisher]["mean_acc"] > rows["weight matching (no data)"]["mean_acc"] + 5
    for folder in ("model_a", "model_b", "merged_wm", "merged_ste", "merged_wm_kd"):
        assert (out / folder / "model.safetensors").is_file(), folder
    assert json.loads((out / "demo.json").read_text())["results"] == rows
