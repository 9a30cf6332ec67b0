"""Same seed, same inputs => bit-identical outputs on CPU: merges (wm, am, ste), training and
a reduction. Results are compared as written to disk, which is what experiments rely on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from permerge import api
from permerge.reduce import read_reduced, reduce_dataset

MERGE_DATA = ["mnist@5", "fashion-mnist@5"]


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys() and ta
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k


@pytest.fixture(scope="module")
def pair(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny MLPs trained for one epoch on 10 images per class (the first is reused by the
    training test below)."""
    out = tmp_path_factory.mktemp("determinism")
    for name, ds, seed in (("a", "mnist@10", 0), ("b", "fashion-mnist@10", 1)):
        api.train(
            ds,
            model="mlp:16",
            seed=seed,
            epochs=1,
            batch_size=50,
            out=out / name,
            data_root=shared_data,
            progress=False,
        )
    return out / "a", out / "b"


def test_training_is_deterministic(pair: tuple[Path, Path], shared_data: Path, tmp_path: Path) -> None:
    again = api.train(
        "mnist@10",
        model="mlp:16",
        seed=0,
        epochs=1,
        batch_size=50,
        out=tmp_path / "a",
        data_root=shared_data,
        progress=False,
    )
    assert_same_tensors(pair[0] / "model.safetensors", tmp_path / "a" / "model.safetensors")
    other = api.train(
        "mnist@10", model="mlp:16", seed=1, epochs=1, batch_size=50, data_root=shared_data, progress=False
    )
    assert not torch.equal(other.model.state_dict()["1.weight"], again.model.state_dict()["1.weight"])  # seed matters


@pytest.mark.parametrize(
    ("method", "options"),
    [("wm", None), ("am", None), ("ste", {"steps": 3, "batch_size": 20})],
)
def test_merge_is_deterministic(
    pair: tuple[Path, Path], shared_data: Path, tmp_path: Path, method: str, options: dict[str, int] | None
) -> None:
    reports = []
    for run in ("first", "second"):
        reports.append(
            api.merge(
                *pair,
                method=method,
                data=MERGE_DATA,
                options=options,
                seed=7,
                out=tmp_path / run,
                data_root=shared_data,
                progress=False,
            )
        )
    for name in ("model.safetensors", "permutation.safetensors"):
        assert_same_tensors(tmp_path / "first" / name, tmp_path / "second" / name)
    assert reports[0]["scores"] == reports[1]["scores"]


def test_reduction_is_deterministic(shared_data: Path, tmp_path: Path) -> None:
    opts = {"iterations": 2, "net": "mlp:8", "batch_real": 8}
    for run in ("first", "second"):
        reduce_dataset(
            "mnist@20",
            "dm",
            2,
            seed=5,
            out=tmp_path / f"{run}.safetensors",
            data_root=shared_data,
            progress=False,
            **opts,
        )
    assert_same_tensors(tmp_path / "first.safetensors", tmp_path / "second.safetensors")
    a, b = read_reduced(tmp_path / "first.safetensors"), read_reduced(tmp_path / "second.safetensors")
    assert a.meta["info"]["loss_history"] == b.meta["info"]["loss_history"]
