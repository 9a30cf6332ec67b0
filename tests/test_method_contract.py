"""The contract every registered method keeps, checked for each one without naming it.

Parametrised over the registries (timm's ``list_models()`` style): a new alignment method,
merger or reduction method is tested here the moment its file exists, on tiny synthetic
models and images (no ``../shared/data``). What each method must do:

* options are a frozen pydantic class that refuses unknown names with a one-line error;
* the result has the right form (a permutation of every group; a model that is saved and
  rebuilt from its config; ``ipc`` images per class in [0, 1]);
* the same seed gives the same result, and ``merge_models(seed=s)`` is the same as the
  method's own ``seed`` option (seeds are forwarded in one place);
* an alignment of a model with itself is the identity, so the merge is the model itself;
* every method runs on every architecture family (convolutions, residual streams with
  BatchNorm, attention), or refuses it with a ``PermergeError``: never a raw exception.

Slow settings (steps, iterations, epochs) are shrunk by option *name*, so a new method needs
no entry here; name its budget options like the existing ones.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import BaseModel

from permerge.align import available as align_methods
from permerge.checkpoint import Checkpoint
from permerge.data.imageset import ImageSet
from permerge.data.mergedata import MergeData
from permerge.errors import PermergeError
from permerge.merge import merge_models
from permerge.merge.core import align, methods, options_class
from permerge.merge.methods import mergers
from permerge.models import build_model, model_config_for
from permerge.reduce import available_methods, reduce_dataset

SHAPE = (1, 8, 8)
ARCH = "mlp:16x12"

# option name -> a value small enough for a test (any method using the name gets it)
FAST: dict[str, Any] = {
    "steps": 4,
    "iterations": 2,
    "epochs": None,
    "max_iter": 5,
    "eval_every": 2,
    "eval_samples": 10,
    "batch_size": 20,
    "max_samples": 200,  # all of the merge data: a criterion measured on what is checked
    "augment_copies": 1,
    "proxy_epochs": 1,
    "experts": 1,
    "expert_epochs": 2,
    "max_start_epoch": 1,
    "match_epochs": 1,
    "syn_steps": 2,
    "outer_loop": 2,
    "inner_loop": 1,
    "batch_real": 4,
    "batch_train": 8,
    "batch_teacher": 8,
    "net": "mlp:8",
}


def fast_options(options: type[BaseModel]) -> dict[str, Any]:
    return {k: v for k, v in FAST.items() if k in options.model_fields}


def _ckpt(seed: int, arch: str = ARCH, shape: tuple[int, int, int] = SHAPE) -> Checkpoint:
    cfg = model_config_for(arch, shape)
    torch.manual_seed(seed)
    return Checkpoint(model=build_model(cfg).eval(), config=cfg, meta={"dataset": f"synthetic-{seed}"})


def _images(n_per_class: int, classes: int, seed: int, name: str, shape: tuple[int, int, int] = SHAPE) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return ImageSet(torch.rand(len(labels), *shape, generator=g), labels, name=name, num_classes=10)


def _data() -> MergeData:
    return MergeData((_images(6, 10, 0, "src0"), _images(6, 10, 1, "src1")))


ALIGN = sorted(align_methods())
MERGERS = sorted(mergers())
REDUCE = sorted(available_methods())
ALL_OPTIONS = [
    *[(n, align_methods()[n].options) for n in ALIGN],
    *[(n, mergers()[n].options) for n in MERGERS],
    *[(n, available_methods()[n].options) for n in REDUCE],
]


def test_the_registries_are_not_empty() -> None:
    assert {"wm", "am", "ste"} <= set(ALIGN) and {"pleas", "zipit"} <= set(MERGERS) and {"random", "dc"} <= set(REDUCE)


@pytest.mark.parametrize(("name", "options"), ALL_OPTIONS, ids=[n for n, _ in ALL_OPTIONS])
def test_options_are_frozen_and_refuse_unknown_names(name: str, options: type[BaseModel]) -> None:
    assert options.model_config.get("frozen") and options.model_config.get("extra") == "forbid", name
    opts = options()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        setattr(opts, next(iter(options.model_fields), "x"), 1)


@pytest.mark.parametrize("name", ALIGN + MERGERS)
def test_a_bad_merge_option_is_one_line(name: str) -> None:
    with pytest.raises(PermergeError) as e:
        merge_models(_ckpt(0), _ckpt(1), method=name, data=_data(), options={"no_such_option": 1}, progress=False)
    assert "no_such_option" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ALIGN)
def test_alignment_is_a_permutation_of_every_group_and_deterministic(name: str) -> None:
    m = align_methods()[name]
    a, b, data = _ckpt(0), _ckpt(1), _data()
    opts = fast_options(m.options)
    perm, spec, info = align(a, b, name, data, options=opts, progress=False)
    assert set(perm) == set(spec.groups)
    for g, p in perm.items():
        assert torch.equal(torch.sort(p).values, torch.arange(spec.groups[g].size)), g
    again, _, _ = align(a, b, name, data, options=opts, progress=False)
    assert all(torch.equal(perm[g], again[g]) for g in perm)
    assert (
        info["options"]["seed" if "seed" in m.options.model_fields else next(iter(m.options.model_fields))] is not None
    )


@pytest.mark.parametrize("name", ALIGN)
def test_merging_a_model_with_itself_gives_it_back_on_the_merge_data(name: str) -> None:
    """The identity is optimal for every criterion; units that are dead on the merge data
    (a random MLP has some) may be swapped, which changes nothing there."""
    a, data = _ckpt(0), _data()
    r = merge_models(a, a, method=name, data=data, options=fast_options(align_methods()[name].options), progress=False)
    x, _ = next(iter(data.combined().batches(1000)))
    with torch.no_grad():
        assert torch.allclose(r.model(x), a.model(x), atol=1e-5)


@pytest.mark.parametrize("name", MERGERS)
def test_a_merger_returns_a_model_its_config_rebuilds(name: str) -> None:
    a, b, data = _ckpt(0), _ckpt(1), _data()
    opts = fast_options(mergers()[name].options)
    r = merge_models(a, b, method=name, data=data, options=opts, progress=False)
    rebuilt = build_model(r.config or a.config)
    rebuilt.load_state_dict(r.model.state_dict())  # saved and loaded like any checkpoint
    x = torch.rand(4, *SHAPE)
    with torch.no_grad():
        out = r.model(x)
        assert torch.equal(rebuilt.eval()(x), out)
    assert out.shape == (4, 10) and bool(torch.isfinite(out).all())
    again = merge_models(a, b, method=name, data=data, options=opts, progress=False)
    with torch.no_grad():
        assert torch.equal(again.model(x), out)


SEEDED = [n for n in ALIGN + MERGERS if "seed" in (align_methods().get(n) or mergers()[n]).options.model_fields]


@pytest.mark.parametrize("name", SEEDED)
def test_the_run_seed_reaches_the_method_like_its_own_seed_option(name: str) -> None:
    m = align_methods().get(name) or mergers()[name]
    a, b, data = _ckpt(0), _ckpt(1), _data()
    opts = fast_options(m.options)
    by_run = merge_models(a, b, method=name, data=data, options=opts, seed=7, progress=False)
    by_option = merge_models(a, b, method=name, data=data, options={**opts, "seed": 7}, progress=False)
    key = "align" if name in align_methods() else "merger"
    assert by_run.info[key]["options"]["seed"] == 7
    x = torch.rand(4, *SHAPE)
    with torch.no_grad():
        assert torch.equal(by_run.model(x), by_option.model(x))


@pytest.mark.parametrize("name", REDUCE)
def test_a_reduction_gives_ipc_images_per_class_deterministically(name: str) -> None:
    m = available_methods()[name]
    data = _images(8, 3, 2, "toy")
    opts = fast_options(m.options)
    rs = reduce_dataset(data, name, 2, seed=3, progress=False, **opts)
    assert rs.images.shape == (6, *SHAPE) and rs.images.dtype == torch.float32
    assert float(rs.images.min()) >= 0.0 and float(rs.images.max()) <= 1.0
    assert torch.equal(torch.bincount(rs.labels), torch.full((3,), 2))
    assert rs.meta["hyperparameters"] == m.options(**opts).model_dump()
    if m.kind == "coreset":  # real samples: the images are the source's, at the recorded indices
        assert rs.source_indices is not None
        assert torch.equal(data.labels[rs.source_indices], rs.labels)
        assert torch.allclose(data.images[rs.source_indices].float(), rs.images)
    again = reduce_dataset(data, name, 2, seed=3, progress=False, **opts)
    assert torch.equal(again.images, rs.images) and torch.equal(again.labels, rs.labels)


@pytest.mark.parametrize("name", REDUCE)
def test_a_reduction_refuses_an_unknown_option_by_name(name: str) -> None:
    with pytest.raises(PermergeError, match=f"method {name!r} has no option"):
        reduce_dataset(_images(8, 3, 2, "toy"), name, 1, progress=False, no_such_option=1)


# one tiny model of each family the spec derivation handles differently (VGG is a larger CNN)
ARCH_SHAPES = {"cnn": (1, 28, 28), "resnet20": (3, 16, 16), "vit:tiny-d1": (1, 28, 28)}


@pytest.mark.parametrize("arch", sorted(ARCH_SHAPES))
@pytest.mark.parametrize("name", methods())
def test_every_method_runs_on_every_architecture_or_refuses_it_cleanly(name: str, arch: str) -> None:
    """PLeaS' refit once crashed on a ViT's q/k/v projection with a shape error; a method
    meeting an architecture it cannot handle must say so (``PermergeError``), not crash."""
    shape = ARCH_SHAPES[arch]
    pair = [_ckpt(seed, arch, shape) for seed in (0, 1)]
    data = MergeData(tuple(_images(2, 10, seed, f"src{seed}", shape) for seed in (0, 1)))
    opts = options_class(name)
    try:
        r = merge_models(*pair, method=name, data=data, options=fast_options(opts) if opts else {}, progress=False)
    except PermergeError as e:
        assert "\n" not in str(e)
        return
    with torch.no_grad():
        out = r.model(torch.rand(2, *shape))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
