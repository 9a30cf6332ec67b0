"""Checkpoints: exact round trips, validation of everything loaded, no code execution, and
atomic saves."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from permerge import checkpoint as ckpt_mod
from permerge.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from permerge.errors import ModelError, OutputError
from permerge.models import build_model, model_config_for


def _trained_like(arch: str = "resnet20", in_shape=(3, 32, 32), **kw):  # type: ignore[no-untyped-def]
    """A model whose every tensor (BN statistics and counters included) is non-default."""
    torch.manual_seed(0)
    cfg = model_config_for(arch, in_shape, **kw)
    model = build_model(cfg)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t).abs() if "running_var" in name else torch.randn_like(t))
            else:
                t.fill_(17)  # num_batches_tracked
    return model, cfg


@pytest.fixture
def saved(tmp_path):  # type: ignore[no-untyped-def]
    model, cfg = _trained_like("mlp:32x16", (1, 28, 28))
    out = save_checkpoint(tmp_path / "ck", model, cfg, {"dataset": "mnist", "acc": 97.25})
    return out, model, cfg


def test_round_trip_bit_exact(tmp_path):
    model, cfg = _trained_like()
    meta = {"dataset": "cifar10[0-4]", "acc": 91.5, "seed": 3, "train": {"epochs": 2, "lr": 0.1}}
    out = save_checkpoint(tmp_path / "ck", model, cfg, meta)
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    ck = load_checkpoint(out)
    a, b = model.state_dict(), ck.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert ck.config == cfg and ck.meta == meta and ck.dataset == "cifar10[0-4]"
    assert ck.path == out and not ck.model.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), ck.model(x))


def test_load_weights_file_path(saved):
    out, model, cfg = saved
    ck = load_checkpoint(out / "model.safetensors")
    assert ck.config == cfg
    assert all(torch.equal(v, ck.model.state_dict()[k]) for k, v in model.state_dict().items())


def test_meta_cannot_override_config(tmp_path):
    model, cfg = _trained_like("mlp:8", (1, 28, 28))
    other = model_config_for("mlp:99", (1, 28, 28)).model_dump(mode="json")
    out = save_checkpoint(tmp_path / "ck", model, cfg, {"config": other, "dataset": "mnist"})
    ck = load_checkpoint(out)
    assert ck.config == cfg and ck.dataset == "mnist"


def test_missing_or_bad_paths(tmp_path, saved):
    out, _, _ = saved
    with pytest.raises(ModelError, match="no such model file or folder"):
        load_checkpoint(tmp_path / "nope")
    (out / "model.json").unlink()
    with pytest.raises(ModelError, match="model.json is missing"):
        load_checkpoint(out)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError):
        load_checkpoint(empty)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "not valid JSON"),
        ('["config"]', "no 'config' entry"),
        ('{"dataset": "mnist"}', "no 'config' entry"),
        ('{"config": {"arch": "lstm"}}', "invalid architecture config"),
        ('{"config": {"arch": "mlp", "hidden": [0]}}', "invalid architecture config"),
    ],
)
def test_bad_model_json(saved, text, needle):
    out, _, _ = saved
    (out / "model.json").write_text(text)
    with pytest.raises(ModelError, match=needle):
        load_checkpoint(out)


@pytest.mark.parametrize("keep", [0, 7, 20, 100, -1])
def test_truncated_safetensors(saved, keep):
    out, _, _ = saved
    w = out / "model.safetensors"
    raw = w.read_bytes()
    w.write_bytes(raw[:keep] if keep >= 0 else raw[:-1])
    with pytest.raises(ModelError, match="corrupt or truncated safetensors") as e:
        load_checkpoint(out)
    assert str(w) in str(e.value)


def _rewrite(out: Path, state: dict[str, torch.Tensor]) -> None:
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))


def test_missing_tensor(saved):
    out, model, _ = saved
    state = dict(model.state_dict())
    del state["3.bias"]
    _rewrite(out, state)
    with pytest.raises(ModelError, match=r"missing tensors \['3.bias'\]"):
        load_checkpoint(out)


def test_extra_tensor(saved):
    out, model, _ = saved
    _rewrite(out, {**model.state_dict(), "9.weight": torch.zeros(2)})
    with pytest.raises(ModelError, match=r"unexpected tensors \['9.weight'\]"):
        load_checkpoint(out)


def test_wrong_shape(saved):
    out, model, _ = saved
    _rewrite(out, {**model.state_dict(), "3.weight": torch.zeros(16, 33)})
    with pytest.raises(ModelError, match=r"'3.weight' has shape \(16, 33\), architecture expects \(16, 32\)"):
        load_checkpoint(out)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weight(saved, bad):
    out, model, _ = saved
    w = model.state_dict()["1.weight"].clone()
    w[3, 5] = bad
    _rewrite(out, {**model.state_dict(), "1.weight": w})
    with pytest.raises(ModelError, match="'1.weight' contains NaN or inf"):
        load_checkpoint(out)


def test_save_refuses_nan(tmp_path):
    model, cfg = _trained_like("mlp:8", (1, 28, 28))
    with torch.no_grad():
        model[1].bias[0] = float("nan")
    with pytest.raises(ModelError, match="refusing to save"):
        save_checkpoint(tmp_path / "ck", model, cfg)
    assert not (tmp_path / "ck" / "model.safetensors").exists()


def test_save_to_unwritable_place(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    model, cfg = _trained_like("mlp:8", (1, 28, 28))
    with pytest.raises(OutputError, match="cannot create output folder"):
        save_checkpoint(blocker / "sub", model, cfg)


# --- foreign .pt files -----------------------------------------------------------------


class _Payload:
    """Unpickling this runs a shell command (the classic malicious-checkpoint trick)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch-zip", "torch-legacy", "raw-pickle"])
