"""Each zoo model merges from the command line with ``--arch-code`` (weights as foreign
safetensors files, no model.json), by wm and by ste."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from zoo_models import ZOO, build

from permerge.cli import main

NAMES = sorted(ZOO)
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def shared_data() -> Path:
    if not (SHARED / "MNIST").is_dir() or not (SHARED / "FashionMNIST").is_dir():
        pytest.skip("needs ../shared/data (real MNIST and Fashion-MNIST)")
    return SHARED


def views(name: str) -> str:
    """MNIST / Fashion-MNIST as the zoo model's input: resized, grey as 3 channels."""
    c, h, w = ZOO[name].in_shape
    return f":{h}x{w}" + (":rgb" if c == 3 else "")


@pytest.mark.parametrize("method", ["wm", "ste"])
@pytest.mark.parametrize("name", NAMES)
def test_zoo_merges_from_the_cli(
    name: str, method: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = shared_data()
    for side, seed in (("a", 0), ("b", 1)):
        state = {k: v.contiguous() for k, v in build(name, seed).state_dict().items()}
        save_file(state, str(tmp_path / f"{side}.safetensors"))
    monkeypatch.setenv("PERMERGE_DATA", str(root))
    v = views(name)
    opts = ["--opt", "steps=2", "--opt", "batch_size=8", "--opt", "eval_samples=10"] if method == "ste" else []
    main(
        [
            "merge",
            str(tmp_path / "a.safetensors"),
            str(tmp_path / "b.safetensors"),
            "--arch-code",
            "zoo_models:build",
            "--arch-arg",
            f"name={name}",
            "--method",
            method,
            *opts,
            "--data",
            f"mnist{v}[0-1]@4",
            f"fashion-mnist{v}[0-1]@4",
            "--datasets",
            f"mnist{v}[0-1],fashion-mnist{v}[0-1]",
            "--out",
            str(tmp_path / "merged"),
            "--json",
            "-q",
        ]
    )
    r = json.loads(capsys.readouterr().out)
    assert r["method"] == method and len(r["scores"]["per_dataset"]) == 2
    saved = json.loads((tmp_path / "merged" / "model.json").read_text())
    assert saved["config"]["code"] == "zoo_models:build"
    perm = json.loads((tmp_path / "merged" / "permutation.json").read_text())
    assert len(perm) >= ZOO[name].min_groups
    assert torch.isfinite(torch.tensor(r["scores"]["mean_acc"]))


def test_interpolate_and_eval_with_arch_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """interpolate and eval take --arch-code too (foreign weights, input shape from --datasets)."""
    monkeypatch.setenv("PERMERGE_DATA", str(shared_data()))
    for side, seed in (("a", 0), ("b", 1)):
        save_file(build("rescnn_mean", seed).state_dict(), str(tmp_path / f"{side}.safetensors"))
    code = ["--arch-code", "zoo_models:build", "--arch-arg", "name=rescnn_mean"]
    ds = "mnist:16x16:rgb[0-1]"
    ab = [str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]
    main(["interpolate", *ab, *code, "--points", "3", "--datasets", ds, "--out", str(tmp_path / "curve"), "-q"])
    assert (tmp_path / "curve" / "interpolation.csv").is_file() and "barriers" in capsys.readouterr().out
    main(["eval", str(tmp_path / "a.safetensors"), *code, "--datasets", ds, "--json"])
    r = json.loads(capsys.readouterr().out)
    assert list(r["per_dataset"]) == ["mnist:16x16:rgb[0,1]"]
