"""Generators and discriminators: MLP for any output shape, DCGAN for square images of 28 pixels or any power
of two from 8 to 1024 (a 4x4 base doubled once per stage; 28 = 7x7 doubled twice).

Conditional when `num_classes > 0`: G takes `c` as a float vector (one-hot or soft) concatenated to `z`,
D uses the projection discriminator (Miyato & Koyama 2018): logit = ψ(h) + <embed(c), h>.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from training.config import Architecture, TrainConfig
from training.data import DataSpec, Kind

DCGAN_SIZES = (28, *(2**k for k in range(3, 11)))  # 28 (the MNIST family) and 8, 16, 32, ..., 1024
AFFINE_INIT_SCALE = 0.02


@dataclass(frozen=True, kw_only=True)
class NetSpec(Architecture):
    """The network options and the data's shape: stored inside the checkpoint, so export needs nothing else."""

    kind: Kind
    out_shape: tuple[int, ...]  # one sample: (C, H, W) or (D,)
    num_classes: int  # 0: unconditional

    @classmethod
    def from_config(cls, cfg: TrainConfig, data: DataSpec) -> NetSpec:
        options = {f.name: getattr(cfg, f.name) for f in fields(Architecture)}
        num_classes = data.num_classes if cfg.conditional else 0
        return cls(**options, kind=data.kind, out_shape=tuple(data.shape), num_classes=num_classes)

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> NetSpec:
        """A checkpoint's `net_spec` dict, as every version has written it (JSON-like: out_shape a list)."""
        return cls(**{**saved, "out_shape": tuple(saved["out_shape"])})


def _sn(module: nn.Module, enabled: bool) -> nn.Module:
    return _spectral_norm(module) if enabled else module


def _init_dcgan(module: nn.Module) -> None:
    # DCGAN initialisation: conv weights N(0, 0.02), BN gamma N(1, 0.02), beta 0.
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _dcgan_plan(size: int) -> tuple[int, int]:
    """(base resolution, number of 2x up/down-sampling stages) for a DCGAN of this image size."""
    if size not in DCGAN_SIZES:
        raise ValueError(f"DCGAN image size must be 28 or a power of two from 8 to 1024, got {size}")
    base = 7 if size == 28 else 4
    return base, int(math.log2(size // base))


def _upsample(in_ch: int, out_ch: int, mode: str, bias: bool) -> list[nn.Module]:
    """A 2x upsampling layer of the DCGAN generator: (N, in_ch, r, r) -> (N, out_ch, 2r, 2r)."""
    if mode == "transpose":
        return [nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=bias)]
    if mode == "resize":
        return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=bias)]
    raise ValueError(f"g_upsample must be 'transpose' or 'resize', got '{mode}'")


def _mlp(in_dim: int, width: int, hidden: int, out_dim: int, batch_norm: bool = False) -> list[nn.Module]:
    """`hidden` Linear (+ BatchNorm1d) + LeakyReLU(0.2) layers of `width` units, then a Linear to `out_dim`."""
    layers: list[nn.Module] = []
    for _ in range(hidden):
        norm = [nn.BatchNorm1d(width)] if batch_norm else []
        layers += [nn.Linear(in_dim, width, bias=not batch_norm), *norm, nn.LeakyReLU(0.2)]  # (N, width)
        in_dim = width
    return [*layers, nn.Linear(in_dim, out_dim)]


class MLPGenerator(nn.Module):
    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        self.spec = spec
        in_dim, out_dim = spec.z_dim + spec.num_classes, math.prod(spec.out_shape)
        layers = _mlp(in_dim, spec.g_width, spec.g_hidden, out_dim, batch_norm=spec.g_norm == "batch")
        if spec.kind == "image":
            layers.append(nn.Tanh())  # images live in [-1, 1]; vectors are unbounded
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = z if c is None else torch.cat([z, c], 1)  # (N, z_dim + num_classes)
        return self.net(h).view(-1, *self.spec.out_shape)


