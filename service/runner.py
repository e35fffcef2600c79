"""Runs batches on ONNX Runtime sessions: batch shapes in buckets, IOBinding, one session per GPU.

Buckets: a batch of `rows` is padded with zero rows up to the smallest bucket that holds it, run, and sliced
back (a batch larger than the largest bucket runs in chunks of that bucket). ONNX Runtime then only ever sees
the bucket shapes, so cuDNN's per-shape algorithm cache and the memory arena stop growing with every new batch
size. Each row of these generators is computed on its own (no op mixes rows), so a sample's bytes do not
depend on the padding or on the rows beside it.

IOBinding: the inputs are bound from host memory (ONNX Runtime copies them to the device once) and the outputs
to buffers allocated once per bucket on the session's device, so a batch crosses the bus once each way and the
arena does not see a new output allocation per run. The same code runs with device "cpu" (where the tests run
it); only the allocation's device name differs.

Lanes: the batcher computes several batches at once, and pre-allocated buffers cannot be shared between
concurrent runs, so each concurrent run takes a lane (its session and its buffers). Lanes are made on demand,
on the session (GPU) with the fewest busy lanes. With CUDA graphs each session has exactly one lane (a graph
replays into the addresses it was captured with; one graph per bucket, `gpu_graph_id`) and runs wait for it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

Feeds = dict[str, np.ndarray]

ELEMENT_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def power_buckets(max_rows: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to the first power of two that holds `max_rows`."""
    buckets = [1]
    while buckets[-1] < max_rows:
        buckets.append(buckets[-1] * 2)
    return tuple(buckets)


