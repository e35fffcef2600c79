"""Service settings: one pydantic-settings class, read from `GAN_*` environment variables, built once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

BUNDLED_MODELS = Path(__file__).resolve().parents[1] / "models"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GAN_", frozen=True, extra="ignore")

    model_dir: Path = Field(
        BUNDLED_MODELS, description="model repository: <name>/<version>/{model.onnx,manifest.json}"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="execution provider policy")
    host: str = Field("127.0.0.1", description="bind address (0.0.0.0 in containers)")
    port: int = Field(8000, ge=1, le=65535)
    grpc_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Open Inference Protocol (KServe v2) gRPC port; unset: no gRPC server",
    )

    max_batch_rows: int = Field(64, ge=1, le=4096, description="rows per inference batch")
    # 0: a batch leaves as soon as the runner is free; under load, requests that arrive during a
    # computation still share the next batch. A window only adds latency at low load on a CPU.
    max_wait_ms: float = Field(0.0, ge=0, le=1000, description="longest a batch waits to fill")
    max_queue_rows: int = Field(4096, ge=1, description="rows waiting per model version before 429")
    request_timeout_s: float = Field(30.0, gt=0, le=3600, description="deadline from arrival to compute")
    drain_timeout_s: float = Field(20.0, ge=0, le=3600, description="how long SIGTERM waits for queued work")
    drain_grace_s: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="after SIGTERM, how long connections keep being read and answered (503 + Retry-After + Connection: close) before the idle ones are closed; ends once none is open; at most GAN_DRAIN_TIMEOUT_S",
    )

    max_n: int = Field(1024, ge=1, le=65536, description="samples per /generate request")
    max_steps: int = Field(256, ge=2, le=65536, description="points per /interpolate path")
    max_augment_rows: int = Field(100_000, ge=1, description="rows in one /augment synthetic set")
    max_page_rows: int = Field(4096, ge=1, description="rows per /augment page (limit)")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="request body size before 413")
    max_edit_images: int = Field(64, ge=1, le=4096, description="images per /edit request or variations_of")
    max_image_pixels: int = Field(
        1 << 22, ge=64, description="pixels an uploaded image may declare (checked before decoding)"
    )
    max_response_bytes: int = Field(
        64 << 20, ge=1024, description="largest sample payload one response may carry (raw bytes) before 422"
    )

    data_dir: Path = Field(
        Path("data"),
        description="dataset jobs (/datasets): their SQLite state and shards; relative to the working directory",
    )
    max_dataset_rows: int = Field(1_000_000, ge=1, description="rows in one /datasets job")
    max_dataset_jobs: int = Field(2, ge=1, le=64, description="dataset jobs running at once")
    dataset_disk_bytes: int = Field(
        10 << 30, ge=0, description="bytes all dataset shards together may take under GAN_DATA_DIR"
    )
    dataset_retention_s: float = Field(
        604800.0,
        gt=0,
        description="a finished dataset job (done or failed) and its shards are removed this long after",
    )
    dataset_nice: int = Field(
        19,
        ge=0,
        le=19,
        description="CPU priority (nice) of dataset jobs' inference threads and worker processes: interactive requests get the CPU first (19: a job gets only what they leave; 0: an equal share)",
    )

    api_key: SecretStr | None = Field(
        None,
        description="when set, every endpoint but the health probes needs this key (Bearer or X-API-Key)",
    )
    api_keys_file: Path | None = Field(None, description="a file of accepted keys, one per line, # comments")
    admin_key: SecretStr | None = Field(
        None,
        description="model control (/v2/repository: index, load, unload) needs this key; unset: control is off",
    )
    model_poll_s: float = Field(
        0.0, ge=0, le=86400, description="look at the model directory every this many seconds (0: never)"
    )
    metrics_public: bool = Field(False, description="with keys set, let /metrics answer without a key")

    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="worker processes serving GAN_HOST:GAN_PORT (SO_REUSEPORT), each with its own ONNX Runtime sessions and batchers; /metrics sums them all; 1: one process (service.workers)",
    )
    runners: int = Field(
        2, ge=1, le=64, description="batches computed at once per model version, each on its own thread"
    )
    inline_rows: int = Field(
        1,
        ge=0,
        le=64,
        description="a batch of at most this many rows, with no other interactive batch queued or computing (a dataset job may run), runs on the event loop (0: never)",
    )
    split_rows: int = Field(
        4,
        ge=0,
        le=4096,
        description="on the CPU, a batch that leaves nothing queued is split across the idle runners in parts of at least this many rows (0: never)",
    )
    wide_session: bool = Field(
        True,
        description="on the CPU, a second session per model version with a thread per CPU (of this worker) computes a batch that is alone (nothing else queued or computing): a lone request uses every core",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="ONNX Runtime threads per run (0 = the available CPUs / GAN_WORKERS / GAN_RUNNERS)",
    )
    inter_op_threads: int = Field(
        0, ge=0, le=256, description="ONNX Runtime inter-op threads (0 = ORT default)"
    )
    ort_spinning: bool = Field(
        False,
        description="let ORT's idle intra-op threads spin: faster back-to-back runs, but a spinning core starves the event loop",
    )
    cuda_devices: Annotated[tuple[int, ...], NoDecode] = Field(
        (0,),
        description="GPU ids (comma-separated): one session per GPU per model version, batches go to the least busy",
    )
    cuda_arena_extend_strategy: Literal["kSameAsRequested", "kNextPowerOfTwo"] = Field(
        "kSameAsRequested",
        description="how the CUDA memory arena grows: by what a run asks for, or in powers of two",
    )
    cuda_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = Field(
        "EXHAUSTIVE",
        description="cuDNN convolution algorithm search, once per batch shape (the buckets: at load)",
    )
    cuda_copy_in_default_stream: bool = Field(
        True, description="CUDA copies on the compute stream (false: a separate stream; ORT warns of races)"
    )
    cuda_graphs: bool = Field(
        False,
        description="capture one CUDA graph per batch bucket and replay it (needs buckets and IOBinding)",
    )
    cuda_strict: bool = Field(
        True,
        description="GAN_DEVICE=cuda: a graph with any node that would run on the CPU fails to load, naming the nodes",
    )
    batch_buckets: str = Field(
        "auto",
        pattern=r"^(auto|off|[1-9][0-9]*(,[1-9][0-9]*)*)$",
        description="batch shapes: auto (CUDA: pad to the next power of two; CPU: off), off, or ascending sizes 1,2,4,8",
    )
    io_binding: Literal["auto", "on", "off"] = Field(
        "auto", description="IOBinding with per-bucket output buffers: auto (CUDA only), on, off"
    )
    fast_path: bool = Field(
        True,
        description="answer POST /generate without FastAPI's routing layers (same handler, same answers)",
    )
    monitor_window: int = Field(
        512,
        ge=128,
        le=2048,
        description="served rows per model version in the output monitor's rolling window (drift and diversity gauges)",
    )
    monitor_sample: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="fraction of the counted served rows the output monitor sketches (0: monitoring off)",
    )
    warmup_rows: int = Field(8, ge=1, le=4096, description="rows in the warm-up batch at load")
    png_provenance: bool = Field(
        True,
        description="every PNG carries its provenance (gan:* text chunks) and the IPTC trainedAlgorithmicMedia XMP",
    )
    quality_gate: Literal["off", "warn", "enforce"] = Field(
        "warn", description="enforce: a model without metrics or failing a gate is not served; warn: log it"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = Field(
        "json",
        description="log lines as JSON objects (time, level, logger, message, request_id, trace_id) or text",
    )
    access_log: bool = Field(
        False,
        description="one log line per HTTP request (method, path, status, ms, its ids; info level); costs CPU per request",
    )

    @field_validator("cuda_devices", mode="before")
    @classmethod
    def _device_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = tuple(int(v) for v in value.split(","))
            except ValueError:
                raise ValueError(f"GAN_CUDA_DEVICES must be GPU ids like 0 or 0,1; got {value!r}") from None
        if not value or len(set(value)) != len(value) or min(value) < 0:
            raise ValueError(f"GAN_CUDA_DEVICES must list distinct GPU ids >= 0; got {value!r}")
        return value

    @field_validator("batch_buckets")
    @classmethod
    def _ascending(cls, value: str) -> str:
        if value not in ("auto", "off"):
            sizes = [int(v) for v in value.split(",")]
            if sizes != sorted(set(sizes)):
                raise ValueError(f"GAN_BATCH_BUCKETS must be ascending distinct sizes; got {value!r}")
        return value

    @model_validator(mode="after")
    def _cuda_graphs_need_fixed_buffers(self) -> Settings:
        if self.cuda_graphs and "off" in (self.batch_buckets, self.io_binding):
            raise ValueError("GAN_CUDA_GRAPHS needs GAN_BATCH_BUCKETS and GAN_IO_BINDING (not off)")
        return self

    @model_validator(mode="after")
    def _requests_fit_the_queue(self) -> Settings:
        for name in ("max_n", "max_steps", "max_page_rows"):
            if getattr(self, name) > self.max_queue_rows:
                raise ValueError(
                    f"GAN_{name.upper()} ({getattr(self, name)}) exceeds GAN_MAX_QUEUE_ROWS ({self.max_queue_rows}): "
                    "such a request could never be queued"
                )
        return self
