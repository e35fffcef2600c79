"""Training throughput: the project's loop against a plain PyTorch loop of the same architecture.

    python -m bench.train_throughput --presets dcgan cgan mlp --steps 60 --json train.json

"Plain" is the loop as the seed scripts and pytorch/examples write it: the same G and D modules, Adam, fp32,
BCE on logits, zero_grad / backward / step, a loss `.item()` every step, one fake batch reused for the G step
(WGAN-GP: its reference code's loop, n_critic critic steps with the gradient penalty). "Ours" is
`python -m training train` (its EMA copy of G, its data source, and `precision=auto`: bf16 autocast for the
DCGAN networks on CPUs with AMX or AVX512-BF16). Both run in their own process with the same threads and batch
size; images/s counts real images through D (x n_critic), measured after --warmup steps.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def plain_loop(preset: str, steps: int, warmup: int, threads: int) -> dict[str, Any]:
    """The seeds' loop on the preset's networks and data; returns images/s after warm-up."""
    import torch
    import torch.nn.functional as F

    from training.config import preset_config
    from training.data import make_source
    from training.networks import NetSpec, build_networks

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    cfg = preset_config(preset)
    source = make_source(cfg.data, cfg.data_dir, seed=cfg.seed)
    spec = NetSpec.from_config(cfg, source.spec)
    netG, netD = build_networks(spec)
    if cfg.loss == "wgan-gp":
        return plain_wgan_gp(cfg, source, spec, netG, netD, steps, warmup)
    optD = torch.optim.Adam(netD.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    optG = torch.optim.Adam(netG.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    batch = cfg.batch_size
    started = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
        real, labels = source.batch(step, batch)
        c = F.one_hot(labels, spec.num_classes).float() if spec.num_classes else None
        # (1) Update D: maximize log(D(x)) + log(1 - D(G(z)))
        netD.zero_grad()
        output = netD(real, c)
        errD_real = F.binary_cross_entropy_with_logits(output, torch.ones_like(output))
        errD_real.backward()
        noise = torch.randn(batch, spec.z_dim)
        fake = netG(noise, c)
        output = netD(fake.detach(), c)
        errD_fake = F.binary_cross_entropy_with_logits(output, torch.zeros_like(output))
        errD_fake.backward()
        optD.step()
        # (2) Update G: maximize log(D(G(z)))
        netG.zero_grad()
        output = netD(fake, c)
        errG = F.binary_cross_entropy_with_logits(output, torch.ones_like(output))
        errG.backward()
        optG.step()
        _ = (errD_real.item() + errD_fake.item(), errG.item())  # the seeds print these every step
    seconds = time.perf_counter() - started
    return {"images_per_s": round(steps * batch / seconds, 1), "seconds": round(seconds, 2)}


def plain_wgan_gp(
    cfg: Any, source: Any, spec: Any, netG: Any, netD: Any, steps: int, warmup: int
) -> dict[str, Any]:
    """WGAN-GP as its reference code writes it: n_critic critic steps with the gradient penalty, then G."""
    import torch

    optD = torch.optim.Adam(netD.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    optG = torch.optim.Adam(netG.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    batch, started = cfg.batch_size, 0.0
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
        for i in range(cfg.n_critic):
            real, _ = source.batch(step * cfg.n_critic + i, batch)
            netD.zero_grad()
            fake = netG(torch.randn(batch, spec.z_dim)).detach()
            alpha = torch.rand(batch, *[1] * (real.dim() - 1))
            mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
            grad = torch.autograd.grad(netD(mixed).sum(), mixed, create_graph=True)[0]
            penalty = ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean() * cfg.gp_lambda
            d_cost = netD(fake).mean() - netD(real).mean() + penalty
            d_cost.backward()
            optD.step()
        netG.zero_grad()
        g_cost = -netD(netG(torch.randn(batch, spec.z_dim))).mean()
        g_cost.backward()
        optG.step()
        _ = (d_cost.item(), g_cost.item())
    seconds = time.perf_counter() - started
    return {"images_per_s": round(steps * batch * cfg.n_critic / seconds, 1), "seconds": round(seconds, 2)}


def our_loop(preset: str, steps: int, warmup: int, threads: int, precision: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "run"
        command = [
            sys.executable, "-m", "training", "train", "--preset", preset, "--steps", str(warmup + steps),
            "--run-dir", str(run_dir), "--no-progress", "--set", f"log_every={warmup}",
            "--set", f"sample_every={10 * (warmup + steps)}", "--set", f"checkpoint_every={10 * (warmup + steps)}",
            "--set", f"num_threads={threads}", "--set", f"precision={precision}",
        ]  # fmt: skip
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
        images, seconds, _ = measured_run(run_dir)
    return {"images_per_s": round(images / seconds, 1), "seconds": round(seconds, 2)}


def measured_run(run_dir: Path) -> tuple[int, float, int]:
    """(images, seconds, steps) of a training run from its warm-up record to its last one (metrics.jsonl's
    wall_time_s counts training steps only)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    cfg = json.loads((run_dir / "config.json").read_text())
    first, last = records[0], records[-1]
    steps = last["step"] - first["step"]
    return steps * cfg["batch_size"] * cfg["n_critic"], last["wall_time_s"] - first["wall_time_s"], steps


def plain_in_subprocess(preset: str, steps: int, warmup: int, threads: int) -> dict[str, Any]:
    code = (
        "import json, sys; from bench.train_throughput import plain_loop; "
        f"print(json.dumps(plain_loop({preset!r}, {steps}, {warmup}, {threads})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["dcgan", "cgan", "wgan-gp", "mlp"])
    parser.add_argument("--steps", type=int, default=60, help="measured steps per loop")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = []
    print(
        f"{'preset':>8} {'plain fp32':>11} {'ours fp32':>10} {'ours auto':>10} {'speed-up':>9}   (real images/s)"
    )
    for preset in args.presets:
        plain = plain_in_subprocess(preset, args.steps, args.warmup, args.threads)
        fp32 = our_loop(preset, args.steps, args.warmup, args.threads, "fp32")
        auto = our_loop(preset, args.steps, args.warmup, args.threads, "auto")
        row = {
            "preset": preset,
            "plain_fp32": plain["images_per_s"],
            "ours_fp32": fp32["images_per_s"],
            "ours_auto": auto["images_per_s"],
            "speedup": round(auto["images_per_s"] / plain["images_per_s"], 2),
        }
        rows.append(row)
        print(
            f"{preset:>8} {row['plain_fp32']:>11} {row['ours_fp32']:>10} {row['ours_auto']:>10} {row['speedup']:>8}x"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"threads": args.threads, "steps": args.steps, "rows": rows}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
