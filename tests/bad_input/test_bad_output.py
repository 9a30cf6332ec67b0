"""Outputs that cannot be written: read-only folders, files in the way, writes failing half
way. The error is one line, and whatever was at the destination before is left intact."""

from __future__ import annotations

import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from permerge import api
from permerge import checkpoint as ckpt_mod
from permerge.checkpoint import load_checkpoint, save_checkpoint
from permerge.errors import ModelError, OutputError, PermergeError
from permerge.models import build_model, model_config_for
from permerge.reduce import read_reduced, reduce_dataset
from permerge.reduce import reduced_set as reduced_mod

from ._helpers import api_error, save_tiny


def _permissions_enforced() -> bool:
    """False for root (``os.geteuid() == 0``) unless it runs without CAP_DAC_OVERRIDE: probe
    by trying to write into a read-only folder."""
    with tempfile.TemporaryDirectory() as d:
        locked = Path(d) / "locked"
        locked.mkdir(mode=stat.S_IRUSR | stat.S_IXUSR)
        try:
            (locked / "probe").write_text("x")
        except PermissionError:
            return True
        finally:
            locked.chmod(stat.S_IRWXU)
    return False


needs_permissions = pytest.mark.skipif(not _permissions_enforced(), reason="root ignores file permissions")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """Make folders read-only for one test; permissions are restored so tmp_path can be cleaned."""
    made: list[Path] = []

    def make(p: Path) -> Path:
        p.mkdir(parents=True, exist_ok=True)
        p.chmod(stat.S_IRUSR | stat.S_IXUSR)
        made.append(p)
        return p

    yield make
    for p in made:
        p.chmod(stat.S_IRWXU)


# --- destinations that cannot be written ------------------------------------------------------


@needs_permissions
def test_merge_into_read_only_folder(
    tmp_path: Path,
    tiny_pair: tuple[Path, Path],
    shared_data: Path,
    read_only: Callable[[Path], Path],
    cli_error: Callable[..., str],
) -> None:
    parent = read_only(tmp_path / "locked")
    line = cli_error("merge", *tiny_pair, "-o", parent / "merged", "--data-root", shared_data, "-q")
    assert f"cannot create output folder {parent / 'merged'}: Permission denied" in line


@needs_permissions
def test_train_into_read_only_checkpoint_keeps_it(
    tmp_path: Path, shared_data: Path, read_only: Callable[[Path], Path], cli_error: Callable[..., str]
) -> None:
    old = save_tiny(tmp_path / "old")
    before = _snapshot(old)
    read_only(old)
    line = cli_error(
        "train", "-d", "mnist@2", "-m", "mlp:4", "--epochs", "1", "-o", old, "--data-root", shared_data, "-q"
    )
    assert str(old) in line and "Permission denied" in line
    assert _snapshot(old) == before


@needs_permissions
def test_reduce_into_read_only_folder(
    tmp_path: Path, shared_data: Path, read_only: Callable[[Path], Path], cli_error: Callable[..., str]
) -> None:
    locked = read_only(tmp_path / "locked")
    line = cli_error(
        "reduce",
        "-d",
        "mnist@2",
        "--method",
        "random",
        "--ipc",
        "1",
        "-o",
        locked / "r.safetensors",
        "--data-root",
        shared_data,
    )
    assert f"cannot write {locked / 'r.safetensors'}: Permission denied" in line


def test_output_folder_under_a_file(
    tmp_path: Path, tiny_pair: tuple[Path, Path], shared_data: Path, cli_error: Callable[..., str]
) -> None:
    """Works as root too: a regular file where a folder must go."""
    (tmp_path / "file").write_text("i am a file")
    line = cli_error("merge", *tiny_pair, "-o", tmp_path / "file" / "merged", "--data-root", shared_data, "-q")
    assert f"cannot create output folder {tmp_path / 'file' / 'merged'}: Not a directory" in line
    assert (tmp_path / "file").read_text() == "i am a file"


@pytest.mark.parametrize("command", [["merge", "--method", "ensemble"], ["interpolate", "--points", "3"]])
def test_out_is_an_existing_file(
    tmp_path: Path, tiny_pair: tuple[Path, Path], shared_data: Path, cli_error: Callable[..., str], command: list[str]
) -> None:
    """``merge --method ensemble`` and ``interpolate`` created their folder with a bare mkdir:
    a FileExistsError traceback."""
    target = tmp_path / "taken"
    target.write_text("keep me")
    line = cli_error(command[0], *tiny_pair, *command[1:], "-o", target, "--data-root", shared_data, "-q")
    assert f"cannot create output folder {target}: File exists" in line
    assert target.read_text() == "keep me"


