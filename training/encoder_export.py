"""Export a trained encoder into its model's version folder as `encoder.onnx`, checked against the contract
(`Manifest.encoder_signature()`) and against torch at batches 1, 7 and 64, and record it in the manifest's
`encoder` section. The generator (`model.onnx`, `onnx_sha256`) is never touched."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.files import sha256_file
from service.graph_signature import SignatureError, check_signature
from service.manifest import (
    MANIFEST_FILE,
    ONNX_FILE,
    Encoder,
    Manifest,
    load_manifest,
    save_manifest,
)
from training.encoder_net import EncoderNet, ServedEncoder
from training.export import PARITY_BATCHES, PARITY_TOLERANCE, ExportError, graph_signature, onnx_export

ENCODER_FILE = "encoder.onnx"  # the only name the manifest's Encoder.file allows


def encoder_feeds(manifest: Manifest, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Images in [-1, 1]; for conditional models one-hot rows, every third row all zero ("unknown")."""
    rng = np.random.default_rng(seed + batch)
    feeds = {"x": rng.uniform(-1, 1, (batch, *manifest.output_shape)).astype(np.float32)}
    if manifest.num_classes:
        c = np.eye(manifest.num_classes, dtype=np.float32)[rng.integers(manifest.num_classes, size=batch)]
        c[::3] = 0.0
        feeds["c"] = c
    return feeds


def check_encoder_graph(path: Path, manifest: Manifest) -> None:
    import onnx

    graph = onnx.load(str(path)).graph
    try:
        check_signature(
            graph_signature(graph.input), graph_signature(graph.output), manifest.encoder_signature()
        )
    except SignatureError as error:
        raise ExportError(f"encoder graph: {error}") from None


def encoder_parity(model: torch.nn.Module, manifest: Manifest, path: Path) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = list(manifest.encoder_signature()[1])
    worst = 0.0
    for batch in PARITY_BATCHES:
        feeds = encoder_feeds(manifest, batch, seed=1)
        with torch.no_grad():
            expected = model(*(torch.from_numpy(v) for v in feeds.values()))
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = session.run(outputs, feeds)
        for want, have in zip(expected, got, strict=True):
            if have.shape != tuple(want.shape):
                raise ExportError(
                    f"encoder parity at batch {batch}: ONNX {have.shape}, torch {tuple(want.shape)}"
                )
            worst = max(worst, float(np.abs(have - want.numpy()).max()))
    if not np.isfinite(worst) or worst > PARITY_TOLERANCE:
        raise ExportError(f"encoder parity failed: max |torch - onnx| = {worst:.3g} > {PARITY_TOLERANCE:g}")
    return worst


def export_encoder(net: EncoderNet, version_dir: Path, training: dict[str, Any]) -> Manifest:
    """Write encoder.onnx and the manifest's encoder section (metrics and gates come from edit_eval)."""
    version_dir = Path(version_dir)
    manifest = load_manifest(version_dir / MANIFEST_FILE)
    if sha256_file(version_dir / ONNX_FILE) != manifest.onnx_sha256:
        raise ExportError(f"{version_dir / ONNX_FILE}: sha256 differs from the manifest")
    model = ServedEncoder(net.eval()).eval()
    inputs, outputs = (list(part) for part in manifest.encoder_signature())
    example = encoder_feeds(manifest, 2)
    fd, tmp = tempfile.mkstemp(dir=version_dir, prefix=f".{ENCODER_FILE}.", suffix=".tmp")
    os.close(fd)
    scratch = Path(tmp)
    try:
        onnx_export(model, tuple(torch.from_numpy(v) for v in example.values()), scratch, inputs, outputs)
        check_encoder_graph(scratch, manifest)
        parity = encoder_parity(model, manifest, scratch)
        scratch.chmod(0o644)
        os.replace(scratch, version_dir / ENCODER_FILE)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    encoder = Encoder(
        sha256=sha256_file(version_dir / ENCODER_FILE),
        input_names=inputs,
        output_names=outputs,
        parity_max_abs_diff=parity,
        training=training,
    )
    updated = Manifest.model_validate(manifest.model_dump() | {"encoder": encoder.model_dump()})
    save_manifest(updated, version_dir / MANIFEST_FILE)
    return updated


def update_encoder(version_dir: Path, **fields: Any) -> Manifest:
    """Replace fields of the encoder section (metrics, gates, evaluation), keeping the rest of the manifest."""
    manifest = load_manifest(Path(version_dir) / MANIFEST_FILE)
    if manifest.encoder is None:
        raise ExportError(f"{version_dir}: the manifest has no encoder section")
    encoder = manifest.encoder.model_dump() | fields
    updated = Manifest.model_validate(manifest.model_dump() | {"encoder": encoder})
    save_manifest(updated, Path(version_dir) / MANIFEST_FILE)
    return updated
