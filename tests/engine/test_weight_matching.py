from __future__ import annotations

import copy

import pytest
import torch

from permerge.align import l2_distance, weight_matching
from permerge.checkpoint import Checkpoint
from permerge.errors import ModelError
from permerge.merge import merge_models
from permerge.models import build_model, model_config_for
from permerge.permutation.fx import derive_spec
from permerge.permutation.spec import apply_permutation, invert


def _model(arch: str, shape: tuple[int, int, int], seed: int) -> Checkpoint:
    torch.manual_seed(seed)
    cfg = model_config_for(arch, shape)
    return Checkpoint(model=build_model(cfg).eval(), config=cfg)


@pytest.mark.parametrize("arch,shape", [("mlp:128x96x64", (1, 28, 28)), ("cnn:0.5", (1, 28, 28))])
def test_wm_recovers_known_permutation(arch: str, shape: tuple[int, int, int]) -> None:
    a = _model(arch, shape, 0)
    spec = derive_spec(a.model, torch.zeros(1, *shape))
    pi = spec.random(torch.Generator().manual_seed(3))
    state_b = apply_permutation(spec, pi, a.model.state_dict())  # B = pi(A)
    perm, info = weight_matching(spec, a.model.state_dict(), state_b, seed=1)
    for g in spec.groups:
        assert torch.equal(perm[g], invert(pi)[g]), g  # found pi^-1
    realigned = apply_permutation(spec, perm, state_b)
    assert l2_distance(realigned, a.model.state_dict()) == 0.0
    assert info["sweeps"] >= 2


def test_wm_reduces_distance_between_independent_models() -> None:
    a, b = _model("mlp:256x256", (1, 28, 28), 0), _model("mlp:256x256", (1, 28, 28), 1)
    spec = derive_spec(a.model, torch.zeros(1, 1, 28, 28))
    before = l2_distance(a.model.state_dict(), b.model.state_dict())
    perm, _ = weight_matching(spec, a.model.state_dict(), b.model.state_dict())
    after = l2_distance(a.model.state_dict(), apply_permutation(spec, perm, b.model.state_dict()))
    assert after < before * 0.995


def test_merging_a_model_with_itself_returns_it() -> None:
    a = _model("mlp:64x64", (1, 28, 28), 0)
    r = merge_models(a, copy.deepcopy(a), method="wm", progress=False)
    assert r.perm is not None and all(torch.equal(p, torch.arange(len(p))) for p in r.perm.values())
    for k, v in a.model.state_dict().items():
        assert torch.equal(r.model.state_dict()[k], v)


def test_merging_permuted_copy_returns_original_function() -> None:
    a = _model("mlp:64x64", (1, 28, 28), 0)
    spec = derive_spec(a.model, torch.zeros(1, 1, 28, 28))
    b = copy.deepcopy(a)
    perm = spec.random(torch.Generator().manual_seed(5))
    b.model.load_state_dict(apply_permutation(spec, perm, a.model.state_dict()))
    r = merge_models(a, b, method="wm", progress=False)
    x = torch.randn(16, 1, 28, 28)
    torch.testing.assert_close(r.model(x), a.model(x), rtol=1e-5, atol=1e-5)
    naive = merge_models(a, b, method="average", progress=False)
    assert (naive.model(x) - a.model(x)).abs().max() > 1e-2  # without alignment it is a different function


def test_architecture_mismatch_is_refused() -> None:
    a, b = _model("mlp:64x64", (1, 28, 28), 0), _model("mlp:32x64", (1, 28, 28), 0)
    with pytest.raises(ModelError, match="different architectures"):
        merge_models(a, b, method="wm", progress=False)


def test_bad_lam_and_unknown_method() -> None:
    from permerge.errors import PermergeError

    a = _model("mlp:16", (1, 28, 28), 0)
    with pytest.raises(PermergeError, match=r"\[0, 1\]"):
        merge_models(a, a, method="average", lam=1.5)
    with pytest.raises(PermergeError, match="unknown merge method"):
        merge_models(a, a, method="magic")
    with pytest.raises(PermergeError, match="needs merge data"):
        merge_models(a, a, method="ste")
