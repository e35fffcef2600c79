from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.config import PRESETS, TrainConfig, parse_overrides, preset_config


def test_required_presets_exist() -> None:
    assert {"mlp", "dcgan", "cgan", "wgan-gp", "toy2d"} <= set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_round_trips(name: str, tmp_path: Path) -> None:
    cfg = preset_config(name)
    cfg.save(tmp_path / "config.json")
    assert TrainConfig(**json.loads((tmp_path / "config.json").read_text())) == cfg


def test_preset_semantics() -> None:
    assert preset_config("cgan").conditional and not preset_config("dcgan").conditional
    wgan = preset_config("wgan-gp")
    assert wgan.loss == "wgan-gp" and wgan.n_critic == 5 and wgan.d_norm != "batch"
    assert preset_config("mlp").loss == "minimax" and preset_config("mlp").arch == "mlp"
    assert preset_config("toy2d").data in ("grid25", "ring8")


def test_overrides_are_typed() -> None:
    got = parse_overrides(["ema_decay=0.99", "spectral_norm=true", "data_dir=none", "loss=hinge", "z_dim=32"])
    assert got == {"ema_decay": 0.99, "spectral_norm": True, "data_dir": None, "loss": "hinge", "z_dim": 32}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("nonsense=1", "unknown config field"),
        ("z_dim", "expects key=value"),
        ("z_dim=abc", "cannot read 'abc'"),
        ("loss=magic", "cannot read 'magic'"),
        ("preset=dcgan", "unknown config field"),
    ],
)
def test_bad_overrides(item: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_overrides([item])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\)"),
        ({"d_norm": "batch"}, "wgan-gp' needs a per-sample critic"),
        ({"channels": 2}, "channels must be 1 or 3"),
        ({"pack": 3}, "pack must be >= 1 and divide batch_size 64"),
        (
            {"pack": 2, "conditional": True},
            r"pack > 1 needs an unconditional discriminator \(conditional is true\)",
        ),
        ({"r1_gamma": -1.0}, "r1_gamma must be >= 0"),
        ({"g_upsample": "bilinear"}, r"g_upsample must be 'transpose' or 'resize' \(DCGAN G only\)"),
    ],
)
def test_invalid_configs(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        preset_config("wgan-gp", **overrides)


def test_extra_convs_needs_dcgan() -> None:
    assert preset_config("cgan", extra_convs=True).extra_convs
    with pytest.raises(ValueError, match="extra_convs needs arch 'dcgan', got arch 'mlp'"):
        preset_config("mlp", extra_convs=True)


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown preset 'stylegan'"):
        preset_config("stylegan")


def test_precision_defaults_and_old_configs() -> None:
    import torch

    from training.device import use_bf16

    cpu = torch.device("cpu")
    assert preset_config("dcgan").precision == "auto"
    assert use_bf16("bf16", cpu, "mlp") and not use_bf16("fp32", cpu, "dcgan")
    assert not use_bf16("auto", cpu, "mlp")  # MLPs lose to the casts on a CPU
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert use_bf16("auto", cpu, "dcgan") is bool(native)
    # A config.json written before `precision` existed resumes as the fp32 run it was.
    old = preset_config("cgan").to_dict()
    del old["precision"]
    assert TrainConfig.from_saved(old).precision == "fp32"
    assert TrainConfig.from_saved(old | {"precision": "bf16"}).precision == "bf16"
    with pytest.raises(ValueError, match="precision"):
        parse_overrides(["precision=fp16"])
