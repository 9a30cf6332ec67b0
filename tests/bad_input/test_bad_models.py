"""Bad model files and mismatched models: every defect of ``model.safetensors`` /
``model.json``, pickles that would run code, and models that cannot be merged or fed."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from permerge import api
from permerge.checkpoint import load_checkpoint
from permerge.errors import ModelError

from ._helpers import api_error, assert_subprocess_user_error, run_subprocess, save_tiny


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return save_tiny(tmp_path / "ck")


def _rewrite(ckpt: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    state = load_file(str(ckpt / "model.safetensors"))
    edit(state)
    save_file(state, str(ckpt / "model.safetensors"))


# --- model.safetensors ------------------------------------------------------------------

TENSOR_CASES: dict[str, tuple[Callable[[dict[str, torch.Tensor]], None], str]] = {
    "missing-tensor": (lambda s: s.pop("3.weight"), "missing tensors ['3.weight']"),
    "extra-tensor": (
        lambda s: s.__setitem__("backdoor.weight", torch.zeros(2)),
        "unexpected tensors ['backdoor.weight']",
    ),
    "wrong-shape": (
        lambda s: s.__setitem__("1.weight", torch.zeros(16, 100)),
        "tensor '1.weight' has shape (16, 100), architecture expects (16, 784)",
    ),
    "nan": (lambda s: s["1.weight"].__setitem__((0, 0), float("nan")), "tensor '1.weight' contains NaN or inf"),
    "inf": (lambda s: s["3.bias"].__setitem__(2, float("-inf")), "tensor '3.bias' contains NaN or inf"),
    # used to load silently: integers cast to float weights
    "integer-weights": (
        lambda s: s.__setitem__("1.weight", s["1.weight"].long()),
        "tensor '1.weight' has dtype torch.int64, architecture expects torch.float32",
    ),
}


@pytest.mark.parametrize("case", list(TENSOR_CASES))
def test_bad_tensors(ckpt: Path, case: str) -> None:
    edit, needle = TENSOR_CASES[case]
    _rewrite(ckpt, edit)
    msg = api_error(ModelError, load_checkpoint, ckpt)
    assert msg.startswith(f"{ckpt / 'model.safetensors'}: ") and needle in msg


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda b: b[:-40],
        lambda b: b[:5],
        lambda b: b"",
        lambda b: os.urandom(64) + b[64:],
        lambda b: (2**62).to_bytes(8, "little") + b[8:],
    ],
    ids=["truncated-data", "truncated-header", "empty", "garbage-header", "huge-header-length"],
)
def test_corrupt_safetensors(ckpt: Path, corrupt: Callable[[bytes], bytes]) -> None:
    weights = ckpt / "model.safetensors"
    weights.write_bytes(corrupt(weights.read_bytes()))
    msg = api_error(ModelError, load_checkpoint, ckpt)
    assert msg.startswith(f"{weights}: corrupt or truncated safetensors file")


def test_truncated_safetensors_via_cli(ckpt: Path, tiny_pair: tuple[Path, Path], cli_error: Callable[..., str]) -> None:
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    line = cli_error("merge", tiny_pair[0], ckpt, "--method", "wm")
    assert f"{weights}: corrupt or truncated safetensors file" in line


# --- model.json ------------------------------------------------------------------------

JSON_CASES = {
    "not-json": ('{"config": {"arch": "mlp",', "model.json: not valid JSON"),
    "binary": ("\x00\xff".encode("latin-1"), "model.json: not valid JSON"),
    "a-list": ("[1, 2, 3]", "model.json: no 'config' entry"),
    "no-config": ('{"dataset": "mnist"}', "model.json: no 'config' entry"),
    "unknown-arch": ('{"config": {"arch": "transformer"}}', "config (arch: Input should be"),
    "unknown-field": ('{"config": {"arch": "mlp", "dropout": 0.5}}', "config (dropout: Extra inputs"),
    "negative-width": ('{"config": {"arch": "mlp", "hidden": [-4]}}', "hidden widths must be positive"),
    "channels-on-an-mlp": ('{"config": {"arch": "mlp", "channels": [4]}}', "per-layer channels are for"),
    "channels-miscounted": ('{"config": {"arch": "cnn", "channels": [4, 4]}}', "cnn takes 4 channel counts, got 2"),
    "channels-and-width": (
        '{"config": {"arch": "cnn", "width": 2, "channels": [4, 4, 4, 4]}}',
        "either a width multiplier or per-layer channels",
    ),
}


@pytest.mark.parametrize("case", list(JSON_CASES))
def test_corrupt_model_json(ckpt: Path, case: str) -> None:
    content, needle = JSON_CASES[case]
    meta = ckpt / "model.json"
    meta.write_bytes(content if isinstance(content, bytes) else content.encode())
    msg = api_error(ModelError, load_checkpoint, ckpt)
    assert str(ckpt) in msg and needle in msg


def test_model_json_demanding_a_huge_model(ckpt: Path) -> None:
    """A crafted config (a 10^6-unit hidden layer: 3 GB of weights) is refused from the small
    weights file's shapes before any memory is allocated (it used to fail allocating); wider
    layers are refused by the config's own limits (see test_corpus.py)."""
    meta = ckpt / "model.json"
    record = json.loads(meta.read_text())
    record["config"]["hidden"] = [1_000_000]
    meta.write_text(json.dumps(record))
    t0 = time.perf_counter()
    msg = api_error(ModelError, load_checkpoint, ckpt)
    assert "architecture expects (1000000, 784)" in msg
    assert time.perf_counter() - t0 < 5


