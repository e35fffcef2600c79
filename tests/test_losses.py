from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.losses import (
    R2,
    WGAN,
    WGANGP,
    Hinge,
    LeastSquares,
    Minimax,
    NonSaturating,
    RelativisticPairing,
    gradient_penalty,
    make_loss,
)


class ConstantD(nn.Module):
    """A discriminator that outputs `real_logit` on the real batch and `fake_logit` on anything else."""

    def __init__(self, real: torch.Tensor, real_logit: float, fake_logit: float) -> None:
        super().__init__()
        self.real, self.real_logit, self.fake_logit = real, real_logit, fake_logit

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        value = self.real_logit if x is self.real else self.fake_logit
        return torch.full((x.shape[0],), value)


class LinearCritic(nn.Module):
    def __init__(self, w: torch.Tensor, b: float = 0.3) -> None:
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return x.flatten(1) @ self.w + self.b


real, fake = torch.zeros(4, 2), torch.ones(4, 2)
D = ConstantD(real, real_logit=2.0, fake_logit=-1.0)
sig = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))  # σ(2), σ(-1)


@pytest.mark.parametrize(
    ("loss", "d_value", "g_value"),
    [
        (Minimax(), -math.log(sig[0]) - math.log(1 - sig[1]), math.log(1 - sig[1])),
        (NonSaturating(), -math.log(sig[0]) - math.log(1 - sig[1]), -math.log(sig[1])),
        (Hinge(), max(0, 1 - 2.0) + max(0, 1 + -1.0), 1.0),
        (LeastSquares(), 0.5 * (2.0 - 1) ** 2 + 0.5 * (-1.0) ** 2, 0.5 * (-1.0 - 1) ** 2),
        (WGAN(), -1.0 - 2.0, 1.0),  # critic E[D(fake)] - E[D(real)], G -E[D(fake)]
    ],
)
def test_known_values(loss: object, d_value: float, g_value: float) -> None:
    assert float(loss.d_loss(D, real, fake, None)) == pytest.approx(d_value, rel=1e-6)  # type: ignore[attr-defined]
    assert float(loss.g_loss(D, fake, None)) == pytest.approx(g_value, rel=1e-6)  # type: ignore[attr-defined]


def test_gradient_penalty_of_a_linear_critic() -> None:
    # ∇D(x̂) = w everywhere, so the penalty is (||w|| - 1)² whatever the interpolation points.
    w = torch.tensor([3.0, 4.0])
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    gp = gradient_penalty(LinearCritic(w), real, fake, None, torch.rand(8))
    assert gp.item() == pytest.approx((5.0 - 1.0) ** 2)
    unit = gradient_penalty(LinearCritic(w / 5.0), real, fake, None, torch.rand(8))
    assert unit.item() == pytest.approx(0.0, abs=1e-10)


def test_gradient_penalty_interpolates_per_sample() -> None:
    # D(x) = ||x||²/2 has ∇ = x, so with eps = 1 the penalty is measured at the real points.
    critic = type("Sq", (nn.Module,), {"forward": lambda self, x, c=None: 0.5 * (x**2).sum(1)})()
    real, fake = torch.tensor([[3.0, 4.0], [0.0, 2.0]]), torch.zeros(2, 2)
    gp = gradient_penalty(critic, real, fake, None, torch.ones(2))
    assert gp.item() == pytest.approx(((5 - 1) ** 2 + (2 - 1) ** 2) / 2)


def test_wgan_gp_critic_loss() -> None:
    w = torch.tensor([3.0, 4.0])
    real, fake = torch.randn(6, 2), torch.randn(6, 2)
    critic = LinearCritic(w)
    expected = float((fake @ w).mean() - (real @ w).mean()) + 10.0 * 16.0
    assert float(WGANGP(10.0).d_loss(critic, real, fake, None)) == pytest.approx(expected, rel=1e-5)
    assert float(WGANGP().g_loss(critic, fake, None)) == pytest.approx(
        -float((fake @ w).mean() + 0.3), rel=1e-5
    )
    assert WGANGP.n_critic_default == 5


