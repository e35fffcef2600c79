"""`python -m training edit-eval`: the encoder and the edits, measured on held-out TEST images through ONNX
Runtime (encoder.onnx, then model.onnx: the served artifacts), scored by the shipped evaluator.

- reconstruction: PSNR, SSIM (Wang et al. 2004: 11x11 Gaussian window, σ 1.5, valid filtering, data range 1)
  and the mean L2 distance between the evaluator's features of x and of G(E(x));
- label preservation: the evaluator gives G(E(x)) the label of x (stacked MNIST: all three digits);
- conditional models: edit success (z = E(x, y), the evaluator labels G(z, k) as k, k != y) and how much
  the edit keeps: cosine and relative L2 between z and E(G(z, k), k); the class head's accuracy and the
  PSNR with c unknown (all-zero);
- directions: the share of edited test images (E(x) + strength * n) the evaluator assigns to the target.
Snapshots and settings were chosen on the validation part of the training split; these are test figures.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.files import sha256_file
from service.manifest import MANIFEST_FILE, ONNX_FILE, Evaluation, Manifest, load_manifest
from service.quality_gates import QualityGate
from training.edit_data import RealImages
from training.feature_net import FEATURE_SPACE, Evaluator

ENCODER_FILE = "encoder.onnx"
# Fixed before any encoder was measured: the goals (PSNR 20 dB on Fashion-MNIST, 90 % label
# preservation, 90 % edit success), the edit goal carried over to the directions of unconditional models.
EDIT_GATES: dict[str, list[tuple[str, str, float]]] = {
    "conditional": [("psnr", ">=", 20.0), ("label_preservation", ">=", 0.90), ("edit_success", ">=", 0.90)],
    "unconditional": [("label_preservation", ">=", 0.90), ("direction_success", ">=", 0.90)],
}


def _gauss(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    g = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * sigma**2))
    return g / g.sum()


def _filter(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of (N, H, W) by the 1-D window g along H then W."""
    k = len(g)
    rows = np.lib.stride_tricks.sliding_window_view(x, k, axis=1) @ g  # (N, H-k+1, W)
    return np.lib.stride_tricks.sliding_window_view(rows, k, axis=2) @ g  # (N, H-k+1, W-k+1)


