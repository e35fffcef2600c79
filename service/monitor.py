"""The output monitor: rolling statistics of what each model version served, against its manifest's reference.

Per version, a ring buffer of the last GAN_MONITOR_WINDOW standardised sketches (service.output_stats) of the
rows it served (a GAN_MONITOR_SAMPLE fraction of them). The gauges are computed when Prometheus scrapes, not on
the request path; a request's rows are sketched (a pooled matrix product) on a worker thread the request does not
wait for, or, when they are few, held and sketched inline with the next requests' (HOLD_ROWS at a time).

Which rows count: samples of the generator's own distribution, z ~ N(0, I) and one class each. So /generate,
/augment and the Open Inference Protocol (HTTP and gRPC) count; /interpolate does not (a path's rows are
neither independent nor, for soft labels, of one class), nor do rows whose latents an encoder produced (/edit,
/augment's variations_of), nor rows with a blended class vector. Dataset jobs do not go through here: their rows
are bulk copies of the same distribution, and the job's throughput is worth more than a second look at it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.manifest import Manifest
from service.output_stats import (
    drift_statistic,
    mean_pairwise_distance,
    projection,
    projection_sha256,
    residuals,
    row_groups,
    sketch,
)

log = logging.getLogger("service.monitor")

COUNTED_PATHS = {"/generate", "/augment", "/grpc"}  # /grpc: the gRPC calls' stand-in request
V2_INFER = re.compile(r"/v2/models/[^/]+(/versions/[^/]+)?/infer")
ENCODED = "gan.latents_from_encoder"  # set in a request's scope once an encoder made its latents
INLINE_ROWS = 4  # requests of up to this many rows are held and sketched together on the event loop
HOLD_ROWS = 32  # ... once this many are held (one matrix product for all): sketching costs per call, not row
MAX_PENDING = 2  # batches of one version waiting for a worker thread before more are skipped


def counted(scope: Mapping[str, Any]) -> bool:
    """Whether a request's generator rows are samples the monitor should see (see the module docstring)."""
    path = scope.get("path", "")
    return not scope.get(ENCODED) and (path in COUNTED_PATHS or V2_INFER.fullmatch(path) is not None)


