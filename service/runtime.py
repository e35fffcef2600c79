"""ONNX Runtime: the installed package, the provider policy, and sessions whose provider is reported truthfully.

Under GAN_DEVICE=cuda a session is opened with CUDA alone and `session.disable_cpu_ep_fallback`, so a graph any
of whose nodes would run on the CPU fails to load; the failure names those nodes (service.placement). The CUDA
provider's options are set deliberately (RuntimeConfig), one session per GPU, and batches run through a
service.runner.Runner (buckets, IOBinding) where the configuration asks for one.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from service.graph_signature import TensorSignature
from service.placement import describe, node_placements, off_provider
from service.runner import Feeds, Runner, power_buckets

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger("service.runtime")

ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
NO_CPU_FALLBACK = "session.disable_cpu_ep_fallback"
DEVICE_OF = {CUDA: "cuda", CPU: "cpu"}  # where a provider's IOBinding buffers live


class CpuFallback(RuntimeError):
    """GAN_DEVICE=cuda, and some nodes of the graph would run on the CPU (named in the message)."""


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
class RuntimeConfig:
    """How sessions are opened and run beyond the device policy (the GAN_CUDA_* settings and the batch
    buckets); the defaults are the settings' defaults."""

    cuda_devices: tuple[int, ...] = (0,)
    arena_extend_strategy: str = "kSameAsRequested"
    conv_algo_search: str = "EXHAUSTIVE"
    copy_in_default_stream: bool = True
    cuda_graphs: bool = False
    strict: bool = True  # GAN_DEVICE=cuda: no node may fall back to the CPU
    buckets: str = "auto"  # "auto" (CUDA: powers of two), "off", or ascending sizes "1,2,4"
    io_binding: str = "auto"  # "auto" (CUDA only), "on", "off"
    max_rows: int = 512  # the largest batch a runner is given (the auto buckets reach it)

    @classmethod
    def of(cls, settings: Settings, max_rows: int) -> RuntimeConfig:
        return cls(
            settings.cuda_devices, settings.cuda_arena_extend_strategy, settings.cuda_conv_algo_search,
            settings.cuda_copy_in_default_stream, settings.cuda_graphs, settings.cuda_strict,
            settings.batch_buckets, settings.io_binding, max_rows,
        )  # fmt: skip

    def cuda_options(self, device_id: int) -> dict[str, str]:
        """The CUDA provider's options, every one named (ONNX Runtime's python API takes strings)."""
        return {
            "device_id": str(device_id),
            "arena_extend_strategy": self.arena_extend_strategy,
            "cudnn_conv_algo_search": self.conv_algo_search,
            "do_copy_in_default_stream": "1" if self.copy_in_default_stream else "0",
            "enable_cuda_graph": "1" if self.cuda_graphs else "0",
        }

    def bucket_sizes(self, provider: str) -> tuple[int, ...]:
        if self.buckets == "off" or (self.buckets == "auto" and provider != CUDA):
            return ()
        if self.buckets == "auto":
            return power_buckets(self.max_rows)
        return tuple(int(b) for b in self.buckets.split(","))

    def binds(self, provider: str) -> bool:
        return self.io_binding == "on" or (self.io_binding == "auto" and provider == CUDA)


@dataclass(frozen=True)
class SessionInfo:
    session: ort.InferenceSession
    provider: str  # what the session really runs on: session.get_providers()[0]
    runner: Runner | None = None  # buckets / IOBinding / several GPUs; None: plain session.run
    devices: int = 1  # sessions behind this one (one per GPU)
    wide: ort.InferenceSession | None = None  # CPU: the same graph with a thread per CPU (run_alone)

    def run(self, feeds: Feeds, names: list[str] | None = None) -> list[np.ndarray]:
        """The outputs `names` (default: all) for one batch, through the runner when there is one."""
        if self.runner is not None:
            return self.runner.run(feeds, names)
        return [np.asarray(a) for a in self.session.run(names, feeds)]

    def run_alone(self, feeds: Feeds, names: list[str] | None = None) -> list[np.ndarray]:
        """`run` for a batch computed while no other is (the batcher knows): on the wide session when there is
        one, so a lone small request uses every CPU instead of one runner's share (same graph, same rows)."""
        if self.wide is None:
            return self.run(feeds, names)
        return [np.asarray(a) for a in self.wide.run(names, feeds)]

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


