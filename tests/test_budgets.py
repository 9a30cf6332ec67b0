"""Default budgets chosen from the data (permerge.budgets): training and STE, small and full
data, explicit options winning, the warning for too few steps, and the record in the outputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from permerge import api, budgets
from permerge.align.ste import STEOptions
from permerge.data import ImageSet
from permerge.data.mergedata import MergeData
from permerge.train import TrainConfig, train_model, train_size


def _train(n: int, *, reduced: bool = False, channels: int = 1, val: float | None = None, **given):  # type: ignore[no-untyped-def]
    """A budget for ``n`` images; validation keeps the real per-class rounding of train_val_split."""
    labels = torch.arange(n) % 10
    return budgets.train_budget(
        {**given, **({"val_fraction": val} if val is not None else {})},
        n_images=n,
        n_train=lambda f: train_size(labels, f),
        reduced=reduced,
        channels=channels,
    )


# --- training ----------------------------------------------------------------------------


def test_full_data_gets_the_paper_recipe() -> None:
    cfg, b = _train(60_000)
    assert (cfg.epochs, cfg.steps, cfg.batch_size, cfg.lr, cfg.augment) == (10, None, 500, 0.1, "none")
    assert cfg.val_fraction == pytest.approx(1 / 12)
    assert b.steps == 10 * 110 and b.warning is None  # 55,000 training images at batch 500
    assert set(b.chosen) == {"epochs", "batch_size", "lr", "augment"} and b.given == ()
    assert "1100 steps" in b.line() and "55,000 training images" in b.line()


def test_small_data_gets_enough_steps() -> None:
    cfg, b = _train(7_000)
    assert (cfg.steps, cfg.batch_size, cfg.lr, cfg.augment) == (3000, 256, 0.05, "none")
    assert b.steps == 3000 and b.settings["epochs"] == 3000 // 26 + 1  # ceil(3000 / 26 steps per epoch)


def test_reduced_set_gets_the_dsa_recipe() -> None:
    cfg, b = _train(100, reduced=True)
    assert (cfg.steps, cfg.batch_size, cfg.lr, cfg.augment, cfg.val_fraction) == (3000, 100, 0.05, "dsa", 0.0)
    assert b.steps == 3000 and b.settings["epochs"] == 3000
    assert "a reduced set of 100 images" in b.line() and "augment dsa" in b.line()


def test_tiny_and_colour_sets() -> None:
    assert _train(500)[0].augment == "dsa"  # a few images per class generalise with DSA
    assert _train(20_000, channels=3)[0].augment == "crop-flip"  # the CIFAR standard
    assert _train(5_000, channels=3)[0].augment == "crop-flip"


def test_explicit_options_win() -> None:
    cfg, b = _train(100, reduced=True, epochs=5, lr=0.2, augment="none", batch_size=10, val=0.5)
    assert (cfg.epochs, cfg.steps, cfg.lr, cfg.augment, cfg.batch_size, cfg.val_fraction) == (
        5,
        None,
        0.2,
        "none",
        10,
        0.5,
    )
    assert b.chosen == () and set(b.given) == {"epochs", "lr", "augment", "batch_size", "val_fraction"}
    assert b.steps == 5 * 5 and "(as given)" in b.line()
    cfg, b = _train(60_000, steps=700)  # steps instead of the chosen epochs
    assert cfg.steps == 700 and b.steps == 700 and "epochs" not in b.chosen
    assert _train(60_000, optimizer="adam")[0].lr == 1e-3


def test_too_few_steps_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    _, b = _train(60_000, epochs=1, batch_size=5000)
    assert b.steps == 11 and "only 11 optimisation steps" in (b.warning or "")
    with caplog.at_level(logging.INFO, logger="permerge.budget"):
        b.announce()
    assert [r.levelname for r in caplog.records] == ["INFO", "WARNING"]


def test_steps_and_epochs_together_are_refused() -> None:
    with pytest.raises(ValidationError, match="steps or epochs"):
        _train(1000, steps=10, epochs=2)


def test_step_budget_ends_inside_an_epoch(mnist_small: ImageSet) -> None:
    from permerge.models import build_model, model_config_for

    torch.manual_seed(0)
    model = build_model(model_config_for("mlp:16", (1, 28, 28)))
    stats = train_model(model, mnist_small, TrainConfig(steps=7, batch_size=64, lr=0.05), progress=False)
    assert stats["steps"] == 7  # 500 images at batch 64 = 8 steps per epoch


# --- the API and the CLI share the policy and record it ----------------------------------


def test_api_and_cli_choose_the_same(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from permerge.cli import main

    ckpt = api.train("mnist@3", model="mlp:16", steps=60, data_root=shared_data, progress=False, out=tmp_path / "a")
    b = ckpt.meta["budget"]
    assert (b["steps"], b["batch_size"], b["lr"], b["augment"]) == (
        60,
        30,
        0.05,
        "dsa",
    )  # 3 per class: nothing to hold out
    assert b["chosen"] == ["batch_size", "lr", "augment"] and b["given"] == ["steps"]
    assert json.loads((tmp_path / "a" / "model.json").read_text())["budget"] == b
    capsys.readouterr()
    main(["train", "-d", "mnist@3", "-m", "mlp:16", "--steps", "60", "-o", str(tmp_path / "b"), "-q",
          "--data-root", str(shared_data)])  # fmt: skip
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("train budget:"))
    assert line == b["line"]
    cli_meta = json.loads((tmp_path / "b" / "model.json").read_text())
    assert cli_meta["budget"] == b and cli_meta["train"] == ckpt.meta["train"]


def test_cli_json_keeps_stdout_json_and_warns_on_stderr(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from permerge.cli import main

    capsys.readouterr()
    main(["train", "-d", "mnist@3", "-m", "mlp:16", "--epochs", "1", "-o", str(tmp_path / "m"), "--json",
          "--data-root", str(shared_data)])  # fmt: skip
    cap = capsys.readouterr()
    meta = json.loads(cap.out)  # nothing but the JSON
    assert meta["budget"]["steps"] == 1 and meta["budget"]["warning"]
    assert cap.err.startswith("warning: training runs only 1 optimisation steps")


# --- STE ---------------------------------------------------------------------------------


def _merge_data(per_source: int) -> MergeData:
    return MergeData(
        tuple(
            ImageSet(torch.zeros(per_source, 1, 4, 4, dtype=torch.uint8), torch.arange(per_source) % 10, name=n)
            for n in ("a", "b")
        )
    )


def test_ste_small_merge_data_gets_the_reduced_recipe() -> None:
    opts, b = budgets.ste_budget(STEOptions(), _merge_data(100))
    assert (b.steps, opts.steps, opts.lr, opts.batch_size) == (500, 500, 0.5, 200)
    assert set(b.chosen) == {"steps", "lr", "batch_size"} and b.warning is None
    assert "200 merge images" in b.line()


def test_ste_full_merge_data_gets_the_full_recipe() -> None:
    opts, b = budgets.ste_budget(STEOptions(), _merge_data(30_000))
    assert (b.steps, opts.lr, opts.batch_size) == (2000, 0.1, 500)


def test_ste_explicit_options_win() -> None:
    opts, b = budgets.ste_budget(STEOptions(steps=300, lr=0.2), _merge_data(100))
    assert (b.steps, opts.lr, opts.batch_size) == (300, 0.2, 200) and b.chosen == ("batch_size",)
    opts, b = budgets.ste_budget(STEOptions(epochs=2, batch_size=20), _merge_data(100))
    assert b.steps == 2 * 10 and opts.steps is None and "warning" not in b.line()  # 100 per source at 10 a batch
    _, b = budgets.ste_budget(STEOptions(steps=10), _merge_data(100))
    assert b.warning and "only 10 optimisation steps" in b.warning


def test_merge_records_the_ste_budget(shared_data: Path, tmp_path: Path) -> None:
    a = api.train("mnist@3", model="mlp:16", steps=5, data_root=shared_data, progress=False)
    b = api.train("fashion-mnist@3", model="mlp:16", seed=1, steps=5, data_root=shared_data, progress=False)
    r = api.merge(a, b, method="ste", data=["mnist@2", "fashion-mnist@2"], options={"steps": 3},
                  datasets=["mnist@2", "fashion-mnist@2"], data_root=shared_data, progress=False,
                  out=tmp_path / "m")  # fmt: skip
    budget = r["info"]["align"]["budget"]
    assert (budget["steps"], budget["lr"], budget["batch_size"]) == (3, 0.5, 200)
    assert r["info"]["align"]["options"]["lr"] == 0.5  # the options in force, not the unset ones
    saved = json.loads((tmp_path / "m" / "merge.json").read_text())
    assert saved["info"]["align"]["budget"] == budget
