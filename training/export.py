"""Export a run's generator to `MODELS/NAME/VERSION/{model.onnx, manifest.json}`, checked against torch."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from service.files import sha256_file
from service.graph_signature import SignatureError, TensorSignature, check_signature, generator_signature
from service.manifest import MANIFEST_FILE, ONNX_FILE, Manifest, Provenance, save_manifest
from service.model_folders import version_numbers
from training.checkpoint import CHECKPOINT, load_checkpoint
from training.config import TrainConfig
from training.contours import draws_contours, write_contours
from training.data import DataSpec
from training.device import library_versions
from training.networks import NetSpec, build_generator
from training.output_reference import onnx_runner, reference_statistics, with_reference

PARITY_BATCHES = (1, 7, 64)
PARITY_TOLERANCE = 1e-4
# The ONNX opset every graph is written in (generators and evaluators): torch's default today, pinned so that
# a torch upgrade cannot change the served graphs' opset unnoticed.
ONNX_OPSET = 20


class ExportError(RuntimeError):
    """An export that must not produce a model: bad request, bad graph, or failed parity."""


class Generator(nn.Module):
    """The served signature: `x = G(z)` or `x = G(z, c)`, with named inputs for ONNX."""

    def __init__(self, G: nn.Module, conditional: bool) -> None:
        super().__init__()
        self.G, self.conditional = G, conditional

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.G(z, c if self.conditional else None)


Weights = Literal["ema", "raw"]


@dataclass(frozen=True)
class TrainedRun:
    """What export reads from a checkpoint, typed at the boundary: the checkpoint stores plain dicts."""

    cfg: TrainConfig
    spec: NetSpec
    data: DataSpec
    step: int
    wall_time_s: float
    library_versions: dict[str, str]
    train_command: str | None
    segments: list[dict[str, Any]]
    dry_run: bool
    weights: Weights  # the generator weights loaded: raw where the run kept no EMA copy


def load_generator(run_dir: Path, weights: Weights = "ema") -> tuple[nn.Module, TrainedRun]:
    """Rebuild G from the spec stored in the checkpoint and load the EMA (default) or raw weights."""
    state = load_checkpoint(Path(run_dir) / CHECKPOINT)
    spec = NetSpec.from_saved(state["net_spec"])
    G = build_generator(spec)
    if weights == "ema" and state["G_ema"] is None:
        weights = "raw"  # EMA disabled in this run (ema_decay = 0): the raw weights are the model
    G.load_state_dict(state["G_ema"] if weights == "ema" else state["G"])
    run = TrainedRun(
        cfg=TrainConfig.from_saved(state["config"]),
        spec=spec,
        data=DataSpec.from_saved(state["data_spec"]),
        step=state["step"],
        wall_time_s=state["wall_time_s"],
        library_versions=state["library_versions"],
        train_command=state.get("train_command"),
        segments=state.get("segments", []),  # checkpoints from before segments were kept have none
        dry_run=bool(state.get("dry_run")),
        weights=weights,
    )
    return Generator(G.eval(), spec.num_classes > 0).eval(), run


def next_version(model_root: Path) -> int:
    return max(version_numbers(model_root), default=0) + 1


def parity_inputs(spec: NetSpec, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + batch)
    feeds = {"z": rng.standard_normal((batch, spec.z_dim), dtype=np.float32)}
    if spec.num_classes:
        feeds["c"] = np.eye(spec.num_classes, dtype=np.float32)[rng.integers(spec.num_classes, size=batch)]
    return feeds


def onnx_export(
    model: nn.Module, args: tuple[torch.Tensor, ...], path: Path, inputs: list[str], outputs: list[str]
) -> int:
    """Single-file ONNX (dynamo exporter, opset ONNX_OPSET) with a dynamic batch axis on every input; returns
    the opset the file declares."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" notices
    with warnings.catch_warnings():
        # The dynamo exporter warns about its own internals (pytree spec deprecations, axis renaming).
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            model, args, str(path), input_names=inputs, output_names=outputs,
            dynamic_shapes={name: {0: batch} for name in inputs}, opset_version=ONNX_OPSET, external_data=False,
            dynamo=True, verbose=False,
        )  # fmt: skip
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    return next(op.version for op in graph.opset_import if op.domain in ("", "ai.onnx"))


def to_onnx(model: nn.Module, spec: NetSpec, path: Path) -> int:
    """The generator's graph: inputs z (and c), output x."""
    example = parity_inputs(spec, 2)
    return onnx_export(
        model, tuple(torch.from_numpy(v) for v in example.values()), path, list(example), ["x"]
    )


def graph_signature(values: Any) -> list[TensorSignature]:
    """ONNX ValueInfos (a graph's inputs or outputs) as the contract describes tensors; ONNX Runtime's NodeArgs
    give the service the same."""
    import onnx

    signatures = []
    for value in values:
        tensor = value.type.tensor_type
        dtype = (
            "tensor(float)" if tensor.elem_type == onnx.TensorProto.FLOAT else f"elem_type {tensor.elem_type}"
        )
        shape = tuple(d.dim_param or (d.dim_value if d.dim_value > 0 else None) for d in tensor.shape.dim)
        signatures.append(TensorSignature(value.name, dtype, shape))
    return signatures


