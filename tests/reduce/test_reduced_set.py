from __future__ import annotations

from pathlib import Path

import pytest
import torch

from permerge.data import ImageSet, load_dataset
from permerge.errors import DataError
from permerge.reduce import ReducedSet, load_reduced, read_reduced, reduce_dataset


def _sample() -> ReducedSet:
    g = torch.Generator().manual_seed(0)
    return ReducedSet(
        images=torch.rand(6, 1, 4, 4, generator=g),
        labels=torch.tensor([0, 0, 1, 1, 2, 2]),
        meta={
            "method": "x",
            "ipc": 2,
            "source": "mnist",
            "num_classes": 3,
            "normalization": {"mean": [0.5], "std": [0.25]},
            "hyperparameters": {"a": 1.5},
        },
        source_indices=torch.tensor([5, 9, 1, 2, 7, 3]),
        weights=torch.tensor([1.0, 2, 3, 4, 5, 6]),
    )


def test_round_trip_exact(tmp_path: Path) -> None:
    rs = _sample()
    path = rs.save(tmp_path / "set.safetensors")
    assert (tmp_path / "set.json").is_file() and (tmp_path / "set.png").stat().st_size > 0
    back = read_reduced(path)
    assert torch.equal(back.images, rs.images) and torch.equal(back.labels, rs.labels)
    assert torch.equal(back.source_indices, rs.source_indices)  # type: ignore[arg-type]
    assert torch.equal(back.weights, rs.weights)  # type: ignore[arg-type]
    assert back.meta == rs.meta
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind


def test_load_dataset_reduced_spec(tmp_path: Path, mnist20: ImageSet) -> None:
    out = tmp_path / "r.safetensors"
    rs = reduce_dataset(mnist20, "herding", 2, out=out, progress=False)
    ds = load_dataset(f"reduced:{out}")
    assert isinstance(ds, ImageSet) and ds.name == "reduced:r.safetensors"
    assert torch.equal(ds.images, rs.images) and ds.images.dtype == torch.float32
    assert ds.normalization == mnist20.normalization
    assert ds.meta["source"] == mnist20.name and ds.meta["method"] == "herding"
    assert torch.equal(ds.source_indices, rs.source_indices)  # type: ignore[arg-type]
    assert ds.class_names == mnist20.class_names
    x, y = next(ds.batches(5))
    assert x.shape == (5, 1, 28, 28) and y.dtype == torch.int64


def test_metadata_records_how(tmp_path: Path, mnist20: ImageSet) -> None:
    rs = reduce_dataset(
        mnist20,
        "dm",
        1,
        iterations=2,
        net="convnet:4",
        batch_real=4,
        seed=7,
        progress=False,
        out=tmp_path / "d.safetensors",
    )
    meta = read_reduced(tmp_path / "d.safetensors").meta
    assert meta["seed"] == 7 and meta["hyperparameters"]["iterations"] == 2
    assert meta["hyperparameters"]["lr_img"] == 1.0  # defaults recorded too
    assert meta["image_shape"] == [1, 28, 28] and meta["wall_time_s"] >= 0
    assert rs.meta["kind"] == "condensation"


def test_truncated_and_garbage_files(tmp_path: Path) -> None:
    path = _sample().save(tmp_path / "ok.safetensors", grid=False)
    blob = path.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError) as e:
        load_reduced(bad)
    assert "\n" not in str(e.value)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DataError):
        load_reduced(tmp_path / "junk.safetensors")
    with pytest.raises(DataError, match="no such"):
        load_reduced(tmp_path / "missing.safetensors")


def test_foreign_safetensors_rejected(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    p = tmp_path / "foreign.safetensors"
    save_file({"images": torch.zeros(1, 1, 2, 2)}, str(p))
    with pytest.raises(DataError, match="permerge metadata"):
        load_reduced(p)


def test_spec_string_source(tmp_path: Path, data_root: Path) -> None:
    rs = reduce_dataset("mnist@20", "random", 2, data_root=data_root, progress=False)
    assert rs.meta["source"] == "mnist@20" and rs.meta["source_size"] == 200
    assert rs.to_imageset().normalization == load_dataset("mnist@20", data_root=data_root).normalization
