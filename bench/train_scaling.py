"""Training beyond one process: images/s for 1 and N ranks (torchrun), the all-reduce's share of a 2-rank step,
images/s at 64 and 128 pixels, and a capacity model of DCGAN steps/s on N GPUs.

    python -m bench.train_scaling --json scaling.json                 # CPU (gloo)
    python -m bench.train_scaling --device cuda --ranks 1 2 4 8       # the GPU check (NCCL), on a GPU machine

Images/s counts the global batch through D (x n_critic), i.e. every rank's images, measured between the
metrics.jsonl records after --warmup steps (rank 0's wall_time_s counts training steps only). The
communication share: every rank all-reduces buffers the size of D's gradients (n_critic times) and G's (once)
and of the BatchNorm statistics, as one step does, timed alone, divided by the measured 2-rank step time.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.train_throughput import measured_run

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def images_per_s(
    ranks: int, steps: int, warmup: int, threads: int, device: str, extra: list[str]
) -> dict[str, Any]:
    """`python -m training train --preset dcgan` on `ranks` processes (threads split between them on a CPU)."""
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "run"
        launcher = [*TORCHRUN, "--nproc_per_node", str(ranks)] if ranks > 1 else [sys.executable]
        per_rank = max(1, threads // ranks)
        command = [
            *launcher, "-m", "training", "train", "--preset", "dcgan", "--steps", str(warmup + steps),
            "--run-dir", str(run_dir), "--no-progress", "--device", device, "--set", f"log_every={warmup}",
            "--set", f"sample_every={10 * (warmup + steps)}", "--set", f"checkpoint_every={10 * (warmup + steps)}",
            "--set", f"num_threads={per_rank}", *extra,
        ]  # fmt: skip
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
        images, seconds, steps_run = measured_run(run_dir)
    return {
        "ranks": ranks,
        "images_per_s": round(images / seconds, 1),
        "step_ms": round(1000 * seconds / steps_run, 2),
    }


def gradient_sizes() -> dict[str, int]:
    """Elements all-reduced per dcgan step: D's gradients n_critic times, G's once, BatchNorm's Σx, Σx²."""
    from training.config import preset_config
    from training.data import builtin_spec
    from training.networks import NetSpec, build_networks

    cfg = preset_config("dcgan")
    G, D = build_networks(NetSpec.from_config(cfg, builtin_spec(cfg.data)))
    count = {name: sum(p.numel() for p in net.parameters()) for name, net in (("G", G), ("D", D))}
    bn = sum(2 * m.num_features for net in (G, D) for m in net.modules() if hasattr(m, "running_mean"))
    return {"G": count["G"], "D": count["D"], "batch_norm": bn, "n_critic": cfg.n_critic}


def probe(out: Path, repeats: int) -> None:
    """Under torchrun: the all-reduces of one step, timed (rank 0 writes the result)."""
    import torch
    import torch.distributed as dist

    from training.device import pick_device

    device = pick_device("auto")
    if device.type == "cuda":
        device = torch.device("cuda", dist.get_rank() if dist.is_initialized() else 0)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    sizes = gradient_sizes()
    buffers = [torch.zeros(sizes["D"], device=device)] * sizes["n_critic"] + [
        torch.zeros(sizes["G"], device=device)
    ]
    stats = torch.zeros(sizes["batch_norm"], dtype=torch.float64, device=device)
    for _ in range(3):
        for b in buffers:
            dist.all_reduce(b)
    started = time.perf_counter()
    for _ in range(repeats):
        for b in buffers:
            dist.all_reduce(b)
        dist.all_reduce(stats)  # BatchNorm's statistics: many small ones in a step, one here
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / repeats
    if dist.get_rank() == 0:
        out.write_text(json.dumps({"allreduce_ms_per_step": round(1000 * seconds, 3), **sizes}))
    dist.destroy_process_group()


def allreduce_ms(ranks: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "probe.json"
        command = [
            *TORCHRUN,
            "--nproc_per_node",
            str(ranks),
            "-m",
            "bench.train_scaling",
            "--probe",
            str(out),
        ]
        subprocess.run([*command, "--repeats", str(repeats)], cwd=ROOT, check=True, capture_output=True)
        return dict(json.loads(out.read_text()))


def image_sizes(
    steps: int, warmup: int, threads: int, device: str, sizes: tuple[int, ...] = (64, 128)
) -> list[dict[str, Any]]:
    """dcgan on 256 random RGB images of each size (64 and 128 pixels; an npz), one process."""
    import numpy as np

    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "images.npz"
            rng = np.random.default_rng(0)
            np.savez(path, x=rng.integers(0, 256, (256, 3, size, size), dtype=np.uint8))
            extra = ["--data", "npz", "--data-dir", str(path)]
            rows.append({"size": size, **images_per_s(1, steps, warmup, threads, device, extra)})
    return rows


def capacity(step_ms: float, elements: int, bandwidth_gbs: float, latency_us: float, n: int) -> float:
    """Steps/s of N GPUs at the same global batch: compute divides by N, a ring all-reduce moves
    2(N-1)/N of the gradient bytes over each GPU's link and pays 2(N-1) latencies per tensor (no overlap
    of communication with the backward pass assumed: a floor)."""
    if n == 1:
        return 1000.0 / step_ms
    comm_s = 2 * (n - 1) / n * 4 * elements / (bandwidth_gbs * 1e9) + 2 * (n - 1) * 3 * latency_us * 1e-6
    return 1.0 / (step_ms / 1000.0 / n + comm_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads, split between the ranks")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="image sizes to time")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        probe(args.probe, args.repeats)
        return 0
    ranks = [images_per_s(n, args.steps, args.warmup, args.threads, args.device, []) for n in args.ranks]
    for row in ranks:
        print(f"dcgan, {row['ranks']} rank(s): {row['images_per_s']} images/s, {row['step_ms']} ms/step")
    comm = allreduce_ms(2, args.repeats)
    two = next((r for r in ranks if r["ranks"] == 2), None)
    share = comm["allreduce_ms_per_step"] / two["step_ms"] if two else math.nan
    print(f"all-reduce per 2-rank step: {comm['allreduce_ms_per_step']} ms = {share:.1%} of the step")
    sizes = image_sizes(max(5, args.steps // 3), 2, args.threads, args.device, tuple(args.sizes))
    for row in sizes:
        print(f"dcgan at {row['size']}x{row['size']} RGB, 1 process: {row['images_per_s']} images/s")
    elements = comm["D"] * comm["n_critic"] + comm["G"]
    one = next(r for r in ranks if r["ranks"] == 1)
    print(f"capacity model from a {one['step_ms']} ms step, {elements:,} gradient elements per step:")
    for n in (1, 2, 4, 8, 16, 32):
        nvlink, ethernet = (
            capacity(one["step_ms"], elements, 300, 10, n),
            capacity(one["step_ms"], elements, 12.5, 30, n),
        )
        print(
            f"  N={n:>2}: {nvlink:8.1f} steps/s (NVLink-class 300 GB/s), {ethernet:8.1f} (100 Gb/s Ethernet)"
        )
    if args.json:
        report = {
            "device": args.device,
            "threads": args.threads,
            "ranks": ranks,
            "comm": comm,
            "share": share,
        }
        args.json.write_text(json.dumps(report | {"sizes": sizes}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
