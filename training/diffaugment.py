"""DiffAugment (Zhao et al. 2020): the same differentiable augmentation on real and fake images, every time D
sees them, so that D cannot memorise a small training set (4,000 real digits here) and G's gradient flows
through the augmentation.

`policy` is a comma-separated list of `color`, `translation`, `cutout` (the paper's three, with its
magnitudes: translation by up to 1/8 of the side, a cutout of half the side). The random parameters of
every sample are drawn for the whole global batch from a generator seeded by (seed, step, phase), and each
rank keeps its part, so a run resumes exactly and the augmentation of sample i does not depend on the ranks.
Successive calls of D within one phase (real, fake, R1's real) draw successive parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.data import step_seed

POLICIES = ("color", "translation", "cutout")
TRANSLATION = 0.125
CUTOUT = 0.5


def parse_policy(text: str) -> tuple[str, ...]:
    """'translation,cutout' -> ('translation', 'cutout'); '' -> (); anything else names what is accepted."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in POLICIES]
    if unknown:
        raise ValueError(f"diffaug: unknown policy {unknown}; choose a comma-separated subset of {POLICIES}")
    return names


def _uniform(gen: torch.Generator, n: int, part: slice, like: Tensor) -> Tensor:
    """(part of n, 1, 1, 1) uniform [0, 1) numbers, drawn for the global batch on the CPU."""
    return torch.rand(n, 1, 1, 1, generator=gen)[part].to(like.device, like.dtype)


def _integers(gen: torch.Generator, low: int, high: int, n: int, part: slice, device: torch.device) -> Tensor:
    return torch.randint(low, high, (n, 1, 1), generator=gen)[part].to(device)


def color(x: Tensor, gen: torch.Generator, n: int, part: slice) -> Tensor:
    x = x + (_uniform(gen, n, part, x) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform(gen, n, part, x) * 2) + mean  # saturation (the identity on one channel)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(gen, n, part, x) + 0.5) + mean  # contrast


def translation(x: Tensor, gen: torch.Generator, n: int, part: slice, fill: float = -1.0) -> Tensor:
    """Shift each image by up to TRANSLATION of its side; what comes in is `fill` (the black background)."""
    _, _, h, w = x.shape
    sh, sw = int(h * TRANSLATION + 0.5), int(w * TRANSLATION + 0.5)
    shift_h = _integers(gen, -sh, sh + 1, n, part, x.device)
    shift_w = _integers(gen, -sw, sw + 1, n, part, x.device)
    batch, rows, cols = torch.meshgrid(
        torch.arange(x.shape[0], device=x.device),
        torch.arange(h, device=x.device),
        torch.arange(w, device=x.device),
        indexing="ij",
    )
    rows = torch.clamp(rows + shift_h + 1, 0, h + 1)  # index 0 and h + 1 are the padding
    cols = torch.clamp(cols + shift_w + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1], value=fill)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(x: Tensor, gen: torch.Generator, n: int, part: slice) -> Tensor:
    """Zero a square of CUTOUT of the side at a random place in each image (it may hang over the edge)."""
    _, _, h, w = x.shape
    ch, cw = int(h * CUTOUT + 0.5), int(w * CUTOUT + 0.5)
    off_h = _integers(gen, 0, h + (1 - ch % 2), n, part, x.device)
    off_w = _integers(gen, 0, w + (1 - cw % 2), n, part, x.device)
    batch, rows, cols = torch.meshgrid(
        torch.arange(x.shape[0], device=x.device),
        torch.arange(ch, device=x.device),
        torch.arange(cw, device=x.device),
        indexing="ij",
    )
    rows = torch.clamp(rows + off_h - ch // 2, 0, h - 1)
    cols = torch.clamp(cols + off_w - cw // 2, 0, w - 1)
    mask = torch.ones(x.shape[0], h, w, dtype=x.dtype, device=x.device)
    mask[batch, rows, cols] = 0
    return x * mask.unsqueeze(1)


AUGMENTS = {"color": color, "translation": translation, "cutout": cutout}


def diff_augment(x: Tensor, policy: tuple[str, ...], gen: torch.Generator, n: int, part: slice) -> Tensor:
    """`x`: this rank's `part` of a global batch of `n` images (N, C, H, W)."""
    for name in policy:
        x = AUGMENTS[name](x, gen, n, part)
    return x


class Augmented(nn.Module):
    """D behind DiffAugment: `Augmented(D, ...)(x, c)` = D(augment(x), c). One per phase of a step."""

    def __init__(self, D: nn.Module, policy: tuple[str, ...], seed: int, n: int, part: slice) -> None:
        super().__init__()
        self.D, self.policy, self.n, self.part = D, policy, n, part
        self.gen = torch.Generator().manual_seed(seed % (1 << 63))

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        return self.D(diff_augment(x, self.policy, self.gen, self.n, self.part), c)


def augmented(
    D: nn.Module, policy: tuple[str, ...], seed: int, step: int, phase: int, n: int, part: slice
) -> nn.Module:
    """D itself without a policy; else D behind the augmentation seeded by (seed, step, phase)."""
    if not policy:
        return D
    return Augmented(D, policy, step_seed(seed, step) * 7 + phase, n, part)
