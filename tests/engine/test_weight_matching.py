from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

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


def _reference_weight_matching(spec, state_a, state_b, seed: int, max_iter: int = 100):  # type: ignore[no-untyped-def]
    """git-re-basin's coordinate descent as written before the solver work: every cost from
    scratch, SciPy's assignment, the same group order and acceptance rule."""
    from scipy.optimize import linear_sum_assignment

    from permerge.permutation.spec import permute_param

    perm = spec.identity()
    g = torch.Generator().manual_seed(seed)
    names = list(spec.groups)
    sweeps = 0
    for sweeps in range(1, max_iter + 1):  # noqa: B007
        improved = False
        for i in torch.randperm(len(names), generator=g).tolist():
            p = names[i]
            n = spec.groups[p].size
            c = torch.zeros(n, n)
            for ref in spec.groups[p].axes:
                wb = permute_param(spec, ref.param, state_b[ref.param], perm, skip_group=p)
                c += state_a[ref.param].movedim(ref.axis, 0).reshape(n, -1) @ wb.movedim(ref.axis, 0).reshape(n, -1).T
            c64 = c.double()
            new = torch.from_numpy(linear_sum_assignment(c64.numpy(), maximize=True)[1])
            old_score, new_score = float(c64[torch.arange(n), perm[p]].sum()), float(c64[torch.arange(n), new].sum())
            if new_score > old_score + 1e-9 * max(1.0, abs(old_score)):
                perm[p], improved = new, True
        if not improved:
            break
    return perm, sweeps


