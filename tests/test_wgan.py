"""The original WGAN (Arjovsky et al. 2017): weight clipping of the critic, and RMSprop as an optimiser choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.support import tiny_config
from training.__main__ import main
from training.checkpoint import CHECKPOINT, load_checkpoint
from training.config import TrainConfig, parse_overrides, preset_config
from training.data import FakeSource, builtin_spec
from training.losses import make_objectives
from training.networks import NetSpec
from training.step import Latents, Nets, train_step


def _nets(cfg: TrainConfig) -> tuple[FakeSource, NetSpec, Nets]:
    source = FakeSource(builtin_spec(cfg.data), cfg.seed)
    spec = NetSpec.from_config(cfg, source.spec)
    torch.manual_seed(cfg.seed)
    return source, spec, Nets.build(cfg, spec, torch.device("cpu"))


@pytest.mark.parametrize("conditional", [False, True])  # True: the projection head's class embedding too
def test_clipping_bounds_every_critic_parameter_and_leaves_g_alone(conditional: bool) -> None:
    # 28x28 (random images of Fashion-MNIST's shape): a critic with a batch-norm layer, as the preset's
    cfg = tiny_config("wgan", data="fashion-mnist", n_critic=2, conditional=conditional, precision="fp32")
    c = cfg.clip_value
    source, spec, nets = _nets(cfg)
    # DCGAN's init (N(0, 0.02) convs, batch-norm scales near 1) starts well outside the box
    assert max(float(p.detach().abs().max()) for p in nets.D.parameters()) > 10 * c
    g_before = [p.detach().clone() for p in nets.G.parameters()]
    objectives = make_objectives(cfg.loss, cfg.gp_lambda, cfg.r1_gamma, cfg.mixture_beta)
    latents = Latents(spec, cfg.batch_size, torch.Generator().manual_seed(0))
    train_step(0, cfg, source, nets, objectives, latents, bf16=False)

    named = dict(nets.D.named_parameters())
    assert any("head" in name for name in named) and any(p.dim() == 1 for p in named.values())
    outside = [name for name, p in named.items() if float(p.detach().abs().max()) > c]
    assert not outside, f"critic parameters outside ±{c}: {outside}"
    at_bound = [name for name, p in named.items() if float(p.detach().abs().max()) == pytest.approx(c)]
    assert any(named[name].dim() == 1 for name in at_bound)  # a batch-norm scale, clipped from about 1
    # G took one RMSprop step (at most ~10 × lr per entry on the first step) and no clipping
    step_bound = 10 * cfg.lr_g * 1.01
    for before, after in zip(g_before, nets.G.parameters(), strict=True):
        assert float((after.detach() - before).abs().max()) <= step_bound
    assert max(float(p.detach().abs().max()) for p in nets.G.parameters()) > 0.5


def test_no_clipping_when_clip_value_is_zero() -> None:
    cfg = tiny_config("wgan", data="fashion-mnist", clip_value=0.0, n_critic=1, precision="fp32")
    source, spec, nets = _nets(cfg)
    objectives = make_objectives(cfg.loss, cfg.gp_lambda, cfg.r1_gamma, cfg.mixture_beta)
    latents = Latents(spec, cfg.batch_size, torch.Generator().manual_seed(0))
    train_step(0, cfg, source, nets, objectives, latents, bf16=False)
    assert max(float(p.detach().abs().max()) for p in nets.D.parameters()) > 0.5


def test_the_preset_is_algorithm_1() -> None:
    cfg = preset_config("wgan")
    assert (cfg.loss, cfg.optimizer, cfg.clip_value, cfg.n_critic) == ("wgan", "rmsprop", 0.01, 5)
    assert (cfg.lr_g, cfg.lr_d, cfg.batch_size, cfg.arch, cfg.d_norm) == (5e-5, 5e-5, 64, "dcgan", "batch")
    assert not cfg.spectral_norm and cfg.data == "fashion-mnist"


def test_set_optimizer_rmsprop_builds_rmsprop_for_every_network_and_resumes_its_state(tmp_path: Path) -> None:
    run = tmp_path / "run"
    base = [
        "train",
        "--preset",
        "toy2d",
        "--run-dir",
        str(run),
        "--no-progress",
        "--set",
        "optimizer=rmsprop",
    ]
    base += ["--set", "g_mixture=4", "--set", "g_layers=0", "--set", "mixture_beta=1.0"]  # MGAN's C too
    assert main([*base, "--steps", "2"]) == 0
    cfg = TrainConfig.from_saved(json.loads((run / "config.json").read_text()))
    saved = load_checkpoint(run / CHECKPOINT)
    *_, nets = _nets(cfg)
    nets.load_state_dict(saved, cfg)
    optimizers = {"opt_g": nets.opt_g, "opt_d": nets.opt_d, "opt_c": nets.opt_c}
    for key, optimizer in optimizers.items():
        assert isinstance(optimizer, torch.optim.RMSprop), key
        group = optimizer.param_groups[0]
        assert (group["alpha"], group["eps"], group["momentum"], group["centered"]) == (0.99, 1e-8, 0, False)
        state = optimizer.state_dict()["state"]
        assert state and all(float(s["square_avg"].sum()) > 0 for s in state.values()), key
        for index, entry in saved[key]["state"].items():
            assert torch.equal(state[index]["square_avg"], entry["square_avg"]), key
    assert main([*base, "--steps", "3", "--resume"]) == 0
    resumed = load_checkpoint(run / CHECKPOINT)["opt_d"]["state"][0]
    assert float(resumed["step"]) == 3 and not torch.equal(
        resumed["square_avg"], saved["opt_d"]["state"][0]["square_avg"]
    )


def test_adam_stays_the_default() -> None:
    _, _, nets = _nets(tiny_config("dcgan", data="digits"))
    assert isinstance(nets.opt_g, torch.optim.Adam) and isinstance(nets.opt_d, torch.optim.Adam)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optimizer": "sgd"}, "optimizer must be 'adam' or 'rmsprop', got 'sgd'"),
        ({"clip_value": -0.01}, r"clip_value must be >= 0 \(0: no weight clipping\), got -0.01"),
        ({"clip_value": float("nan")}, "clip_value must be >= 0"),
        ({"spectral_norm": True}, "clip_value 0.01 clips the critic's weights, which spectral_norm"),
    ],
)
def test_bad_values_name_the_field(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        preset_config("wgan", **overrides)


def test_bad_command_line_values_name_the_field() -> None:
    with pytest.raises(ValueError, match="--set optimizer=sgd: cannot read 'sgd'"):
        parse_overrides(["optimizer=sgd"])
    with pytest.raises(ValueError, match="--set clip_value=big: cannot read 'big'"):
        parse_overrides(["clip_value=big"])
    assert parse_overrides(["optimizer=rmsprop", "clip_value=0.02"]) == {
        "optimizer": "rmsprop",
        "clip_value": 0.02,
    }
