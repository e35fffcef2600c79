"""`python -m training encoder`: train an encoder E for an exported generator G (GAN inversion).

G is the exported ONNX generator rebuilt as a frozen torch module (onnx_generator.py). Each step:
- latent reconstruction on generated images: ||E(G(z, c), c) - z||², and (conditional) E's class head
  cross-entropy on G's class;
- image reconstruction on real training images: pixel loss + LPIPS-style distance in a perceptual net trained
  here (never the shipped evaluator, which scores the result), plus the real labels' cross-entropy;
- a latent regulariser that keeps E(x) on the N(0, I) shell: (|z|²/z_dim - 1)².
Conditional images are encoded with their label, or (a quarter of the time) with c = 0, the "unknown" row,
so that both paths are trained. Snapshots are chosen by PSNR on a validation part of the training split.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from service.files import atomic_write_bytes
from training.edit_data import RealImages
from training.encoder_net import EncoderNet, PerceptualNet
from training.onnx_generator import ExportedModel

ENCODER_CHECKPOINT = "encoder.pt"
PERCEPTUAL_FILE = "perceptual.pt"


@dataclass(frozen=True)
class EncoderConfig:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 2e-4
    width: int = 32
    hidden: int = 256
    pixel: str = "l2"  # "l1" or "l2"
    w_latent: float = 1.0
    w_pixel: float = 10.0
    w_perceptual: float = 1.0
    w_reg: float = 0.1
    w_class: float = 0.1
    unknown_rate: float = 0.25  # conditional: share of real images encoded with c = 0
    perceptual_steps: int = 800
    seed: int = 0
    eval_every: int = 250
    val_images: int = 500
    threads: int | None = None
    max_minutes: float | None = None  # a time budget: the schedule follows whichever runs out first
    perceptual_from: str | None = None  # reuse another run's perceptual.pt (same data, same seed)
    init_from: str | None = None  # warm start: another run's encoder.pt (same width and hidden)


@dataclass
class History:
    started: float = field(default_factory=time.perf_counter)
    rows: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)


def perceptual_data(model: ExportedModel, data_dir: str | None, seed: int) -> RealImages:
    base = "mnist" if model.data == "stacked-mnist" else model.data
    return RealImages(base, "train", data_dir, seed)


def train_perceptual(images: RealImages, steps: int, seed: int, size: int) -> tuple[PerceptualNet, float]:
    """The shipped evaluator's topology, another seed, the training part only; returns (net, val accuracy)."""
    torch.manual_seed(seed + 1)
    x, y = images.digits()
    val = RealImages(images.data, "val")
    net = PerceptualNet(int(y.max()) + 1, size)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=max(steps, 1))
    gen = torch.Generator().manual_seed(seed + 1)
    net.train()
    for _ in range(steps):
        index = torch.randint(len(x), (128,), generator=gen)
        dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
        batch = torch.roll(x[index], shifts=(dy, dx), dims=(2, 3)) if images.data == "mnist" else x[index]
        loss = F.cross_entropy(net.classify(batch)[:, 0], y[index].long())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    net.eval().requires_grad_(False)
    vx, vy = val.digits()
    with torch.no_grad():
        accuracy = float((net.classify(vx).argmax(2)[:, 0] == vy).float().mean())
    return net, accuracy


