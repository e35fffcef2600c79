"""The training loop, read top to bottom under `# Step N.` comments; its checkpoints are in checkpoint.py."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training.checkpoint import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    ResumeError,
    check_resume,
    load_checkpoint,
    save_checkpoint,
)
from training.config import TrainConfig
from training.data import BUILTIN, MIXTURES, FakeSource, Source, builtin_spec, make_source
from training.device import cpu_threads, library_versions, pick_device, use_bf16
from training.losses import make_objectives
from training.networks import ComponentClassifier, NetSpec, build_networks
from training.preview import save_preview


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks between steps; a second one aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class EMA:
    """Exponential moving average of G; the decay ramps up as (1 + t) / (10 + t) so short runs are not stuck at init."""

    def __init__(self, G: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(G).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, G: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for p_ema, p in zip(self.model.parameters(), G.parameters(), strict=True):
            p_ema.lerp_(p.detach(), 1.0 - decay)
        for b_ema, b in zip(self.model.buffers(), G.buffers(), strict=True):
            b_ema.copy_(b)


def open_source(cfg: TrainConfig, dry_run: bool) -> Source:
    if dry_run and cfg.data in BUILTIN:
        return FakeSource(builtin_spec(cfg.data), cfg.seed)
    return make_source(
        cfg.data, cfg.data_dir, seed=cfg.seed, image_size=cfg.image_size, channels=cfg.channels
    )


def _one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(y, num_classes).float()


def _preview_latents(cfg: TrainConfig, spec: NetSpec, device: torch.device) -> tuple[torch.Tensor, Any]:
    """Fixed latents for preview grids, drawn from their own generator so training RNG is untouched."""
    gen = torch.Generator().manual_seed(cfg.seed + 1_000_000_007)
    if spec.kind == "vector":
        n, c = 2500, None
    elif spec.num_classes:
        classes = min(spec.num_classes, 10)
        n = classes * 10
        c = _one_hot(torch.arange(classes).repeat_interleave(10), spec.num_classes).to(device)
    else:
        n, c = 64, None
    return torch.randn(n, spec.z_dim, generator=gen).to(device), c


@torch.no_grad()
def write_preview(G: nn.Module, z: torch.Tensor, c: torch.Tensor | None, path: Path, data_name: str) -> None:
    was_training = G.training
    G.eval()  # eval: BatchNorm uses (and does not update) its running statistics
    x = G(z, c).float().cpu().numpy()
    G.train(was_training)
    means = MIXTURES[data_name][0]().numpy() if data_name in MIXTURES else None
    save_preview(x, path, nrow=10 if c is not None else 8, means=means)


def train(
    cfg: TrainConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    dry_run: bool = False,
    epochs: float | None = None,
    command: str | None = None,
    progress: bool = True,
) -> Path:
    """Train until `cfg.steps` generator steps are done; returns the checkpoint path."""
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT
    if not resume and ckpt_path.exists():
        raise ResumeError(f"{ckpt_path} exists: pass --resume to continue it, or choose another --run-dir")

    # Step 1. Device, threads, seeds.
    device = pick_device(cfg.device)
    if device.type == "cpu":
        cpu_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    latent_gen = torch.Generator(device).manual_seed(cfg.seed)

    # Step 2. Data; --epochs becomes a step count over the data set's batches.
    source = open_source(cfg, dry_run)
    if epochs is not None:
        per_epoch = max(1, len(source) // cfg.batch_size)
        cfg = dataclasses.replace(cfg, steps=math.ceil(epochs * per_epoch / cfg.n_critic))
    if dry_run:
        cfg = dataclasses.replace(cfg, steps=min(cfg.steps, 2), log_every=1, sample_every=2)
    source.batch(0, cfg.batch_size)  # fail fast on a data/batch mismatch; batches are pure, nothing changes
    spec = NetSpec.from_config(cfg, source.spec)

    # Step 3. Networks, EMA copy of G, optimisers, objectives.
    G, D = build_networks(spec)
    G.to(device).train()
    D.to(device).train()
    ema = EMA(G, cfg.ema_decay) if cfg.ema_decay > 0 else None
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    objectives = make_objectives(cfg.loss, cfg.gp_lambda, cfg.r1_gamma, cfg.mixture_beta)
    # MGAN's classifier over the sub-generators, trained with D's learning rate.
    C = ComponentClassifier(spec).to(device).train() if cfg.mixture_beta > 0 else None
    opt_c = torch.optim.Adam(C.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2)) if C else None
    amp = use_bf16(cfg.precision, device, cfg.arch)

    # Step 4. Resume: every network, optimiser, RNG and counter exactly as it was saved.
    step, wall_time_s = 0, 0.0
    segments: list[dict[str, Any]] = []
    if resume:
        # RNG states must stay CPU byte tensors; weights and optimizer state follow their parameters' device.
        state = load_checkpoint(ckpt_path, "cpu")
        check_resume(state, cfg, ckpt_path)
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        if ema is not None:
            ema.model.load_state_dict(state["G_ema"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        if C is not None and opt_c is not None:
            C.load_state_dict(state["C"])
            opt_c.load_state_dict(state["opt_c"])
        for optimizer, lr in ((opt_g, cfg.lr_g), (opt_d, cfg.lr_d), (opt_c, cfg.lr_d)):
            for group in optimizer.param_groups if optimizer is not None else ():
                group["lr"] = lr  # the saved state carries the old rate; a resume may set a new one
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        latent_gen.set_state(state["rng"]["latent"])
        step, wall_time_s = state["step"], state["wall_time_s"]
        segments = list(state.get("segments", []))  # checkpoints from before segments were kept have none
        # Provenance keeps every command that shaped the weights: the first run and each resume.
        command = " && ".join(c for c in (state.get("train_command"), command) if c) or None
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.json")
    # What this invocation really runs on: `auto` settings resolve per machine, and wall times mean
    # little without them. Each resume appends its own segment.
    first_step, first_wall = step, wall_time_s
    where = {
        "device": device.type,
        "precision": "bf16" if amp else "fp32",
        "threads": torch.get_num_threads(),
    }

    def checkpoint() -> None:
        done = segments
        if step > first_step:
            span = {
                "from_step": first_step,
                "to_step": step,
                "wall_time_s": round(wall_time_s - first_wall, 3),
            }
            done = [*segments, span | where]
        save_checkpoint(
            ckpt_path,
            {
                "format": CHECKPOINT_FORMAT,
                "step": step,
                "wall_time_s": wall_time_s,
                "config": cfg.to_dict(),
                "net_spec": dataclasses.asdict(spec),
                "data_spec": dataclasses.asdict(source.spec),
                "G": G.state_dict(),
                "D": D.state_dict(),
                "G_ema": ema.model.state_dict() if ema is not None else None,
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(),
                "C": C.state_dict() if C is not None else None,
                "opt_c": opt_c.state_dict() if opt_c is not None else None,
                "rng": {
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                    "latent": latent_gen.get_state(),
                },
                "train_command": command,
                "segments": done,
                "dry_run": dry_run,
                "library_versions": library_versions(),
            },
        )

    def latents(labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """z for a batch, and c: the given labels one-hot, or uniformly drawn ones for conditional G."""
        z = torch.randn(cfg.batch_size, spec.z_dim, device=device, generator=latent_gen)
        if not spec.num_classes:
            return z, None
        if labels is None:
            labels = torch.randint(spec.num_classes, (cfg.batch_size,), device=device, generator=latent_gen)
        return z, _one_hot(labels.to(device), spec.num_classes)

    # Step 5. The steps: n_critic D updates on a real batch and a detached fake batch with the same
    # labels, then one G update on freshly drawn labels. A stop request is honoured between steps only.
    preview_z, preview_c = _preview_latents(cfg, spec, device)
    log_file = (run_dir / "metrics.jsonl").open("a")
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, dynamic_ncols=True, unit="step")
    window_start, window_steps = time.perf_counter(), 0
    with StopRequest() as stop:
        try:
            while step < cfg.steps and not stop.requested:
                started = time.perf_counter()
                for i in range(cfg.n_critic):
                    x_real, y_real = source.batch(step * cfg.n_critic + i, cfg.batch_size)
                    x_real = x_real.to(device, non_blocking=True)
                    z, c = latents(y_real if spec.num_classes else None)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        with torch.no_grad():
                            x_fake = G(z, c)
                        d_loss = objectives.gan.d_loss(D, x_real, x_fake, c)
                        if objectives.r1 is not None:
                            d_loss = d_loss + objectives.r1.weight * objectives.r1(D, x_real, c)
                    opt_d.zero_grad(set_to_none=True)
                    d_loss.backward()
                    opt_d.step()
                    if objectives.mgan is not None and opt_c is not None:
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                            c_loss = objectives.mgan(C, x_fake, G.component(z))
                        opt_c.zero_grad(set_to_none=True)
                        c_loss.backward()
                        opt_c.step()

                z, c = latents(None)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    x_fake = G(z, c)
                    g_loss = objectives.gan.g_loss(D, x_fake, c)
                    if objectives.mgan is not None:
                        term = objectives.mgan(C, x_fake, G.component(z))
                        g_loss = g_loss + objectives.mgan.weight * term
                opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
                opt_g.step()
                if ema is not None:
                    ema.update(G, step)
                step += 1
                wall_time_s += time.perf_counter() - started
                window_steps += 1
                bar.update(1)

                if step % cfg.log_every == 0 or step == cfg.steps:
                    elapsed = time.perf_counter() - window_start
                    rate = window_steps * cfg.batch_size * cfg.n_critic / max(elapsed, 1e-9)
                    record = {
                        "step": step,
                        "d_loss": d_loss.item(),
                        "g_loss": g_loss.item(),
                        **({"c_loss": c_loss.item()} if C is not None else {}),
                        "images_per_s": round(rate, 1),  # real images through D per second
                        "wall_time_s": round(wall_time_s, 2),
                    }
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                    bar.set_postfix(d=f"{d_loss.item():.3f}", g=f"{g_loss.item():.3f}", img_s=f"{rate:.0f}")
                    window_start, window_steps = time.perf_counter(), 0
                if step % cfg.sample_every == 0 or step == cfg.steps:
                    sampler = ema.model if ema is not None else G
                    preview = run_dir / "samples" / f"{step:07d}.png"
                    write_preview(sampler, preview_z, preview_c, preview, cfg.data)
                if step % cfg.checkpoint_every == 0:
                    checkpoint()
        finally:
            bar.close()
            log_file.close()

    # Step 6. The final checkpoint: the resume state, and the input of `export`.
    checkpoint()
    if stop.requested:
        print(f"stopped by signal: checkpoint at step {step} written to {ckpt_path}", flush=True)
        raise KeyboardInterrupt
    return ckpt_path