def bucket_of(rows: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `rows` (the largest, for a chunk of a batch too big for any)."""
    return next((b for b in buckets if b >= rows), buckets[-1])


def padded(feeds: Feeds, rows: int, size: int) -> Feeds:
    """The feeds with zero rows appended up to `size` rows (the same arrays when no padding is needed)."""
    if size == rows:
        return feeds
    return {k: np.concatenate([v, np.zeros((size - rows, *v.shape[1:]), v.dtype)]) for k, v in feeds.items()}


def zero_feeds(session: ort.InferenceSession, rows: int) -> Feeds:
    """Zeros for every input: `rows` on the first axis, 1 for any other symbolic axis."""
    return {
        i.name: np.zeros(
            [rows] + [d if isinstance(d, int) else 1 for d in i.shape[1:]], ELEMENT_TYPES[i.type]
        )
        for i in session.get_inputs()
    }


@dataclass(eq=False)
class Lane:
    """One session and the buffers of one run at a time on it."""

    session: ort.InferenceSession
    device: str  # "cuda" or "cpu": where the bound outputs (and, for CUDA graphs, inputs) live
    device_id: int
    bindings: dict[int, ort.IOBinding] = field(default_factory=dict)  # bucket -> its binding
    outputs: dict[int, list[ort.OrtValue]] = field(default_factory=dict)  # bucket -> its output buffers
    inputs: dict[int, dict[str, ort.OrtValue]] = field(default_factory=dict)  # bucket -> static inputs


class Runner:
    """Batches of rows in, the named outputs (all by default) out, through buckets and IOBinding.

    `sessions`: (session, device id) pairs, one per GPU (one on the CPU). `bind`: IOBinding with per-bucket
    output buffers (buffers need `buckets`; without buckets ONNX Runtime allocates the bound outputs).
    `graphs`: CUDA graphs, one per bucket (needs `bind` and `buckets`; inputs get static buffers too)."""

    def __init__(
        self,
        sessions: Sequence[tuple[ort.InferenceSession, int]],
        device: str,
        buckets: Sequence[int] = (),
        bind: bool = False,
        graphs: bool = False,
    ) -> None:
        if not sessions:
            raise ValueError("a runner needs at least one session")
        if graphs and not (bind and buckets):
            raise ValueError("CUDA graphs need IOBinding and batch buckets (fixed shapes, fixed addresses)")
        self.sessions = list(sessions)
        self.device, self.buckets, self.bind, self.graphs = device, tuple(sorted(buckets)), bind, graphs
        names = self.sessions[0][0].get_outputs()
        self.output_names = [o.name for o in names]
        self._output_types = {o.name: (ELEMENT_TYPES[o.type], o.shape[1:]) for o in names}
        self._idle: dict[int, list[Lane]] = {k: [] for k in range(len(self.sessions))}
        self._busy = [0] * len(self.sessions)
        self._lanes = [0] * len(self.sessions)
        self._free = threading.Condition()

    @property
    def lane_count(self) -> int:
        """Lanes made so far (at most the most batches run at once)."""
        return sum(self._lanes)

    def _pick(self, only: int | None) -> tuple[int, Lane | None]:
        """The least busy session (or session `only`) that can take a run now, and an idle lane of it if any."""
        order = [only] if only is not None else sorted(range(len(self.sessions)), key=lambda k: self._busy[k])
        for k in order:
            if self._idle[k]:
                return k, self._idle[k].pop()
            if not self.graphs or self._lanes[k] == 0:
                return k, None
        return -1, None

    @contextmanager
    def lane(self, only: int | None = None) -> Iterator[Lane]:
        """A lane for one run: an idle one of the least busy session (or of session `only`), else a new one
        (CUDA graphs: wait for the session's one lane)."""
        with self._free:
            k, lane = self._pick(only)
            while k < 0:
                self._free.wait()
                k, lane = self._pick(only)
            if lane is None:
                session, device_id = self.sessions[k]
                lane = Lane(session, self.device, device_id)
                self._lanes[k] += 1
            self._busy[k] += 1
        try:
            yield lane
        finally:
            with self._free:
                self._busy[k] -= 1
                self._idle[k].append(lane)
                self._free.notify()

    def run(
        self, feeds: Feeds, names: Sequence[str] | None = None, only: int | None = None
    ) -> list[np.ndarray]:
        """The outputs `names` (default: all, in graph order) for the batch `feeds`, row for row (on the least
        busy session, or on session `only`)."""
        wanted = list(names) if names is not None else self.output_names
        rows = len(next(iter(feeds.values())))
        if not self.buckets or rows <= self.buckets[-1]:
            return self._run_one(feeds, rows, wanted, only)
        step = self.buckets[-1]  # too big for any bucket: chunks of the largest
        parts = [
            self._run_one({k: v[a : a + step] for k, v in feeds.items()}, min(step, rows - a), wanted, only)
            for a in range(0, rows, step)
        ]
        return [np.concatenate([p[i] for p in parts]) for i in range(len(wanted))]

    def _run_one(self, feeds: Feeds, rows: int, wanted: list[str], only: int | None) -> list[np.ndarray]:
        size = bucket_of(rows, self.buckets) if self.buckets else rows
        feeds = padded(feeds, rows, size)
        with self.lane(only) as lane:
            if not self.bind:
                return [np.asarray(a)[:rows] for a in lane.session.run(wanted, feeds)]
            values = self._bound_run(lane, feeds, size)
            # one host copy each: a CUDA buffer's numpy() is the device-to-host copy itself; a CPU buffer's
            # numpy() is a view of memory the next run on this lane overwrites, so its rows are copied out
            hosts = [values[name].numpy()[:rows] for name in wanted]
            return [h.copy() for h in hosts] if lane.device == "cpu" else hosts

    def _bound_run(self, lane: Lane, feeds: Feeds, size: int) -> dict[str, ort.OrtValue]:
        binding = lane.bindings.get(size) if self.buckets else None
        if binding is None:
            binding = lane.session.io_binding()
            if self.buckets:
                lane.bindings[size] = binding
                lane.outputs[size] = [self._bind_buffer(binding, lane, n, size) for n in self.output_names]
            else:  # no fixed shapes to pre-allocate for: ONNX Runtime allocates on the device
                for name in self.output_names:
                    binding.bind_output(name, lane.device, lane.device_id)
        if self.graphs:
            static = lane.inputs.get(size)
            if static is None:
                static = lane.inputs[size] = {
                    k: ort.OrtValue.ortvalue_from_numpy(v, lane.device, lane.device_id)
                    for k, v in feeds.items()
                }
                for name, value in static.items():
                    binding.bind_ortvalue_input(name, value)
            else:
                for name, value in static.items():
                    value.update_inplace(feeds[name])
        else:
            for name, array in feeds.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
        binding.synchronize_inputs()
        lane.session.run_with_iobinding(binding, self._run_options(size))
        binding.synchronize_outputs()
        if self.buckets:
            return dict(zip(self.output_names, lane.outputs[size], strict=True))
        return dict(zip(self.output_names, binding.get_outputs(), strict=True))

    def _bind_buffer(self, binding: ort.IOBinding, lane: Lane, name: str, size: int) -> ort.OrtValue:
        dtype, rest = self._output_types[name]
        if not all(isinstance(d, int) for d in rest):
            raise ValueError(f"output {name} has symbolic dims {rest} beyond the batch axis: no fixed buffer")
        value = ort.OrtValue.ortvalue_from_shape_and_type([size, *rest], dtype, lane.device, lane.device_id)
        binding.bind_ortvalue_output(name, value)
        return value

    def _run_options(self, size: int) -> ort.RunOptions | None:
        if not self.graphs:
            return None
        options = ort.RunOptions()
        options.add_run_config_entry("gpu_graph_id", str(self.buckets.index(size)))  # one graph per bucket
        return options

    def warm(self) -> None:
        """One run of every bucket on every session: cuDNN's algorithm search, the arena's growth and (CUDA
        graphs) the captures happen at load, not on the first requests."""
        for k, (session, _) in enumerate(self.sessions):
            for size in self.buckets:
                for _ in range(2 if self.graphs else 1):  # ORT captures a graph on its second run
                    self.run(zero_feeds(session, size), only=k)

    def buffer_shapes(self) -> set[tuple[int, ...]]:
        """The shapes of every pre-allocated buffer (what the memory-flatness checks look at)."""
        with self._free:
            lanes = [lane for idle in self._idle.values() for lane in idle]
        return {tuple(v.shape()) for lane in lanes for values in lane.outputs.values() for v in values}
