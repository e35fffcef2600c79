"""The GPU runtime, proved as far as a machine without a GPU can: the CUDA provider's options and the
no-CPU-fallback policy as ONNX Runtime receives them, the fallback refused by ONNX Runtime itself with the
nodes named, batch buckets and IOBinding (the CUDA code path, run with device "cpu"), one session per GPU.
What only a GPU can show is in bench/gpu_check.py and the checklist in docs/BENCHMARKS.md."""

from __future__ import annotations

import asyncio
import io
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper
from pydantic import ValidationError

from service import runtime
from service.main import create_app
from service.placement import describe, node_placements, off_provider
from service.runner import Runner, bucket_of, power_buckets
from service.runtime import CUDA, CpuFallback, RuntimeConfig, open_session, requested_providers
from service.settings import BUNDLED_MODELS, Settings
from service.versions import LoadError, open_graph
from tests.support import asgi_client

CGAN = BUNDLED_MODELS / "fashion-cgan" / "4" / "model.onnx"  # Gemm, ConvTranspose, Conv: 28x28, 10 classes
# this build has no CUDA provider: ONNX Runtime warns when asked for it (the tests that ask on purpose)
NO_CUDA_HERE = pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
MLP = BUNDLED_MODELS / "mnist-gan" / "1" / "model.onnx"  # Gemm only: cheap enough to warm many buckets


def feeds(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, rows)]
    return {"z": rng.standard_normal((rows, 100)).astype(np.float32), "c": labels}


@pytest.fixture(scope="module")
def plain() -> ort.InferenceSession:
    return ort.InferenceSession(str(CGAN), providers=["CPUExecutionProvider"])


def copy_model(tmp_path: Path, name: str) -> Path:
    version = next((BUNDLED_MODELS / name).iterdir())
    shutil.copytree(version, tmp_path / name / version.name)
    return tmp_path


# --- buckets ---------------------------------------------------------------------------------------------


def test_power_buckets_reach_the_largest_batch() -> None:
    assert power_buckets(1) == (1,) and power_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert power_buckets(100)[-1] == 128
    assert [bucket_of(r, (1, 2, 4, 8)) for r in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 8]


@pytest.mark.parametrize(("bind", "graphs"), [(False, False), (True, False), (True, True)])
def test_buckets_keep_every_row_s_bytes_and_the_shapes_flat(
    plain: ort.InferenceSession, bind: bool, graphs: bool
) -> None:
    """Padded up to a bucket (or chunked beyond the largest), each row is what session.run gives unpadded;
    with IOBinding only the bucket shapes are ever allocated, and a returned array is the caller's own."""
    runner = Runner([(plain, 0)], "cpu", (1, 2, 4, 8), bind=bind, graphs=graphs)
    first = runner.run(feeds(3, seed=1), ["x"])[0]
    kept = first.copy()
    for rows in (1, 2, 3, 5, 8, 11, 20):
        got = runner.run(feeds(rows, seed=rows), ["x"])[0]
        want = plain.run(["x"], feeds(rows, seed=rows))[0]
        assert got.shape == want.shape and got.tobytes() == want.tobytes(), rows
    assert first.tobytes() == kept.tobytes()  # not a view of a buffer a later run overwrote
    if bind:
        assert runner.buffer_shapes() == {(b, 1, 28, 28) for b in (1, 2, 4, 8)}


def test_concurrent_runs_take_lanes_of_their_own(plain: ort.InferenceSession) -> None:
    runner = Runner([(plain, 0)], "cpu", (1, 2, 4, 8), bind=True)
    start = threading.Barrier(4)

    def one(seed: int) -> bool:
        start.wait()
        return all(
            runner.run(feeds(5, seed + k), ["x"])[0].tobytes()
            == plain.run(["x"], feeds(5, seed + k))[0].tobytes()
            for k in range(0, 40, 4)
        )

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(one, range(4)))
    assert 1 <= runner.lane_count <= 4


def test_several_gpus_each_get_a_session_and_the_least_busy_one_runs(plain: ort.InferenceSession) -> None:
    runner = Runner([(plain, 0), (plain, 1)], "cpu", (1, 2))
    with runner.lane() as a, runner.lane() as b:
        assert {a.device_id, b.device_id} == {0, 1}
    with runner.lane() as c:  # both idle again: one of the two lanes made, not a third
        assert c in (a, b)
    assert runner.lane_count == 2


