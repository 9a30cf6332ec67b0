"""Bad names and values: unknown methods / datasets / architectures, lam out of range,
merge data that cannot drive an alignment, impossible training and reduction options."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from permerge import api
from permerge.data import ImageSet
from permerge.data.mergedata import MergeData
from permerge.errors import DataError, ModelError, PermergeError
from permerge.models import model_config_for
from permerge.reduce import reduce_dataset

from ._helpers import api_error, assert_subprocess_user_error, run_subprocess

# --- unknown names ---------------------------------------------------------------------


def test_unknown_merge_method_via_cli(
    tiny_pair: tuple[Path, Path], shared_data: Path, cli_error: Callable[..., str]
) -> None:
    line = cli_error("merge", *tiny_pair, "--method", "magic", "--data-root", shared_data)
    assert "unknown merge method 'magic'; known: average, ensemble" in line


def test_unknown_merge_method_via_api(tiny_pair: tuple[Path, Path], shared_data: Path) -> None:
    msg = api_error(PermergeError, api.merge, *tiny_pair, method="git-rebasin", data_root=shared_data, progress=False)
    assert "unknown merge method 'git-rebasin'" in msg


def test_unknown_architecture_via_cli(tmp_path: Path, shared_data: Path, cli_error: Callable[..., str]) -> None:
    line = cli_error("train", "-d", "mnist@5", "-m", "transformer", "-o", tmp_path / "o", "--data-root", shared_data)
    assert "unknown model 'transformer'; known: cnn, mlp" in line


@pytest.mark.parametrize(
    ("arch", "needle"),
    [
        ("mlp:0", "invalid model config for 'mlp:0': hidden: hidden widths must be positive"),
        ("mlp:16xabc", "bad MLP widths in 'mlp:16xabc'"),
        ("vgg11:inf", "invalid model config for 'vgg11:inf': width: Input should be a finite number"),
        ("resnet20:x-1", "width: Input should be greater than 0"),
    ],
    ids=["zero-width", "not-a-number", "infinite", "negative"],
)
def test_bad_architecture_spec(arch: str, needle: str) -> None:
    """pydantic's multi-line report used to reach the user; vgg11:inf was accepted."""
    assert needle in api_error(ModelError, model_config_for, arch, (1, 28, 28))


def test_unknown_dataset_via_real_cli(tmp_path: Path) -> None:
    p = run_subprocess("train", "-d", "svhn@10", "-o", tmp_path / "o")
    assert_subprocess_user_error(p, "unknown dataset 'svhn@10'")


def test_unknown_reduce_method_via_cli(tmp_path: Path, shared_data: Path, cli_error: Callable[..., str]) -> None:
    line = cli_error(
        "reduce",
        "-d",
        "mnist@5",
        "--method",
        "distill",
        "--ipc",
        "1",
        "-o",
        tmp_path / "r.safetensors",
        "--data-root",
        shared_data,
    )
    assert "unknown reduction method 'distill'; known: dc, dm" in line
    assert not (tmp_path / "r.safetensors").exists()


def test_unknown_device(tiny_pair: tuple[Path, Path], shared_data: Path, cli_error: Callable[..., str]) -> None:
    line = cli_error("eval", tiny_pair[0], "--device", "tpu", "--data-root", shared_data)
    assert "unknown device 'tpu'" in line


# --- images per class -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ipc", "needle"),
    [
        ("6", "asked for 6 images per class but class 0 of mnist@5 has only 5"),
        ("0", "images per class must be a positive integer, got 0"),
        ("-2", "images per class must be a positive integer, got -2"),
    ],
    ids=["too-many", "zero", "negative"],
)
def test_reduce_bad_ipc_via_cli(
    tmp_path: Path, shared_data: Path, cli_error: Callable[..., str], ipc: str, needle: str
) -> None:
    out = tmp_path / "r.safetensors"
    line = cli_error(
        "reduce", "-d", "mnist@5", "--method", "random", "--ipc", ipc, "-o", out, "--data-root", shared_data
    )
    assert needle in line and not out.exists()


# --- reduction hyperparameters --------------------------------------------------------------


@pytest.fixture
def toy() -> ImageSet:
    g = torch.Generator().manual_seed(0)
    return ImageSet(
        images=torch.rand(12, 1, 4, 4, generator=g),
        labels=torch.arange(3).repeat_interleave(4),
        name="toy",
        num_classes=3,
    )


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"lr_img": "abc"}, "invalid option lr_img='abc' for method 'dm': Input should be a valid number"),
        ({"iterations": -3}, "invalid option iterations=-3 for method 'dm': must be a finite number >= 0"),
        ({"iterations": 1.5}, "iterations=1.5 for method 'dm': Input should be a valid integer"),
        ({"iterations": True}, "expected a number, got a boolean"),
        ({"batch_real": 0}, "invalid option batch_real=0 for method 'dm': must be a positive integer"),
        ({"lr_img": float("nan")}, "must be a finite number >= 0"),
        ({"net": 5}, "invalid option net=5 for method 'dm': Input should be a valid string"),
        ({"net": "convnet:0"}, "bad ConvNet width in 'convnet:0'"),
    ],
    ids=[
        "str-for-float",
        "negative",
        "fractional-int",
        "bool-for-int",
        "zero-batch",
        "nan",
        "int-for-str",
        "convnet-0",
    ],
)
def test_reduce_bad_option_values(toy: ImageSet, options: dict[str, object], needle: str) -> None:
    """Values used to reach the optimiser unchecked (TypeError / ValueError tracebacks, or a
    silent no-op for negative iteration counts)."""
    msg = api_error(PermergeError, reduce_dataset, toy, "dm", 1, progress=False, **{"net": "mlp:4", **options})
    assert needle in msg


