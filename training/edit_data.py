"""Real images for the encoder: the model's training split, less a validation part carved from its end (for
choosing snapshots and settings), and the test split, which is only ever used to report.

Labels: the class for Fashion-MNIST / MNIST, one digit per channel (N, 3) for stacked MNIST.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from training.data import StackedSource, TensorSource, make_source, to_float

Part = Literal["train", "val", "test"]
VAL_FRACTION = 0.1
STACKED_TEST = 10_000  # fixed stacked triples drawn from the held-out digits


class RealImages:
    """One part of a data set as uint8 (or float) images and integer labels."""

    def __init__(self, data: str, part: Part, data_dir: str | None = None, seed: int = 0) -> None:
        self.data, self.part = data, part
        source = make_source(data, data_dir, split="test" if part == "test" else "train")
        self.stacked = isinstance(source, StackedSource)
        if self.stacked:
            x, y = source.digits, source.labels  # (M, 1, 28, 28) digits and their labels
        elif isinstance(source, TensorSource):
            x, y = source.x, source.y
        else:
            raise ValueError(f"{data}: the encoder needs an image data set")
        if part != "test":
            cut = len(x) - max(1, int(len(x) * VAL_FRACTION))
            x, y = (x[:cut], y[:cut] if y is not None else None) if part == "train" else (x[cut:], y[cut:])
        self.x, self.y = x, y
        self.rng = np.random.default_rng(seed)
        if self.stacked and part == "test":  # a fixed set of triples, the same for every evaluation
            index = np.random.default_rng(12345).integers(len(x), size=(STACKED_TEST, 3))
            self.triples = torch.from_numpy(index)

    def __len__(self) -> int:
        return STACKED_TEST if self.stacked and self.part == "test" else len(self.x)

    def _gather(self, index: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        index = torch.as_tensor(index)
        if self.stacked:
            triples = self.triples[index] if self.part == "test" else index
            x = self.x[triples].squeeze(2)  # (N, 3, 28, 28)
            assert self.y is not None
            return to_float(x), self.y[triples]
        return to_float(self.x[index]), None if self.y is None else self.y[index]

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A random batch (with replacement across calls): stacked triples are drawn afresh."""
        shape = (n, 3) if self.stacked and self.part != "test" else (n,)
        high = len(self.x) if self.stacked and self.part != "test" else len(self)
        return self._gather(self.rng.integers(high, size=shape))

    def first(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first n images of this part (test and validation figures use fixed sets)."""
        n = min(n, len(self))
        if self.stacked and self.part != "test":
            index = np.random.default_rng(54321).integers(len(self.x), size=(n, 3))
            return self._gather(index)
        return self._gather(np.arange(n))

    def digits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Single-channel images and labels (stacked MNIST: its digits), for the perceptual net."""
        assert self.y is not None
        return to_float(self.x), self.y