class MixtureMLPGenerator(nn.Module):
    """K MLP generators in one module (Hoang et al., MGAN, ICLR 2018); sample i uses generator k(z_i).

    k is read off the first latent coordinate through the standard normal's K-quantiles, so each generator
    gets 1/K of N(0, I) and the latent stays exactly N(0, I): the service's contract does not change. The
    other coordinates drive the chosen generator. A continuous generator must put mass between disconnected
    modes; K generators, each free to cover one mode, need not. All K run on every sample (one batched
    matmul per layer) and the chosen output is gathered: a graph ONNX exports as MatMul and GatherElements.
    """

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        if spec.num_classes:
            raise ValueError("g_mixture > 1 is for unconditional MLP generators")
        self.spec, k = spec, spec.g_mixture
        normal = torch.distributions.Normal(0.0, 1.0)
        self.register_buffer("edges", normal.icdf(torch.arange(1, k, dtype=torch.float64) / k).float())
        dims = [spec.z_dim - 1] + [spec.g_width] * spec.g_hidden + [math.prod(spec.out_shape)]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(dims):
            bound = 1 / math.sqrt(fan_in)  # nn.Linear's default initialisation, per generator
            # Affine sub-generators (no hidden layer) start as near-points: one that starts as wide as the
            # data sits across several modes, its samples pulled different ways, and never moves.
            scale = AFFINE_INIT_SCALE if len(dims) == 2 else 1.0
            self.weights.append(nn.Parameter(torch.empty(k, fan_in, fan_out).uniform_(-bound, bound) * scale))
            self.biases.append(nn.Parameter(torch.empty(k, 1, fan_out).uniform_(-bound, bound)))

    def component(self, z: torch.Tensor) -> torch.Tensor:
        """(N,) int64: the sub-generator that serves each latent."""
        return (z[:, :1] > self.edges).sum(1)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        which = self.component(z)  # (N,)
        h = z[:, 1:].unsqueeze(0).expand(self.spec.g_mixture, -1, -1)  # (K, N, z_dim - 1)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.matmul(h, w) + b  # (K, N, width)
            if i < last:
                h = F.leaky_relu(h, 0.2)
        index = which.view(1, -1, 1).expand(1, -1, h.shape[2])
        out = torch.gather(h, 0, index).squeeze(0)  # (N, prod(out_shape))
        if self.spec.kind == "image":
            out = torch.tanh(out)
        return out.view(-1, *self.spec.out_shape)


class ComponentClassifier(nn.Module):
    """MGAN's classifier: which of the K sub-generators made this sample (K logits).

    Trained on fake samples only; the generators are rewarded when it is right (Hoang et al. 2018, the β
    term), which pushes two sub-generators that sit on the same mode apart. An MLP with D's width and depth,
    separate from D (MGAN shares D's body; separate weights keep D's objective and packing untouched).
    """

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        self.net = nn.Sequential(
            *_mlp(math.prod(spec.out_shape), spec.d_width, spec.mlp_layers, spec.g_mixture)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))  # (N, K) logits


