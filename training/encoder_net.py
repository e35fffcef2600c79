"""The encoder network E (image -> z, and class logits for conditional models) and the perceptual feature net
its losses use.

The perceptual net has the shipped evaluator's topology (feature_net.EvaluatorNet) but is trained here, with
another seed, on the training split only: the shipped evaluator scores the encoders, so it must not also be
what they were trained against. Its class head labels generated images for the latent directions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.feature_net import EvaluatorNet


class EncoderNet(nn.Module):
    """Convolutional encoder: x [N, C, H, W] in [-1, 1] (and c [N, K]) -> z [N, z_dim] (and logits [N, K]).

    Stages of (4x4 stride-2 conv, 3x3 conv, LeakyReLU) halve the resolution while it is even and at least 8
    (28 -> 14 -> 7, 8 -> 4), a fully connected layer gives `hidden` features; logits come from the features
    alone, z from the features and the class. Conditional models: an all-zero row of `c` means "unknown", and
    one_hot(argmax(logits)) is used in its place (inside the graph, so the ONNX export keeps the rule).
    """

    def __init__(
        self, shape: tuple[int, ...], z_dim: int, num_classes: int, width: int = 32, hidden: int = 256
    ) -> None:
        super().__init__()
        channels, res = shape[0], shape[1]
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, 1, 1), nn.LeakyReLU(0.2)]
        ch = width
        while res >= 8 and res % 2 == 0:
            out = min(ch * 2, 128)
            layers += [nn.Conv2d(ch, out, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(out, out, 3, 1, 1)]
            layers.append(nn.LeakyReLU(0.2))
            ch, res = out, res // 2  # state size. (out) x res x res
        self.features = nn.Sequential(
            *layers, nn.Flatten(), nn.Linear(ch * res * res, hidden), nn.LeakyReLU(0.2)
        )
        self.num_classes = num_classes
        self.classify = nn.Linear(hidden, num_classes) if num_classes else None
        self.to_z = nn.Sequential(
            nn.Linear(hidden + num_classes, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, z_dim)
        )

    def forward(
        self, x: torch.Tensor, c: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)  # (N, hidden)
        if self.classify is None:
            return self.to_z(h)
        if c is None:
            raise ValueError("a conditional encoder needs c (all-zero rows for unknown classes)")
        logits = self.classify(h)  # (N, K)
        return self.to_z(torch.cat([h, resolve_class(c, logits)], 1)), logits


def resolve_class(c: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """c where a row is given, one_hot(argmax(logits)) where the row is all zero."""
    classes = torch.arange(logits.shape[1], device=logits.device)
    predicted = (logits.argmax(1, keepdim=True) == classes).to(c.dtype)  # (N, K) one-hot
    known = (c.abs().sum(1, keepdim=True) > 0).to(c.dtype)  # (N, 1)
    return known * c + (1 - known) * predicted


class ServedEncoder(nn.Module):
    """The exported signature: `z = E(x)` or `z, logits = E(x, c)`."""

    def __init__(self, net: EncoderNet) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, x: torch.Tensor, c: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.net(x, c)


class PerceptualNet(nn.Module):
    """EvaluatorNet's layers as a feature extractor, applied per channel (stacked MNIST has three digits)."""

    def __init__(self, num_classes: int = 10, size: int = 28) -> None:
        super().__init__()
        self.net = EvaluatorNet(num_classes)
        if size != 28:  # two valid 3x3 convs and a 2x2 pool before fc1
            self.net.fc1 = nn.Linear(64 * ((size - 4) // 2) ** 2, 128)

    def layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """conv1, conv2 (after ReLU) and fc1 activations of (N * C, 1, H, W) single-channel images."""
        h1 = F.relu(self.net.conv1(x))
        h2 = F.relu(self.net.conv2(h1))
        fc = F.relu(self.net.fc1(torch.flatten(F.max_pool2d(h2, 2), 1)))
        return [h1, h2, fc]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, 10) logits: one digit or garment per channel."""
        n, c = x.shape[:2]
        fc = self.layers(x.reshape(n * c, 1, *x.shape[2:]))[-1]
        return self.net.fc2(fc).view(n, c, -1)

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N,) LPIPS-style distance: per layer, channel-normalised activations, squared difference, mean."""
        n, c = a.shape[:2]
        fa = self.layers(a.reshape(n * c, 1, *a.shape[2:]))
        fb = self.layers(b.reshape(n * c, 1, *b.shape[2:]))
        total = torch.zeros(n, device=a.device)
        for ha, hb in zip(fa, fb, strict=True):
            ha, hb = F.normalize(ha, dim=1, eps=1e-6), F.normalize(hb, dim=1, eps=1e-6)
            per = (ha - hb).pow(2).sum(1).reshape(n * c, -1).mean(1)  # (N * C,)
            total = total + per.view(n, c).mean(1)
        return total