def check_graph(path: Path, spec: NetSpec) -> None:
    """The ONNX contract: inputs z [N, z_dim] (and c [N, num_classes]), output x [N, *shape], float32."""
    import onnx

    graph = onnx.load(str(path)).graph
    expected = generator_signature(spec.z_dim, spec.num_classes, list(spec.out_shape))
    try:
        check_signature(graph_signature(graph.input), graph_signature(graph.output), expected)
    except SignatureError as error:
        raise ExportError(str(error)) from None


def check_parity(model: nn.Module, spec: NetSpec, path: Path) -> float:
    """Largest |torch - ONNX Runtime| over batches of 1, 7 and 64; the export fails above the tolerance."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("the parity check needs ONNX Runtime: pip install '.[cpu]' (or '.[gpu]')") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in PARITY_BATCHES:
        feeds = parity_inputs(spec, batch, seed=1)
        with torch.no_grad():
            expected = model(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        (got,) = session.run(["x"], feeds)
        if got.shape != expected.shape:
            raise ExportError(f"parity at batch {batch}: ONNX shape {got.shape}, torch {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    if not np.isfinite(worst) or worst > PARITY_TOLERANCE:
        raise ExportError(f"parity failed: max |torch - onnx| = {worst:.3g} > {PARITY_TOLERANCE:g}")
    return worst


def export_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript

    versions = {"onnx": onnx.__version__, "onnxscript": onnxscript.__version__}
    return versions | {"onnxruntime": onnxruntime.__version__}


def build_manifest(
    name: str,
    version: int,
    run: TrainedRun,
    opset: int,
    onnx_sha256: str,
    parity: float,
    command: str | None,
) -> Manifest:
    spec, cfg = run.spec, run.cfg
    return Manifest(
        name=name,
        version=version,
        kind=spec.kind,
        z_dim=spec.z_dim,
        num_classes=spec.num_classes,
        class_names=list(run.data.class_names) if spec.num_classes else [],
        output_shape=list(spec.out_shape),
        value_range=(-1.0, 1.0) if spec.kind == "image" else None,
        input_names=["z", "c"] if spec.num_classes else ["z"],
        output_names=["x"],
        opset=opset,
        onnx_sha256=onnx_sha256,
        created_at=datetime.now(UTC),
        training=Provenance(
            preset=cfg.preset,
            data=cfg.data + (f":{cfg.data_dir}" if cfg.data_dir else ""),
            steps=run.step,
            seed=cfg.seed,
            config=cfg.to_dict(),
            wall_time_s=round(run.wall_time_s, 3),
            library_versions={**run.library_versions, **library_versions(), **export_versions()},
            train_command=run.train_command,
            export_command=command,
            exported_weights=run.weights,
            segments=run.segments,
            dry_run=run.dry_run,
        ),
        parity_max_abs_diff=parity,
    )


def export(
    run_dir: Path,
    model_dir: Path,
    name: str,
    version: int | None = None,
    *,
    weights: Weights = "ema",
    command: str | None = None,
) -> Path:
    """Export and verify; returns the new version folder. Nothing is left behind when a check fails."""
    # Step 1. The generator, rebuilt from the checkpoint alone.
    model, run = load_generator(run_dir, weights)
    model_root = Path(model_dir) / name
    if version is None:
        version = next_version(model_root)
    if version < 1:
        raise ExportError(f"--version must be a positive integer, got {version}")
    target = model_root / str(version)
    if target.exists():
        raise ExportError(f"{target} already exists: versions are immutable, choose another --version")

    # Step 2. Graph, contract and parity, in a scratch folder beside the target.
    model_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=model_root, prefix=f".{version}-"))
    scratch.chmod(0o755)  # mkdtemp makes 0700; the service may run as another user
    try:
        onnx_path = scratch / ONNX_FILE
        opset = to_onnx(model, run.spec, onnx_path)
        check_graph(onnx_path, run.spec)
        parity = check_parity(model, run.spec, onnx_path)

        # Step 3. The manifest, with full provenance.
        manifest = build_manifest(name, version, run, opset, sha256_file(onnx_path), parity, command)
        # Step 4. The output monitor's reference statistics, from ONNX Runtime (training.output_reference).
        reference = reference_statistics(onnx_runner(onnx_path), manifest, command=command)
        save_manifest(with_reference(manifest, reference), scratch / MANIFEST_FILE)
        # Step 5. 2-D mixtures: real and generated density contours side by side (training.contours).
        if draws_contours(manifest.training.data, manifest.kind, manifest.num_classes):
            write_contours(scratch)
        os.replace(scratch, target)  # the version appears whole or not at all
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return target
