"""GAN objectives: one small class each, with the same interface `d_loss(D, real, fake, c)` / `g_loss(D, fake, c)`.

D returns raw logits (or critic values) of shape (N,); `fake` is already detached for `d_loss`.

The terms that a network's loss adds (R1 for D, MGAN's classifier term for G) are small classes too, each
called as `term(net, x, y)` and added as `term.weight × term(net, x, y)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.distributed import Ranks


class Loss:
    n_critic_default = 1

    def d_loss(
        self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor, c: torch.Tensor | None
    ) -> torch.Tensor:
        raise NotImplementedError

    def g_loss(
        self, D: nn.Module, fake: torch.Tensor, c: torch.Tensor | None, real: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`real`: a real batch with the same labels `c`, for the losses that pair real and fake (`paired`)."""
        raise NotImplementedError

    paired = False  # g_loss needs `real`


class Minimax(Loss):
    """Goodfellow et al. 2014 as written: D maximises log D(x) + log(1 - D(G(z))), G minimises log(1 - D(G(z)))."""

    def d_loss(self, D: nn.Module, real: Tensor, fake: Tensor, c: Tensor | None) -> Tensor:
        # -log σ(l) = softplus(-l), -log(1 - σ(l)) = softplus(l)
        return F.softplus(-D(real, c)).mean() + F.softplus(D(fake, c)).mean()

    def g_loss(self, D: nn.Module, fake: Tensor, c: Tensor | None, real: Tensor | None = None) -> Tensor:
        return -F.softplus(D(fake, c)).mean()  # = mean log(1 - σ(l))


class NonSaturating(Minimax):
    """The same D objective; G maximises log D(G(z)) instead (the paper's practical variant)."""

    def g_loss(self, D: nn.Module, fake: Tensor, c: Tensor | None, real: Tensor | None = None) -> Tensor:
        return F.softplus(-D(fake, c)).mean()


class Hinge(Loss):
    """Lim & Ye 2017, Miyato et al. 2018."""

    def d_loss(self, D: nn.Module, real: Tensor, fake: Tensor, c: Tensor | None) -> Tensor:
        return F.relu(1.0 - D(real, c)).mean() + F.relu(1.0 + D(fake, c)).mean()

    def g_loss(self, D: nn.Module, fake: Tensor, c: Tensor | None, real: Tensor | None = None) -> Tensor:
        return -D(fake, c).mean()


class LeastSquares(Loss):
    """LSGAN (Mao et al. 2017) with the 0-1 coding: a = 0 fake, b = 1 real, G targets c = 1."""

    def d_loss(self, D: nn.Module, real: Tensor, fake: Tensor, c: Tensor | None) -> Tensor:
        return 0.5 * ((D(real, c) - 1.0) ** 2).mean() + 0.5 * (D(fake, c) ** 2).mean()

    def g_loss(self, D: nn.Module, fake: Tensor, c: Tensor | None, real: Tensor | None = None) -> Tensor:
        return 0.5 * ((D(fake, c) - 1.0) ** 2).mean()


class RelativisticPairing(Loss):
    """RpGAN (Jolicoeur-Martineau 2019), as R3GAN uses it (Huang et al. 2024, with R1 and R2): each real sample
    is paired with a fake one of the same labels, D maximises log σ(D(real) - D(fake)), G the reverse."""

    paired = True

    def d_loss(self, D: nn.Module, real: Tensor, fake: Tensor, c: Tensor | None) -> Tensor:
        return F.softplus(D(fake, c) - D(real, c)).mean()

    def g_loss(self, D: nn.Module, fake: Tensor, c: Tensor | None, real: Tensor | None = None) -> Tensor:
        if real is None:
            raise ValueError("rpgan's generator loss pairs each fake sample with a real one: pass real")
        return F.softplus(D(real, c) - D(fake, c)).mean()


