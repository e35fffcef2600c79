"""ONNX Runtime: the installed package, the provider policy, and sessions whose provider is reported truthfully."""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from service.manifest import TensorSignature

log = logging.getLogger("service.runtime")

ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class RuntimeConflict(RuntimeError):
    """Both ONNX Runtime packages are installed (they overwrite each other's files), or neither is."""


def installed_runtimes() -> list[str]:
    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            importlib.metadata.distribution(name)
            found.append(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def check_single_runtime() -> str:
    found = installed_runtimes()
    if len(found) != 1:
        raise RuntimeConflict(
            f"exactly one of {ORT_DISTRIBUTIONS} must be installed, found {found or 'none'}: "
            "install the 'cpu' or the 'gpu' extra, never both (pip uninstall both, then install one)"
        )
    return found[0]


@dataclass(frozen=True)
class SessionInfo:
    session: ort.InferenceSession
    provider: str  # what the session really runs on: session.get_providers()[0]

    def signature(self) -> tuple[list[TensorSignature], list[TensorSignature]]:
        """The graph's inputs and outputs as the contract describes them (see `check_signature`)."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        return [TensorSignature(t.name, t.type, tuple(t.shape)) for t in inputs], [
            TensorSignature(t.name, t.type, tuple(t.shape)) for t in outputs
        ]


def available_cpus() -> int:
    """CPUs this process may use: the cgroup quota (a container's CPU limit) or else the affinity mask."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def intra_op_threads(requested: int, runners: int) -> int:
    """0 = auto: the available CPUs shared out between the runners (at least 1 each)."""
    return requested or max(1, available_cpus() // runners)


def requested_providers(device: str) -> list[Any]:
    if device == "cpu":
        return [CPU]
    return [CUDA, CPU]  # auto and cuda: try CUDA, keep CPU as the fallback; the result is checked


def open_session(
    path: Path, device: str, intra_threads: int = 0, inter_threads: int = 0, spinning: bool = False
) -> SessionInfo:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_threads
    options.inter_op_num_threads = inter_threads
    # Spinning intra-op threads keep a core busy between runs; with small batches that core is the one the
    # event loop needs to parse and answer requests.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    available = ort.get_available_providers()
    providers = [p for p in requested_providers(device) if p in available] or [CPU]
    session = ort.InferenceSession(str(path), options, providers=providers)
    # get_available_providers() lists CUDA wherever onnxruntime-gpu is installed, GPU or not; only the
    # session knows whether CUDA actually initialised.
    provider = session.get_providers()[0]
    if device != "cpu" and provider != CUDA:
        if CUDA in available:  # onnxruntime-gpu is installed, so CUDA was expected and did not come up
            log.warning("CUDA was wanted (GAN_DEVICE=%s) but %s runs on %s", device, path.parent, provider)
        else:
            log.info("no CUDA provider in this ONNX Runtime build; %s runs on %s", path.parent, provider)
    return SessionInfo(session, provider)
