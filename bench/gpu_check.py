"""The GPU check: one short script that trains on CUDA, exports, serves with onnxruntime-gpu under
GAN_DEVICE=cuda, checks the provider of every node, runs a short sweep and a memory-flatness soak, and prints
everything (docs/BENCHMARKS.md, "GPU runtime", lists what it checks).

    python -m bench.gpu_check --json docs/bench/gpu_check.json     # a GPU machine: ~5 min on an H200
    python -m bench.gpu_check --device cpu --tiny                  # everything but CUDA (tests/test_bench_smoke.py)

Needs the `train` extra with a CUDA build of torch and the `gpu` extra (onnxruntime-gpu, never beside
onnxruntime). Exits 2 with the reason when there is no CUDA device, 1 when a check fails (every step still
runs and prints). The training data is a synthetic npz of smooth colour blobs written on the spot, so the check
needs no data set on the machine; images/s are real images through D. Servers bind 127.0.0.1; every load loop
is bounded in time and requests.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import psutil

from bench.load import ROOT, closed_loop, running_service
from bench.raw_ort import timed_runs
from service.placement import node_placements
from service.runner import zero_feeds
from service.runtime import CPU, CUDA, RuntimeConfig, open_session, requested_providers

NAME = "gpu-check"
BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
FLAT_MIB = 8.0  # growth after the first soak round that still counts as flat (nvidia-smi's granularity)


def gpu_info() -> dict[str, Any]:
    """nvidia-smi's view of the machine, or why there is none."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError) as error:
        return {"gpus": [], "reason": f"nvidia-smi: {error}"}
    return {"gpus": [line.strip() for line in out.splitlines() if line.strip()]}


def torch_cuda() -> dict[str, Any]:
    """torch's version and CUDA view, from a subprocess (this process stays free of torch)."""
    code = "import json, torch; print(json.dumps([torch.__version__, torch.cuda.is_available()]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        return {"torch": None, "cuda": False, "reason": done.stderr.strip().splitlines()[-1:]}
    version, cuda = json.loads(done.stdout.strip().splitlines()[-1])
    return {"torch": version, "cuda": cuda}


def environment(device: str) -> dict[str, Any]:
    found = {"onnxruntime": ort.__version__, "providers": ort.get_available_providers()}
    found |= gpu_info() | (torch_cuda() if device == "cuda" else {})
    problems = []
    if device == "cuda":
        if CUDA not in found["providers"]:
            problems.append("this ONNX Runtime has no CUDA provider (install the `gpu` extra, not `cpu`)")
        if not found.get("cuda"):
            problems.append("torch sees no CUDA device (a CUDA build of torch and a GPU are needed)")
        if not found["gpus"]:
            problems.append(f"no GPU listed by nvidia-smi ({found.get('reason', 'none found')})")
    return found | {"problems": problems}


