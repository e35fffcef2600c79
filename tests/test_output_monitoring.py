"""The output monitor: a corrupted or collapsed generator trips the drift or diversity gauge as soon as the
window is full, while the healthy one under the same traffic stays inside its band; read through /metrics.

The bound: with GAN_MONITOR_WINDOW = W and n rows a request, the gauges exist from request ceil(W / n) on, and a
broken generator is outside its band at that first scrape.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from service.files import sha256_file
from service.main import create_app
from service.manifest import load_manifest
from service.monitor import ENCODED, HOLD_ROWS, MAX_PENDING, VersionMonitor, counted
from service.output_stats import mean_pairwise_distance, projection
from service.settings import BUNDLED_MODELS, Settings
from tests.support import wait_until

WINDOW, ROWS, REQUESTS = 128, 16, 40
BOUND = math.ceil(WINDOW / ROWS)  # requests until the window is full: the gauges' first scrape
HEALTHY = BUNDLED_MODELS / "mnist-gan" / "1"


def copy_version(target: Path, name: str, graph: onnx.ModelProto | None = None) -> None:
    """mnist-gan v1 as model `name` (its manifest, reference included, with the new file's sha256)."""
    folder = target / name / "1"
    folder.mkdir(parents=True)
    if graph is None:
        shutil.copy(HEALTHY / "model.onnx", folder / "model.onnx")
    else:
        onnx.save(graph, folder / "model.onnx")
    manifest = json.loads((HEALTHY / "manifest.json").read_text())
    manifest |= {"name": name, "onnx_sha256": sha256_file(folder / "model.onnx"), "encoder": None}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def zeroed(initializer: str) -> onnx.ModelProto:
    """The healthy graph with one layer's weights set to zero."""
    graph = onnx.load(HEALTHY / "model.onnx")
    (tensor,) = [t for t in graph.graph.initializer if t.name == initializer]
    tensor.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(tensor)), initializer))
    return graph


def collapsed() -> onnx.ModelProto:
    """The healthy graph with every latent mapped to zero first: one output for every z."""
    graph = onnx.load(HEALTHY / "model.onnx")
    for node in graph.graph.node:
        node.input[:] = ["z_collapsed" if name == "z" else name for name in node.input]
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    graph.graph.initializer.append(zero)
    graph.graph.node.insert(0, helper.make_node("Mul", ["z", "zero"], ["z_collapsed"]))
    onnx.checker.check_model(graph)
    return graph


def gauges(client: TestClient) -> dict[str, dict[str, float]]:
    """{model: {gauge: value}} of the output monitor's series, as /metrics shows them."""
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        if family.name.startswith("gan_output_"):
            for sample in family.samples:
                found.setdefault(sample.labels["model"], {})[sample.name] = sample.value
    return found


def settled(client: TestClient, rows: dict[str, int]) -> dict[str, dict[str, float]]:
    """The gauges once each model's monitor has sketched `rows` rows (batches over INLINE_ROWS are sketched
    on a worker thread after the response)."""
    seen: dict[str, dict[str, float]] = {}

    def done() -> bool:
        nonlocal seen
        seen = gauges(client)
        return all(seen.get(m, {}).get("gan_output_monitored_rows_total") == n for m, n in rows.items())

    wait_until(done, 30, lambda: f"monitored rows {rows}; /metrics shows {seen}")
    return seen