def ssim(a: np.ndarray, b: np.ndarray, window: int = 11) -> np.ndarray:
    """(N,) mean SSIM of (N, C, H, W) images in [-1, 1] (scaled to [0, 1]), averaged over channels."""
    n, channels = a.shape[:2]
    a = ((a + 1) / 2).astype(np.float64).reshape(-1, *a.shape[2:])
    b = ((b + 1) / 2).astype(np.float64).reshape(-1, *b.shape[2:])
    g = _gauss(window)
    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = _filter(a, g), _filter(b, g)
    var_a = _filter(a * a, g) - mu_a**2
    var_b = _filter(b * b, g) - mu_b**2
    cov = _filter(a * b, g) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.reshape(n, channels, -1).mean(2).mean(1)


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) PSNR in dB of images in [-1, 1] (the same as on [0, 1] with peak 1)."""
    mse = np.maximum(((a - b) ** 2).reshape(len(a), -1).mean(1), 1e-10)
    return 10 * np.log10(4.0 / mse)


class Served:
    """encoder.onnx and model.onnx of one version, through ONNX Runtime."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.manifest = load_manifest(self.path / MANIFEST_FILE)
        m = self.manifest
        if m.encoder is None or sha256_file(self.path / ENCODER_FILE) != m.encoder.sha256:
            raise ValueError(f"{self.path}: no encoder section, or encoder.onnx differs from it")
        if sha256_file(self.path / ONNX_FILE) != m.onnx_sha256:
            raise ValueError(f"{self.path / ONNX_FILE}: sha256 differs from the manifest")
        providers = ["CPUExecutionProvider"]
        self.E = ort.InferenceSession(str(self.path / ENCODER_FILE), providers=providers)
        self.G = ort.InferenceSession(str(self.path / ONNX_FILE), providers=providers)

    def onehot(self, y: np.ndarray) -> np.ndarray:
        return np.eye(self.manifest.num_classes, dtype=np.float32)[y]

    def encode(self, x: np.ndarray, c: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        out_z, out_l = [], []
        for i in range(0, len(x), 500):
            feeds = {"x": x[i : i + 500].astype(np.float32)}
            if self.manifest.num_classes:
                feeds["c"] = (np.zeros((len(feeds["x"]), self.manifest.num_classes), np.float32)
                              if c is None else c[i : i + 500])  # fmt: skip
            outs = self.E.run(None, feeds)
            out_z.append(outs[0])
            out_l.extend(outs[1:])
        return np.concatenate(out_z), (np.concatenate(out_l) if out_l else None)

    def decode(self, z: np.ndarray, c: np.ndarray | None = None) -> np.ndarray:
        outs = []
        for i in range(0, len(z), 500):
            feeds = {"z": z[i : i + 500].astype(np.float32)}
            if c is not None:
                feeds["c"] = c[i : i + 500].astype(np.float32)
            outs.append(self.G.run(["x"], feeds)[0])
        return np.concatenate(outs)


def labels_of(evaluator: Evaluator, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) evaluator labels, one per channel, and (N, C * 128) features."""
    runs = [evaluator.run(x[:, k : k + 1]) for k in range(x.shape[1])]
    return np.stack([r[0].argmax(1) for r in runs], 1), np.concatenate([r[1] for r in runs], 1)


def reconstruction(x: np.ndarray, recon: np.ndarray, evaluator: Evaluator, y: np.ndarray) -> dict[str, float]:
    got, f_recon = labels_of(evaluator, recon)
    _, f_real = labels_of(evaluator, x)
    y = y.reshape(len(y), -1)
    return {
        "psnr": float(psnr(x, recon).mean()),
        "ssim": float(ssim(x, recon).mean()),
        "feature_distance": float(np.linalg.norm(f_real - f_recon, axis=1).mean()),
        "feature_norm": float(np.linalg.norm(f_real, axis=1).mean()),
        "label_preservation": float((got == y).all(1).mean()),
    }


def conditional_edits(served: Served, x: np.ndarray, y: np.ndarray, evaluator: Evaluator) -> dict[str, float]:
    k = served.manifest.num_classes
    rng = np.random.default_rng(0)
    target = (y + rng.integers(1, k, size=len(y))) % k  # a class other than the image's own
    z, _ = served.encode(x, served.onehot(y))
    edited = served.decode(z, served.onehot(target))
    got, _ = labels_of(evaluator, edited)
    z_back, _ = served.encode(edited, served.onehot(target))
    cos = (z * z_back).sum(1) / (np.linalg.norm(z, axis=1) * np.linalg.norm(z_back, axis=1) + 1e-12)
    z_unknown, logits = served.encode(x)
    assert logits is not None
    predicted = logits.argmax(1)
    recon_unknown = served.decode(z_unknown, served.onehot(predicted))
    return {
        "edit_success": float((got[:, 0] == target).mean()),
        "edit_latent_cosine": float(cos.mean()),
        "edit_latent_rel_l2": float((np.linalg.norm(z_back - z, axis=1) / np.linalg.norm(z, axis=1)).mean()),
        "class_head_accuracy": float((predicted == y).mean()),
        "psnr_unknown_label": float(psnr(x, recon_unknown).mean()),
    }


def direction_edits(
    served: Served, z: np.ndarray, evaluator: Evaluator
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Each direction applied to every encoded test image at its strength: the evaluator's hit rate."""
    per: dict[str, dict[str, float]] = {}
    for d in served.manifest.directions:
        channel, digit = _direction_target(d.name, d.target)
        edited = served.decode(z + d.strength * np.asarray(d.vector, np.float32))
        got, _ = labels_of(evaluator, edited)
        per[d.name] = {"test_success": float((got[:, channel] == digit).mean())}
    if not per:
        return {}, per
    return {"direction_success": float(np.mean([v["test_success"] for v in per.values()]))}, per


CHANNELS = {"red": 0, "green": 1, "blue": 2}


def _direction_target(name: str, target: str | None) -> tuple[int, int]:
    head = name.split("-")[0]
    return CHANNELS.get(head, 0), int(target or name.split("-")[-1])


def measure(path: Path, n: int, project_n: int = 0, run_dir: Path | None = None) -> tuple[dict, dict, int]:
    served = Served(path)
    m = served.manifest
    data = m.training.data.split(":", 1)[0]
    evaluator = Evaluator(data)
    x_t, y_t = RealImages(data, "test").first(n)
    assert y_t is not None
    x, y = x_t.numpy(), y_t.numpy()
    c = served.onehot(y) if m.num_classes else None
    z, _ = served.encode(x, c)
    metrics = reconstruction(x, served.decode(z, c), evaluator, y)
    per_direction: dict[str, dict[str, float]] = {}
    if m.num_classes:
        metrics |= conditional_edits(served, x, y, evaluator)
    else:
        found, per_direction = direction_edits(served, z, evaluator)
        metrics |= found
    if project_n:
        from training.project import project_metrics

        metrics |= project_metrics(served, x[:project_n], y[:project_n], run_dir, evaluator)
    return metrics, per_direction, len(x)


def gates_for(m: Manifest) -> list[QualityGate]:
    key = "conditional" if m.num_classes else "unconditional"
    return [QualityGate(metric=a, op=op, threshold=t) for a, op, t in EDIT_GATES[key]]  # type: ignore[arg-type]


def evaluate_edits(path: Path, n: int = 2000, command: str | None = None, write: bool = True,
                   project_n: int = 0, run_dir: Path | None = None) -> Manifest:  # fmt: skip
    from training.encoder_export import update_encoder

    started = time.perf_counter()
    metrics, per_direction, samples = measure(path, n, project_n, run_dir)
    m = load_manifest(Path(path) / MANIFEST_FILE)
    data = m.training.data.split(":", 1)[0]
    evaluator = Evaluator(data)
    evaluation = Evaluation(
        protocol="GAN inversion on held-out test images through ONNX Runtime (encoder.onnx, model.onnx): PSNR, "
        "SSIM (11x11 Gaussian σ 1.5), evaluator-feature L2, evaluator label preservation and edit success",
        feature_space=FEATURE_SPACE,
        evaluator_sha256=evaluator.info["onnx_sha256"],
        samples=samples,
        seeds=1,
        reference=f"{data} test split (first {samples}"
        + (" fixed triples)" if data == "stacked-mnist" else ")"),
        evaluated_at=datetime.now(UTC),
        command=command,
        wall_time_s=round(time.perf_counter() - started, 2),
    )
    rounded = {k: round(v, 6) for k, v in metrics.items()}
    if not write:
        assert m.encoder is not None
        return Manifest.model_validate(
            m.model_dump() | {"encoder": m.encoder.model_dump() | {"metrics": rounded}}
        )
    updated = update_encoder(path, metrics=rounded, gates=gates_for(m), evaluation=evaluation)
    if per_direction:
        from training.directions import store_directions

        directions = [
            d.model_copy(update={"metrics": d.metrics | per_direction[d.name]}) for d in updated.directions
        ]
        updated = store_directions(path, directions)
    return updated


def report(m: Manifest) -> str:
    assert m.encoder is not None
    gates = {g.metric: g for g in m.encoder.gate_results()}
    lines = [
        f"{m.name} v{m.version} encoder — {m.encoder.evaluation.reference if m.encoder.evaluation else ''}"
    ]
    for name, value in m.encoder.metrics.items():
        gate = gates.get(name)
        verdict = f"{gate.op} {gate.threshold:g}: {'pass' if gate.passed else 'FAIL'}" if gate else ""
        lines.append(f"{name:<24}{value:>12.4f}   {verdict}")
    return "\n".join(lines)


def evaluate_cli(args: Any, command: str) -> str:
    from training.onnx_generator import served_version

    path = served_version(args.model_dir, args.name, args.version)
    manifest = evaluate_edits(path, args.images, command, not args.no_write, args.project, args.run_dir)
    return report(manifest)
