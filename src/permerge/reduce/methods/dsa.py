"""``dsa``: gradient matching with differentiable siamese augmentation (Zhao & Bilen, ICML 2021).

The DC loop (:mod:`.dc`) where every real/synthetic pair of batches goes through one shared
random transformation (see :mod:`permerge.augment`), and the inner training of the
network on the synthetic set is augmented too.
"""

from __future__ import annotations

from ...augment import default_augment
from ..registry import MethodResult, ReduceContext, register_method
from .dc import DCOptions, gradient_matching


class DSAOptions(DCOptions):
    """DC's settings plus ``flip``: no horizontal flip for grayscale (digit) images unless true."""

    flip: bool | None = None


@register_method("dsa", DSAOptions, kind="condensation")
def dsa(ctx: ReduceContext, o: DSAOptions) -> MethodResult:
    """DC + siamese augmentation (no flip for grayscale/digit images unless ``flip=True``)."""
    aug = default_augment(ctx.data.image_shape[0], o.flip)
    result = gradient_matching(ctx, o, label="dsa", augment=aug)
    result.info["augment_ops"] = list(aug.ops)
    return result