def outside(values: dict[str, float]) -> bool:
    diversity = values["gan_output_diversity"]
    low, high = values["gan_output_diversity_low"], values["gan_output_diversity_high"]
    return values["gan_output_drift"] > 1 or not low <= diversity <= high


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    assert load_manifest(HEALTHY / "manifest.json").output_reference is not None, (
        "run `python -m training output-reference --model-dir models`"
    )
    root = tmp_path_factory.mktemp("models")
    copy_version(root, "healthy")
    copy_version(root, "zeroed-bias", zeroed("G.net.0.bias"))  # a shift: same spread, other images
    copy_version(root, "zeroed-layer", zeroed("G.net.2.weight"))  # the hidden layer constant
    copy_version(root, "collapsed", collapsed())
    settings = Settings(model_dir=root, monitor_window=WINDOW, quality_gate="off")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_a_broken_generator_trips_within_the_bound_and_a_healthy_one_stays_in_band(
    client: TestClient,
) -> None:
    models = ["healthy", "zeroed-bias", "zeroed-layer", "collapsed"]
    first: dict[str, dict[str, float]] = {}
    healthy_seen = []
    for request in range(1, REQUESTS + 1):
        sent = models if request <= BOUND else ["healthy"]
        for model in sent:
            body = {"model": model, "n": ROWS, "seed": 1000 + request, "format": "npy"}
            assert client.post("/generate", json=body).status_code == 200
        seen = settled(
            client, {model: min(request, BOUND) * ROWS for model in models} | {"healthy": request * ROWS}
        )
        if request < BOUND:  # the window is not full: no gauge yet, only the rows counted
            assert "gan_output_drift" not in seen["healthy"]
            continue
        if request == BOUND:
            first = seen
        healthy_seen.append(seen["healthy"])
    for model in models[1:]:
        assert outside(first[model]), (model, first[model])
    assert first["collapsed"]["gan_output_diversity"] < 0.01  # every row the same image
    assert len(healthy_seen) == REQUESTS - BOUND + 1
    assert all(values["gan_output_skipped_rows_total"] == 0 for values in first.values())
    for values in healthy_seen:
        assert not outside(values), values
        assert 0.5 < values["gan_output_drift"] <= 1  # in band, and not trivially 0


def test_interpolation_and_encoded_rows_are_not_counted(client: TestClient) -> None:
    before = gauges(client)["collapsed"]["gan_output_monitored_rows_total"]
    body = {"model": "collapsed", "start": {"seed": 1}, "end": {"seed": 2}, "steps": 2, "format": "npy"}
    assert client.post("/interpolate", json=body).status_code == 200  # 2 rows: sketched inline if at all
    one = {"model": "collapsed", "n": 1, "seed": 5, "format": "npy"}
    truncated = one | {"truncation": 0.5}
    assert client.post("/generate", json=truncated).status_code == 200  # another distribution: not counted
    assert client.post("/augment", json=truncated | {"format": "npz"}).status_code == 200  # nor here
    assert client.post("/generate", json=one).status_code == 200  # ... and this one is
    assert gauges(client)["collapsed"]["gan_output_monitored_rows_total"] == before + 1
    assert counted({"path": "/generate"}) and counted({"path": "/v2/models/m/versions/1/infer"})
    assert not counted({"path": "/interpolate"}) and not counted({"path": "/edit"})
    assert not counted({"path": "/augment", ENCODED: True})  # variations_of: latents from the encoder


def test_the_window_keeps_the_last_rows_and_skips_blended_classes() -> None:
    manifest = load_manifest(HEALTHY / "manifest.json")
    monitor = VersionMonitor(manifest, window=128, sample=1.0)
    rng = np.random.default_rng(0)
    batches = [rng.uniform(-1, 1, (n, 1, 28, 28)).astype(np.float32) for n in (100, 100, 300)]
    for x in batches[:2]:
        monitor.observe(x, None)
    assert (monitor.filled, monitor.rows, monitor.cursor) == (128, 200, 72)
    monitor.observe(batches[2], None)  # more rows than the window: only its last 128 are kept
    reference = monitor.reference
    matrix = projection(784, reference.directions, reference.projection_seed)
    expected = (batches[2][-128:].reshape(128, -1) @ matrix - monitor.mean[0]) / monitor.std[0]
    kept = np.roll(monitor.buffer, -monitor.cursor, axis=0)
    np.testing.assert_allclose(kept, expected, rtol=1e-5, atol=1e-5)
    drift, diversity = monitor.gauges() or (0.0, 0.0)
    assert drift > 1  # uniform noise is not the generator's output
    assert diversity == pytest.approx(
        mean_pairwise_distance(expected) / reference.diversity_reference, rel=1e-5
    )


def test_a_conditional_window_counts_one_hot_rows_only() -> None:
    manifest = load_manifest(BUNDLED_MODELS / "fashion-cgan" / "4" / "manifest.json")
    monitor = VersionMonitor(manifest, window=128, sample=1.0)
    x = np.zeros((4, 1, 28, 28), np.float32)
    c = np.array([[1, 0] + [0] * 8, [0, 1] + [0] * 8, [0.5, 0.5] + [0] * 8, [0] * 10], np.float32)
    monitor.observe(x, c)
    assert monitor.rows == 2
    sampled = VersionMonitor(manifest, window=128, sample=0.25)
    sampled.observe(np.zeros((400, 1, 28, 28), np.float32), np.eye(10, dtype=np.float32)[np.arange(400) % 10])
    assert 60 <= sampled.rows <= 140  # about a quarter of 400