def test_malicious_pickle_is_refused(tmp_path, saved, writer):
    _, model, _ = saved
    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(saved[0] / "model.json", folder / "model.json")
    marker = tmp_path / "PWNED"
    obj = {**model.state_dict(), "extra": _Payload(marker)}
    pt = folder / "model.pt"
    if writer == "torch-zip":
        torch.save(obj, pt)
    elif writer == "torch-legacy":
        torch.save(obj, pt, _use_new_zipfile_serialization=False)
    else:
        pt.write_bytes(pickle.dumps(obj))
    with pytest.raises(ModelError, match="refused or unreadable torch file"):
        load_checkpoint(pt)
    assert not marker.exists(), "the pickle payload ran"
    if writer == "raw-pickle":
        # the file really is live: an unsafe load runs the payload
        pickle.loads(pt.read_bytes())
        assert marker.exists()


@pytest.mark.parametrize("wrapped", [False, True])
def test_legit_pt_state_dict(tmp_path, saved, wrapped):
    out, model, cfg = saved
    folder = tmp_path / "foreign"
    folder.mkdir()
    shutil.copy(out / "model.json", folder / "model.json")
    obj = {"state_dict": model.state_dict(), "epoch": 3} if wrapped else model.state_dict()
    torch.save(obj, folder / "weights.pth")
    ck = load_checkpoint(folder / "weights.pth")
    assert ck.config == cfg and ck.meta["dataset"] == "mnist"
    assert all(torch.equal(v, ck.model.state_dict()[k]) for k, v in model.state_dict().items())


def test_pt_needs_model_json(tmp_path, saved):
    torch.save(saved[1].state_dict(), tmp_path / "w.pt")
    with pytest.raises(ModelError, match="model.json is missing"):
        load_checkpoint(tmp_path / "w.pt")