def gradient_penalty(
    D: nn.Module, real: torch.Tensor, fake: torch.Tensor, c: torch.Tensor | None, eps: torch.Tensor
) -> torch.Tensor:
    """mean over samples of (||∇D(x̂)||₂ - 1)², x̂ = eps·real + (1 - eps)·fake, eps of shape (N,)."""
    shape = (-1,) + (1,) * (real.dim() - 1)
    mixed = (eps.view(shape) * real + (1.0 - eps.view(shape)) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(mixed, c).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


def r1_penalty(D: nn.Module, real: Tensor, c: Tensor | None) -> Tensor:
    """E||∇ₓD(x)||² on real data (Mescheder et al. 2018): the `R1` term."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(real, c).sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


class Term:
    """A term of a network's loss, added as `weight × term(net, x, y)`: `net` judges the samples `x`, `y` is
    what they are conditioned on or labelled with."""

    weight: float

    def __call__(self, net: nn.Module, x: Tensor, y: Tensor | None) -> Tensor:
        raise NotImplementedError


class R1(Term):
    """R1 (Mescheder et al. 2018): E||∇ₓD(x, c)||² on real data; D's loss adds γ/2 times it."""

    def __init__(self, gamma: float) -> None:
        self.weight = gamma / 2

    def __call__(self, D: nn.Module, real: Tensor, c: Tensor | None) -> Tensor:
        return r1_penalty(D, real, c)


class R2(R1):
    """R2 (R3GAN's second term): the same penalty on fake samples, E||∇ₓD(G(z), c)||², γ/2 times it."""


class ComponentCrossEntropy(Term):
    """MGAN's classifier term (Hoang et al. 2018): the cross-entropy of a classifier C that names the
    sub-generator (`component`) of each fake sample. C minimises it; G's loss adds β times it, which pushes
    two sub-generators that sit on the same mode apart."""

    def __init__(self, beta: float) -> None:
        self.weight = beta

    def __call__(self, C: nn.Module, fake: Tensor, component: Tensor | None) -> Tensor:
        return F.cross_entropy(C(fake), component)


class WGAN(Loss):
    """Arjovsky et al. 2017: the critic minimises E[D(fake)] - E[D(real)], G minimises -E[D(fake)]. The
    Lipschitz constraint is not in the loss: weight clipping (`clip_value`, training/step.py) keeps it."""

    n_critic_default = 5

    def d_loss(self, D: nn.Module, real: Tensor, fake: Tensor, c: Tensor | None) -> Tensor:
        return D(fake, c).mean() - D(real, c).mean()

    def g_loss(self, D: nn.Module, fake: Tensor, c: Tensor | None, real: Tensor | None = None) -> Tensor:
        return -D(fake, c).mean()


class WGANGP(WGAN):
    """Gulrajani et al. 2017: critic loss E[D(fake)] - E[D(real)] + λ·GP, with n_critic critic steps."""

    def __init__(self, gp_lambda: float = 10.0, ranks: Ranks | None = None) -> None:
        self.gp_lambda, self.ranks = gp_lambda, ranks or Ranks()

    def d_loss(self, D: nn.Module, real: Tensor, fake: Tensor, c: Tensor | None) -> Tensor:
        # The interpolation weights of the whole global batch, this rank's slice of them: the same numbers
        # for a sample whatever the number of ranks (`real` is this rank's equal share).
        n, ranks = real.shape[0], self.ranks
        eps = torch.rand(n * ranks.world_size, device=real.device, dtype=real.dtype)
        eps = eps[ranks.rank * n : (ranks.rank + 1) * n]
        gp = gradient_penalty(D, real, fake, c, eps)
        return super().d_loss(D, real, fake, c) + self.gp_lambda * gp


def make_loss(name: str, gp_lambda: float = 10.0, ranks: Ranks | None = None) -> Loss:
    losses: dict[str, Loss] = {
        "minimax": Minimax(),
        "nonsaturating": NonSaturating(),
        "hinge": Hinge(),
        "lsgan": LeastSquares(),
        "wgan": WGAN(),
        "wgan-gp": WGANGP(gp_lambda, ranks),
        "rpgan": RelativisticPairing(),
    }
    if name not in losses:
        raise ValueError(f"unknown loss '{name}'; choose one of {sorted(losses)}")
    return losses[name]


@dataclass(frozen=True)
class Objectives:
    """What training minimises: the GAN loss, and the terms D's and G's losses add where they are enabled."""

    gan: Loss
    r1: R1 | None = None  # D's, on real samples
    r2: R2 | None = None  # D's, on fake samples
    mgan: ComponentCrossEntropy | None = None  # C's loss, and G's


def make_objectives(
    loss: str,
    gp_lambda: float,
    r1_gamma: float,
    mixture_beta: float,
    ranks: Ranks | None = None,
    r2_gamma: float = 0.0,
) -> Objectives:
    """Every loss is a mean over this rank's samples: with equal slices, DDP's average of the ranks'
    gradients is the gradient of the global batch's mean."""
    return Objectives(
        make_loss(loss, gp_lambda, ranks),
        R1(r1_gamma) if r1_gamma > 0 else None,
        R2(r2_gamma) if r2_gamma > 0 else None,
        ComponentCrossEntropy(mixture_beta) if mixture_beta > 0 else None,
    )
