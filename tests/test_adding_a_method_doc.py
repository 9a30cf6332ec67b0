"""docs/ADDING_A_METHOD.md's worked example is real code: it registers and merges as described."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from permerge.align import registry
from permerge.checkpoint import Checkpoint
from permerge.merge import merge_models
from permerge.models import build_model, model_config_for

DOC = Path(__file__).resolve().parents[1] / "docs" / "ADDING_A_METHOD.md"


def _ckpt(seed: int) -> Checkpoint:
    cfg = model_config_for("mlp:16x12", (1, 8, 8))
    torch.manual_seed(seed)
    return Checkpoint(model=build_model(cfg).eval(), config=cfg, meta={"dataset": "synthetic"})


def test_the_alignment_example_registers_and_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    block = re.search(r"```python\n(# src/permerge/align/random_perm.py\n.*?)```", DOC.read_text(), re.S)
    assert block, "the worked example is missing from ADDING_A_METHOD.md"
    # a private copy of the registry: the example must not leak into other tests
    monkeypatch.setattr(registry.METHODS, "_entries", dict(registry.METHODS._entries))
    monkeypatch.setattr(registry.METHODS, "_origins", dict(registry.METHODS._origins))
    code = block.group(1).replace("from .registry import", "from permerge.align.registry import")
    exec(compile(code, "random_perm.py", "exec"), {"__name__": "permerge.align.random_perm"})  # noqa: S102
    assert registry.get_method("random-perm").summary == "a random permutation (a sanity baseline)"
    a, b = _ckpt(0), _ckpt(1)
    r1 = merge_models(a, b, method="random-perm", seed=3, progress=False)
    r2 = merge_models(a, b, method="random-perm", options={"seed": 3}, progress=False)
    assert r1.info["align"]["options"] == {"seed": 3} and r1.perm is not None and r2.perm is not None
    assert all(torch.equal(r1.perm[g], r2.perm[g]) for g in r1.perm)