@pytest.mark.parametrize(
    ("obj", "needle"), [({"a": 1}, "state dict of tensors"), ([torch.zeros(1)], "state dict of tensors")]
)
def test_pt_not_a_state_dict(tmp_path, saved, obj, needle):
    shutil.copy(saved[0] / "model.json", tmp_path / "model.json")
    torch.save(obj, tmp_path / "w.pt")
    with pytest.raises(ModelError, match=needle):
        load_checkpoint(tmp_path / "w.pt")


def test_pt_truncated(tmp_path, saved):
    shutil.copy(saved[0] / "model.json", tmp_path / "model.json")
    torch.save(saved[1].state_dict(), tmp_path / "w.pt")
    raw = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "w.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelError, match="refused or unreadable"):
        load_checkpoint(tmp_path / "w.pt")


# --- compatibility ---------------------------------------------------------------------


def test_check_compatible(tmp_path):
    m1, c1 = _trained_like("resnet20", (3, 32, 32))
    m2, c2 = _trained_like("resnet20:x2", (3, 32, 32))
    a = load_checkpoint(save_checkpoint(tmp_path / "a", m1, c1))
    b = load_checkpoint(save_checkpoint(tmp_path / "b", m2, c2))
    a2 = load_checkpoint(save_checkpoint(tmp_path / "a2", m1, c1, {"dataset": "x"}))
    check_compatible(a, a2)  # same architecture, different metadata: fine
    with pytest.raises(ModelError, match=r"different architectures: \{'width': \(1.0, 2.0\)\}"):
        check_compatible(a, b)
    m3, c3 = _trained_like("resnet20", (3, 32, 32), norm="ln")
    c = load_checkpoint(save_checkpoint(tmp_path / "c", m3, c3))
    with pytest.raises(ModelError, match="norm"):
        check_compatible(a, c)


# --- atomic saves ----------------------------------------------------------------------


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), RuntimeError("killed")])
def test_failed_save_keeps_old_checkpoint(saved, monkeypatch, error):
    out, model, cfg = saved
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    seen: list[Path] = []

    def failing_save_file(state, filename, metadata=None):  # type: ignore[no-untyped-def]
        tmp = Path(filename)
        # writes go to a staging folder beside the target, swapped in only when complete
        assert tmp.parent.parent == out.parent and tmp.parent.name.startswith(f".{out.name}.")
        tmp.write_bytes(b"half a file")
        seen.append(tmp)
        raise error

    monkeypatch.setattr(ckpt_mod, "save_file", failing_save_file)
    new_model, _ = _trained_like("mlp:32x16", (1, 28, 28))
    with torch.no_grad():
        for p in new_model.parameters():
            p.add_(1.0)
    expected = OutputError if isinstance(error, OSError) else type(error)
    with pytest.raises(expected):
        save_checkpoint(out, new_model, cfg, {"dataset": "new"})
    assert seen and not seen[0].exists()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # intact, no temp files
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []  # no staging left
    ck = load_checkpoint(out)
    assert ck.meta["dataset"] == "mnist"
    assert all(torch.equal(v, ck.model.state_dict()[k]) for k, v in model.state_dict().items())


def test_save_overwrites(saved):
    out, model, cfg = saved
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2)
    save_checkpoint(out, model, cfg, {"dataset": "fashion-mnist"})
    ck = load_checkpoint(out)
    assert ck.dataset == "fashion-mnist"
    assert all(torch.equal(v, ck.model.state_dict()[k]) for k, v in model.state_dict().items())
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    assert json.loads((out / "model.json").read_text())["config"]["hidden"] == [32, 16]


def test_checkpoint_of_plain_module_is_not_confused(tmp_path):
    """A state dict from a different module with the same keys but other shapes is refused."""
    _, cfg = _trained_like("mlp:32x16", (1, 28, 28))
    other = nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.ReLU(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10))
    out = save_checkpoint(tmp_path / "ck", other, cfg)
    with pytest.raises(ModelError, match="'1.weight' has shape"):
        load_checkpoint(out)