def synthetic_images(path: Path, size: int, count: int, seed: int = 0) -> Path:
    """`count` RGB images of `size` px: a few smooth Gaussian colour blobs each (uint8, NHWC)."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(-1, 1, size, dtype=np.float32)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    images = np.zeros((count, size, size, 3), np.float32)
    for _ in range(3):
        cy, cx = rng.uniform(-0.6, 0.6, (2, count, 1, 1)).astype(np.float32)
        width = rng.uniform(0.15, 0.5, (count, 1, 1)).astype(np.float32)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
        images += blob[..., None] * rng.uniform(0, 1, (count, 1, 1, 3)).astype(np.float32)
    np.savez(path, x=np.clip(images * 255, 0, 255).astype(np.uint8))
    return path


def train(size: int, steps: int, device: str, scratch: Path, images: int) -> dict[str, Any]:
    """`python -m training train` (DCGAN preset) on synthetic `size` px images: images/s after the first log
    record, or the reason it did not run (an image size the networks do not support, say)."""
    data = synthetic_images(scratch / f"blobs{size}.npz", size, images)
    run_dir = scratch / f"run{size}"
    warmup = max(1, steps // 5)
    command = [
        sys.executable, "-m", "training", "train", "--preset", "dcgan", "--data", "npz", "--data-dir", str(data),
        "--steps", str(steps), "--device", device, "--run-dir", str(run_dir), "--no-progress",
        "--set", f"log_every={warmup}", "--set", f"sample_every={10 * steps}", "--set", f"checkpoint_every={steps}",
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = round(time.perf_counter() - started, 1)
    if done.returncode:
        reason = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        return {"size": size, "skipped": reason, "wall_s": wall}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    cfg = json.loads((run_dir / "config.json").read_text())
    first, last = records[0], records[-1]
    images_done = (last["step"] - first["step"]) * cfg["batch_size"] * cfg["n_critic"]
    seconds = last["wall_time_s"] - first["wall_time_s"]
    rate = round(images_done / seconds, 1) if seconds > 0 else None
    return {"size": size, "steps": steps, "images_per_s": rate, "wall_s": wall, "run_dir": str(run_dir)}


def export(run_dir: Path, model_dir: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "training",
        "export",
        "--run-dir",
        str(run_dir),
        "--model-dir",
        str(model_dir),
    ]
    subprocess.run([*command, "--name", NAME], cwd=ROOT, check=True, capture_output=True, text=True)
    return next((model_dir / NAME).iterdir()) / "model.onnx"


def placement(model: Path, device: str) -> dict[str, Any]:
    """Every node's provider (the CPU allowed, so that any node CUDA does not take shows up), and whether the
    service's own strict session opens."""
    wanted = CUDA if device == "cuda" else CPU
    providers = requested_providers("auto", RuntimeConfig()) if device == "cuda" else [CPU]
    nodes = node_placements(model, providers)
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node.provider] = counts.get(node.provider, 0) + 1
    off = [f"{n.name} ({n.op} on {n.provider})" for n in nodes if n.provider != wanted]
    try:
        strict = open_session(model, device).provider
    except Exception as error:  # the refusal is the finding
        strict = f"refused: {str(error).splitlines()[0]}"
    return {"nodes": len(nodes), "by_provider": counts, "off_device": off, "session": strict,
            "ok": not off and strict == wanted}  # fmt: skip


def runner_vs_run(model: Path, device: str, batches: list[int], seconds: float) -> list[dict[str, Any]]:
    """Rows/s of plain session.run, of IOBinding alone, and of the service's runner (buckets + IOBinding) on
    one session, at batch sizes that are not all buckets (so the padding is paid where it is paid)."""
    provider = "auto" if device == "cuda" else "cpu"
    ways = {
        "run": RuntimeConfig(buckets="off", io_binding="off"),
        "binding": RuntimeConfig(buckets="off", io_binding="on"),
        "runner": RuntimeConfig(buckets=",".join(map(str, BUCKETS)), io_binding="on"),
    }
    sessions = {k: open_session(model, provider, 1, config=c) for k, c in ways.items()}
    rows = []
    for batch in batches:
        feeds = zero_feeds(sessions["run"].session, batch)
        seconds_per = {k: timed_runs(lambda f=feeds, s=s: s.run(f), seconds) for k, s in sessions.items()}
        row: dict[str, Any] = {"batch": batch}
        row |= {f"{k}_rows_per_s": round(batch / t, 1) for k, t in seconds_per.items()}
        row |= {f"{k}_ratio": round(seconds_per["run"] / seconds_per[k], 3) for k in ("binding", "runner")}
        rows.append(row)
        print(f"  batch {batch:>4}: session.run {row['run_rows_per_s']:>10} rows/s; IOBinding "
              f"{row['binding_ratio']}x, buckets + IOBinding {row['runner_ratio']}x", flush=True)  # fmt: skip
    return rows


def server_memory_mib(pid: int, device: str) -> float:
    """The server's GPU memory (nvidia-smi's per-process figure) on CUDA, its RSS on the CPU."""
    if device != "cuda":
        return round(float(psutil.Process(pid).memory_info().rss) / 2**20, 1)
    out = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    used = [
        float(v) for p, v in (line.split(",") for line in out.splitlines() if "," in line) if int(p) == pid
    ]
    return sum(used)


