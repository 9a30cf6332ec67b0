"""PermutationSpec: hand-written specs, application, and the invert / compose laws."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from permerge.errors import AlignmentError
from permerge.models import build_model, model_config_for
from permerge.permutation.fx import derive_spec
from permerge.permutation.spec import (
    AxisRef,
    PermutationSpec,
    apply_permutation,
    compose,
    expand_block,
    invert,
)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(20, 16), nn.Linear(16, 12), nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


HAND = {
    "h1": [("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1)],
    "h2": [("fc2.weight", 0), ("fc2.bias", 0), ("fc3.weight", 1, 1)],
}


def _axes(spec: PermutationSpec) -> set[frozenset[AxisRef]]:
    return {frozenset(g.axes) for g in spec.groups.values()}


def test_hand_spec_mlp():
    torch.manual_seed(0)
    model = MLP().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    spec = PermutationSpec.from_dict(HAND, state)
    assert {n: g.size for n, g in spec.groups.items()} == {"h1": 16, "h2": 12}
    # the tracer finds exactly the same groups
    assert _axes(spec) == _axes(derive_spec(model, torch.randn(2, 20)))
    perm = spec.random(torch.Generator().manual_seed(1))
    permuted = apply_permutation(spec, perm, state)
    assert not torch.equal(permuted["fc1.weight"], state["fc1.weight"])
    assert torch.equal(permuted["fc1.weight"], state["fc1.weight"][perm["h1"]])
    assert torch.equal(permuted["fc2.weight"], state["fc2.weight"][perm["h2"]][:, perm["h1"]])
    assert torch.equal(permuted["fc3.bias"], state["fc3.bias"])
    x = torch.randn(7, 20)
    with torch.no_grad():
        before = model(x)
        model.load_state_dict(permuted)
        torch.testing.assert_close(model(x), before, atol=1e-6, rtol=1e-6)


def test_hand_spec_json():
    spec = PermutationSpec.from_dict(HAND, MLP().state_dict())
    j = spec.to_json()
    assert j["h1"] == {"size": 16, "axes": [["fc1.weight", 0, 1], ["fc1.bias", 0, 1], ["fc2.weight", 1, 1]]}
    assert spec.by_param["fc2.weight"] == ((1, "h1", 1), (0, "h2", 1))


@pytest.mark.parametrize(
    ("groups", "needle"),
    [
        ({"h": [("fc1.weight", 0), ("fc2.weight", 0)]}, "different unit counts"),
        ({"h": [("fc9.weight", 0)]}, "no parameter 'fc9.weight'"),
        ({"a": [("fc1.weight", 0)], "b": [("fc1.bias", 0), ("fc1.weight", 0)]}, "one axis in two"),
        ({"h": [("fc1.weight", 0, 5)]}, "not a multiple of block 5"),
    ],
)
def test_hand_spec_errors(groups, needle):
    with pytest.raises(AlignmentError, match=needle):
        PermutationSpec.from_dict(groups, MLP().state_dict())


def test_apply_rejects_bad_permutations():
    state = MLP().state_dict()
    spec = PermutationSpec.from_dict(HAND, state)
    good = spec.identity()
    with pytest.raises(AlignmentError, match=r"lacks groups \['h2'\]"):
        apply_permutation(spec, {"h1": good["h1"]}, state)
    for bad in (torch.arange(15), torch.zeros(16, dtype=torch.long), torch.arange(1, 17)):
        with pytest.raises(AlignmentError, match="group h1: not a permutation of 16 units"):
            apply_permutation(spec, {**good, "h1": bad}, state)


def test_identity_is_a_no_op():
    state = build_model(model_config_for("cnn", (1, 28, 28))).state_dict()
    spec = derive_spec(build_model(model_config_for("cnn", (1, 28, 28))), torch.zeros(1, 1, 28, 28))
    out = apply_permutation(spec, spec.identity(), state)
    assert all(torch.equal(out[k], v) for k, v in state.items())


def test_expand_block():
    assert expand_block(torch.tensor([2, 0, 1]), 1).tolist() == [2, 0, 1]
    assert expand_block(torch.tensor([1, 0]), 3).tolist() == [3, 4, 5, 0, 1, 2]


# --- laws ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_case():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model(model_config_for("resnet20", (3, 32, 32)))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    return derive_spec(model, torch.zeros(1, 3, 32, 32)), model.state_dict()


@pytest.fixture(scope="module")
def cnn_case():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model(model_config_for("cnn:0.25", (1, 28, 28)))
    return derive_spec(model, torch.zeros(1, 1, 28, 28)), model.state_dict()


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), which=st.sampled_from(["resnet", "cnn"]))
def test_invert_and_compose_laws(resnet_case, cnn_case, seed, which):
    spec, state = resnet_case if which == "resnet" else cnn_case
    g = torch.Generator().manual_seed(seed)
    p, q, r = spec.random(g), spec.random(g), spec.random(g)
    ident = spec.identity()
    # inverse
    assert _equal(compose(p, invert(p)), ident) and _equal(compose(invert(p), p), ident)
    assert _equal(invert(invert(p)), p)
    assert _equal(apply_permutation(spec, invert(p), apply_permutation(spec, p, state)), state)
    # composition: applying q then p equals applying compose(p, q)
    two_steps = apply_permutation(spec, p, apply_permutation(spec, q, state))
    assert _equal(two_steps, apply_permutation(spec, compose(p, q), state))
    # associativity and identity
    assert _equal(compose(compose(p, q), r), compose(p, compose(q, r)))
    assert _equal(compose(p, ident), p) and _equal(compose(ident, p), p)
    # invert of a composition reverses the order
    assert _equal(invert(compose(p, q)), compose(invert(q), invert(p)))
    # a random permutation of a non-trivial spec moves some weights
    if any(not torch.equal(v, ident[k]) for k, v in p.items()):
        assert not _equal(apply_permutation(spec, p, state), state)
