"""Every architecture builds from a config and maps images to 10 logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from permerge.errors import ModelError
from permerge.models import ModelConfig, available, build_model, model_config_for
from permerge.models.config import CHANNEL_SLOTS
from permerge.models.registry import channels_of

ARCHS = ["mlp", "cnn", "vgg11", "vgg16", "resnet20", "vit", "code"]


def test_available():
    assert available() == sorted(ARCHS)


@pytest.mark.parametrize("in_shape", [(1, 28, 28), (3, 32, 32)], ids=["28x28x1", "32x32x3"])
@pytest.mark.parametrize("arch", ["mlp:64x32", "cnn", "vgg11:0.25", "vgg16:0.25", "resnet20", "vit:tiny-d1"])
def test_logits_shape(arch, in_shape):
    torch.manual_seed(0)
    cfg = model_config_for(arch, in_shape)
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(3, *in_shape))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()
    assert out.std() > 0  # not a constant function


@pytest.mark.parametrize("arch", ["vgg11", "vgg16"])
def test_full_width_vgg_param_count(arch):
    """The classic VGG channel plans: 3x3 convs without bias (BN follows), BN affine, 512->10."""
    plan = {
        "vgg11": [64, 128, 256, 256, 512, 512, 512, 512],
        "vgg16": [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512],
    }[arch]
    convs = sum(9 * cin * cout for cin, cout in zip([3, *plan[:-1]], plan, strict=True))
    expected = convs + 2 * sum(plan) + 512 * 10 + 10
    assert expected == {"vgg11": 9_228_362, "vgg16": 14_724_042}[arch]
    model = build_model(model_config_for(arch, (3, 32, 32)))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_mlp_widths_and_default():
    m = build_model(model_config_for("mlp:300x100", (1, 28, 28)))
    linears = [x for x in m.modules() if isinstance(x, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(784, 300), (300, 100), (100, 10)]
    default = build_model(ModelConfig())
    assert [x.out_features for x in default.modules() if isinstance(x, nn.Linear)] == [512, 512, 512, 10]
    assert ModelConfig(hidden=(7,)).describe() == "mlp 784-7-10"


@pytest.mark.parametrize(("norm", "layer"), [("bn", nn.BatchNorm2d), ("ln", nn.GroupNorm), ("none", None)])
def test_norm_variants(norm, layer):
    for arch in ("vgg11:0.25", "resnet20"):
        m = build_model(model_config_for(arch, (3, 32, 32), norm=norm))
        kinds = {type(x) for x in m.modules()}
        norms = {nn.BatchNorm2d, nn.GroupNorm} & kinds
        assert norms == ({layer} if layer else set())
        with torch.no_grad():
            assert m.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_width_multiplier():
    def n(arch):  # type: ignore[no-untyped-def]
        return sum(p.numel() for p in build_model(model_config_for(arch, (3, 32, 32))).parameters())

    assert n("resnet20:x2") > 3.5 * n("resnet20")
    assert n("resnet20:2") == n("resnet20:x2")
    first = build_model(model_config_for("resnet20:x2", (3, 32, 32))).conv1
    assert first.out_channels == 32


def test_num_classes():
    m = build_model(model_config_for("cnn", (1, 28, 28), num_classes=3))
    assert m(torch.randn(1, 1, 28, 28)).shape == (1, 3)


@pytest.mark.parametrize(
    ("arch", "kwargs", "needle"),
    [
        ("transformer", {}, "unknown model 'transformer'"),
        ("mlp:abc", {}, "bad MLP widths"),
        ("resnet20:xq", {}, "bad width multiplier"),
        ("mlp:0x5", {}, "invalid model config"),
        ("cnn:0", {}, "invalid model config"),
        ("vgg11", {"norm": "gn"}, "invalid model config"),
        ("mlp", {"num_classes": 1}, "invalid model config"),
        ("mlp", {"dropout": 0.5}, "invalid model config"),
        ("vit:huge", {}, "bad ViT spec huge"),
        ("vit:p0", {}, "invalid model config"),
        ("cnn", {"channels": (8, 8, 8)}, "cnn takes 4 channel counts, got 3"),
        ("mlp", {"channels": (8,)}, "per-layer channels are for"),
        ("cnn:2", {"channels": (8, 8, 8, 8)}, "either a width multiplier or per-layer channels"),
        ("cnn", {"channels": (8, 0, 8, 8)}, "channel counts must be in"),
    ],
)
def test_bad_configs(arch, kwargs, needle):
    with pytest.raises(ModelError, match=needle):
        model_config_for(arch, (1, 28, 28), **kwargs)


def test_build_unknown_arch():
    cfg = ModelConfig.model_construct(arch="alexnet", in_shape=(3, 32, 32))
    with pytest.raises(ModelError, match="unknown model 'alexnet'"):
        build_model(cfg)


def test_config_is_frozen_and_round_trips():
    cfg = model_config_for("resnet20:x2", (3, 32, 32), norm="ln")
    assert ModelConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    with pytest.raises(Exception):  # noqa: B017  (pydantic's frozen-instance error)
        cfg.width = 3.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("arch", "fields"),
    [
        ("vit", {"patch": 7, "depth": 4, "dim": 64, "heads": 4}),
        ("vit:tiny-p4-d6-w96-h3", {"patch": 4, "depth": 6, "dim": 96, "heads": 3}),
        ("vit:small", {"patch": 4, "depth": 6, "dim": 128, "heads": 4}),
    ],
)
def test_vit_arch_strings(arch, fields):
    cfg = model_config_for(arch, (3, 32, 32))
    assert {k: getattr(cfg, k) for k in fields} == fields
    assert ModelConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def test_code_arch_needs_a_factory_name():
    with pytest.raises(ModelError, match=r"unknown model 'code'; known: .*or code:module:function"):
        model_config_for("code", (1, 28, 28))
    with pytest.raises(Exception, match="go together"):
        ModelConfig(arch="code")


@pytest.mark.parametrize("arch", sorted(CHANNEL_SLOTS))
def test_per_layer_channels_build_and_are_read_back_from_the_weights(arch):
    """Every architecture with per-layer channels (a merge wider in some layers than others is
    saved with them): the counts it declares are the ones its builder uses, in the order its
    registered parameters show them, and a config with arbitrary counts rebuilds exactly."""
    shape = (3, 32, 32)
    plain = model_config_for(arch, shape)
    base = channels_of(plain, build_model(plain).state_dict())
    assert base is not None and len(base.channels) == CHANNEL_SLOTS[arch]
    assert build_model(base).state_dict().keys() == build_model(plain).state_dict().keys()
    odd = tuple(3 + 2 * i for i in range(CHANNEL_SLOTS[arch]))  # all different, so no two slots mix
    cfg = model_config_for(arch, shape, channels=odd)
    model = build_model(cfg)
    assert channels_of(cfg, model.state_dict()) == cfg
    assert model(torch.rand(2, *shape)).shape == (2, 10)
    assert ModelConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    assert "channels 3-5-7" in cfg.describe()


def test_every_architecture_with_per_layer_channels_registers_its_parameters():
    from permerge.models.registry import CHANNEL_PARAMS

    available()  # imports every architecture
    assert set(CHANNEL_PARAMS.names()) == set(CHANNEL_SLOTS)
    assert channels_of(model_config_for("mlp", (1, 28, 28)), {}) is None