def sweep(
    url: str, points: list[tuple[int, int]], duration: float, max_requests: int
) -> list[dict[str, Any]]:
    rows = []
    for concurrency, n in points:
        body = {"model": NAME, "n": n, "seed": 0, "format": "npy"}
        result = asyncio.run(closed_loop(url, body, concurrency, duration, max_requests))
        rows.append(
            {k: result[k] for k in ("concurrency", "n", "ok", "errors", "images_per_s", "p50_ms", "p99_ms")}
        )
        print(f"  c={concurrency:>3} n={n:>4}: {result['images_per_s']:>10} images/s  p50 {result['p50_ms']:>7} ms"
              f"  p99 {result['p99_ms']:>7} ms  errors {result['errors']}", flush=True)  # fmt: skip
    return rows


def invariance(url: str, n: int) -> dict[str, Any]:
    """The same identities asked for at once in one request and in pieces of every size: the same bytes?"""
    base = {"model": NAME, "seed": 7, "format": "npy"}
    with httpx.Client(timeout=60) as client:
        whole = client.post(f"{url}/generate", json=base | {"n": n}).content
        pieces, offset, k = [], 0, 1
        while offset < n:
            take = min(k, n - offset)
            pieces.append(
                (offset, take, client.post(f"{url}/generate", json=base | {"n": take, "offset": offset}))
            )
            offset, k = offset + take, k + 1
    reference = np.load(io.BytesIO(whole))
    differing = sum(
        np.load(io.BytesIO(r.content)).tobytes() != reference[a : a + t].tobytes() for a, t, r in pieces
    )
    return {"samples": n, "pieces": len(pieces), "pieces_differing": int(differing), "ok": differing == 0}


def soak(
    url: str, pid: int, device: str, rounds: int, requests: int, max_n: int, seed: int = 0
) -> dict[str, Any]:
    """Memory before, and after each round of `requests` sequential requests of random sizes 1..max_n (each
    its own batch): flat means no growth after the first round."""
    rng = np.random.default_rng(seed)
    memory = [server_memory_mib(pid, device)]
    with httpx.Client(timeout=60) as client:
        for _ in range(rounds):
            for n in rng.integers(1, max_n + 1, requests):
                answer = client.post(f"{url}/generate", json={"model": NAME, "n": int(n), "format": "npy"})
                answer.raise_for_status()
            memory.append(server_memory_mib(pid, device))
    growth = round(memory[-1] - memory[1], 1)
    return {"memory_mib": memory, "growth_after_first_round_mib": growth, "flat": growth <= FLAT_MIB,
            "rounds": rounds, "requests": requests}  # fmt: skip


