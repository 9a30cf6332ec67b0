"""Your own model from the command line (``--arch-code``): the README's commands as written,
and the refusals (a model file never causes an import; keys/shapes that do not fit)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from permerge.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_section() -> tuple[str, list[str]]:
    """The "Merge your own model" section: its Python file and its shell commands."""
    text = README.read_text()
    section = text.split("## Merge your own model", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    shell = re.search(r"```sh\n(.*?)```", section, re.S)
    assert code and shell
    commands = [ln for ln in shell.group(1).splitlines() if ln.strip() and not ln.startswith("#")]
    return code.group(1), commands


def run(line: str, cwd: Path) -> None:
    args = shlex.split(line)
    if args[0] == "cp":
        shutil.copy(cwd / args[1], cwd / args[2])
        return
    assert args[0] == "permerge", line
    main([*args[1:], "-q"] if args[1] in ("train", "merge") else args[1:])


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PERMERGE_DATA", str(data_root))
    code, _ = readme_section()
    (tmp_path / "mynet.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))  # what the CLI does for the current folder
    return tmp_path


@pytest.mark.slow
def test_readme_commands_run(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, commands = readme_section()
    assert any("--arch-code" in c for c in commands)
    for line in commands:
        run(line, in_tmp)
    merged = json.loads((in_tmp / "runs/own-wm/merge.json").read_text())
    assert set(merged["scores"]["per_dataset"]) == {"mnist", "fashion-mnist"}
    assert merged["info"]["align"]["options"] is not None
    assert "runs/own-wm" in capsys.readouterr().out  # eval printed its table


def cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_model_file_naming_code_is_not_imported(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model.json that names a factory does not make permerge import it."""
    import mynet

    folder = in_tmp / "m"
    folder.mkdir()
    save_file(mynet.build_net().state_dict(), str(folder / "model.safetensors"))
    config = {"arch": "code", "code": "os:system", "code_args": [["command", "touch pwned"]], "in_shape": [1, 28, 28]}
    (folder / "model.json").write_text(json.dumps({"config": config, "dataset": "mnist"}))
    err = cli_error(["eval", str(folder)], capsys)
    assert "imports model code only when you name it" in err and not (in_tmp / "pwned").exists()


def test_foreign_weights_that_do_not_fit(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import mynet

    state = mynet.build_net(depth=2).state_dict()
    state["extra.weight"] = torch.zeros(3)
    state["stem.weight"] = torch.zeros(8, 1, 3, 3)
    del state["head.bias"]
    save_file(state, str(in_tmp / "w.safetensors"))
    args = ["eval", "w.safetensors", "--arch-code", "mynet:build_net", "--arch-arg", "depth=2", "--datasets", "mnist"]
    err = cli_error(args, capsys)
    assert "missing tensors ['head.bias']" in err and "unexpected tensors ['extra.weight']" in err
    assert "'stem.weight' has shape (8, 1, 3, 3), architecture expects (16, 1, 3, 3)" in err


@pytest.mark.parametrize(
    ("code", "extra", "needle"),
    [
        ("mynet", [], "expected module.path:function"),
        ("no_such_module:f", [], "cannot import no_such_module"),
        ("mynet:nothing", [], "mynet has no function nothing"),
        ("mynet:build_net", ["--arch-arg", "depht=2"], "build_net(depht=2) failed: TypeError"),
        ("mynet:build_net", ["--arch-arg", "depth"], "--arch-arg expects name=value"),
    ],
    ids=["no-function", "no-module", "no-attribute", "bad-keyword", "bad-arg"],
)
def test_bad_arch_code(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], code: str, extra: list[str], needle: str
) -> None:
    import mynet

    save_file(mynet.build_net().state_dict(), str(in_tmp / "w.safetensors"))
    err = cli_error(["eval", "w.safetensors", "--arch-code", code, *extra, "--datasets", "mnist"], capsys)
    assert needle in err


@pytest.mark.slow
def test_reproduce_grid_with_own_model(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An experiment config names the factory (model: code:...); the grid's worker
    processes build it and merge the pair."""
    (in_tmp / "own.yaml").write_text(
        "name: own\n"
        "model: code:mynet:build_net\n"
        "model_args: {depth: 1, width: 8}\n"
        "pairs: [[mnist@20, fashion-mnist@20]]\n"
        "seeds: [0]\n"
        "train: {steps: 5, batch_size: 50}\n"
        "merges:\n  - {method: average}\n  - {method: wm}\n"
        "baselines: {sources: true, joint: false, reduced_only: false}\n"
    )
    main(["sweep", "own.yaml", "--out", "grid", "--workers", "1", "-q", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["failed"] == 0 and summary["finished"] >= 4
    rows = json.loads((in_tmp / "grid/results.json").read_text())["rows"]
    assert {r["method"] for r in rows if r.get("status") == "ok"} >= {"average", "wm"}