class Version(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def manifest(self) -> Manifest: ...


class MonitorUnavailable(ValueError):
    """A version the monitor cannot follow: no reference, or a reference this build cannot reproduce."""


class VersionMonitor:
    """The last `window` standardised sketches of one version's served rows, and its two gauges."""

    def __init__(self, manifest: Manifest, window: int, sample: float, seed: int = 0) -> None:
        reference = manifest.output_reference
        if reference is None:
            raise MonitorUnavailable("no output_reference in the manifest")
        band = reference.band(window)
        if band is None:
            raise MonitorUnavailable(f"no band measured for windows of {window} rows or fewer")
        matrix = projection(
            math.prod(reference.sketch_shape), reference.directions, reference.projection_seed
        )
        if projection_sha256(matrix) != reference.projection_sha256:
            raise MonitorUnavailable("the projection differs from the one the reference was computed with")
        self.reference, self.band, self.matrix = reference, band, matrix
        self.mean = np.asarray(reference.mean, np.float32)
        self.std = np.asarray(reference.std, np.float32)
        self.window, self.sample = window, sample
        self.buffer = np.zeros((window, reference.directions), np.float32)
        self.filled = self.cursor = self.rows = self.skipped = self.pending = 0
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._cached: tuple[int, float, float] | None = None  # (rows when computed, drift, diversity)
        self._held: list[tuple[np.ndarray, np.ndarray | None]] = []  # small requests' (x, c) not yet sketched
        self._held_rows = 0

    def submit(self, x: np.ndarray, c: np.ndarray | None) -> None:
        """Observe these rows: a few are held and sketched inline with the next ones (HOLD_ROWS at a time, and
        whatever is held at a scrape); more on a worker thread that the request does not wait for; with
        MAX_PENDING batches of this version already waiting, these rows are skipped (counted), not queued."""
        if len(x) <= INLINE_ROWS:
            with self._lock:
                self._held.append((x, c))
                self._held_rows += len(x)
                if self._held_rows < HOLD_ROWS:
                    return
            self.flush()
            return
        with self._lock:
            if self.pending >= MAX_PENDING:
                self.skipped += len(x)
                return
            self.pending += 1
        future = asyncio.get_running_loop().run_in_executor(None, self._observe_and_release, x, c)
        future.add_done_callback(self._log_failure)

    def _observe_and_release(self, x: np.ndarray, c: np.ndarray | None) -> None:
        try:
            self.observe(x, c)
        finally:
            with self._lock:
                self.pending -= 1

    @staticmethod
    def _log_failure(future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.error("output monitor failed on a batch", exc_info=future.exception())

    def flush(self) -> None:
        """Sketch the held rows now (thread-safe)."""
        with self._lock:
            held, self._held, self._held_rows = self._held, [], 0
        if not held:
            return
        x = np.concatenate([x for x, _ in held])
        if all(c is not None for _, c in held) or all(c is None for _, c in held):
            c = None if held[0][1] is None else np.concatenate([c for _, c in held])
            self._observe(x, row_groups(c, len(x)))
        else:  # rows with and without classes (not from one version; kept exact anyway)
            self._observe(x, np.concatenate([row_groups(c, len(x)) for x, c in held]))

    def observe(self, x: np.ndarray, c: np.ndarray | None) -> None:
        """Sketch a sampled subset of these served rows into the window (thread-safe)."""
        self._observe(x, row_groups(c, len(x)))

    def _observe(self, x: np.ndarray, groups: np.ndarray) -> None:
        window, keep = self.window, groups >= 0  # -1: a blended class vector
        if self.sample < 1.0:
            with self._lock:
                keep &= self._rng.random(len(x)) < self.sample
        if not keep.all():
            index = np.flatnonzero(keep)[-window:]
            if not len(index):
                return
            x, groups = x[index], groups[index]
        elif len(x) > window:
            x, groups = x[-window:], groups[-window:]
        r = residuals(sketch(x, self.matrix), groups, self.mean, self.std)
        with self._lock:
            n, cursor = len(r), self.cursor
            first = min(n, window - cursor)  # up to the end of the ring, the rest from its start
            self.buffer[cursor : cursor + first] = r[:first]
            self.buffer[: n - first] = r[first:]
            self.cursor = (cursor + n) % window
            self.filled = min(window, self.filled + n)
            self.rows += n

    def gauges(self) -> tuple[float, float] | None:
        """(drift, diversity) of the current window, once it is full; drift > 1 is outside the band."""
        self.flush()
        with self._lock:
            if self.filled < self.window:
                return None
            if self._cached is not None and self._cached[0] == self.rows:
                return self._cached[1], self._cached[2]
            rows, window = self.rows, self.buffer.copy()
        drift = drift_statistic(window) / self.band.drift_high
        diversity = mean_pairwise_distance(window) / self.reference.diversity_reference
        with self._lock:
            self._cached = (rows, drift, diversity)
        return drift, diversity


class OutputMonitors(Collector):
    """One monitor per served version (made at its first counted request), exported when scraped."""

    def __init__(self) -> None:
        self._monitors: dict[tuple[str, int], tuple[weakref.ref[Any], VersionMonitor | None]] = {}

    def monitor(self, model: Version, window: int, sample: float) -> VersionMonitor | None:
        """This version's monitor; None when monitoring is off or the version has no usable reference."""
        if sample <= 0:
            return None
        key = (model.name, model.version)
        entry = self._monitors.get(key)
        if entry is not None and entry[0]() is model:
            return entry[1]
        try:
            made: VersionMonitor | None = VersionMonitor(model.manifest, window, sample)
        except MonitorUnavailable as error:
            log.info("model %s:%d: output monitoring off: %s", model.name, model.version, error)
            made = None
        self._monitors[key] = (weakref.ref(model), made)  # a reloaded version gets a fresh window
        return made

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        drift, diversity, low, high, rows, skipped = families
        for key, (ref, monitor) in list(self._monitors.items()):
            if ref() is None:  # the version is gone (unloaded or replaced and closed)
                del self._monitors[key]
                continue
            if monitor is None:
                continue
            labels = [key[0], str(key[1])]
            monitor.flush()  # the held rows count from this scrape on
            rows.add_metric(labels, monitor.rows)
            skipped.add_metric(labels, monitor.skipped)
            low.add_metric(labels, monitor.band.diversity_low)
            high.add_metric(labels, monitor.band.diversity_high)
            values = monitor.gauges()
            if values is not None:
                drift.add_metric(labels, values[0])
                diversity.add_metric(labels, values[1])
        yield from families

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
    ]:
        labels = ["model", "version"]
        return (
            GaugeMetricFamily(
                "gan_output_drift",
                "Served outputs' drift from the manifest's reference, over its healthy band (> 1: outside)",
                labels=labels,
            ),
            GaugeMetricFamily(
                "gan_output_diversity",
                "Mean pairwise distance of the served window over the reference's (1: as at export)",
                labels=labels,
            ),
            GaugeMetricFamily(
                "gan_output_diversity_low",
                "Lower end of the diversity band measured at export",
                labels=labels,
            ),
            GaugeMetricFamily(
                "gan_output_diversity_high",
                "Upper end of the diversity band measured at export",
                labels=labels,
            ),
            CounterMetricFamily(
                "gan_output_monitored_rows", "Served rows the output monitor sketched", labels=labels
            ),
            CounterMetricFamily(
                "gan_output_skipped_rows",
                "Counted rows the monitor skipped: its worker had MAX_PENDING batches waiting",
                labels=labels,
            ),
        )