def served(
    model_dir: Path, device: str, env: dict[str, str], work: Callable[[str, int], Any]
) -> tuple[Any, str]:
    """Run `work(url, pid)` against `python -m service` on this model directory; returns its result and the
    provider the service reports for the model."""
    settings = {"GAN_DEVICE": device, "GAN_MODEL_DIR": str(model_dir), "GAN_QUALITY_GATE": "off",
                "GAN_MAX_BATCH_ROWS": env.pop("GAN_MAX_BATCH_ROWS", "256")} | env  # fmt: skip
    with running_service(settings) as (url, process):
        version = httpx.get(f"{url}/models/{NAME}", timeout=10).json()["versions"][0]
        return work(url, process.pid), str(version.get("provider"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--tiny", action="store_true", help="seconds, not minutes: 8 px, a few steps and requests"
    )
    parser.add_argument("--steps", type=int, help="training steps per size (default 300; tiny: 4)")
    parser.add_argument("--sizes", type=int, nargs="+", help="training image sizes (default 64 128; tiny: 8)")
    parser.add_argument("--compare-only", type=Path, metavar="ONNX", help="only session.run vs the runner")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.compare_only:  # e.g. the CPU figure: --device cpu --compare-only models/fashion-cgan/4/model.onnx
        rows = runner_vs_run(args.compare_only, args.device, [1, 3, 16, 48, 64], 0.3 if args.tiny else 2.0)
        if args.json:
            args.json.write_text(json.dumps({"device": args.device, "runner_vs_run": rows}, indent=2) + "\n")
        return 0
    tiny = args.tiny
    steps = args.steps or (4 if tiny else 300)
    sizes = args.sizes or ([8] if tiny else [64, 128])
    report: dict[str, Any] = {"device": args.device, "tiny": tiny}
    print("== environment", flush=True)
    report["environment"] = env = environment(args.device)
    print(json.dumps(env, indent=2))
    if env["problems"]:
        print("no CUDA device to check: " + "; ".join(env["problems"]), file=sys.stderr)
        return 2
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch_name:
        scratch = Path(scratch_name)
        print(f"== training on {args.device}: DCGAN, {steps} steps, synthetic blobs", flush=True)
        report["training"] = []
        for size in sizes:
            result = train(size, steps, args.device, scratch, 256 if tiny else 4096)
            report["training"].append(result)
            print(f"  {size} px: " + (f"{result['images_per_s']} images/s ({result['wall_s']} s with start-up)"
                                      if "skipped" not in result else f"skipped: {result['skipped']}"), flush=True)  # fmt: skip
        trained = [r for r in report["training"] if "skipped" not in r]
        if not trained:
            print("no size trained: nothing to export", file=sys.stderr)
            return 1
        model_dir = scratch / "models"
        model = export(Path(trained[0]["run_dir"]), model_dir)
        print(f"== exported {trained[0]['size']} px: {model}", flush=True)
        print("== node placement", flush=True)
        report["placement"] = found = placement(model, args.device)
        print(json.dumps(found, indent=2))
        if not found["ok"]:
            failures.append("some nodes do not run on the device, or the strict session was refused")
        print("== session.run against the runner (buckets + IOBinding), one session", flush=True)
        report["runner_vs_run"] = runner_vs_run(
            model, args.device, [1, 3, 48] if tiny else [1, 3, 16, 48, 64, 200], 0.1 if tiny else 1.0
        )
        max_n = 8 if tiny else 256
        buckets = {"GAN_BATCH_BUCKETS": "1,2,4,8", "GAN_IO_BINDING": "on"} if tiny else {}
        points = [(1, 1), (2, 4)] if tiny else [(1, 1), (1, 64), (8, 16), (32, 1), (32, 64), (64, 16)]
        duration, cap = (0.3, 20) if tiny else (3.0, 20_000)

        def measured(url: str, pid: int) -> dict[str, Any]:
            print("== sweep", flush=True)
            rows = sweep(url, points, duration, cap)
            print("== batch invariance", flush=True)
            same = invariance(url, 12 if tiny else 48)
            print(f"  {json.dumps(same)}", flush=True)
            print("== memory soak (buckets on)", flush=True)
            flat = soak(url, pid, args.device, 2 if tiny else 5, 5 if tiny else 60, max_n)
            print(f"  {json.dumps(flat)}", flush=True)
            return {"sweep": rows, "invariance": same, "soak": flat}

        result, provider = served(model_dir, args.device, dict(buckets), measured)
        report["service"] = result | {"provider": provider}
        if provider != (CUDA if args.device == "cuda" else CPU):
            failures.append(f"the service reports {provider}")
        if not result["invariance"]["ok"]:
            failures.append("a sample's bytes depend on its batch")
        if args.device == "cuda" and not result["soak"]["flat"]:  # RSS on the CPU is too noisy to judge
            failures.append(
                f"GPU memory grew {result['soak']['growth_after_first_round_mib']} MiB under the soak"
            )
        if not tiny:  # the same soak with the buckets off: what they save
            print("== memory soak (buckets off)", flush=True)
            off, _ = served(
                model_dir, args.device, {"GAN_BATCH_BUCKETS": "off"},
                lambda url, pid: soak(url, pid, args.device, 5, 60, max_n),
            )  # fmt: skip
            print(f"  {json.dumps(off)}", flush=True)
            report["soak_buckets_off"] = off
    report["failures"] = failures
    print("== verdict: " + ("every check passed" if not failures else "; ".join(failures)), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