def test_reduce_bad_option_via_cli(tmp_path: Path, shared_data: Path, cli_error: Callable[..., str]) -> None:
    line = cli_error(
        "reduce",
        "-d",
        "mnist@5",
        "--method",
        "dm",
        "--ipc",
        "1",
        "--opt",
        "lr_img=fast",
        "-o",
        tmp_path / "r.safetensors",
        "--data-root",
        shared_data,
    )
    assert "invalid option lr_img='fast' for method 'dm'" in line


# --- lam ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lam", "needle"),
    [
        ("1.5", "--lam must lie in [0, 1], got 1.5"),
        ("-0.1", "--lam must lie in [0, 1], got -0.1"),
        ("abc", "--lam must be a number or 'auto', got 'abc'"),
        ("nan", "--lam must lie in [0, 1], got nan"),
    ],
    ids=["1.5", "-0.1", "abc", "nan"],
)
def test_bad_lam_via_cli(
    tiny_pair: tuple[Path, Path], shared_data: Path, cli_error: Callable[..., str], lam: str, needle: str
) -> None:
    assert needle in cli_error("merge", *tiny_pair, "--lam", lam, "--data-root", shared_data)


@pytest.mark.parametrize("lam", ["half", True, 2, float("inf")], ids=["str", "bool", "2", "inf"])
def test_bad_lam_via_api(tiny_pair: tuple[Path, Path], shared_data: Path, lam: object) -> None:
    """``True`` used to be taken as lam = 1."""
    msg = api_error(PermergeError, api.merge, *tiny_pair, lam=lam, data_root=shared_data, progress=False)
    assert "--lam must" in msg


def test_lam_auto_without_data(tiny_pair: tuple[Path, Path], shared_data: Path) -> None:
    msg = api_error(PermergeError, api.merge, *tiny_pair, lam="auto", data_root=shared_data, progress=False)
    assert "--lam auto picks lam on merge data: pass --data" in msg


# --- merge data -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["am", "ste"])
def test_single_class_merge_data(tiny_pair: tuple[Path, Path], shared_data: Path, method: str) -> None:
    msg = api_error(
        DataError,
        api.merge,
        *tiny_pair,
        method=method,
        data=["mnist[3]@5", "fashion-mnist[3]@5"],
        options={"steps": 2} if method == "ste" else None,
        data_root=shared_data,
        progress=False,
    )
    assert "merge data holds a single class" in msg


@pytest.mark.parametrize("method", ["am", "ste"])
def test_missing_merge_data_via_cli(
    tiny_pair: tuple[Path, Path], shared_data: Path, cli_error: Callable[..., str], method: str
) -> None:
    line = cli_error("merge", *tiny_pair, "--method", method, "--data", "", "--data-root", shared_data)
    assert f"method {method} needs merge data: pass --data" in line


def test_empty_merge_data(tiny_pair: tuple[Path, Path], shared_data: Path) -> None:
    assert "merge data is empty" in api_error(DataError, MergeData, ())
    empty = ImageSet(images=torch.zeros(0, 1, 28, 28), labels=torch.zeros(0, dtype=torch.long), name="nothing")
    assert "merge data source nothing is empty" in api_error(DataError, MergeData.of, empty)


def test_bad_method_option_via_cli(
    tiny_pair: tuple[Path, Path], shared_data: Path, cli_error: Callable[..., str]
) -> None:
    line = cli_error(
        "merge", *tiny_pair, "--method", "ste", "--data", "mnist@2", "--opt", "steps=0", "--data-root", shared_data
    )
    assert "invalid option 'steps' for method ste" in line
    assert "--opt expects key=value, got 'steps'" in cli_error("merge", *tiny_pair, "--opt", "steps")


# --- training options ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--epochs", "0"], "invalid training option 'epochs': Input should be greater than or equal to 1"),
        (["--optimizer", "lbfgs"], "invalid training option 'optimizer': Input should be 'sgd' or 'adam'"),
        (["--val-fraction", "1"], "invalid training option 'val_fraction': Input should be less than 1"),
        (["--lr", "nan"], "invalid training option 'lr': Input should be greater than 0"),
        (["--precision", "fp8"], "invalid training option 'precision': Input should be 'fp32', 'bf16' or 'fp16'"),
        (["--precision", "fp16", "--device", "cpu"], "precision fp16 needs a CUDA device"),
    ],
    ids=["epochs-0", "optimizer", "val-fraction-1", "lr-nan", "precision-fp8", "fp16-on-cpu"],
)
def test_bad_training_options_via_cli(
    tmp_path: Path, shared_data: Path, cli_error: Callable[..., str], flags: list[str], needle: str
) -> None:
    """pydantic's ValidationError used to escape as a traceback."""
    out = tmp_path / "o"
    assert needle in cli_error("train", "-d", "mnist@5", *flags, "-o", out, "--data-root", shared_data, "-q")
    assert not out.exists()


def test_usage_errors_are_one_line(tiny_pair: tuple[Path, Path], cli_error: Callable[..., str]) -> None:
    assert "Invalid value for '--seed'" in cli_error("merge", *tiny_pair, "--seed", "x")
    assert "Missing argument" in cli_error("merge", tiny_pair[0])
