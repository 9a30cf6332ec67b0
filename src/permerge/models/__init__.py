"""Architectures (MLP, LeNet-style CNN, VGG-BN, ResNet-20) built from a ModelConfig."""

from pydantic import ValidationError

from . import cnn, mlp, resnet, vgg  # noqa: F401  (register the builders)
from .config import ModelConfig
from .registry import available, build_model, register

__all__ = ["ModelConfig", "available", "build_model", "register", "model_config_for"]


def model_config_for(arch: str, in_shape: tuple[int, int, int], **kwargs: object) -> ModelConfig:
    """Config for ``arch`` on inputs of ``in_shape``; ``mlp:256x256`` style hidden widths accepted."""
    from ..errors import ModelError

    name, _, extra = arch.partition(":")
    fields: dict[str, object] = dict(kwargs)
    if extra:
        if name == "mlp":
            try:
                fields["hidden"] = tuple(int(v) for v in extra.lower().split("x"))
            except ValueError:
                raise ModelError(f"bad MLP widths in {arch!r} (use e.g. mlp:512x512x512)") from None
        else:
            try:
                fields["width"] = float(extra.lstrip("x"))
            except ValueError:
                raise ModelError(f"bad width multiplier in {arch!r} (use e.g. resnet20:x2)") from None
    if name not in available():
        raise ModelError(f"unknown model {arch!r}; known: {', '.join(available())}")
    try:
        return ModelConfig(arch=name, in_shape=in_shape, **fields)
    except ValidationError as e:  # pydantic's own text spans several lines; the CLI prints one
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ModelError(f"invalid model config for {arch!r}: {where}: {err['msg']}") from None
