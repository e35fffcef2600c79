"""Data parallelism under torchrun: the ranks, their process group, and what keeps N processes equal to one.

One process is the default and is untouched by this module. Under `torchrun` (WORLD_SIZE > 1) every rank
builds the same networks from the same seed, draws the same global batch's randomness and takes its slice
of it (`Ranks.part`); DDP averages the gradients of the per-rank mean losses, which with equal slices is
the gradient of the global mean; BatchNorm layers compute their statistics over the global batch. The
backend follows the device policy: NCCL on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of a run (one process: rank 0 of 1, no backend)."""

    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    backend: str = "none"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def leader(self) -> bool:
        """Rank 0: the one that writes checkpoints, samples, metrics and the progress bar."""
        return self.rank == 0

    def part(self, batch_size: int) -> slice:
        """This rank's slice of a global batch of `batch_size` samples (equal slices: see check_batch)."""
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def describe(self) -> dict[str, Any]:
        """What a checkpoint's training segment records about the ranks."""
        return {"world_size": self.world_size, "backend": self.backend}

    def threads(self) -> int | None:
        """CPU threads per rank when the config leaves them unset: the cores shared by the node's ranks."""
        if not self.distributed:
            return None
        return max(1, len(os.sched_getaffinity(0)) // self.local_world_size)


def check_batch(batch_size: int, pack: int, ranks: Ranks) -> None:
    """Every rank gets the same number of samples, and a whole number of PacGAN packs."""
    if batch_size % (ranks.world_size * pack):
        raise ValueError(
            f"batch_size {batch_size} must be a multiple of world_size {ranks.world_size} x pack {pack}: "
            "each rank takes an equal slice of the global batch"
        )


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def launched_world_size() -> int:
    """The ranks torchrun started (its WORLD_SIZE); 1 for a plain process."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def process_group(device: torch.device, timeout_s: float) -> Iterator[tuple[Ranks, torch.device]]:
    """The ranks torchrun started (its RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), their process group
    and this rank's device. A collective that waits longer than `timeout_s` (a rank that hangs) fails; one
    whose peer died fails at once (gloo: the socket closes; torchrun then stops the other ranks)."""
    world_size = launched_world_size()
    if world_size == 1:
        yield Ranks(), device
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = backend_for(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(
            backend,
            timeout=timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    ranks = Ranks(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))),
        backend=dist.get_backend(),
    )
    yield ranks, device
    if created:  # not on an error: a group whose peer died cannot be torn down collectively
        dist.destroy_process_group()


# --- collectives the loop needs ------------------------------------------------------------------------


def any_rank(flag: bool, ranks: Ranks, device: torch.device) -> bool:
    """True on every rank when it is true on one: a stop request is honoured by all ranks at the same step."""
    if not ranks.distributed:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(values: dict[str, Tensor], ranks: Ranks) -> dict[str, Tensor]:
    """The global batch's losses: the mean of the ranks' means (equal slices)."""
    if not ranks.distributed:
        return values
    stacked = torch.stack([v.detach().float() for v in values.values()])
    dist.all_reduce(stacked)
    return dict(zip(values, stacked / ranks.world_size, strict=True))


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks with a gradient (the gradient of a sum of every rank's copy is the sum of theirs)."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return _AllReduceSum.apply(grad)  # type: ignore[no-any-return]


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are the global batch's, on any device (torch's SyncBatchNorm
    refuses CPU tensors). One all-reduce per call of [Σx, Σx²] in float64 (float64: the variance is their
    difference), the gradient flowing through it; eval mode is plain BatchNorm. Same parameters and buffers
    as nn.BatchNorm1d/2d, so checkpoints and export see no difference."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        x = input.float()
        dims = [0, *range(2, x.dim())]
        count = x.numel() // x.shape[1] * dist.get_world_size()
        local = torch.cat([x.sum(dims), (x * x).sum(dims)]).double()
        total = _AllReduceSum.apply(local)
        mean, square = (total / count).chunk(2)
        var = (square - mean * mean).clamp_min(0.0)  # biased: what normalises
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = (x - mean.float().view(shape)) * torch.rsqrt(var.float() + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running(mean.detach().float(), var.detach().float() * count / max(count - 1, 1))
        return y.to(input.dtype)

    @torch.no_grad()
    def _update_running(self, mean: Tensor, unbiased_var: Tensor) -> None:
        """As _BatchNorm.forward does: momentum, or a cumulative average when momentum is None."""
        assert self.num_batches_tracked is not None and self.running_mean is not None
        assert self.running_var is not None
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(unbiased_var, factor)


def _global_batch_norm(module: nn.Module, cuda: bool) -> nn.Module:
    """BatchNorm1d/2d layers made global: torch's SyncBatchNorm on CUDA, GlobalBatchNorm elsewhere; the
    parameters and buffers are the same objects (optimisers built before keep working)."""
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        kind = nn.SyncBatchNorm if cuda else GlobalBatchNorm
        out = kind(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        return out.train(module.training)
    for name, child in module.named_children():
        module.add_module(name, _global_batch_norm(child, cuda))
    return module


def data_parallel(module: nn.Module, ranks: Ranks, device: torch.device) -> nn.Module:
    """What the training steps call for a network: the module itself in one process; under torchrun its
    BatchNorm made global and the module wrapped in DDP (gradients averaged over the ranks).

    forward_sync_buffers=False: every buffer is already equal on every rank, by construction (BatchNorm's
    running statistics come from the global batch, spectral norm's power-iteration vectors from the same
    weights), so rank 0's copy need not be sent before every forward."""
    if not ranks.distributed:
        return module
    _global_batch_norm(module, device.type == "cuda")
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, forward_sync_buffers=False)


def check_replicas(modules: dict[str, nn.Module | None], ranks: Ranks, device: torch.device) -> None:
    """Fail unless every rank holds the same weights and buffers (compared by their float64 sums and sums
    of squares): the guard on the claims that let DDP skip sending buffers. Every rank must call it."""
    if not ranks.distributed:
        return
    names, stats = [], []
    for part, module in modules.items():
        for key, tensor in (module.state_dict() if module is not None else {}).items():
            if tensor.is_floating_point():
                values = tensor.detach().double()
                names.append(f"{part}.{key}")
                stats.append(torch.stack([values.sum(), values.square().sum()]))
    low = torch.stack(stats).to(device)
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    differ = [name for name, row in zip(names, low != high, strict=True) if bool(row.any())]
    if differ:
        raise RuntimeError(f"the ranks' replicas differ in {', '.join(differ[:5])}: the run cannot continue")