def one_hot(y: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(y.long(), k).float()


def encode(
    E: EncoderNet, x: torch.Tensor, c: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    out = E(x, c)
    return (out[0], out[1]) if isinstance(out, tuple) else (out, None)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(4.0 / mse)


def losses(
    E: EncoderNet, model: ExportedModel, percept: PerceptualNet, images: RealImages, cfg: EncoderConfig,
    gen: torch.Generator,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """The weighted terms of one step (unweighted values under their names; `total` is the sum)."""
    k, n = model.spec.num_classes, cfg.batch_size
    z = torch.randn(n, model.spec.z_dim, generator=gen)
    c = one_hot(torch.randint(k, (n,), generator=gen), k) if k else None
    with torch.no_grad():
        fake = model.G(z, c)
    z_fake, logits_fake = encode(E, fake, c)
    terms = {"latent": (z_fake - z).pow(2).mean()}
    x, y = images.sample(n)
    c_real = one_hot(y, k) if k and y is not None else None
    c_in = c_real
    if c_real is not None:
        unknown = (torch.rand(n, 1, generator=gen) < cfg.unknown_rate).float()
        c_in = c_real * (1 - unknown)
    z_real, logits_real = encode(E, x, c_in)
    recon = model.G(z_real, c_real)
    diff = recon - x
    terms["pixel"] = diff.abs().mean() if cfg.pixel == "l1" else diff.pow(2).mean()
    terms["perceptual"] = percept.distance(recon, x).mean()
    terms["reg"] = (z_real.pow(2).mean(1) - 1).pow(2).mean()
    if logits_real is not None and logits_fake is not None and c is not None and y is not None:
        terms["class"] = F.cross_entropy(logits_real, y.long()) + F.cross_entropy(logits_fake, c.argmax(1))
    weights = {"latent": cfg.w_latent, "pixel": cfg.w_pixel, "perceptual": cfg.w_perceptual}
    weights |= {"reg": cfg.w_reg, "class": cfg.w_class}
    terms["total"] = sum(weights[name] * value for name, value in terms.items())  # type: ignore[assignment]
    return terms


@torch.no_grad()
def validate(E: EncoderNet, model: ExportedModel, val: tuple[torch.Tensor, torch.Tensor | None]) -> float:
    """Mean PSNR of G(E(x)) on the validation images (labels known, as the edit path uses them)."""
    E.eval()
    x, y = val
    k = model.spec.num_classes
    c = one_hot(y, k) if k and y is not None else None
    scores = []
    for i in range(0, len(x), 250):
        ci = None if c is None else c[i : i + 250]
        z, _ = encode(E, x[i : i + 250], ci)
        scores.append(psnr(model.G(z, ci), x[i : i + 250]))
    E.train()
    return float(torch.cat(scores).mean())


def save_state(run_dir: Path, payload: dict[str, Any]) -> None:
    import io

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(run_dir / ENCODER_CHECKPOINT, buffer.getvalue())


def build_encoder(model: ExportedModel, cfg: EncoderConfig) -> EncoderNet:
    spec = model.spec
    return EncoderNet(spec.out_shape, spec.z_dim, spec.num_classes, cfg.width, cfg.hidden)


def train_encoder(
    model: ExportedModel, cfg: EncoderConfig, run_dir: Path, data_dir: str | None = None,
    command: str | None = None, log: Any = print,
) -> dict[str, Any]:  # fmt: skip
    """Train E (and first its perceptual net); writes encoder.pt, perceptual.pt and log.jsonl in run_dir."""
    from training.device import cpu_threads

    cpu_threads(cfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    history = History()
    size = model.spec.out_shape[1]
    if cfg.perceptual_from:
        percept = load_perceptual(Path(cfg.perceptual_from))
        percept_acc = torch.load(Path(cfg.perceptual_from) / PERCEPTUAL_FILE, weights_only=True)[
            "val_accuracy"
        ]
    else:
        percept, percept_acc = train_perceptual(
            perceptual_data(model, data_dir, cfg.seed), cfg.perceptual_steps, cfg.seed, size
        )
    torch.save({"state": percept.state_dict(), "val_accuracy": percept_acc, "size": size,
                "num_classes": percept.net.fc2.out_features}, run_dir / PERCEPTUAL_FILE)  # fmt: skip
    log(
        f"perceptual net: validation accuracy {percept_acc:.4f} ({time.perf_counter() - history.started:.0f} s)"
    )
    images = RealImages(model.data, "train", data_dir, cfg.seed)
    val = RealImages(model.data, "val", data_dir).first(cfg.val_images)
    record: dict[str, Any] = {
        "perceptual_val_accuracy": percept_acc,
        "config": asdict(cfg),
        "command": command,
    }
    E = build_encoder(model, cfg)
    if cfg.init_from:
        earlier = torch.load(Path(cfg.init_from) / ENCODER_CHECKPOINT, weights_only=True)
        E.load_state_dict(earlier["state"])
        record["init"] = {"run_dir": cfg.init_from, "command": earlier.get("command"),
                          "steps": earlier["steps"], "best_val_psnr": earlier["best_val_psnr"],
                          "init": earlier.get("init")}  # fmt: skip
    optimizer = torch.optim.Adam(E.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    gen = torch.Generator().manual_seed(cfg.seed)
    best_state, best_psnr, best_step = None, -math.inf, 0
    budget = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    train_start, step, done = time.perf_counter(), 0, False
    while not done:
        step += 1
        progress = min(1.0, max(step / cfg.steps, (time.perf_counter() - train_start) / budget))
        done = step >= cfg.steps or progress >= 1.0
        for group in optimizer.param_groups:  # cosine decay to 5 % of lr, over steps or time
            group["lr"] = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
        terms = losses(E, model, percept, images, cfg, gen)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        if step % cfg.eval_every == 0 or done:
            score = validate(E, model, val)
            row = {
                "step": step,
                "val_psnr": round(score, 4),
                "wall_s": round(time.perf_counter() - history.started, 1),
            }
            row |= {name: round(float(v.detach()), 5) for name, v in terms.items()}
            history.rows.append(row)
            with open(run_dir / "log.jsonl", "a") as handle:
                handle.write(json.dumps(row) + "\n")
            log(json.dumps(row))
            if score > best_psnr:
                best_psnr, best_step = score, step
                best_state = {k: v.detach().clone() for k, v in E.state_dict().items()}
            save_state(run_dir, record | {"state": best_state, "best_step": best_step, "best_val_psnr": best_psnr,
                                          "steps": step, "wall_time_s": row["wall_s"], "history": history.rows})  # fmt: skip
    assert best_state is not None
    E.load_state_dict(best_state)
    return record | {"best_step": best_step, "best_val_psnr": best_psnr, "steps": step}


def load_encoder(run_dir: Path, model: ExportedModel) -> tuple[EncoderNet, dict[str, Any]]:
    state = torch.load(Path(run_dir) / ENCODER_CHECKPOINT, weights_only=True)
    cfg = EncoderConfig(**state["config"])
    E = build_encoder(model, cfg)
    E.load_state_dict(state["state"])
    return E.eval(), state


def load_perceptual(run_dir: Path) -> PerceptualNet:
    saved = torch.load(Path(run_dir) / PERCEPTUAL_FILE, weights_only=True)
    net = PerceptualNet(saved["num_classes"], saved["size"])
    net.load_state_dict(saved["state"])
    return net.eval().requires_grad_(False)
