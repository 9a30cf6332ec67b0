"""PLeaS (Nasery et al., CVPR 2025): partial permutation + layer-wise least-squares refit.

1. Align B to A (weight matching by default, or activation matching).
2. Score each matched pair by the correlation of its two units' activations on the merge data,
   merge the best ``round((2 - width) n)`` pairs per group and keep the rest of both models
   (:mod:`.partial`): a model between one source (``width=1``) and both side by side (``2``).
3. Refit, layer by layer from the input: each Linear layer of the merged model gets the weights
   that best map *its own* inputs (the merged model's features so far) to the merged targets
   ``M [z_A; z_B]`` (the sources' pre-activations, merged as the units were), by ridge
   regression in closed form. The paper solves the same per-layer problem with Adam; the
   closed form is exact and takes a second. With ten images per class the regression has
   fewer samples than inputs, so the statistics also see DSA-augmented copies of the merge data.

The refit (:mod:`.lsq`) handles Linear and Conv2d layers (a convolution is a linear map on
image patches), so it runs on MLPs, the CNN and ResNets; ``refit=none`` keeps the partial
permutation merge as it is (for the distillation finisher, ``--finetune kd``, to start from).
"""

from __future__ import annotations

import copy
import time
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from ..align.activation_matching import AMOptions, activation_correlations
from ..align.registry import AlignProblem
from ..augment import default_augment
from ..checkpoint import Checkpoint
from ..data.mergedata import MergeData
from ..errors import PermergeError
from ..models import build_model
from ..permutation.spec import PermutationSpec, apply_permutation
from .lsq import POSITIONS, ls_refit
from .methods import MergerResult, merger_spec, register_merger
from .partial import PER_LAYER, Zip, allocate_kept, merge_state, pair_zip, widened_config
from .size import macs_by_weight

# Refit images at most (merge images plus augmented copies): a Linear layer gets a row per
# image, a convolution one per output position, hundreds per image, so conv nets need fewer.
MAX_SAMPLES = 20_000
CONV_MAX_SAMPLES = 2_000


class PLeaSOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    width: float = Field(1.0, ge=1.0, le=2.0, description="merged width / a source's (1: same size, 2: both kept)")
    params: float | None = Field(
        None,
        ge=1.0,
        le=4.0,
        description="instead of one width for every layer: a parameter budget (merged / a source's); each "
        "layer's width is chosen to keep apart the pairs that match worst per parameter they cost",
    )
    macs: float | None = Field(
        None,
        ge=1.0,
        le=4.0,
        description="as params, a compute budget: multiply-adds per image, merged / a source's (the paper's "
        "FLOP budget)",
    )
    match: Literal["wm", "am"] = Field("wm", description="how B's units are paired with A's")
    refit: Literal["ls", "none"] = Field("ls", description="ls: layer-wise least squares on merge data")
    ridge: float = Field(1e-2, gt=0, description="ridge strength, relative to the mean feature energy")
    augment_copies: int = Field(20, ge=0, description="DSA-augmented copies of the merge data for the refit")
    max_samples: int | None = Field(
        None,
        ge=10,
        description="at most this many refit images (default: 20,000; 2,000 for conv nets, whose "
        "images give a row per output position)",
    )
    positions: int = Field(
        POSITIONS,
        ge=1,
        description="refit rows per image and layer at most: a convolution's output positions (or a "
        "Linear layer's tokens) are sampled down to this many",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _one_budget(self) -> PLeaSOptions:
        if sum((self.width != 1.0, self.params is not None, self.macs is not None)) > 1:
            raise ValueError("give one of width (one for every layer), params or macs (a budget), not several")
        return self

    @property
    def per_layer(self) -> bool:
        return self.params is not None or self.macs is not None


def _refit_inputs(
    data: MergeData, copies: int, max_samples: int, g: torch.Generator, dev: torch.device
) -> torch.Tensor:
    """Merge images plus DSA-augmented copies (one random operation per chunk of 50), at most
    ``max_samples`` of them: beyond that, which (image, copy) pairs enter is drawn first and only
    those are built, so a full training set with 20 copies never sits in memory (it would be
    2.3 million MNIST-size images, 7 GB)."""
    total = sum(len(s) for s in data.sources) * (1 + copies)
    if total > max_samples:
        return _sampled_refit_inputs(data, copies, max_samples, g, dev)
    xs = []
    for s in data.sources:
        aug = default_augment(s.image_shape[0])
        xs.append(s.to_input(s.images, dev))
        for _ in range(copies):
            for i in range(0, len(s), 50):
                xs.append(s.to_input(s.images[i : i + 50], dev, augment=aug, generator=g))
    return torch.cat(xs)


def _sampled_refit_inputs(
    data: MergeData, copies: int, max_samples: int, g: torch.Generator, dev: torch.device
) -> torch.Tensor:
    """A uniform sample of ``max_samples`` of the (source image, copy) pairs, copy 0 being the
    image itself; augmented ones in chunks of 50 that share one DSA draw, as above."""
    sizes = [len(s) * (1 + copies) for s in data.sources]
    pick = torch.randperm(sum(sizes), generator=g)[:max_samples]
    xs, start = [], 0
    for s, size in zip(data.sources, sizes, strict=True):
        mine = pick[(pick >= start) & (pick < start + size)] - start
        start += size
        copy, image = mine // len(s), mine % len(s)
        xs.append(s.to_input(s.images[image[copy == 0]], dev))
        aug = default_augment(s.image_shape[0])
        for chunk in image[copy > 0].split(50):
            xs.append(s.to_input(s.images[chunk], dev, augment=aug, generator=g))
    return torch.cat(xs)


@register_merger(
    "pleas", PLeaSOptions, needs_data=True, summary="partial permutation with a width budget + least-squares refit"
)
def pleas(
    a: Checkpoint, b: Checkpoint, data: MergeData | None, opts: PLeaSOptions, device: torch.device, progress: bool
) -> MergerResult:
    from .core import align  # core dispatches here; the import is one-way at call time

    assert data is not None
    t0 = time.perf_counter()
    if (opts.width > 1.0 or opts.per_layer) and a.config.arch not in PER_LAYER:
        raise PermergeError(
            f"pleas wider than a source needs layers that can be widened ({', '.join(PER_LAYER)}); "
            f"{a.config.describe()} cannot: use --opt width=1"
        )
    spec = merger_spec(a, "pleas")
    perm, _, ainfo = align(
        a, b, opts.match, data, options={"seed": opts.seed}, spec=spec, device=device, progress=progress
    )
    state_a = a.model.state_dict()
    state_b = apply_permutation(spec, perm, b.model.state_dict())
    zips = _partial_zips(a, spec, state_a, state_b, data, opts, device)
    state = merge_state(spec, zips, state_a, state_b)
    cfg = widened_config(a.config, a.model, state, "use --opt width=1")
    model = build_model(cfg)
    model.load_state_dict(state)
    model.to(device).eval()
    info: dict[str, object] = {
        "align": {k: v for k, v in ainfo.items() if k != "history"},
        "widths": {g: z.width for g, z in zips.items()},
    }
    if opts.refit == "ls":
        b_aligned = build_model(a.config)
        b_aligned.load_state_dict(state_b)
        info.update(_refit(model, a, b_aligned.to(device).eval(), spec, zips, data, opts, device, progress))
    info["seconds"] = time.perf_counter() - t0
    return MergerResult(model=model.eval(), config=cfg, perm=perm, spec=spec, info=info)


def _partial_zips(
    a: Checkpoint,
    spec: PermutationSpec,
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
    data: MergeData,
    opts: PLeaSOptions,
    device: torch.device,
) -> dict[str, Zip]:
    """Score each aligned pair by its units' activation correlation on the merge data and
    decide, per group, which pairs merge: by one width, or by a parameter or compute budget."""
    problem = AlignProblem(copy.deepcopy(a.model), state_a, state_b, spec, data, device, progress=False)
    sims = activation_correlations(problem, AMOptions(seed=opts.seed))
    scores = {g: sims[g].diagonal().float() if g in sims else torch.zeros(grp.size) for g, grp in spec.groups.items()}
    if opts.params is not None:
        kept = allocate_kept(spec, scores, {n: p.numel() for n, p in a.model.named_parameters()}, opts.params)
    elif opts.macs is not None:
        kept = allocate_kept(spec, scores, macs_by_weight(a.model, a.config.in_shape), opts.macs)
    else:
        return {g: pair_zip(s, opts.width) for g, s in scores.items()}
    return {g: pair_zip(s, kept=kept[g]) for g, s in scores.items()}


def _refit(
    model: nn.Module,
    a: Checkpoint,
    b_aligned: nn.Module,
    spec: PermutationSpec,
    zips: dict[str, Zip],
    data: MergeData,
    opts: PLeaSOptions,
    device: torch.device,
    progress: bool,
) -> dict[str, object]:
    """The least-squares refit of ``model`` in place, on the merge data plus augmented copies."""
    g = torch.Generator().manual_seed(opts.seed)
    convs = any(isinstance(m, nn.Conv2d) for m in model.modules())
    cap = opts.max_samples or (CONV_MAX_SAMPLES if convs else MAX_SAMPLES)
    x = _refit_inputs(data, opts.augment_copies, cap, g, device)
    a_model = copy.deepcopy(a.model).to(device).eval()
    residual = ls_refit(
        model,
        a_model,
        b_aligned,
        spec,
        zips,
        x,
        opts.ridge,
        bn_data=data.combined(),
        positions=opts.positions,
        seed=opts.seed,
        progress=progress,
    )
    return {"refit_residual": residual, "refit_samples": len(x)}