def test_reduce_out_is_a_folder(tmp_path: Path, shared_data: Path, cli_error: Callable[..., str]) -> None:
    (tmp_path / "dir.safetensors").mkdir()
    line = cli_error(
        "reduce",
        "-d",
        "mnist@2",
        "--method",
        "random",
        "--ipc",
        "1",
        "-o",
        tmp_path / "dir.safetensors",
        "--data-root",
        shared_data,
    )
    assert f"{tmp_path / 'dir.safetensors'}: Is a directory" in line
    assert list((tmp_path / "dir.safetensors").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.safetensors"]  # no temp files left behind


def test_merge_report_path_is_a_folder(tmp_path: Path, tiny_pair: tuple[Path, Path], shared_data: Path) -> None:
    """A folder where merge.json goes may hold anything: the output folder is not replaced."""
    out = tmp_path / "merged"
    (out / "merge.json").mkdir(parents=True)
    msg = api_error(
        OutputError, api.merge, *tiny_pair, method="average", out=out, data_root=shared_data, progress=False
    )
    assert f"--out {out} holds files permerge did not write (merge.json/)" in msg
    assert (out / "merge.json").is_dir()


# --- failed writes keep what was there --------------------------------------------------------


def _fill(ckpt: Path) -> None:
    """A model file that differs from anything merge would write."""
    model = load_checkpoint(ckpt).model
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.25)
    cfg = load_checkpoint(ckpt).config
    save_checkpoint(ckpt, model, cfg, {"dataset": "mnist", "marker": "previous"})


def test_failed_weights_write_keeps_previous_merge(
    tmp_path: Path, tiny_pair: tuple[Path, Path], shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = save_tiny(tmp_path / "merged")
    _fill(out)
    before = _snapshot(out)

    def disk_full(state, filename, metadata=None):  # type: ignore[no-untyped-def]
        Path(filename).write_bytes(b"half a tensor")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "save_file", disk_full)
    msg = api_error(OutputError, api.merge, *tiny_pair, method="wm", out=out, data_root=shared_data, progress=False)
    assert f"cannot write {out}: No space left on device; its previous contents are kept" in msg
    assert _snapshot(out) == before  # same files, same bytes, no temp files
    assert load_checkpoint(out).meta["marker"] == "previous"


def test_failed_metadata_write_keeps_weights_and_json_paired(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The weights used to be renamed into place before model.json was written: a failure in
    between left new weights (another width) next to the old config, an unloadable pair."""
    out = save_tiny(tmp_path / "ck", "mlp:16")
    before = _snapshot(out)

    def no_space(*args: object, **kwargs: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "dumps", no_space)
    cfg = model_config_for("mlp:8", (1, 28, 28))
    msg = api_error(OutputError, save_checkpoint, out, build_model(cfg), cfg, {"dataset": "mnist"})
    assert "No space left on device" in msg
    monkeypatch.undo()
    assert _snapshot(out) == before
    assert load_checkpoint(out).config.hidden == (16,)


def test_refused_nan_model_keeps_previous(tmp_path: Path) -> None:
    out = save_tiny(tmp_path / "ck")
    before = _snapshot(out)
    cfg = model_config_for("mlp:16", (1, 28, 28))
    model = build_model(cfg)
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")  # type: ignore[index]
    msg = api_error(ModelError, save_checkpoint, out, model, cfg)
    assert "refusing to save model: tensor '1.weight' contains NaN or inf" in msg
    assert _snapshot(out) == before


def test_failed_reduce_write_keeps_previous_set(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "r.safetensors"
    reduce_dataset("mnist@2", "random", 1, seed=0, out=out, data_root=shared_data, progress=False)
    before = _snapshot(tmp_path)

    def disk_full(tensors, filename, metadata=None):  # type: ignore[no-untyped-def]
        Path(filename).write_bytes(b"\x00" * 10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(reduced_mod, "save_file", disk_full)
    msg = api_error(
        PermergeError, reduce_dataset, "mnist@2", "random", 1, seed=1, out=out, data_root=shared_data, progress=False
    )
    assert f"cannot write reduced set to {out}: No space left on device" in msg
    assert _snapshot(tmp_path) == before
    assert read_reduced(out).meta["seed"] == 0
