"""`python -m training baseline-ae`: the reconstruction baseline for the encoder's figures. A plain
autoencoder: the encoder's architecture (EncoderNet, same width) and a decoder of the generator's
architecture (build_generator of the model's NetSpec), trained from scratch on pixel MSE of real training
images for a comparable time, snapshot chosen on validation PSNR, measured on the same test images with the
same metrics (PSNR, SSIM, evaluator features, label preservation). Conditional models: the label goes into
both halves, as it does for E and G.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from training.edit_data import RealImages
from training.encoder import EncoderConfig, build_encoder, encode, one_hot, psnr
from training.networks import build_generator
from training.onnx_generator import ExportedModel


def _val_psnr(E: Any, D: Any, x: torch.Tensor, c: torch.Tensor | None) -> float:
    E.eval(), D.eval()
    with torch.no_grad():
        z, _ = encode(E, x, c)
        score = float(psnr(D(z, c), x).mean())
    E.train(), D.train()
    return score


def train_baseline(model: ExportedModel, run_dir: Path, max_minutes: float, steps: int = 100_000,
                   batch_size: int = 32, lr: float = 2e-4, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    torch.manual_seed(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    k = model.spec.num_classes
    E = build_encoder(model, EncoderConfig())
    D = build_generator(model.spec)
    params = [*E.parameters(), *D.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))
    images = RealImages(model.data, "train", seed=seed)
    vx, vy = RealImages(model.data, "val").first(500)
    vc = one_hot(vy, k) if k and vy is not None else None
    started, best, best_state, step = time.perf_counter(), -math.inf, None, 0
    budget = max_minutes * 60
    while step < steps and time.perf_counter() - started < budget:
        step += 1
        progress = (time.perf_counter() - started) / budget
        for group in optimizer.param_groups:
            group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
        x, y = images.sample(batch_size)
        c = one_hot(y, k) if k and y is not None else None
        z, _ = encode(E, x, c)
        loss = (D(z, c) - x).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 500 == 0:
            score = _val_psnr(E, D, vx, vc)
            print(json.dumps({"step": step, "loss": round(float(loss), 5), "val_psnr": round(score, 3)}))
            if score > best:
                best = score
                best_state = {"E": E.state_dict(), "D": D.state_dict(), "step": step}
                best_state = {k2: v for k2, v in best_state.items()}
    if best_state is None:
        best_state = {"E": E.state_dict(), "D": D.state_dict(), "step": step}
    torch.save(best_state, run_dir / "baseline.pt")
    E.load_state_dict(best_state["E"])
    D.load_state_dict(best_state["D"])
    return {"E": E.eval(), "D": D.eval(), "steps": step, "best_step": best_state["step"],
            "wall_time_s": round(time.perf_counter() - started, 1), "best_val_psnr": best}  # fmt: skip


@torch.no_grad()
def measure_baseline(model: ExportedModel, E: Any, D: Any, n: int) -> dict[str, float]:
    from training.edit_eval import reconstruction
    from training.feature_net import Evaluator

    x, y = RealImages(model.data, "test").first(n)
    assert y is not None
    k = model.spec.num_classes
    c = one_hot(y, k) if k else None
    recon = torch.cat([
        D(encode(E, x[i : i + 500], None if c is None else c[i : i + 500])[0], None if c is None else c[i : i + 500])
        for i in range(0, len(x), 500)
    ])  # fmt: skip
    return reconstruction(x.numpy(), recon.numpy(), Evaluator(model.data), y.numpy())


def run_baseline(args: Any) -> dict[str, Any]:
    from training.device import cpu_threads
    from training.onnx_generator import load_exported

    cpu_threads(args.threads)
    model = load_exported(args.model_dir, args.name, args.version)
    trained = train_baseline(model, args.run_dir, args.max_minutes)
    metrics = measure_baseline(model, trained["E"], trained["D"], args.images)
    result = {k: v for k, v in trained.items() if k not in ("E", "D")} | {"test": metrics}
    (args.run_dir / "baseline.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
