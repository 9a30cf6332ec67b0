"""Architectures (MLP, LeNet-style CNN, VGG-BN, ResNet-20, ViT, your own factory) built from a ModelConfig."""

from pydantic import ValidationError

from . import cnn, code, mlp, resnet, vgg, vit  # noqa: F401  (register the builders)
from .config import ModelConfig
from .registry import available, build_model, register

__all__ = ["ModelConfig", "available", "build_model", "check_size", "register", "model_config_for"]


def check_size(config: ModelConfig, copies: int = 1) -> int:
    """Count ``config``'s parameters without allocating them (meta device) and refuse a model
    whose ``copies`` float32 copies (3 for training: weights, gradients, momentum) cannot fit
    in this machine's memory. Returns the parameter count."""
    import torch

    from .._limits import check_allocation
    from ..errors import ModelError

    with torch.device("meta"):
        skeleton = build_model(config)
    n = sum(p.numel() for p in skeleton.parameters()) + sum(b.numel() for b in skeleton.buffers())
    extra = " with gradients and optimiser state" if copies > 1 else ""
    check_allocation(n * 4 * copies, f"model {config.describe()} ({n:,} parameters{extra})", ModelError)
    return n


def model_config_for(arch: str, in_shape: tuple[int, int, int], **kwargs: object) -> ModelConfig:
    """Config for ``arch`` on inputs of ``in_shape``; ``mlp:256x256`` style hidden widths accepted."""
    from ..errors import ModelError, first_error

    if arch.startswith(code.PREFIX):  # the user names a factory: code:mypkg.models:build_net
        return code.code_config(arch[len(code.PREFIX) :], kwargs.pop("code_args", None), in_shape)
    name, _, extra = arch.partition(":")
    fields: dict[str, object] = dict(kwargs)
    if extra:
        if name == "vit":
            try:
                fields.update(vit.parse_vit(extra))
            except ValueError as e:
                raise ModelError(f"bad ViT spec {e} in {arch!r} (use e.g. vit:tiny or vit:tiny-p4-d6-w96-h3)") from None
        elif name == "mlp":
            try:
                fields["hidden"] = tuple(int(v) for v in extra.lower().split("x"))
            except ValueError:
                raise ModelError(f"bad MLP widths in {arch!r} (use e.g. mlp:512x512x512)") from None
        else:
            try:
                fields["width"] = float(extra.lstrip("x"))
            except ValueError:
                raise ModelError(f"bad width multiplier in {arch!r} (use e.g. resnet20:x2)") from None
    if name not in available() or name == "code":
        known = ", ".join(a for a in available() if a != "code")
        raise ModelError(f"unknown model {arch!r}; known: {known}, or code:module:function (your own factory)")
    try:
        return ModelConfig(arch=name, in_shape=in_shape, **fields)
    except ValidationError as e:  # pydantic's own text spans several lines; the CLI prints one
        where, msg = first_error(e)
        raise ModelError(f"invalid model config for {arch!r}: {where}: {msg}") from None