def intra_op_threads(requested: int, runners: int, workers: int = 1) -> int:
    """0 = auto: the available CPUs shared out between the worker processes (GAN_WORKERS), then between each
    one's runners (at least 1 each)."""
    return requested or max(1, available_cpus() // workers // runners)


def requested_providers(device: str, config: RuntimeConfig | None = None, device_id: int = 0) -> list[Any]:
    """cpu: the CPU. auto: CUDA with its options, the CPU as the fallback (the result is checked). cuda: CUDA
    alone when strict (a CPU provider listed beside disable_cpu_ep_fallback is a configuration error)."""
    config = config or RuntimeConfig()
    if device == "cpu":
        return [CPU]
    cuda = (CUDA, config.cuda_options(device_id))
    return [cuda] if device == "cuda" and config.strict else [cuda, CPU]


def session_options(
    intra_threads: int, inter_threads: int, spinning: bool, no_cpu_fallback: bool = False
) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_threads
    options.inter_op_num_threads = inter_threads
    # Spinning intra-op threads keep a core busy between runs; with small batches that core is the one the
    # event loop needs to parse and answer requests.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if no_cpu_fallback:
        options.add_session_config_entry(NO_CPU_FALLBACK, "1")
    return options


def _strict_session(path: Path, options: ort.SessionOptions, providers: list[Any]) -> ort.InferenceSession:
    """CUDA alone, no CPU fallback; a graph that needs the CPU anywhere fails with its nodes named."""
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as error:
        try:  # the same graph with the fallback allowed, profiled: which nodes went to the CPU
            placements = node_placements(path, [*providers, CPU])
        except Exception:
            raise error from None
        off = off_provider(placements, CUDA)
        if not off:
            raise
        raise CpuFallback(
            f"GAN_DEVICE=cuda forbids CPU fallback ({NO_CPU_FALLBACK}; GAN_CUDA_STRICT=false allows it): "
            + describe(off, len(placements), CUDA)
        ) from None


def open_session(
    path: Path,
    device: str,
    intra_threads: int = 0,
    inter_threads: int = 0,
    spinning: bool = False,
    config: RuntimeConfig | None = None,
    wide_threads: int = 0,
) -> SessionInfo:
    """A session on the providers `device` asks for. `wide_threads` above `intra_threads`: on the CPU, without a
    runner, also a second session with that many threads (SessionInfo.run_alone)."""
    config = config or RuntimeConfig()
    available = ort.get_available_providers()
    # Strict only where this build has CUDA at all; without it the session opens on the CPU and the device
    # check after it (service.versions.check_device) says so.
    strict = device == "cuda" and config.strict and CUDA in available
    options = session_options(intra_threads, inter_threads, spinning, no_cpu_fallback=strict)

    def one(device_id: int) -> ort.InferenceSession:
        wanted = requested_providers(device, config, device_id)
        if strict:
            return _strict_session(path, options, wanted)
        providers = [p for p in wanted if (p[0] if isinstance(p, tuple) else p) in available] or [CPU]
        return ort.InferenceSession(str(path), options, providers=providers)

    session = one(config.cuda_devices[0])
    # get_available_providers() lists CUDA wherever onnxruntime-gpu is installed, GPU or not; only the
    # session knows whether CUDA actually initialised.
    provider = session.get_providers()[0]
    if device != "cpu" and provider != CUDA:
        if CUDA in available:  # onnxruntime-gpu is installed, so CUDA was expected and did not come up
            log.warning("CUDA was wanted (GAN_DEVICE=%s) but %s runs on %s", device, path.parent, provider)
        else:
            log.info("no CUDA provider in this ONNX Runtime build; %s runs on %s", path.parent, provider)
    ids = config.cuda_devices if provider == CUDA else config.cuda_devices[:1]
    sessions = [(session, ids[0])] + [(one(d), d) for d in ids[1:]]
    buckets, bind = config.bucket_sizes(provider), config.binds(provider)
    if not (buckets or bind or len(sessions) > 1):
        wide = None
        if provider == CPU and intra_threads and wide_threads > intra_threads:  # 0: ORT's default, all CPUs
            wide_options = session_options(wide_threads, inter_threads, spinning)
            wide = ort.InferenceSession(str(path), wide_options, providers=[CPU])
        return SessionInfo(session, provider, wide=wide)
    graphs = provider == CUDA and config.cuda_graphs
    runner = Runner(sessions, DEVICE_OF.get(provider, "cpu"), buckets, bind, graphs)
    if provider == CUDA:
        runner.warm()  # cuDNN's search and the arena's growth for every bucket happen now, not under load
    return SessionInfo(session, provider, runner, len(sessions))
