"""The models and servers of the sweep against the peers (bench.peers): the service and the peers' two
reference servers (`../shared/peers`: run from there, never copied in), on `fashion-cgan` and the peers' DCGAN.

The service loads only what carries a manifest, so the peers' `dcgan.onnx` becomes a model version in a
temporary folder at run time: the same graph with its output renamed `image` -> `x` and its spatial dims
written out (the contract's), checked to give the same numbers as the original, and a manifest without
metrics (the default `GAN_QUALITY_GATE=warn` serves it and logs that it has none).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from subprocess import Popen

import numpy as np
import onnx
import onnxruntime as ort

from bench.load import ROOT, running_service
from bench.workers import one_model_dir
from service.manifest import ONNX_FILE, load_manifest, parse_manifest, save_manifest
from service.model_folders import version_path


def peers_dir() -> Path:
    """The reference servers: GAN_PEERS_DIR, else `../shared/peers` beside this checkout, else the workplace's
    /work/shared/peers (a clean clone made elsewhere, as CI's, is not beside it)."""
    candidates = [Path(p) for p in (os.environ.get("GAN_PEERS_DIR"),) if p]
    candidates += [ROOT.parent / "shared" / "peers", Path("/work/shared/peers")]
    for candidate in candidates:
        if (candidate / "batcher.py").is_file():
            return candidate
    raise SystemExit(
        f"the peers' servers are not in any of {[str(c) for c in candidates]}: set GAN_PEERS_DIR"
    )


PEERS = peers_dir()
DCGAN = "peers-dcgan"
MODELS = ("fashion-cgan", DCGAN)
SERVICE, BATCHER, NAIVE = "service", "peer-batcher", "peer-naive"  # the peers' batcher.py and naive.py
SERVERS = (SERVICE, BATCHER, NAIVE)
SCRIPTS = {BATCHER: "batcher.py", NAIVE: "naive.py"}


@dataclass(frozen=True)
class SweepModel:
    name: str  # the service's model name
    version_dir: Path  # model.onnx + manifest.json: the service's copy and raw ONNX Runtime's file
    model_dir: Path  # GAN_MODEL_DIR holding only this model
    peer_onnx: Path  # PEER_MODEL for the peers
    conditional: bool


def dcgan_version(peers: Path, into: Path) -> Path:
    """`<into>/peers-dcgan/1/` with the peers' DCGAN as the contract's graph and a manifest the service accepts."""
    source = peers / "dcgan.onnx"
    model = onnx.load(str(source))
    (output,) = model.graph.output
    for node in model.graph.node:
        for i, name in enumerate(node.output):
            if name == output.name:
                node.output[i] = "x"
    output.name = "x"
    (z,) = model.graph.input
    z_dim = z.type.tensor_type.shape.dim[1].dim_value
    probe = np.random.default_rng(0).standard_normal((2, z_dim), dtype=np.float32)
    original = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    (want,) = original.run(None, {z.name: probe})
    for dim, size in zip(output.type.tensor_type.shape.dim[1:], want.shape[1:], strict=True):
        dim.Clear()
        dim.dim_value = int(size)
    onnx.checker.check_model(model)
    version = into / DCGAN / "1"
    version.mkdir(parents=True)
    onnx.save(model, str(version / ONNX_FILE))
    (got,) = ort.InferenceSession(str(version / ONNX_FILE), providers=["CPUExecutionProvider"]).run(
        ["x"], {"z": probe}
    )
    if not np.array_equal(got, want):
        raise RuntimeError("the renamed DCGAN graph does not reproduce the peers' dcgan.onnx")
    manifest = parse_manifest(
        {
            "name": DCGAN,
            "version": 1,
            "kind": "image",
            "z_dim": z_dim,
            "num_classes": 0,
            "class_names": [],
            "output_shape": list(want.shape[1:]),
            "value_range": [-1.0, 1.0],
            "input_names": ["z"],
            "output_names": ["x"],
            "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            "onnx_sha256": hashlib.sha256((version / ONNX_FILE).read_bytes()).hexdigest(),
            "created_at": datetime.now(UTC).isoformat(),
            "training": {
                "preset": "peers-dcgan",
                "data": "none: random weights (../shared/peers/dcgan.onnx, output renamed image -> x)",
                "steps": 0,
                "seed": 0,
                "config": {"source": str(source)},
                "wall_time_s": 0.0,
                "library_versions": {"onnx": onnx.__version__, "onnxruntime": ort.__version__},
            },
            "parity_max_abs_diff": 0.0,
        },
        str(version / "manifest.json"),
    )
    save_manifest(manifest, version / "manifest.json")
    return version


def sweep_models(names: list[str], bundled: Path, peers: Path, into: Path) -> list[SweepModel]:
    """Each model's files and a model directory holding only it, under `into`."""
    models = []
    for name in names:
        folder = into / f"models-{name}"
        folder.mkdir()
        if name == DCGAN:
            version_dir = dcgan_version(peers, folder)
            peer_onnx = peers / "dcgan.onnx"
        else:
            version_dir = version_path(bundled, name)
            one_model_dir(bundled, name, folder)
            peer_onnx = version_dir / ONNX_FILE
        conditional = load_manifest(version_dir / "manifest.json").num_classes > 0
        models.append(SweepModel(name, version_dir, folder, peer_onnx, conditional))
    return models


def request_body(server: str, model: SweepModel, n: int) -> dict[str, object]:
    """The same work from every server: n images as base64 PNGs in JSON (`{"images": [...]}`); conditional
    models get class = row index mod classes (the service's default without labels, and the peers' rule)."""
    if server == SERVICE:
        return {"model": model.name, "n": n, "seed": 1, "format": "png"}
    return {"n": n, "seed": 1}


@contextmanager
def serving(
    server: str, model: SweepModel, peers: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[str, Popen[str]]]:
    """One server on a free 127.0.0.1 port serving `model`, until the block ends. `env`: the service's settings
    (none by default: its defaults)."""
    if server == SERVICE:
        with running_service({"GAN_MODEL_DIR": str(model.model_dir)} | (env or {})) as running:
            yield running
        return
    peer_env = {"PEER_MODEL": str(model.peer_onnx), "PYTHONPATH": str(peers)}
    with running_service(peer_env, script=peers / SCRIPTS[server], ready_path="/openapi.json") as running:
        yield running
