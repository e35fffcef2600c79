"""A frozen, differentiable torch copy of an exported generator, rebuilt from `model.onnx` and its manifest.

The bundled models' run directories are not kept, so the encoder and the projector cannot use
`export.load_generator(run_dir)`. The manifest's `training.config` is the resolved TrainConfig, which gives
the NetSpec and so the torch module; the ONNX initializers give its weights. The dynamo exporter keeps the
parameter names (`G.net.0.weight`) but folds each eval-mode BatchNorm into the layer before it: that layer's
weight is already scaled and its folded bias is `<layer>.weight_bias`. The BatchNorm is then loaded as the
identity plus that bias (weight 1, running mean 0, running variance 1 - eps). Parity with ONNX Runtime is
checked on every rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from service.files import sha256_file
from service.manifest import MANIFEST_FILE, ONNX_FILE, Manifest, load_manifest
from service.model_folders import version_path
from training.config import TrainConfig
from training.data import builtin_spec
from training.export import PARITY_BATCHES, PARITY_TOLERANCE, Generator, parity_inputs
from training.networks import NetSpec, build_generator


class RebuildError(RuntimeError):
    """An ONNX generator that cannot be turned back into its torch module."""


@dataclass(frozen=True)
class ExportedModel:
    """One exported version: its folder, manifest, network spec and the torch generator rebuilt from it."""

    path: Path
    manifest: Manifest
    spec: NetSpec
    G: nn.Module  # export.Generator: G(z) or G(z, c), eval mode, requires_grad off
    parity: float

    @property
    def data(self) -> str:
        return self.manifest.training.data.split(":", 1)[0]


def served_version(model_dir: Path, name: str, version: int | None) -> Path:
    """The version folder (default: the highest), which must hold a manifest."""
    try:
        path = version_path(model_dir, name, version)
    except LookupError as error:
        raise RebuildError(str(error)) from None
    if not (path / MANIFEST_FILE).is_file():
        raise RebuildError(f"{path}: no manifest")
    return path


def spec_of(manifest: Manifest) -> NetSpec:
    cfg = TrainConfig.from_saved(manifest.training.config)
    spec = NetSpec.from_config(cfg, builtin_spec(cfg.data))
    # Folder/npz data: the shape and classes come from the manifest, not a built-in spec.
    return NetSpec(
        **{**spec.__dict__, "out_shape": tuple(manifest.output_shape), "num_classes": manifest.num_classes}
    )


def _initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


def _previous(name: str) -> str:
    """`blocks.4` -> `blocks.3`: the layer a BatchNorm follows inside an nn.Sequential."""
    head, _, index = name.rpartition(".")
    return f"{head}.{int(index) - 1}" if head else str(int(index) - 1)


def load_onnx_weights(G: nn.Module, inits: dict[str, np.ndarray], prefix: str = "G.") -> None:
    state = {}
    batchnorms = {n: m for n, m in G.named_modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)}
    for key, value in G.state_dict().items():
        module = key.rpartition(".")[0]
        if module in batchnorms:
            continue
        if prefix + key not in inits:
            raise RebuildError(f"parameter {key} not among the ONNX initializers")
        state[key] = torch.from_numpy(inits[prefix + key].copy()).reshape(value.shape)
    for module, bn in batchnorms.items():
        bias_key = f"{prefix}{_previous(module)}.weight_bias"
        if f"{prefix}{module}.weight" in inits:  # not folded: load it as it is
            for name in ("weight", "bias", "running_mean", "running_var"):
                state[f"{module}.{name}"] = torch.from_numpy(inits[f"{prefix}{module}.{name}"].copy())
        elif bias_key in inits:
            state[f"{module}.weight"] = torch.ones_like(bn.weight)
            state[f"{module}.bias"] = torch.from_numpy(inits[bias_key].copy())
            state[f"{module}.running_mean"] = torch.zeros_like(bn.running_mean)
            state[f"{module}.running_var"] = torch.full_like(bn.running_var, 1.0 - bn.eps)
        else:
            raise RebuildError(f"BatchNorm {module}: neither its parameters nor a folded bias in the graph")
        state[f"{module}.num_batches_tracked"] = bn.num_batches_tracked.clone()
    G.load_state_dict(state)


def generator_parity(G: nn.Module, spec: NetSpec, onnx_path: Path) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in PARITY_BATCHES:
        feeds = parity_inputs(spec, batch, seed=3)
        with torch.no_grad():
            expected = G(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        worst = max(worst, float(np.abs(session.run(["x"], feeds)[0] - expected).max()))
    return worst


def load_exported(model_dir: Path, name: str, version: int | None = None) -> ExportedModel:
    """The exported generator as a frozen torch module, checked against ONNX Runtime (≤ 1e-4)."""
    path = served_version(model_dir, name, version)
    manifest = load_manifest(path / MANIFEST_FILE)
    if sha256_file(path / ONNX_FILE) != manifest.onnx_sha256:
        raise RebuildError(f"{path / ONNX_FILE}: sha256 differs from the manifest")
    if manifest.kind != "image":
        raise RebuildError(f"{manifest.name}: encoders are for image models, not '{manifest.kind}'")
    spec = spec_of(manifest)
    G = build_generator(spec)
    load_onnx_weights(G, _initializers(path / ONNX_FILE))
    model = Generator(G.eval(), spec.num_classes > 0).eval()
    model.requires_grad_(False)
    parity = generator_parity(model, spec, path / ONNX_FILE)
    if not np.isfinite(parity) or parity > PARITY_TOLERANCE:
        raise RebuildError(
            f"{path}: rebuilt generator differs from ONNX by {parity:.3g} > {PARITY_TOLERANCE}"
        )
    return ExportedModel(path, manifest, spec, model, parity)
