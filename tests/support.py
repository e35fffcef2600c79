"""Plain helpers the tests share (the fixtures built on them are in conftest.py).

Waiting: tests wait for a *state* (`wait_until`, `eventually`), with a deadline that fails loudly, never for a
stretch of wall time assumed to be long enough.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bench.load import free_port, running_service
from service.batcher import Batcher
from service.files import sha256_file

if TYPE_CHECKING:
    from training.config import TrainConfig

__all__ = [
    "ROOT",
    "TINY",
    "Hold",
    "add_encoder",
    "asgi_client",
    "eventually",
    "free_port",
    "past_deadline",
    "running_service",
    "session_provider",
    "tiny_config",
    "wait_until",
]

ROOT = Path(__file__).resolve().parents[1]

# --- training --------------------------------------------------------------------------------------------

TINY = dict(g_width=8, d_width=8, batch_size=16, log_every=1, sample_every=1000, checkpoint_every=1000)


def tiny_config(preset: str, **overrides: Any) -> TrainConfig:
    """A preset shrunk to seconds of CPU time; overrides win."""
    from training.config import preset_config  # torch only for the tests that train

    z_dim = 8 if preset in ("mlp", "toy2d") else 16
    return preset_config(preset, **{**TINY, "z_dim": z_dim, **overrides})


# --- waiting for a state ---------------------------------------------------------------------------------


def _message(what: str | Callable[[], str]) -> str:
    return what if isinstance(what, str) else what()


def wait_until(
    condition: Callable[[], bool],
    seconds: float,
    what: str | Callable[[], str] = "the condition",
    interval: float = 0.05,
) -> None:
    """Poll `condition` until it holds; an AssertionError naming `what` once `seconds` have passed."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {_message(what)}")
        time.sleep(interval)


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    seconds: float = 30.0,
    what: str | Callable[[], str] = "the condition",
    interval: float = 0.001,
) -> None:
    """`wait_until` inside an event loop: yields to the loop between polls (the condition may be async)."""
    deadline = time.monotonic() + seconds
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {_message(what)}")
        await asyncio.sleep(interval)


# --- the service in-process ------------------------------------------------------------------------------


@asynccontextmanager
async def asgi_client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan (models loaded, batchers started) and an httpx client that calls it in-process."""
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        yield client


class Hold:
    """A batcher whose inference waits at a gate, to fill its queue deterministically.

    `entered` counts the batches that have reached the model (and wait there until `gate` is set).
    """

    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher
        self.gate = threading.Event()
        self.entered = 0
        lock = threading.Lock()

        def holding(real: Any) -> Any:
            def held(feeds: Any) -> Any:
                with lock:
                    self.entered += 1
                self.gate.wait(30)
                return real(feeds)

            return held

        # both the runners' function and the one for a batch computed alone (the wide session's)
        batcher._infer, batcher._infer_alone = holding(batcher._infer), holding(batcher._infer_alone)

    async def until(self, entered: int, queued: int) -> None:
        """Wait until `entered` batches are held in the model and `queued` rows wait behind them."""
        await eventually(
            lambda: self.entered == entered and self.batcher.queued_rows == queued,
            what=lambda: (
                f"{entered} batches held and {queued} rows queued "
                f"(now {self.entered} and {self.batcher.queued_rows})"
            ),
        )


def past_deadline(
    settings: Any, path: str, first: dict[str, Any], late: dict[str, Any]
) -> list[httpx.Response]:
    """`first` held in the model of `ring`, `late` queued behind it until its deadline has passed, then both
    answered: (first's response, late's response)."""
    from service.main import create_app  # the app only for the tests that build one

    async def scenario() -> list[httpx.Response]:
        app = create_app(settings)
        async with asgi_client(app) as c:
            hold = Hold(app.state.gan.repository.get("ring").batcher)
            held = asyncio.ensure_future(c.post(path, json=first))
            await hold.until(entered=1, queued=0)
            queued = asyncio.ensure_future(c.post(path, json=late))
            await hold.until(entered=1, queued=1)
            queued_by = time.monotonic()
            timeout_s = settings.request_timeout_s
            await eventually(lambda: time.monotonic() > queued_by + timeout_s, what="its deadline to pass")
            hold.gate.set()
            return list(await asyncio.gather(held, queued))

    return asyncio.run(scenario())


# --- encoders: tiny real graphs with the encoder's signature ------------------------------------------


def linear_encoder(path: Path, shape: list[int], z_dim: int, num_classes: int) -> None:
    """z = flatten(x) Wz (+ c Wc), logits = flatten(x) Wl: a real graph with the encoder's signature."""
    rng = np.random.default_rng(7)
    pixels = int(np.prod(shape))
    inits = [numpy_helper.from_array(rng.standard_normal((pixels, z_dim)).astype(np.float32) * 0.1, "Wz")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])]
    outputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", z_dim])]
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "Wz"], ["zx"]),
    ]
    if num_classes:
        inits += [
            numpy_helper.from_array(rng.standard_normal((num_classes, z_dim)).astype(np.float32), "Wc"),
            numpy_helper.from_array(rng.standard_normal((pixels, num_classes)).astype(np.float32), "Wl"),
        ]
        inputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", num_classes]))
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes]))
        nodes += [
            helper.make_node("MatMul", ["c", "Wc"], ["zc"]),
            helper.make_node("Add", ["zx", "zc"], ["z"]),
            helper.make_node("MatMul", ["flat", "Wl"], ["logits"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["zx"], ["z"]))
    graph = helper.make_graph(nodes, "encoder", inputs, outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), str(path))


def add_encoder(version_dir: Path, directions: list[dict[str, Any]] | None = None, **encoder: Any) -> None:
    manifest = json.loads((version_dir / "manifest.json").read_text())
    shape, z_dim, k = manifest["output_shape"], manifest["z_dim"], manifest["num_classes"]
    linear_encoder(version_dir / "encoder.onnx", shape, z_dim, k)
    manifest["encoder"] = {
        "sha256": sha256_file(version_dir / "encoder.onnx"),
        "input_names": ["x", "c"] if k else ["x"],
        "output_names": ["z", "logits"] if k else ["z"],
        "parity_max_abs_diff": 0.0,
        "metrics": {"psnr": 25.0},
        "gates": [{"metric": "psnr", "op": ">=", "threshold": 20.0}],
    } | encoder
    manifest["directions"] = directions or []
    (version_dir / "manifest.json").write_text(json.dumps(manifest))


# --- ONNX Runtime ----------------------------------------------------------------------------------------


def session_provider(onnx: Path, device: str = "auto") -> str:
    """The provider ONNX Runtime itself runs `onnx` on, asked as the service asks for `device` (CUDA first,
    CPU as the fallback; CPU only for "cpu"): what a truthful service reports, GPU or not."""
    wanted = (
        ["CPUExecutionProvider"] if device == "cpu" else ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    available = ort.get_available_providers()
    session = ort.InferenceSession(str(onnx), providers=[p for p in wanted if p in available])
    provider: str = session.get_providers()[0]
    return provider