def test_missing_model_json(ckpt: Path) -> None:
    (ckpt / "model.json").unlink()
    assert "model.json is missing" in api_error(ModelError, load_checkpoint, ckpt / "model.safetensors")


def test_nonexistent_model_via_cli(tmp_path: Path, tiny_pair: tuple[Path, Path], cli_error: Callable[..., str]) -> None:
    line = cli_error("eval", tmp_path / "no-such-model")
    assert f"{tmp_path / 'no-such-model'}: no such model file or folder" in line


# --- pickles ---------------------------------------------------------------------------


class _Payload:
    """Pickles to ``os.system("touch MARKER")``: loading it unsafely creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _evil_checkpoint(tmp_path: Path, suffix: str, marker: Path) -> Path:
    d = tmp_path / f"evil{suffix.replace('.', '-')}"
    d.mkdir()
    shutil.copy(save_tiny(tmp_path / "donor") / "model.json", d / "model.json")
    weights = d / f"model{suffix}"
    torch.save({"1.weight": torch.zeros(16, 784), "payload": _Payload(marker)}, weights)
    return weights


def test_pickle_payload_is_live(tmp_path: Path) -> None:
    """Control: the payload does run code when unpickled, so the refusals below mean something.

    It unpickles the bytes this test just made (the same object ``_evil_checkpoint`` embeds);
    no file is ever loaded with ``weights_only=False``."""
    marker = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(_Payload(marker)))  # noqa: S301 - our own bytes, on purpose
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
def test_malicious_pickle_is_refused(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "pwned"
    weights = _evil_checkpoint(tmp_path, suffix, marker)
    msg = api_error(ModelError, load_checkpoint, weights)
    assert msg.startswith(f"{weights}: refused or unreadable torch file")
    assert not marker.exists()


def test_malicious_pickle_via_real_cli(tmp_path: Path, tiny_pair: tuple[Path, Path]) -> None:
    marker = tmp_path / "pwned"
    weights = _evil_checkpoint(tmp_path, ".bin", marker)
    p = run_subprocess("merge", tiny_pair[0], weights, "--method", "wm")
    assert_subprocess_user_error(p, "refused or unreadable torch file")
    assert not marker.exists()


def test_torch_file_without_tensors(tmp_path: Path) -> None:
    d = save_tiny(tmp_path / "ck")
    torch.save({"epoch": 3, "lr": 0.1}, d / "model.pt")
    assert "expected a state dict of tensors" in api_error(ModelError, load_checkpoint, d / "model.pt")


# --- models that do not fit together -----------------------------------------------------------


def test_merge_different_widths(tmp_path: Path, tiny_pair: tuple[Path, Path], shared_data: Path) -> None:
    wide = save_tiny(tmp_path / "wide", "mlp:32", dataset="fashion-mnist")
    msg = api_error(ModelError, api.merge, tiny_pair[0], wide, method="wm", data_root=shared_data, progress=False)
    assert "models have different architectures: {'hidden': ((16,), (32,))}" in msg


def test_merge_different_architectures_via_cli(
    tmp_path: Path, tiny_pair: tuple[Path, Path], shared_data: Path, cli_error: Callable[..., str]
) -> None:
    cnn = save_tiny(tmp_path / "cnn", "cnn", dataset="fashion-mnist")
    line = cli_error("merge", tiny_pair[0], cnn, "--method", "average", "--data-root", shared_data)
    assert "models have different architectures" in line and "'arch': ('mlp', 'cnn')" in line


def test_eval_on_images_of_another_shape(tmp_path: Path, shared_data: Path, cli_error: Callable[..., str]) -> None:
    """A CIFAR-10 model on MNIST used to die in a matmul with a bare shape error."""
    cifar = save_tiny(tmp_path / "cifar", in_shape=(3, 32, 32), dataset="cifar10")
    line = cli_error("eval", cifar, "--datasets", "mnist", "--data-root", shared_data)
    assert "model takes images of shape (3, 32, 32), but mnist has (1, 28, 28)" in line


def test_merge_data_of_another_shape(tiny_pair: tuple[Path, Path], shared_data: Path) -> None:
    msg = api_error(
        ModelError, api.merge, *tiny_pair, method="am", data=["cifar10@1"], data_root=shared_data, progress=False
    )
    assert "model takes images of shape (1, 28, 28), but cifar10@1 has (3, 32, 32)" in msg