def test_small_requests_are_held_and_sketched_together() -> None:
    """1-row requests wait until HOLD_ROWS are held (or a flush, as a scrape does), then their window rows are
    the ones a single observe of all of them gives."""
    manifest = load_manifest(BUNDLED_MODELS / "fashion-cgan" / "4" / "manifest.json")
    held, whole = (VersionMonitor(manifest, window=128, sample=1.0) for _ in range(2))
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (HOLD_ROWS + 1, 1, 28, 28)).astype(np.float32)
    c = np.eye(10, dtype=np.float32)[np.arange(HOLD_ROWS + 1) % 10]
    for i in range(HOLD_ROWS - 1):
        held.submit(x[i : i + 1], c[i : i + 1])
    assert held.rows == 0
    held.submit(x[HOLD_ROWS - 1 : HOLD_ROWS], c[HOLD_ROWS - 1 : HOLD_ROWS])
    assert held.rows == HOLD_ROWS
    held.submit(x[HOLD_ROWS:], c[HOLD_ROWS:])
    held.flush()
    whole.observe(x, c)
    assert held.rows == whole.rows == HOLD_ROWS + 1
    # float32 products of a 33-row and a 32 + 1-row sketch: BLAS sums them in another order (1.3e-6 on an AMD
    # EPYC), so the tolerance is float32's, as for the window above
    np.testing.assert_allclose(held.buffer, whole.buffer, rtol=1e-5, atol=1e-5)


def test_a_busy_monitor_skips_batches_instead_of_queueing_them() -> None:
    monitor = VersionMonitor(load_manifest(HEALTHY / "manifest.json"), window=128, sample=1.0)
    x = np.zeros((10, 1, 28, 28), np.float32)

    async def submit_twice() -> None:
        monitor.pending = MAX_PENDING  # as if its worker had that many batches waiting
        monitor.submit(x, None)
        monitor.pending = 0
        monitor.submit(x, None)  # on a worker thread of the loop's default executor

    asyncio.run(submit_twice())  # which it shuts down, waiting for the batch, before it returns
    assert (monitor.rows, monitor.skipped, monitor.pending) == (10, 10, 0)


def test_the_cli_adds_the_section_and_keeps_the_rest(tmp_path: Path) -> None:
    from training.__main__ import main
    from training.encoder_export import update_encoder

    source = BUNDLED_MODELS / "ring8" / "2"
    shutil.copytree(source, tmp_path / "ring8" / "2")
    before = json.loads((source / "manifest.json").read_text())
    del before["output_reference"]
    (tmp_path / "ring8" / "2" / "manifest.json").write_text(json.dumps(before))
    assert main(["output-reference", "--model-dir", str(tmp_path), "--name", "ring8"]) == 0
    after = json.loads((tmp_path / "ring8" / "2" / "manifest.json").read_text())
    reference = after.pop("output_reference")
    assert after == load_manifest(source / "manifest.json").model_dump(
        mode="json", exclude={"output_reference"}
    )
    recorded = json.loads((source / "manifest.json").read_text())["output_reference"]
    for key in ("mean", "std", "pixel_mean", "pixel_std"):  # the bundled figures are reproducible
        np.testing.assert_allclose(reference[key], recorded[key], atol=1e-4)
    for ours, theirs in zip(reference["bands"], recorded["bands"], strict=True):
        assert ours == pytest.approx(theirs, rel=1e-3)
    assert [b["window"] for b in reference["bands"]] == [128, 256, 512]
    # the encoder's re-export (update_encoder, export_encoder) keeps the section
    copy = tmp_path / "mnist-gan" / "1"
    shutil.copytree(HEALTHY, copy)
    updated = update_encoder(copy, metrics={"psnr": 30.0})
    assert updated.output_reference == load_manifest(HEALTHY / "manifest.json").output_reference
    (copy / "model.onnx").write_bytes(b"changed")
    assert main(["output-reference", "--model-dir", str(tmp_path), "--name", "mnist-gan"]) == 2
