"""docs/ADDING_A_METHOD.md's worked example is real code: it registers, passes the method
contract without a test naming it, and does what the page says it does."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import test_method_contract as contract
from permerge.align import registry
from permerge.merge import merge_models

DOC = Path(__file__).resolve().parents[1] / "docs" / "ADDING_A_METHOD.md"
NAME = "wm-restarts"


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The page's file, executed as ``permerge.align.wm_restarts`` into a private copy of the
    registry (the example must not leak into other tests)."""
    block = re.search(r"```python\n(# src/permerge/align/wm_restarts.py\n.*?)```", DOC.read_text(), re.S)
    assert block, "the worked example is missing from ADDING_A_METHOD.md"
    monkeypatch.setattr(registry.METHODS, "_entries", dict(registry.METHODS._entries))
    monkeypatch.setattr(registry.METHODS, "_origins", dict(registry.METHODS._origins))
    code = block.group(1).replace("from ..", "from permerge.").replace("from .", "from permerge.align.")
    exec(compile(code, "wm_restarts.py", "exec"), {"__name__": "permerge.align.wm_restarts"})  # noqa: S102
    yield NAME


def test_the_example_registers_with_its_summary(example: str) -> None:
    assert registry.get_method(example).summary == "best of several weight-matching runs"
    assert example in registry.available()


@pytest.mark.parametrize(
    "check",
    [
        contract.test_a_bad_merge_option_is_one_line,
        contract.test_alignment_is_a_permutation_of_every_group_and_deterministic,
        contract.test_merging_a_model_with_itself_gives_it_back_on_the_merge_data,
        contract.test_the_run_seed_reaches_the_method_like_its_own_seed_option,
    ],
    ids=lambda f: f.__name__,
)
def test_the_example_passes_the_method_contract(example: str, check) -> None:  # type: ignore[no-untyped-def]
    check(example)


def test_the_example_keeps_the_closest_run_never_worse_than_wm(example: str) -> None:
    a, b = contract._ckpt(0), contract._ckpt(1)
    r = merge_models(a, b, method=example, options={"restarts": 5}, seed=2, progress=False)
    info = r.info["align"]
    assert info["distance"] == min(info["distances"]) and len(info["distances"]) == 5
    wm = merge_models(a, b, method="wm", seed=2, progress=False)  # the example's first run
    assert info["distance"] <= info["distances"][0]
    assert abs(info["distances"][0] - _distance(a, b, wm)) < 1e-9


def _distance(a, b, result) -> float:  # type: ignore[no-untyped-def]
    from permerge.align.weight_matching import l2_distance
    from permerge.permutation.spec import apply_permutation

    return l2_distance(a.model.state_dict(), apply_permutation(result.spec, result.perm, b.model.state_dict()))