def test_a_sample_does_not_depend_on_its_batch_with_buckets_and_io_binding(tmp_path: Path) -> None:
    """The service's batch-invariance promise with buckets forced on (CPU): a burst batched every which way,
    padded to the buckets, gives each sample the bytes it has alone."""
    models = copy_model(tmp_path, "fashion-cgan")
    base = {"model": "fashion-cgan", "seed": 21, "format": "npy", "labels": 4}
    requests: list[dict[str, Any]] = [base | {"n": 1 + i % 5, "offset": i} for i in range(24)]
    settings = Settings(
        model_dir=models, max_batch_rows=7, max_wait_ms=5, batch_buckets="1,2,4,8", io_binding="on"
    )

    async def burst(app: Any, bodies: list[dict[str, Any]]) -> list[bytes]:
        async with asgi_client(app) as client:
            answers = await asyncio.gather(*(client.post("/generate", json=b) for b in bodies))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        return [a.content for a in answers]

    app = create_app(settings)
    got = asyncio.run(burst(app, requests))
    reference = np.load(
        io.BytesIO(asyncio.run(burst(create_app(Settings(model_dir=models)), [base | {"n": 48}]))[0])
    )
    for request, content in zip(requests, got, strict=True):
        start = request["offset"]
        assert np.load(io.BytesIO(content)).tobytes() == reference[start : start + request["n"]].tobytes()
    runner = app.state.gan.repository.get("fashion-cgan").session.runner
    assert runner is not None and runner.buffer_shapes() <= {(b, 1, 28, 28) for b in (1, 2, 4, 8)}


# --- CUDA provider options -------------------------------------------------------------------------------


class CudaClaimingSession:
    """A real CPU session that reports CUDA, recording what it was asked for: the CUDA branch of
    open_session (options, one session per GPU, buckets, IOBinding, warm-up) runs for real on the CPU."""

    calls: ClassVar[list[tuple[ort.SessionOptions, list[Any]]]] = []
    real = ort.InferenceSession

    def __init__(self, path: str, options: ort.SessionOptions, providers: list[Any]) -> None:
        self.calls.append((options, providers))
        self._session = self.real(path, providers=["CPUExecutionProvider"])

    def get_providers(self) -> list[str]:
        return [CUDA]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def test_cuda_sessions_get_exactly_the_configured_provider_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", CudaClaimingSession)
    monkeypatch.setattr(CudaClaimingSession, "calls", [])
    monkeypatch.setitem(runtime.DEVICE_OF, CUDA, "cpu")  # the buffers the CUDA path binds, on the host
    settings = Settings(
        device="cuda",
        cuda_devices="0,1",
        cuda_conv_algo_search="HEURISTIC",
        cuda_copy_in_default_stream=False,
    )
    config = RuntimeConfig.of(settings, max_rows=16)
    assert config == RuntimeConfig(
        (0, 1), "kSameAsRequested", "HEURISTIC", False, False, True, "auto", "auto", 16
    )
    info = open_session(MLP, "cuda", 1, config=config)
    expected = {
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
        "do_copy_in_default_stream": "0",
        "enable_cuda_graph": "0",
    }
    assert [providers for _, providers in CudaClaimingSession.calls] == [
        [(CUDA, {"device_id": "0", **expected})],
        [(CUDA, {"device_id": "1", **expected})],
    ]  # CUDA alone: a CPU provider beside disable_cpu_ep_fallback is a configuration error
    for options, _ in CudaClaimingSession.calls:
        assert options.get_session_config_entry("session.disable_cpu_ep_fallback") == "1"
    assert info.provider == CUDA and info.devices == 2 and info.runner is not None
    # warmed at load: every bucket on both sessions, IOBinding buffers of the bucket shapes only
    assert info.runner.buckets == (1, 2, 4, 8, 16) and info.runner.lane_count == 2
    assert info.runner.buffer_shapes() == {(b, 1, 28, 28) for b in info.runner.buckets}
    z = np.random.default_rng(3).standard_normal((5, 64)).astype(np.float32)
    want = CudaClaimingSession.real(str(MLP), providers=["CPUExecutionProvider"]).run(["x"], {"z": z})[0]
    assert info.run({"z": z}, ["x"])[0].tobytes() == want.tobytes()


def test_auto_asks_for_cuda_with_the_cpu_behind_it_and_cpu_for_the_cpu_alone() -> None:
    config = RuntimeConfig(cuda_graphs=True)
    assert requested_providers("cpu", config) == ["CPUExecutionProvider"]
    auto = requested_providers("auto", config, device_id=3)
    assert auto == [(CUDA, config.cuda_options(3)), "CPUExecutionProvider"]
    assert auto[0][1]["enable_cuda_graph"] == "1" and auto[0][1]["device_id"] == "3"
    assert requested_providers("cuda", RuntimeConfig(strict=False))[1] == "CPUExecutionProvider"
    assert RuntimeConfig().bucket_sizes("CPUExecutionProvider") == () and not RuntimeConfig().binds(
        "CPUExecutionProvider"
    )
    assert RuntimeConfig(max_rows=512).bucket_sizes(CUDA)[-1] == 512 and RuntimeConfig().binds(CUDA)


