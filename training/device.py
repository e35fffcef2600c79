"""Where training runs: the device, bf16 autocast or fp32, CPU threads, and the library versions that
provenance records beside them."""

from __future__ import annotations

import os
import platform

import torch


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch.cuda.is_available() is False")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def use_bf16(precision: str, device: torch.device, arch: str) -> bool:
    """bf16 autocast: asked for, or `auto` where it pays: CUDA with bf16, and convolutional networks on CPUs
    that multiply bf16 natively (AMX or AVX512-BF16). On a CPU the small matmuls of the MLPs lose more to the
    casts than they gain (measured by bench.train_throughput), so `auto` keeps them in fp32."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return bool(native and arch == "dcgan")


def cpu_threads(requested: int | None) -> int:
    # Threads beyond the cores this process may run on only add contention.
    threads = requested or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    return threads


def runs_on(device: torch.device, bf16: bool) -> dict[str, str | int]:
    """What `auto` resolved to in this process: wall times mean little without it."""
    return {
        "device": device.type,
        "precision": "bf16" if bf16 else "fp32",
        "threads": torch.get_num_threads(),
    }


def library_versions() -> dict[str, str]:
    import numpy

    return {"python": platform.python_version(), "torch": str(torch.__version__), "numpy": numpy.__version__}
