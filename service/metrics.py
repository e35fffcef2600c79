"""Prometheus metrics, declared once, on a registry per app (so tests can build many apps).

Under GAN_WORKERS > 1 (service.workers) every worker's values go to files in PROMETHEUS_MULTIPROC_DIR, and the
registry /metrics exposes is a MultiProcessCollector over them: counters and histograms summed over every
worker that ever ran, each gauge as its `multiprocess_mode` says (live workers only). The output monitors
(gan_output_*) are a custom collector, the answering worker's own window of what it served.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from service.monitor import OutputMonitors

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gan_requests",
            "HTTP requests by endpoint, model and status code",
            ["endpoint", "model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "gan_request_latency_seconds", "Request latency from arrival to response", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "gan_queue_wait_seconds", "Time a request waited before its first rows were batched", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference = Histogram(
            "gan_inference_seconds",
            "ONNX Runtime time per batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "gan_batch_rows", "Rows per inference batch", ["model"], buckets=ROWS_BUCKETS, registry=r
        )
        # Workers' gauges: what adds up (in flight, queued, queue room) sums over the live workers; what each
        # worker holds alike (models loaded, their quality) is the most recent live value.
        self.inflight = Gauge(
            "gan_inflight_requests", "Requests accepted and not yet answered (probes excluded)", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.queue_rows = Gauge(
            "gan_queue_rows", "Rows waiting to be batched", ["model"], registry=r, multiprocess_mode="livesum"
        )
        self.queue_capacity = Gauge(
            "gan_queue_capacity_rows", "Rows that may wait per model version before 429 (GAN_MAX_QUEUE_ROWS)",
            ["model"], registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.workers = Gauge(
            "gan_worker_processes", "Worker processes serving (GAN_WORKERS; each live one adds 1)", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.workers.set(1)
        self.samples = Counter("gan_samples_generated", "Samples generated", ["model"], registry=r)
        self.rejections = Counter(
            "gan_rejections", "Requests refused or dropped, by reason", ["model", "reason"], registry=r
        )
        self.quality = Gauge(
            "gan_model_quality",
            "Quality metrics from the model's manifest",
            ["model", "version", "metric"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.model_loads = Counter(
            "gan_model_loads", "Version loads (at start, by a load call or the poll), by outcome (ok, failed)",
            ["model", "outcome"], registry=r,
        )  # fmt: skip
        self.model_unloads = Counter(
            "gan_model_unloads", "Versions taken out of service (replaced, unloaded, gone from disk)", ["model"],
            registry=r,
        )  # fmt: skip
        self.versions_loaded = Gauge(
            "gan_model_versions_loaded", "Ready versions per model", ["model"], registry=r,
            multiprocess_mode="livemostrecent",
        )  # fmt: skip
        self.model_load_seconds = Histogram(
            "gan_model_load_seconds", "Time from the start of a version's load to ready (batchers started)",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_info = Gauge(
            "gan_model_info", "Loaded model versions (1 = ready, 0 = failed)",
            ["model", "version", "provider", "sha256", "status"], registry=r, multiprocess_mode="livemostrecent",
        )  # fmt: skip
        self.dataset_jobs = Counter(
            "gan_dataset_jobs_finished", "Dataset jobs that ended, by outcome (done, failed)", ["outcome"],
            registry=r,
        )  # fmt: skip
        for outcome in ("done", "failed"):  # from 0: a first failure is an increase Prometheus can see
            self.dataset_jobs.labels(outcome)
        self.outputs = OutputMonitors()  # gan_output_drift, gan_output_diversity, ... (service.monitor)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # GAN_WORKERS > 1: expose every worker's files
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        self.registry.register(self.outputs)


class ModelObserver:
    """The batcher's view of the metrics for one model version (its label's children looked up once: a
    `labels()` call per batch and per request was a measurable share of the event loop's time at n=1)."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._m, self._model = metrics, model
        self._queue_rows = metrics.queue_rows.labels(model)
        self._queue_wait = metrics.queue_wait.labels(model)
        self._inference = metrics.inference.labels(model)
        self._batch_rows = metrics.batch_rows.labels(model)

    def queue_rows(self, rows: int) -> None:
        self._queue_rows.set(rows)

    def queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def batch(self, rows: int, seconds: float) -> None:
        self._inference.observe(seconds)
        self._batch_rows.observe(rows)

    def dropped(self, reason: str) -> None:
        self._m.rejections.labels(self._model, reason).inc()