# --- no CPU fallback under GAN_DEVICE=cuda ---------------------------------------------------------------


@NO_CUDA_HERE
def test_onnx_runtime_refuses_cpu_nodes_under_strict_cuda_and_the_nodes_are_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real ONNX Runtime, no fake: asked for CUDA alone with disable_cpu_ep_fallback on a build where CUDA
    takes no node, it refuses the session (without the option it would silently run every node on the CPU),
    and the error lists the nodes, as a GPU build does for the few nodes CUDA lacks."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, "CPUExecutionProvider"])
    every = node_placements(CGAN, ["CPUExecutionProvider"])
    with pytest.raises(CpuFallback) as refused:
        open_session(CGAN, "cuda", 1)
    message = str(refused.value)
    assert f"{len(every)} of {len(every)} nodes would not run on {CUDA}" in message
    assert (
        "session.disable_cpu_ep_fallback" in message and "(ConvTranspose on CPUExecutionProvider)" in message
    )
    assert all(p.name in message for p in every[:12])
    # and the policy can be relaxed: the same request without strictness opens (on the CPU here)
    assert (
        open_session(CGAN, "cuda", 1, config=RuntimeConfig(strict=False)).provider == "CPUExecutionProvider"
    )


def test_a_cpu_provider_beside_no_fallback_is_refused_by_onnx_runtime() -> None:
    """Why strict CUDA lists CUDA alone: ONNX Runtime rejects the CPU provider named beside the option."""
    options = runtime.session_options(1, 0, False, no_cpu_fallback=True)
    with pytest.raises(Exception, match="Conflicting session configuration"):
        ort.InferenceSession(str(CGAN), options, providers=["CPUExecutionProvider"])


@NO_CUDA_HERE
def test_the_service_turns_cpu_fallback_into_a_failed_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, "CPUExecutionProvider"])
    models = copy_model(tmp_path, "mnist-gan")
    with TestClient(create_app(Settings(model_dir=models, device="cuda"))) as client:
        assert client.get("/readyz").status_code == 503
        version = client.get("/models/mnist-gan").json()["versions"][0]
        assert version["status"] == "failed"
        assert (
            "nodes would not run on CUDAExecutionProvider" in version["reason"]
            and "Gemm" in version["reason"]
        )
        refused = client.post("/generate", json={"model": "mnist-gan", "n": 1})
        assert refused.status_code == 503 and "CPUExecutionProvider" in refused.json()["detail"]


def test_a_node_no_provider_implements_fails_the_load_naming_its_op(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Relu", ["z"], ["r"], name="relu"),
        helper.make_node("Mystery", ["r"], ["x"], name="mystery", domain="com.example"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
    )
    path = tmp_path / "model.onnx"
    onnx.save(
        helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.example", 1)]
        ),
        path,
    )
    with pytest.raises(LoadError, match=r"ONNX Runtime cannot load the graph: .*com\.example:Mystery"):
        open_graph(path, Settings(device="cpu"))


def test_node_placements_list_every_node_with_its_provider() -> None:
    placements = node_placements(CGAN, ["CPUExecutionProvider"])
    ops = {p.op for p in placements}
    assert {"ConvTranspose", "Concat"} <= ops and {p.provider for p in placements} == {"CPUExecutionProvider"}
    assert off_provider(placements, "CPUExecutionProvider") == []
    off = off_provider(placements, CUDA)
    assert off == placements
    assert describe(off, len(placements), CUDA, limit=2).endswith(f"and {len(placements) - 2} more")


# --- settings --------------------------------------------------------------------------------------------


def test_cuda_settings_read_lists_and_refuse_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAN_CUDA_DEVICES", "0,1")
    monkeypatch.setenv("GAN_BATCH_BUCKETS", "1,2,4,8")
    settings = Settings()
    assert settings.cuda_devices == (0, 1) and settings.batch_buckets == "1,2,4,8"
    assert RuntimeConfig.of(settings, 64).bucket_sizes("CPUExecutionProvider") == (1, 2, 4, 8)
    for bad, field in [
        ({"cuda_devices": "a"}, "GAN_CUDA_DEVICES must be GPU ids"),
        ({"cuda_devices": "1,1"}, "distinct"),
        ({"batch_buckets": "8,4"}, "ascending"),
        ({"batch_buckets": "0,4"}, "batch_buckets"),
        ({"cuda_conv_algo_search": "FAST"}, "cuda_conv_algo_search"),
        ({"cuda_graphs": True, "io_binding": "off"}, "GAN_CUDA_GRAPHS needs"),
    ]:
        with pytest.raises(ValidationError, match=field):
            Settings(**bad)  # type: ignore[arg-type]