class DCGANGenerator(nn.Module):
    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        self.spec = spec
        channels, size = spec.out_shape[0], spec.out_shape[1]
        base, stages = _dcgan_plan(size)
        width = spec.g_width * 2 ** (stages - 1)
        self.base, self.width = base, width
        self.project = nn.Sequential(
            nn.Linear(spec.z_dim + spec.num_classes, width * base * base, bias=False),
            nn.BatchNorm1d(width * base * base),
            nn.ReLU(True),
        )  # state size. (width * base * base)
        blocks: list[nn.Module] = []
        # extra_convs: the last upsampling is one more of these blocks, and a 3x3 conv then makes the image
        for _ in range(stages - 1 + spec.extra_convs):
            blocks += [
                *_upsample(width, width // 2, spec.g_upsample, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(True),
            ]  # state size. (width/2) x 2res x 2res
            width //= 2
        if spec.extra_convs:
            blocks += [nn.Conv2d(width, channels, 3, 1, 1), nn.Tanh()]  # C x size x size
        else:
            blocks += [*_upsample(width, channels, spec.g_upsample, bias=True), nn.Tanh()]  # C x size x size
        self.blocks = nn.Sequential(*blocks)
        self.apply(_init_dcgan)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = z if c is None else torch.cat([z, c], 1)  # (N, z_dim + num_classes)
        h = self.project(h).view(-1, self.width, self.base, self.base)  # (N, width, base, base)
        return self.blocks(h)  # (N, C, H, W)


class _Projection(nn.Module):
    """Unconditional logit plus the class projection <embed(c), h> for conditional D."""

    def __init__(self, features: int, num_classes: int, sn: bool) -> None:
        super().__init__()
        self.linear = _sn(nn.Linear(features, 1), sn)
        self.embed = _sn(nn.Linear(num_classes, features, bias=False), sn) if num_classes else None

    def forward(self, h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        logit = self.linear(h).squeeze(1)  # (N,)
        if self.embed is not None:
            if c is None:
                raise ValueError("conditional discriminator needs c")
            logit = logit + (self.embed(c) * h).sum(1)
        return logit


class MLPDiscriminator(nn.Module):
    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        width, in_dim = spec.d_width, math.prod(spec.out_shape) * spec.pack
        self.in_dim = in_dim
        layers: list[nn.Module] = []
        for _ in range(spec.mlp_layers):
            layers.append(_sn(nn.Linear(in_dim, width), spec.spectral_norm))  # (N, width)
            if spec.d_norm == "layer":
                layers.append(nn.LayerNorm(width))
            elif spec.d_norm == "batch":
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.LeakyReLU(0.2))
            in_dim = width
        self.features = nn.Sequential(*layers)
        self.head = _Projection(width, spec.num_classes, spec.spectral_norm)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        packed = x.reshape(-1, self.in_dim)  # (N / pack, pack * prod(shape)): PacGAN's packing
        return self.head(self.features(packed), c)  # (N / pack,) logits


class DCGANDiscriminator(nn.Module):
    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        channels, size = spec.out_shape[0], spec.out_shape[1]
        base, stages = _dcgan_plan(size)
        sn, width, res = spec.spectral_norm, spec.d_width, size
        self.packed_channels = channels * spec.pack  # PacDCGAN: `pack` samples stacked along channels
        layers: list[nn.Module] = [
            _sn(nn.Conv2d(self.packed_channels, width, 4, 2, 1), sn),
            nn.LeakyReLU(0.2, True),
        ]
        res //= 2  # state size. (ndf) x size/2 x size/2
        for stage in range(stages):
            if spec.extra_convs:
                layers += self._conv_norm_act(width, width, 3, 1, spec)  # state size. (width) x res x res
            if stage == stages - 1:
                break
            layers += self._conv_norm_act(width, width * 2, 4, 2, spec)
            width, res = width * 2, res // 2  # state size. (width) x res x res
        layers.append(nn.Flatten())  # (N, width * base * base)
        self.features = nn.Sequential(*layers)
        self.head = _Projection(width * base * base, spec.num_classes, sn)
        self.apply(_init_dcgan)

    @staticmethod
    def _conv_norm_act(in_ch: int, out_ch: int, kernel: int, stride: int, spec: NetSpec) -> list[nn.Module]:
        """Conv (padding 1; no bias before BatchNorm), D's normalisation, LeakyReLU(0.2)."""
        conv = nn.Conv2d(in_ch, out_ch, kernel, stride, 1, bias=spec.d_norm != "batch")
        layers = [_sn(conv, spec.spectral_norm)]
        if spec.d_norm == "batch":
            layers.append(nn.BatchNorm2d(out_ch))
        elif spec.d_norm == "layer":
            layers.append(nn.GroupNorm(1, out_ch))  # layer norm over (C, H, W), per sample
        return [*layers, nn.LeakyReLU(0.2, True)]

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        packed = x.reshape(-1, self.packed_channels, *x.shape[2:])  # (N / pack, pack * C, H, W)
        return self.head(self.features(packed), c)  # (N / pack,) logits


def build_networks(spec: NetSpec) -> tuple[nn.Module, nn.Module]:
    if spec.arch == "mlp":
        return build_generator(spec), MLPDiscriminator(spec)
    if spec.arch == "dcgan":
        if spec.kind != "image" or len(spec.out_shape) != 3 or spec.out_shape[1] != spec.out_shape[2]:
            raise ValueError(f"DCGAN needs square images (C, S, S), got {spec.kind} {spec.out_shape}")
        return DCGANGenerator(spec), DCGANDiscriminator(spec)
    raise ValueError(f"unknown arch '{spec.arch}'; choose 'mlp' or 'dcgan'")


def build_generator(spec: NetSpec) -> nn.Module:
    if spec.arch == "mlp":
        return MixtureMLPGenerator(spec) if spec.g_mixture > 1 else MLPGenerator(spec)
    return DCGANGenerator(spec)
