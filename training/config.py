"""Training configuration: one frozen dataclass, presets as a data table, overrides by `replace`.

Its network options are declared once, in `Architecture`, which the networks' NetSpec extends.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from training.diffaugment import parse_policy

Arch = Literal["mlp", "dcgan"]
LossName = Literal["minimax", "nonsaturating", "wgan", "wgan-gp", "hinge", "lsgan", "rpgan"]
OptimizerName = Literal["adam", "rmsprop"]
DNorm = Literal["batch", "layer", "none"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16"]
GUpsample = Literal["transpose", "resize"]
GNorm = Literal["none", "batch"]


@dataclass(frozen=True, kw_only=True)
class Architecture:
    """The network options, declared once: TrainConfig carries them (flat, as `--set` and config.json see
    them) and NetSpec (training/networks.py) adds the data's shape to them for the networks."""

    arch: Arch
    z_dim: int = 100
    g_width: int = 64  # MLP: hidden units; DCGAN: ngf (channels of the last hidden layer)
    d_width: int = 64  # MLP: hidden units; DCGAN: ndf (channels of the first layer)
    mlp_layers: int = 2  # hidden layers in each MLP network
    g_layers: int | None = None  # hidden layers in the MLP G when it differs (0: affine sub-generators)
    g_norm: GNorm = "none"  # MLP G: "batch" puts BatchNorm1d after each hidden Linear (DCGAN's G has it)
    # DCGAN G's 2x upsampling: "transpose" (4x4 stride-2 ConvTranspose, as in DCGAN) or "resize" (nearest
    # neighbour then a 3x3 conv, Odena et al. 2016: no checkerboard artefacts, ~2.25x the multiply-adds).
    g_upsample: GUpsample = "transpose"
    # SNGAN's "standard CNN" pattern (Miyato et al. 2018): a stride-1 3x3 conv after each of D's
    # downsamplings, and G's last upsampling yields g_width/2 feature maps that a 3x3 conv turns into the image
    # (DCGAN's G makes its image straight from a transposed conv). More layers at full resolution, for texture.
    extra_convs: bool = False
    spectral_norm: bool = False  # on every discriminator layer
    d_norm: DNorm = "batch"  # normalisation inside D (WGAN-GP needs a per-sample one: none or layer)
    pack: int = 1  # PacGAN: D judges `pack` samples at once (unconditional D; MLP: features, DCGAN: channels)
    g_mixture: int = 1  # MGAN: K MLP sub-generators, one chosen per sample from z[0] (unconditional MLPs)

    @property
    def g_hidden(self) -> int:
        return self.mlp_layers if self.g_layers is None else self.g_layers


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Architecture):
    preset: str
    data: str
    loss: LossName
    conditional: bool = False
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    # adam (beta1, beta2 above) or rmsprop (torch's alpha 0.99, eps 1e-8: what the WGAN paper's code ran),
    # for G, D and MGAN's classifier, at lr_g / lr_d
    optimizer: OptimizerName = "adam"
    batch_size: int = 64
    steps: int = 1000  # generator steps; --epochs converts to steps
    n_critic: int = 1  # discriminator steps per generator step
    gp_lambda: float = 10.0
    # WGAN's weight clipping (Arjovsky et al. 2017): every critic parameter into [-c, c] after each critic
    # update; 0 disables
    clip_value: float = 0.0
    r1_gamma: float = 0.0  # R1 penalty γ/2·E||∇D(x_real)||² (Mescheder et al. 2018); 0 disables
    r2_gamma: float = 0.0  # R2: the same on fake samples (R3GAN: rpgan + R1 + R2); 0 disables
    # DiffAugment (Zhao et al. 2020) on everything D sees: a comma-separated subset of color, translation,
    # cutout (training.diffaugment); "" disables. Image data only.
    diffaug: str = ""
    # MGAN's β: a classifier learns which sub-generator made each fake sample and G adds β × its
    # cross-entropy, so that two sub-generators on one mode are pushed apart. 0 disables; needs g_mixture > 1.
    mixture_beta: float = 0.0
    ema_decay: float = 0.999  # 0 disables the EMA copy of G
    seed: int = 0
    data_dir: str | None = None
    image_size: int | None = None  # folder data: resize to this square size
    channels: int | None = None  # folder data: 1 (grey) or 3 (RGB); None infers from the images
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 1000
    device: Device = "auto"
    num_threads: int | None = None  # CPU threads; None = the cores this process may use
    # bf16 autocast (weights and optimizer state stay fp32). auto: bf16 on CUDA with bf16, and for the DCGAN
    # networks on CPUs that multiply bf16 natively (AMX or AVX512-BF16); fp32 elsewhere.
    precision: Precision = "auto"
    # torchrun: seconds a rank waits in a collective for the others before the run fails (a rank that hangs;
    # one that dies fails the others at once). Long enough for rank 0 to write a checkpoint.
    dist_timeout_s: int = 600

    def __post_init__(self) -> None:
        positive = ("z_dim", "g_width", "d_width", "mlp_layers", "batch_size", "n_critic", "log_every")
        positive += ("dist_timeout_s",)
        for name in (*positive, "sample_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.loss == "wgan-gp" and self.d_norm == "batch":
            raise ValueError("loss 'wgan-gp' needs a per-sample critic: set d_norm to 'none' or 'layer'")
        if self.pack < 1 or self.batch_size % self.pack:
            raise ValueError(f"pack must be >= 1 and divide batch_size {self.batch_size}, got {self.pack}")
        if self.pack > 1 and self.conditional:
            raise ValueError("pack > 1 needs an unconditional discriminator (conditional is true)")
        if self.g_mixture < 1 or (self.g_mixture > 1 and (self.arch != "mlp" or self.conditional)):
            raise ValueError(
                f"g_mixture must be >= 1, and > 1 only for unconditional MLPs; got {self.g_mixture}"
            )
        if self.mixture_beta < 0 or (self.mixture_beta > 0 and self.g_mixture < 2):
            raise ValueError(
                f"mixture_beta must be >= 0, and > 0 only with g_mixture > 1; got {self.mixture_beta}"
            )
        if self.g_layers is not None and (self.g_layers < 0 or self.arch != "mlp"):
            raise ValueError(f"g_layers must be >= 0 (or unset: mlp_layers), MLP G only; got {self.g_layers}")
        if self.g_upsample not in typing.get_args(GUpsample) or (
            self.g_upsample != "transpose" and self.arch != "dcgan"
        ):
            raise ValueError(
                f"g_upsample must be 'transpose' or 'resize' (DCGAN G only), got '{self.g_upsample}'"
            )
        if self.g_norm not in typing.get_args(GNorm) or (
            self.g_norm != "none" and (self.arch != "mlp" or self.g_mixture > 1)
        ):
            raise ValueError(
                f"g_norm must be 'none' or 'batch' ('batch': one MLP G only), got '{self.g_norm}'"
            )
        if self.extra_convs and self.arch != "dcgan":
            raise ValueError(f"extra_convs needs arch 'dcgan', got arch '{self.arch}'")
        for name in ("r1_gamma", "r2_gamma"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        parse_policy(self.diffaug)
        if self.optimizer not in typing.get_args(OptimizerName):
            raise ValueError(f"optimizer must be 'adam' or 'rmsprop', got '{self.optimizer}'")
        if not self.clip_value >= 0:  # NaN too
            raise ValueError(f"clip_value must be >= 0 (0: no weight clipping), got {self.clip_value}")
        if self.clip_value > 0 and self.spectral_norm:
            raise ValueError(
                f"clip_value {self.clip_value} clips the critic's weights, which spectral_norm "
                "reparametrises: set clip_value=0 or spectral_norm=false"
            )
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> TrainConfig:
        """A config.json as written by any version: runs from before `precision` existed trained in fp32
        on the CPU (bf16 on CUDA), which is what `auto` does on a CPU without native bf16."""
        if "precision" not in saved and saved.get("device") != "cuda":
            saved = saved | {"precision": "fp32"}
        return cls(**saved)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


_DCGAN = dict(arch="dcgan", z_dim=100, g_width=64, d_width=64, batch_size=64, lr_g=2e-4, lr_d=2e-4)

PRESETS: dict[str, dict[str, Any]] = {
    # Vanilla GAN (Goodfellow et al. 2014): MLPs and the minimax objective as written in the paper.
    "mlp": dict(
        data="mnist",
        arch="mlp",
        loss="minimax",
        z_dim=64,
        g_width=256,
        d_width=256,
        batch_size=64,
        ema_decay=0.0,
        d_norm="none",
    ),
    # DCGAN (Radford et al. 2016) with the non-saturating loss; the pytorch/examples hyperparameters.
    "dcgan": dict(data="fashion-mnist", loss="nonsaturating", **_DCGAN),
    # Conditional DCGAN: the same networks with num_classes > 0 (G gets c, D uses projection).
    "cgan": dict(
        data="fashion-mnist", loss="hinge", conditional=True, spectral_norm=True, d_norm="none", **_DCGAN
    ),
    # WGAN-GP (Gulrajani et al. 2017): a loss plus n_critic, Adam(1e-4, 0, 0.9), no batch norm in D.
    "wgan-gp": dict(
        data="fashion-mnist",
        loss="wgan-gp",
        n_critic=5,
        d_norm="layer",
        **{**_DCGAN, "lr_g": 1e-4, "lr_d": 1e-4, "beta1": 0.0, "beta2": 0.9},
    ),
    # 2-D mixtures (VEEGAN/GDPP lineage sizes): MLP G and D, 128 units, batch 512.
    "toy2d": dict(
        data="grid25",
        arch="mlp",
        loss="nonsaturating",
        z_dim=32,
        g_width=128,
        d_width=128,
        mlp_layers=3,
        batch_size=512,
        lr_g=1e-3,
        lr_d=1e-4,
        d_norm="none",
        sample_every=1000,
    ),
    # WGAN (Arjovsky et al. 2017), Algorithm 1's defaults: weight clipping at ±0.01 after each critic
    # update, RMSprop 5e-5 (alpha 0.99, eps 1e-8: torch's defaults, which the paper's code used), n_critic 5,
    # batch 64. The critic keeps DCGAN's batch norm, as the paper's DCGAN critic did (no per-sample penalty
    # here to forbid it); the clipping covers its scales and shifts too. Not reproduced: the code's 100 critic
    # steps for the first 25 generator steps and every 500th. The EMA copy of G is the project's (all presets).
    "wgan": dict(
        data="fashion-mnist",
        loss="wgan",
        n_critic=5,
        optimizer="rmsprop",
        clip_value=0.01,
        **{**_DCGAN, "lr_g": 5e-5, "lr_d": 5e-5},
    ),
}


def preset_config(name: str, **overrides: Any) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}'; choose one of {sorted(PRESETS)}")
    return TrainConfig(preset=name, **{**PRESETS[name], **overrides})


def _coerce(field_type: Any, name: str, text: str) -> Any:
    """Turn a command-line string into the type of a config field."""
    hints = typing.get_type_hints(TrainConfig)
    kind = hints[name]
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if text.lower() in ("none", "null") and type(None) in options:
        return None
    for option in options:
        if option is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
        elif option in (int, float, str):
            try:
                return option(text)
            except ValueError:
                continue
        elif typing.get_origin(option) is Literal and text in typing.get_args(option):
            return text
    raise ValueError(f"--set {name}={text}: cannot read '{text}' as {field_type}")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse `--set key=value` items against the TrainConfig fields."""
    known = {f.name: f.type for f in fields(TrainConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got '{item}'")
        if key not in known or key == "preset":
            raise ValueError(f"--set {key}: unknown config field; known: {sorted(set(known) - {'preset'})}")
        out[key] = _coerce(known[key], key, value)
    return out