def test_wgan_is_the_gradient_penalty_free_critic_loss() -> None:
    w = torch.tensor([3.0, 4.0])
    real, fake = torch.randn(6, 2), torch.randn(6, 2)
    expected = float((fake @ w).mean() - (real @ w).mean())  # the bias cancels; no penalty term
    wgan = make_loss("wgan")
    assert isinstance(wgan, WGAN) and not isinstance(wgan, WGANGP) and wgan.n_critic_default == 5
    assert float(wgan.d_loss(LinearCritic(w), real, fake, None)) == pytest.approx(expected, rel=1e-5)


def test_gradients_flow_to_the_generator_output() -> None:
    fake = torch.randn(4, 2, requires_grad=True)
    for name in ("minimax", "nonsaturating", "hinge", "lsgan", "wgan", "wgan-gp"):
        fake.grad = None
        make_loss(name).g_loss(LinearCritic(torch.tensor([1.0, -1.0])), fake, None).backward()
        assert fake.grad is not None and float(fake.grad.abs().sum()) > 0


def test_unknown_loss() -> None:
    with pytest.raises(ValueError, match="unknown loss 'relativistic'"):
        make_loss("relativistic")


def test_r1_of_a_linear_critic_is_the_squared_weight_norm() -> None:
    from training.losses import r1_penalty

    w = torch.tensor([3.0, 4.0])
    assert r1_penalty(LinearCritic(w), torch.randn(8, 2), None).item() == pytest.approx(25.0)


def test_the_terms_share_one_call_signature_and_carry_their_weight() -> None:
    """R1 adds γ/2 · E||∇D(real)||² to D's loss; MGAN's term is the classifier's cross-entropy, β-weighted for G."""
    from training.losses import R1, ComponentCrossEntropy, make_objectives

    w = torch.tensor([3.0, 4.0])
    r1 = R1(0.2)
    assert r1.weight == pytest.approx(0.1) and r1(
        LinearCritic(w), torch.randn(8, 2), None
    ).item() == pytest.approx(25.0)
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    C = type("Fixed", (nn.Module,), {"forward": lambda self, x: logits})()
    component = torch.tensor([0, 2])
    mgan = ComponentCrossEntropy(1.5)
    assert mgan.weight == 1.5
    assert mgan(C, torch.zeros(2, 2), component).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, component).item()
    )
    plain = make_objectives("hinge", 10.0, r1_gamma=0.0, mixture_beta=0.0)
    assert isinstance(plain.gan, Hinge) and plain.r1 is None and plain.mgan is None
    full = make_objectives("wgan-gp", 5.0, r1_gamma=1.0, mixture_beta=2.0)
    assert isinstance(full.gan, WGANGP) and full.gan.gp_lambda == 5.0
    assert full.r1 is not None and full.r1.weight == 0.5 and full.mgan is not None and full.mgan.weight == 2.0


def test_relativistic_pairing_known_values_and_needs_the_real_batch() -> None:
    rp = RelativisticPairing()
    # D: 2 on real, -1 on fake. D's loss softplus(D(fake) - D(real)), G's the reverse.
    assert float(rp.d_loss(D, real, fake, None)) == pytest.approx(math.log1p(math.exp(-3.0)), rel=1e-6)
    assert float(rp.g_loss(D, fake, None, real)) == pytest.approx(math.log1p(math.exp(3.0)), rel=1e-6)
    assert rp.paired and not NonSaturating().paired
    with pytest.raises(ValueError, match="pass real"):
        rp.g_loss(D, fake, None)


def test_r2_penalises_the_gradient_at_the_given_samples() -> None:
    w = torch.tensor([3.0, 4.0])
    term = R2(gamma=2.0)
    assert term.weight == 1.0
    assert float(term(LinearCritic(w), fake, None)) == pytest.approx(25.0)
