"""The training loop, read top to bottom under `# Step N.` comments; one step is in step.py, the checkpoint in
checkpoint.py, the ranks of a torchrun launch in distributed.py (rank 0 alone writes files and logs)."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from training.checkpoint import (
    CHECKPOINT,
    ResumeError,
    RunRecord,
    check_resume,
    checkpoint_state,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from training.config import TrainConfig
from training.data import BUILTIN, DataSpec, FakeSource, Source, builtin_spec, make_source
from training.device import cpu_threads, pick_device, runs_on, use_bf16
from training.distributed import (
    Ranks,
    any_rank,
    check_batch,
    check_replicas,
    mean_over_ranks,
    process_group,
)
from training.losses import make_objectives
from training.networks import NetSpec
from training.preview import preview_latents, write_preview
from training.step import Latents, Nets, train_step


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


class MetricsLog:
    """metrics.jsonl every `log_every` steps and at the last, and the progress bar: rank 0's, with the
    losses of the global batch; images/s counts the global batch, so every rank's images."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, step: int, progress: bool, ranks: Ranks) -> None:
        self.cfg, self.ranks = cfg, ranks
        self.file = (run_dir / "metrics.jsonl").open("a") if ranks.leader else None
        disable = not (progress and ranks.leader)
        self.bar = tqdm(total=cfg.steps, initial=step, disable=disable, dynamic_ncols=True, unit="step")
        self.window_start, self.window_steps = time.perf_counter(), 0

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()

    def step(self, record: RunRecord, losses: dict[str, Tensor]) -> None:
        """Called by every rank after every step (the losses are averaged over the ranks when logged)."""
        self.window_steps += 1
        self.bar.update(1)
        if record.step % self.cfg.log_every and record.step != self.cfg.steps:
            return
        losses = mean_over_ranks(losses, self.ranks)
        if self.file is None:
            self.window_start, self.window_steps = time.perf_counter(), 0
            return
        elapsed = time.perf_counter() - self.window_start
        rate = self.window_steps * self.cfg.batch_size * self.cfg.n_critic / max(elapsed, 1e-9)
        values = {name: loss.item() for name, loss in losses.items()}
        line = {"step": record.step, **values}
        line |= {"images_per_s": round(rate, 1), "wall_time_s": round(record.wall_time_s, 2)}  # real images
        self.file.write(json.dumps(line) + "\n")
        self.file.flush()
        self.bar.set_postfix(d=f"{values['d_loss']:.3f}", g=f"{values['g_loss']:.3f}", img_s=f"{rate:.0f}")
        self.window_start, self.window_steps = time.perf_counter(), 0


def open_source(cfg: TrainConfig, dry_run: bool) -> Source:
    if dry_run and cfg.data in BUILTIN:
        return FakeSource(builtin_spec(cfg.data), cfg.seed)
    return make_source(
        cfg.data, cfg.data_dir, seed=cfg.seed, image_size=cfg.image_size, channels=cfg.channels
    )