@pytest.fixture
def torch_threads() -> Iterator[Callable[[int], None]]:
    """Set torch's thread count for one test (weight matching solves that many groups at once)."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("arch,shape", [("mlp:160x128x96x64", (1, 28, 28)), ("cnn:0.5", (1, 28, 28))])
@pytest.mark.parametrize("lap_mode,threads", [("numba", 1), ("numba", 2), ("auto", 2)])
def test_wm_equals_the_plain_algorithm(
    arch: str,
    shape: tuple[int, int, int],
    lap_mode: str,
    threads: int,
    monkeypatch: pytest.MonkeyPatch,
    torch_threads: Callable[[int], None],
) -> None:
    """Warm-started solver, skipped groups, low-rank product updates and groups solved in
    parallel threads change nothing."""
    from permerge.align.weight_matching import WeightMatcher

    monkeypatch.setenv("PERMERGE_LAP", lap_mode)  # numba: the compiled solver even for these small groups
    torch_threads(threads)

    a, b = _model(arch, shape, 0), _model(arch, shape, 1)
    spec = derive_spec(a.model, torch.zeros(1, *shape))
    sa, sb = a.model.state_dict(), b.model.state_dict()
    want, want_sweeps = _reference_weight_matching(spec, sa, sb, seed=2)
    matcher = WeightMatcher(spec, sb)
    got, info = matcher.match(sa, generator=torch.Generator().manual_seed(2))
    assert info["sweeps"] == want_sweeps >= 3
    for k in spec.groups:
        assert torch.equal(got[k], want[k]), k
    stats = matcher.solver_stats()
    assert stats["skipped"] > 0 and stats["products_updated"] > 0
    assert (stats["parallel"] > 0) == (threads > 1)  # the first and last hidden group, side by side
    if lap_mode == "numba" and matcher.assignment_backend == "numba":
        assert stats["warm_calls"] > 0
    # called again (as STE does), every solve starts warm and the answer is the same
    again, _ = matcher.match(sa, generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(again[k], want[k]) for k in spec.groups)


def test_wm_same_result_with_scipy_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = _model("mlp:96x64", (1, 28, 28), 0), _model("mlp:96x64", (1, 28, 28), 1)
    spec = derive_spec(a.model, torch.zeros(1, 1, 28, 28))
    monkeypatch.setenv("PERMERGE_LAP", "numba")
    ours, _ = weight_matching(spec, a.model.state_dict(), b.model.state_dict())
    monkeypatch.setenv("PERMERGE_LAP", "scipy")
    theirs, _ = weight_matching(spec, a.model.state_dict(), b.model.state_dict())
    assert all(torch.equal(ours[k], theirs[k]) for k in spec.groups)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_wm_on_cuda_equals_cpu() -> None:
    """Costs built on the GPU (no TF32), solved on the CPU: the CPU's permutations, or at
    least its objective where float32 rounding on the two devices breaks a near-tie."""
    a, b = _model("mlp:256x256x256", (1, 28, 28), 0), _model("mlp:256x256x256", (1, 28, 28), 1)
    spec = derive_spec(a.model, torch.zeros(1, 1, 28, 28))
    sa, sb = a.model.state_dict(), b.model.state_dict()
    cpu, _ = weight_matching(spec, sa, sb)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        gpu, _ = weight_matching(
            spec, {k: v.cuda() for k, v in sa.items()}, {k: v.cuda() for k, v in sb.items()}, device="cuda"
        )
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert all(v.device.type == "cpu" for v in gpu.values())
    if not all(torch.equal(cpu[k], gpu[k]) for k in spec.groups):
        d_cpu = l2_distance(sa, apply_permutation(spec, cpu, sb))
        d_gpu = l2_distance(sa, apply_permutation(spec, gpu, sb))
        assert d_gpu == pytest.approx(d_cpu, rel=1e-4)


def test_ste_step_is_the_plain_straight_through_step() -> None:
    """STE's gradient handover (the merged parameters are leaves; the proxy gets ``lam`` times
    their gradient) gives, bit for bit, the steps of the textbook straight-through form
    ``(a_part + lam * pi(B)) + lam * (proxy - proxy.detach())`` (the added term is an exact zero
    forward, ``lam`` times the gradient backward). Both use fused SGD: torch's fused kernel
    differs from the per-tensor one in the last bit on short tensor tails (10-entry biases)."""
    import torch.nn.functional as F
    from torch.func import functional_call

    from permerge.align.registry import AlignProblem
    from permerge.align.ste import STEOptions, _Merged, _optimizer

    a, b = _model("mlp:32x16", (1, 8, 8), 0), _model("mlp:32x16", (1, 8, 8), 1)
    spec = derive_spec(a.model, torch.zeros(1, 1, 8, 8))
    perm = spec.identity()
    g = torch.Generator().manual_seed(5)
    batches = [(torch.rand(20, 1, 8, 8, generator=g), torch.randint(0, 10, (20,), generator=g)) for _ in range(5)]
    opts = STEOptions(lr=0.3, momentum=0.9, weight_decay=1e-3)

    def problem() -> AlignProblem:
        sa, sb = a.model.state_dict(), b.model.state_dict()
        return AlignProblem(copy.deepcopy(a.model), sa, sb, spec, None, torch.device("cpu"), False)

    ours = _Merged(problem(), 0.4)
    optim = _optimizer(list(ours.proxy.values()), opts)
    for x, y in batches:
        loss, leaves = ours.loss(perm, x, y)
        optim.zero_grad(set_to_none=True)
        ours.backward(loss, leaves)
        optim.step()

    plain = _Merged(problem(), 0.4)
    params = list(plain.proxy.values())
    sgd = torch.optim.SGD(params, lr=0.3, momentum=0.9, weight_decay=1e-3, fused=True)
    pb = plain.permute_b(perm)
    for x, y in batches:
        merged = {n: (plain.a_part[n] + 0.4 * pb[n]) + 0.4 * (p - p.detach()) for n, p in plain.proxy.items()}
        loss = F.cross_entropy(functional_call(plain.model, merged, (x,)), y)
        sgd.zero_grad(set_to_none=True)
        loss.backward()
        sgd.step()
    assert isinstance(optim, torch.optim.SGD) and optim.defaults["fused"]
    for n in ours.proxy:
        assert torch.equal(ours.proxy[n], plain.proxy[n]), n
