"""``dsa``: gradient matching with differentiable siamese augmentation (Zhao & Bilen, ICML 2021).

The DC loop (:mod:`.dc`) where every real/synthetic pair of batches goes through one shared
random transformation (see :mod:`permerge.augment`), and the inner training of the
network on the synthetic set is augmented too.
"""

from __future__ import annotations

from ...augment import default_augment
from ..registry import MethodResult, ReduceContext, register_method
from .dc import gradient_matching


@register_method("dsa", kind="condensation")
def dsa(
    ctx: ReduceContext,
    *,
    iterations: int = 50,
    outer_loop: int | None = None,
    inner_loop: int | None = None,
    lr_img: float = 0.1,
    momentum_img: float = 0.5,
    lr_net: float = 0.01,
    batch_real: int = 64,
    batch_train: int = 256,
    net: str = "auto",
    init: str = "herding",
    flip: bool | None = None,
) -> MethodResult:
    """DC + siamese augmentation (no flip for grayscale/digit images unless ``flip=True``)."""
    aug = default_augment(ctx.data.image_shape[0], flip)
    result = gradient_matching(
        ctx,
        label="dsa",
        iterations=iterations,
        outer_loop=outer_loop,
        inner_loop=inner_loop,
        lr_img=lr_img,
        momentum_img=momentum_img,
        lr_net=lr_net,
        batch_real=batch_real,
        batch_train=batch_train,
        net=net,
        init=init,
        augment=aug,
    )
    result.info["augment_ops"] = list(aug.ops)
    return result