def step_count(cfg: TrainConfig, samples: int, epochs: float | None, dry_run: bool) -> TrainConfig:
    """--epochs as generator steps over the data set's batches; --dry-run: two steps, logged and previewed."""
    if epochs is not None:
        per_epoch = max(1, samples // cfg.batch_size)
        cfg = dataclasses.replace(cfg, steps=math.ceil(epochs * per_epoch / cfg.n_critic))
    if dry_run:
        cfg = dataclasses.replace(cfg, steps=min(cfg.steps, 2), log_every=1, sample_every=2)
    return cfg


def write_checkpoint(
    path: Path,
    cfg: TrainConfig,
    spec: NetSpec,
    data: DataSpec,
    nets: Nets,
    record: RunRecord,
    latents: Latents,
    dry_run: bool,
) -> None:
    state = checkpoint_state(cfg, spec, data, nets.state_dict(), record, latents.generator, dry_run)
    save_checkpoint(path, state)


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
    """Train until `cfg.steps` generator steps are done; returns the checkpoint path. Under torchrun, every
    rank calls it (in a process group of its own making, or of the caller's)."""
    run_dir = Path(run_dir)
    if not resume and (run_dir / CHECKPOINT).exists():
        raise ResumeError(
            f"{run_dir / CHECKPOINT} exists: pass --resume to continue it, or choose another --run-dir"
        )
    with process_group(pick_device(cfg.device), cfg.dist_timeout_s) as (ranks, device):
        return _train(cfg, run_dir, ranks, device, resume, dry_run, epochs, command, progress)


def _train(
    cfg: TrainConfig,
    run_dir: Path,
    ranks: Ranks,
    device: torch.device,
    resume: bool,
    dry_run: bool,
    epochs: float | None,
    command: str | None,
    progress: bool,
) -> Path:
    """The package's longest function, on purpose: the run reads as one story under its `# Step N.` comments
    (StyleGAN's training_loop, nanoGPT's train.py are the models); each step's work is a call."""
    ckpt_path = run_dir / CHECKPOINT

    # Step 1. Threads and seeds (the same on every rank: they all build and draw the same).
    if device.type == "cpu":
        cpu_threads(cfg.num_threads or ranks.threads())
    torch.manual_seed(cfg.seed)
    latent_gen = torch.Generator(device).manual_seed(cfg.seed)

    # Step 2. Data; --epochs (or --dry-run) fixes the step count.
    source = open_source(cfg, dry_run)
    cfg = step_count(cfg, len(source), epochs, dry_run)
    source.batch(0, cfg.batch_size)  # fail fast on a data/batch mismatch; batches are pure, nothing changes
    check_batch(cfg.batch_size, cfg.pack, ranks)
    spec = NetSpec.from_config(cfg, source.spec)

    # Step 3. Networks (DDP-wrapped under torchrun), EMA copy of G, optimisers, objectives; this rank's part.
    nets = Nets.build(cfg, spec, device, ranks)
    if cfg.diffaug and source.spec.kind != "image":
        raise ValueError(
            f"diffaug '{cfg.diffaug}' augments images; data '{cfg.data}' is {source.spec.kind} data"
        )
    objectives = make_objectives(
        cfg.loss, cfg.gp_lambda, cfg.r1_gamma, cfg.mixture_beta, ranks, r2_gamma=cfg.r2_gamma
    )
    bf16 = use_bf16(cfg.precision, device, cfg.arch)
    latents = Latents(spec, cfg.batch_size, latent_gen, ranks.part(cfg.batch_size))
    # What this invocation really runs on: `auto` settings resolve per machine, and wall times mean
    # little without them. Each resume appends its own segment.
    where = runs_on(device, bf16) | ranks.describe()

    # Step 4. Resume: every network, optimiser, RNG and counter exactly as it was saved.
    record = RunRecord(command=command, where=where)
    if resume:
        # RNG states must stay CPU byte tensors; weights and optimizer state follow their parameters' device.
        state = load_checkpoint(ckpt_path, "cpu")
        check_resume(state, cfg, ckpt_path)
        nets.load_state_dict(state, cfg)
        restore_rng(state["rng"], latent_gen)
        record = RunRecord.resumed(state, command, where)
    if ranks.leader:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.json")

    # Step 5. The steps, each a train_step; a stop request (on any rank) is honoured between steps only, by
    # every rank at the same step. Rank 0 alone writes previews and checkpoints (each file atomically).
    preview_z, preview_c = preview_latents(cfg.seed, spec, device)
    stopping = False
    with StopRequest() as stop, MetricsLog(run_dir, cfg, record.step, progress, ranks) as log:
        while record.step < cfg.steps and not stopping:
            started = time.perf_counter()
            losses = train_step(record.step, cfg, source, nets, objectives, latents, bf16)
            record.step += 1
            record.wall_time_s += time.perf_counter() - started
            log.step(record, losses)
            stopping = any_rank(stop.requested, ranks, device)
            if record.step % cfg.checkpoint_every == 0:
                check_replicas(nets.modules(), ranks, device)
            if not ranks.leader:
                continue
            if record.step % cfg.sample_every == 0 or record.step == cfg.steps:
                preview = run_dir / "samples" / f"{record.step:07d}.png"
                write_preview(nets.sampler, preview_z, preview_c, preview, cfg.data)
            if record.step % cfg.checkpoint_every == 0:
                write_checkpoint(ckpt_path, cfg, spec, source.spec, nets, record, latents, dry_run)

    # Step 6. The final checkpoint: the resume state, and the input of `export`.
    check_replicas(nets.modules(), ranks, device)
    if ranks.leader:
        write_checkpoint(ckpt_path, cfg, spec, source.spec, nets, record, latents, dry_run)
    if stopping:
        if ranks.leader:
            print(f"stopped by signal: checkpoint at step {record.step} written to {ckpt_path}", flush=True)
        raise KeyboardInterrupt
    return ckpt_path
