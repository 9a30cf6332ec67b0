"""A checkpoint's permutation spec, derived with torch.fx: what every merge method aligns on.

Its own module so that ``merge.core`` and the mergers of ``merge.methods`` both import it
without importing each other.
"""

from __future__ import annotations

import torch

from ..checkpoint import Checkpoint
from ..permutation.fx import derive_spec
from ..permutation.spec import PermutationSpec


def spec_for(ckpt: Checkpoint) -> PermutationSpec:
    return derive_spec(ckpt.model, torch.zeros(1, *ckpt.config.in_shape))
