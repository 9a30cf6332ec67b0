"""Every zoo model (``zoo_models.ZOO``): the derived spec's random permutations leave the
outputs equal, and wm / am / ste run on it. Parametrised over the zoo: a new entry is tested
without editing this file."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from zoo_models import ZOO, build

from permerge.align import AlignProblem, get_method
from permerge.data.imageset import ImageSet
from permerge.data.mergedata import MergeData
from permerge.permutation.fx import derive_spec
from permerge.permutation.spec import PermutationSpec, apply_permutation

NAMES = sorted(ZOO)


def randomize_(model: nn.Module, g: torch.Generator) -> nn.Module:
    """Non-trivial norm statistics, affine parameters and biases: a norm permuted wrongly
    would change the output (fresh ones are 0/1 everywhere and would hide such a bug)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
            for p in ("weight", "bias"):
                t = getattr(m, p, None)
                if isinstance(m, nn.BatchNorm2d | nn.LayerNorm | nn.RMSNorm) and isinstance(t, torch.Tensor):
                    t.uniform_(0.5, 1.5, generator=g) if p == "weight" else t.normal_(0.0, 0.5, generator=g)
                elif p == "bias" and isinstance(t, torch.Tensor):
                    t.normal_(0.0, 0.1, generator=g)
        for t in model.parameters():  # constant vectors (a hand-written norm's ones, a layer scale)
            if t.ndim == 1 and bool((t == t[0]).all()):
                t.uniform_(0.5, 1.5, generator=g)
    return model.eval()


def derived(name: str, seed: int = 0) -> tuple[nn.Module, PermutationSpec, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = randomize_(build(name, seed), g)
    x = torch.randn(4, *ZOO[name].in_shape, generator=g)
    return model, derive_spec(model, x[:2]), x


@pytest.mark.parametrize("name", NAMES)
def test_random_permutation_keeps_outputs(name: str) -> None:
    model, spec, x = derived(name)
    entry = ZOO[name]
    assert len(spec.groups) >= entry.min_groups, sorted(spec.groups)
    bound = {a.param for grp in spec.groups.values() for a in grp.axes}
    assert set(entry.permuted) <= bound, set(entry.permuted) - bound
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    perm = spec.random(g)
    perm = {k: p.roll(1) if len(p) > 1 and torch.equal(p, torch.arange(len(p))) else p for k, p in perm.items()}
    permuted = apply_permutation(spec, perm, state)
    for k in spec.by_param:
        assert not torch.equal(permuted[k], state[k]), f"{k} did not move"
    with torch.no_grad():
        before = model(x)
        model.load_state_dict(permuted)
        after = model(x)
    assert before.std() > 1e-3
    assert (after - before).abs().max().item() <= 1e-5


def noise_data(in_shape: tuple[int, int, int], n: int = 40) -> MergeData:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *in_shape), dtype=torch.uint8, generator=g)
    return MergeData((ImageSet(images=images, labels=torch.arange(n) % 10, name="noise"),))


@pytest.mark.parametrize("method", ["wm", "am", "ste"])
@pytest.mark.parametrize("name", NAMES)
def test_alignment_methods_run(name: str, method: str) -> None:
    """Align a second initialisation to the first: a valid permutation of every group, and
    the aligned copy computes what the unaligned one does."""
    a, spec, x = derived(name, 0)
    b, _, _ = derived(name, 1)
    options = {"steps": 3, "batch_size": 8, "eval_every": 2, "eval_samples": 10} if method == "ste" else {}
    m = get_method(method)
    problem = AlignProblem(
        model=copy.deepcopy(a),
        state_a=a.state_dict(),
        state_b=b.state_dict(),
        spec=spec,
        data=noise_data(ZOO[name].in_shape),
        progress=False,
    )
    result = m.fn(problem, m.parse_options(options))
    assert set(result.perm) == set(spec.groups)
    aligned = copy.deepcopy(b)
    aligned.load_state_dict(apply_permutation(spec, result.perm, b.state_dict()))
    with torch.no_grad():
        assert (aligned(x) - b(x)).abs().max().item() <= 1e-5
