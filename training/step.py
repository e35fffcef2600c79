"""One training step, and what it updates: the networks with their optimisers and the EMA copy of G, and
the latents it draws. Under torchrun the steps call the DDP wrappers (`Nets.parallel`) where a network learns
and the plain modules where it only passes gradients on; each rank works on its slice of the global batch."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.config import TrainConfig
from training.data import Source
from training.diffaugment import augmented, parse_policy
from training.distributed import Ranks, data_parallel
from training.losses import Objectives
from training.networks import ComponentClassifier, NetSpec, build_networks


class EMA:
    """Exponential moving average of G; the decay ramps up as (1 + t) / (10 + t) so short runs are not stuck at init."""

    def __init__(self, G: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(G).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, G: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for p_ema, p in zip(self.model.parameters(), G.parameters(), strict=True):
            p_ema.lerp_(p.detach(), 1.0 - decay)
        for b_ema, b in zip(self.model.buffers(), G.buffers(), strict=True):
            b_ema.copy_(b)


@dataclass
class Nets:
    """Everything that learns, with its optimiser: G, D, the EMA copy of G, and MGAN's classifier C
    (present when mixture_beta > 0; `Objectives.mgan` then trains it, with D's learning rate)."""

    G: nn.Module
    D: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    ema: EMA | None = None
    C: nn.Module | None = None
    opt_c: torch.optim.Optimizer | None = None
    # G, D and C as the steps call them where they learn: DDP wrappers under torchrun, else the modules
    parallel: dict[str, nn.Module] = field(default_factory=dict)

    @classmethod
    def build(cls, cfg: TrainConfig, spec: NetSpec, device: torch.device, ranks: Ranks | None = None) -> Nets:
        ranks = ranks or Ranks()
        G, D = build_networks(spec)
        G.to(device).train()
        D.to(device).train()
        C = ComponentClassifier(spec).to(device).train() if cfg.mixture_beta > 0 else None
        parallel = {"G": data_parallel(G, ranks, device), "D": data_parallel(D, ranks, device)}
        if C is not None:
            parallel["C"] = data_parallel(C, ranks, device)
        ema = EMA(G, cfg.ema_decay) if cfg.ema_decay > 0 else None
        opt_g = make_optimizer(cfg, G, cfg.lr_g)
        opt_d = make_optimizer(cfg, D, cfg.lr_d)
        opt_c = make_optimizer(cfg, C, cfg.lr_d) if C is not None else None
        return cls(G, D, opt_g, opt_d, ema, C, opt_c, parallel)

    @property
    def sampler(self) -> nn.Module:
        return self.ema.model if self.ema is not None else self.G

    def parts(self) -> dict[str, Any]:
        """Each part under its checkpoint key; None where this run has no such part."""
        G_ema = self.ema.model if self.ema is not None else None
        nets = {"G": self.G, "D": self.D, "G_ema": G_ema}
        return nets | {"opt_g": self.opt_g, "opt_d": self.opt_d, "C": self.C, "opt_c": self.opt_c}

    def modules(self) -> dict[str, nn.Module | None]:
        """The networks (not the optimisers), under their checkpoint keys."""
        return {key: part for key, part in self.parts().items() if not key.startswith("opt_")}

    def state_dict(self) -> dict[str, Any]:
        return {key: part.state_dict() if part is not None else None for key, part in self.parts().items()}

    def load_state_dict(self, state: dict[str, Any], cfg: TrainConfig) -> None:
        """Weights and optimiser states as saved; the learning rates as `cfg` says (a resume may set new ones)."""
        for key, part in self.parts().items():
            if part is not None:
                part.load_state_dict(state[key])
        for optimizer, lr in ((self.opt_g, cfg.lr_g), (self.opt_d, cfg.lr_d), (self.opt_c, cfg.lr_d)):
            for group in optimizer.param_groups if optimizer is not None else ():
                group["lr"] = lr


def make_optimizer(cfg: TrainConfig, net: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam with the config's betas, or RMSprop with torch's alpha 0.99 and eps 1e-8 (the WGAN paper's code
    called `optim.RMSprop(params, lr)` with these defaults; no momentum, not centred)."""
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(net.parameters(), lr=lr, alpha=0.99, eps=1e-8)
    return torch.optim.Adam(net.parameters(), lr=lr, betas=(cfg.beta1, cfg.beta2))


@torch.no_grad()
def clip_weights(net: nn.Module, clip_value: float) -> None:
    """WGAN's weight clipping: every parameter of `net` into [-clip_value, clip_value], in place. Every rank
    clips the same weights the same way, so DDP replicas stay equal."""
    for p in net.parameters():
        p.clamp_(-clip_value, clip_value)


class Latents:
    """z for a batch, and c: the given labels one-hot, or uniformly drawn ones for conditional G; from their
    own generator, whose state the checkpoint keeps. Each draw is the global batch's, and this rank keeps its
    `part`: every rank's generator stays in step, and sample i's latent does not depend on the ranks."""

    def __init__(
        self, spec: NetSpec, batch_size: int, generator: torch.Generator, part: slice = slice(None)
    ) -> None:
        self.spec, self.batch_size, self.generator, self.part = spec, batch_size, generator, part
        self.device = generator.device

    def __call__(self, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """`labels`: this rank's part of the batch's labels, when the data gives them."""
        n, num_classes = self.batch_size, self.spec.num_classes
        z = torch.randn(n, self.spec.z_dim, device=self.device, generator=self.generator)[self.part]
        if not num_classes:
            return z, None
        if labels is None:
            labels = torch.randint(num_classes, (n,), device=self.device, generator=self.generator)
            labels = labels[self.part]
        return z, F.one_hot(labels.to(self.device), num_classes).float()


def _update(optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def train_step(
    step: int,
    cfg: TrainConfig,
    source: Source,
    nets: Nets,
    objectives: Objectives,
    latents: Latents,
    bf16: bool,
) -> dict[str, Tensor]:
    """n_critic D updates on a real batch and a detached fake batch with the same labels (MGAN's classifier
    learns on each fake batch), then one G update on freshly drawn labels; returns the last losses (this
    rank's). The network that learns is called through `nets.parallel` (its gradients averaged over the
    ranks); the others are called plain: no gradient of theirs is kept, so none need be sent."""
    G, D, device = nets.G, nets.D, latents.device
    parallel_g, parallel_d = nets.parallel.get("G", G), nets.parallel.get("D", D)
    policy = parse_policy(cfg.diffaug)

    def seen(net: nn.Module, phase: int) -> nn.Module:
        """D as this phase of the step sees its inputs: behind DiffAugment when the config asks for it."""
        return augmented(net, policy, cfg.seed, step, phase, cfg.batch_size, latents.part)

    losses: dict[str, Tensor] = {}
    for i in range(cfg.n_critic):
        x_real, y_real = source.batch(step * cfg.n_critic + i, cfg.batch_size, latents.part)
        x_real = x_real.to(device, non_blocking=True)
        z, c = latents(y_real)
        d_seen = seen(parallel_d, i)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            with torch.no_grad():
                x_fake = G(z, c)
            losses["d_loss"] = objectives.gan.d_loss(d_seen, x_real, x_fake, c)
            for term, x in ((objectives.r1, x_real), (objectives.r2, x_fake)):
                if term is not None:
                    losses["d_loss"] = losses["d_loss"] + term.weight * term(d_seen, x, c)
        _update(nets.opt_d, losses["d_loss"])
        if cfg.clip_value > 0:
            clip_weights(D, cfg.clip_value)
        if objectives.mgan is not None:
            parallel_c = nets.parallel.get("C", nets.C)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                losses["c_loss"] = objectives.mgan(parallel_c, x_fake, G.component(z))
            _update(nets.opt_c, losses["c_loss"])

    # A loss that pairs each fake sample with a real one (rpgan) makes G's batch with the last real batch's
    # labels and judges the two together; the others draw fresh labels.
    paired = objectives.gan.paired
    z, c = latents(y_real) if paired else latents()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        x_fake = parallel_g(z, c)
        losses["g_loss"] = objectives.gan.g_loss(seen(D, cfg.n_critic), x_fake, c, x_real if paired else None)
        if objectives.mgan is not None:
            term = objectives.mgan(nets.C, x_fake, G.component(z))
            losses["g_loss"] = losses["g_loss"] + objectives.mgan.weight * term
    _update(nets.opt_g, losses["g_loss"])
    if nets.ema is not None:
        nets.ema.update(G, step)
    return {name: losses[name] for name in ("d_loss", "g_loss", "c_loss") if name in losses}
