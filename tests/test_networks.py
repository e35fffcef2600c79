from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest
import torch

from training.config import Architecture, GUpsample, TrainConfig, preset_config
from training.data import builtin_spec
from training.networks import DCGAN_SIZES, NetSpec, _dcgan_plan, build_networks

BUILT_SIZES = [size for size in sorted(DCGAN_SIZES) if size <= 128]  # larger ones: test_dcgan_plans


def spec_of(
    arch: str,
    kind: str,
    out_shape: tuple[int, ...],
    z_dim: int,
    num_classes: int,
    g_width: int,
    d_width: int,
    **options: Any,
) -> NetSpec:
    """NetSpec takes keywords only; these tests give the seven fields every spec needs by position."""
    needed = dict(arch=arch, kind=kind, out_shape=out_shape, z_dim=z_dim, num_classes=num_classes)
    return NetSpec(**needed, g_width=g_width, d_width=d_width, **options)


@pytest.mark.parametrize("size", BUILT_SIZES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_dcgan_shapes(size: int, channels: int, num_classes: int) -> None:
    spec = spec_of(
        "dcgan", "image", (channels, size, size), 16, num_classes, 8, 8, spectral_norm=num_classes > 0
    )
    G, D = build_networks(spec)
    c = torch.eye(10)[:5] if num_classes else None
    x = G(torch.randn(5, 16), c)
    assert x.shape == (5, channels, size, size)
    assert float(x.detach().abs().max()) <= 1.0  # tanh output
    assert D(x, c).shape == (5,)


def test_dcgan_plans() -> None:
    """A 4x4 base doubled to the size (28: 7x7 doubled twice); 8, 28, 32, 64 as they always were."""
    plans = {size: _dcgan_plan(size) for size in DCGAN_SIZES}
    assert plans == {28: (7, 2)} | {2**k: (4, k - 2) for k in range(3, 11)}


def test_dcgan_128_keeps_the_dcgan_widths() -> None:
    """128x128 RGB at the presets' widths: G from 16 x ngf channels at 4x4, D up to 16 x ndf before its head."""
    G, D = build_networks(spec_of("dcgan", "image", (3, 128, 128), 100, 0, 64, 64))
    assert G.width == 64 * 16 and G.base == 4
    assert D.head.linear.in_features == 64 * 16 * 4 * 4
    assert G.blocks[-2].out_channels == 3


@pytest.mark.parametrize("out_shape", [(2,), (1, 8, 8), (3, 5, 7), (3, 128, 128)])
def test_mlp_any_output_shape(out_shape: tuple[int, ...]) -> None:
    kind = "vector" if len(out_shape) == 1 else "image"
    G, D = build_networks(spec_of("mlp", kind, out_shape, 4, 0, 16, 16, d_norm="layer"))
    x = G(torch.randn(3, 4))
    assert x.shape == (3, *out_shape) and D(x).shape == (3,)


def test_vector_output_is_unbounded() -> None:
    G, _ = build_networks(spec_of("mlp", "vector", (2,), 4, 0, 16, 16))
    with torch.no_grad():
        G.net[-1].bias.fill_(10.0)  # type: ignore[index, union-attr]
    assert float(G(torch.zeros(1, 4)).detach().min()) > 5.0


def test_projection_discriminator_uses_the_label() -> None:
    torch.manual_seed(0)
    _G, D = build_networks(spec_of("dcgan", "image", (1, 28, 28), 8, 3, 8, 8, d_norm="none"))
    x = torch.randn(2, 1, 28, 28)
    a, b = D(x, torch.eye(3)[[0, 0]]), D(x, torch.eye(3)[[1, 1]])
    assert not torch.allclose(a, b)
    soft = D(x, torch.full((2, 3), 1 / 3))  # soft labels blend classes: projection is linear in c
    assert torch.allclose(
        soft,
        (D(x, torch.eye(3)[[0, 0]]) + D(x, torch.eye(3)[[1, 1]]) + D(x, torch.eye(3)[[2, 2]])) / 3,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="needs c"):
        D(x)


def test_conditional_generator_depends_on_c() -> None:
    G, _ = build_networks(spec_of("dcgan", "image", (1, 8, 8), 8, 4, 8, 8))
    G.eval()
    z = torch.randn(1, 8)
    assert not torch.allclose(G(z, torch.eye(4)[[0]]), G(z, torch.eye(4)[[3]]))


def test_bad_architectures() -> None:
    for size in (4, 24, 48, 2048):
        with pytest.raises(ValueError, match=f"must be 28 or a power of two from 8 to 1024, got {size}"):
            build_networks(spec_of("dcgan", "image", (1, size, size), 8, 0, 8, 8))
    with pytest.raises(ValueError, match="DCGAN needs square images"):
        build_networks(spec_of("dcgan", "vector", (2,), 8, 0, 8, 8))
    with pytest.raises(ValueError, match="unknown arch"):
        build_networks(spec_of("resnet", "image", (1, 8, 8), 8, 0, 8, 8))


def test_packing_judges_groups_of_samples() -> None:
    _, D = build_networks(spec_of("mlp", "vector", (2,), 4, 0, 16, 16, d_norm="none", pack=2))
    assert D(torch.randn(8, 2)).shape == (4,)  # 8 samples, judged 2 at a time


def test_dcgan_packing_stacks_samples_on_channels() -> None:
    """PacDCGAN: samples 2i and 2i+1 form one (2C, H, W) input; changing sample 1 moves only logit 0."""
    torch.manual_seed(0)
    _, D = build_networks(spec_of("dcgan", "image", (3, 28, 28), 8, 0, 8, 8, d_norm="none", pack=2))
    assert D.features[0].in_channels == 6
    x = torch.randn(6, 3, 28, 28)
    before = D(x)
    assert before.shape == (3,)
    x[1] += 1.0
    after = D(x)
    assert not torch.allclose(before[0], after[0])
    torch.testing.assert_close(before[1:], after[1:])


def test_resize_upsampling_has_no_transposed_convolution() -> None:
    spec = spec_of("dcgan", "image", (1, 28, 28), 8, 3, 8, 8, g_upsample="resize")
    G, _ = build_networks(spec)
    assert G(torch.randn(5, 8), torch.eye(3)[[0, 1, 2, 0, 1]]).shape == (5, 1, 28, 28)
    kinds = {type(m) for m in G.modules()}
    assert torch.nn.Upsample in kinds and torch.nn.ConvTranspose2d not in kinds
    with pytest.raises(ValueError, match="g_upsample must be 'transpose' or 'resize'"):
        build_networks(spec_of("dcgan", "image", (1, 28, 28), 8, 0, 8, 8, g_upsample="pixelshuffle"))


@pytest.mark.parametrize("size", BUILT_SIZES)
@pytest.mark.parametrize("d_norm", ["batch", "layer", "none"])
def test_extra_convs_add_stride_one_layers(size: int, d_norm: str) -> None:
    """SNGAN's standard-CNN pattern: one 3x3 stride-1 conv per D resolution, and G's image from a 3x3 conv."""
    plain = spec_of("dcgan", "image", (3, size, size), 8, 2, 8, 8, d_norm=d_norm, spectral_norm=True)
    deep = spec_of(
        "dcgan", "image", (3, size, size), 8, 2, 8, 8, d_norm=d_norm, spectral_norm=True, extra_convs=True
    )
    (G0, D0), (G1, D1) = build_networks(plain), build_networks(deep)

    def convs(m: torch.nn.Module, k: int) -> int:
        return sum(isinstance(x, torch.nn.Conv2d) and x.kernel_size == (k, k) for x in m.modules())

    stages = len([m for m in D0.modules() if isinstance(m, torch.nn.Conv2d)])
    assert convs(D0, 3) == 0 and convs(D1, 3) == stages and convs(D1, 4) == stages
    assert convs(G0, 3) == 0 and convs(G1, 3) == 1
    assert isinstance(G1.blocks[-2], torch.nn.Conv2d) and G1.blocks[-2].in_channels == 4  # g_width / 2
    c = torch.eye(2)[[0, 1, 1]]
    x = G1(torch.randn(3, 8), c)
    assert x.shape == (3, 3, size, size) and D1(x, c).shape == (3,)


def test_the_spec_takes_every_architecture_option_from_the_config() -> None:
    """NetSpec extends the config's Architecture: one declaration, the same Literal types, nothing copied by hand."""
    cfg = preset_config("cgan", data="digits", g_upsample="resize", extra_convs=True, d_width=24)
    spec = NetSpec.from_config(cfg, builtin_spec("digits"))
    assert {f.name for f in dataclasses.fields(Architecture)} <= {f.name for f in dataclasses.fields(NetSpec)}
    assert all(getattr(spec, f.name) == getattr(cfg, f.name) for f in dataclasses.fields(Architecture))
    assert (spec.kind, spec.out_shape, spec.num_classes) == ("image", (1, 8, 8), 10)
    hints, config_hints = typing.get_type_hints(NetSpec), typing.get_type_hints(TrainConfig)
    assert hints["g_upsample"] == config_hints["g_upsample"] == GUpsample
    assert (
        NetSpec.from_config(dataclasses.replace(cfg, conditional=False), builtin_spec("digits")).num_classes
        == 0
    )


def test_a_spec_saved_as_a_dict_loads_back() -> None:
    """Checkpoints keep `net_spec` as a dict (out_shape a list once through JSON); every one written so far loads."""
    saved = {
        "arch": "dcgan", "kind": "image", "out_shape": [1, 8, 8], "z_dim": 16, "num_classes": 10, "g_width": 8,
        "d_width": 8, "mlp_layers": 2, "spectral_norm": True, "d_norm": "none", "pack": 1, "g_mixture": 1,
        "g_layers": None, "g_upsample": "transpose", "extra_convs": False, "g_norm": "none",
    }  # fmt: skip
    spec = NetSpec.from_saved(saved)
    assert spec.out_shape == (1, 8, 8) and dataclasses.asdict(spec) == saved | {"out_shape": (1, 8, 8)}
    older = {k: v for k, v in saved.items() if k not in ("g_upsample", "extra_convs", "g_layers", "g_norm")}
    assert NetSpec.from_saved(older) == spec  # options added later take their defaults
