"""The output monitor's cost per image, measured in one run two ways:

- direct: `VersionMonitor.observe` per image against ONNX Runtime's own time per image at the same batch size
  (the share the monitor adds to the compute), and the scrape-time cost of the gauges for a full window;
- service: POST /generate through the app in-process (ASGI, no sockets), monitoring on (GAN_MONITOR_SAMPLE=1)
  against off (0), one request each in turn, the median time per image of each.

    python -m bench.output_monitor --json output_monitor.json
    python -m bench.output_monitor --models mnist-gan --batches 1 64 --requests 20 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.main import create_app
from service.manifest import load_manifest
from service.model_folders import version_path
from service.monitor import VersionMonitor
from service.settings import BUNDLED_MODELS, Settings


def best_seconds(call: Callable[[], object], repeats: int, rounds: int = 3) -> float:
    """Seconds per call: the best of `rounds` rounds of `repeats` calls."""
    call()
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeats):
            call()
        best = min(best, (time.perf_counter() - started) / repeats)
    return best


def direct(name: str, batches: list[int], window: int, repeats: int) -> list[dict[str, Any]]:
    import onnxruntime as ort

    path = version_path(BUNDLED_MODELS, name)
    manifest = load_manifest(path / "manifest.json")
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    rows = []
    for n in batches:
        feeds = {"z": rng.standard_normal((n, manifest.z_dim)).astype(np.float32)}
        if manifest.num_classes:
            feeds["c"] = np.eye(manifest.num_classes, dtype=np.float32)[np.arange(n) % manifest.num_classes]
        x = session.run(["x"], feeds)[0]
        monitor = VersionMonitor(manifest, window, 1.0)
        observe = best_seconds(functools.partial(monitor.observe, x, feeds.get("c")), repeats) / n
        infer = best_seconds(functools.partial(session.run, ["x"], feeds), max(1, repeats // 10)) / n
        rows.append(
            {"model": name, "batch": n, "monitor_us_per_image": observe * 1e6, "ort_us_per_image": infer * 1e6,
             "share_of_ort": observe / infer}
        )  # fmt: skip
    full = VersionMonitor(manifest, window, 1.0)
    full.observe(np.zeros((window, *manifest.output_shape), np.float32), None)

    def scrape() -> None:
        full.rows += 1  # a changed window: no cached gauges
        full.gauges()

    rows.append({"model": name, "window": window, "scrape_ms": best_seconds(scrape, 5) * 1e3})
    return rows


async def service(name: str, batches: list[int], requests: int, rounds: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as scratch:  # the one model (its newest version), linked
        source = version_path(BUNDLED_MODELS, name)
        (Path(scratch) / name).mkdir()
        (Path(scratch) / name / source.name).symlink_to(source)
        return await service_rows(Path(scratch), name, batches, requests, rounds)


async def service_rows(
    model_dir: Path, name: str, batches: list[int], requests: int, rounds: int
) -> list[dict[str, Any]]:
    apps = {
        sample: create_app(Settings(model_dir=model_dir, monitor_sample=sample, quality_gate="off"))
        for sample in (1.0, 0.0)
    }
    async with apps[1.0].router.lifespan_context(apps[1.0]), apps[0.0].router.lifespan_context(apps[0.0]):
        clients = {s: httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://t") for s, a in apps.items()}  # fmt: skip
        rows = []
        for n in batches:
            times: dict[float, list[float]] = {1.0: [], 0.0: []}
            for k in range(requests * (rounds + 1)):  # the first `requests` warm both apps up
                order = (1.0, 0.0) if k % 2 else (0.0, 1.0)  # alternating: a slow spell hits both alike
                for sample in order:
                    body = {"model": name, "n": n, "seed": k, "format": "npy"}
                    started = time.perf_counter()
                    response = await clients[sample].post("/generate", json=body)
                    assert response.status_code == 200, response.text
                    if k >= requests:
                        times[sample].append((time.perf_counter() - started) / n)
            on, off = float(np.median(times[1.0])), float(np.median(times[0.0]))
            rows.append(
                {"model": name, "n": n, "on_us_per_image": on * 1e6, "off_us_per_image": off * 1e6,
                 "on_over_off": on / off}
            )  # fmt: skip
        for client in clients.values():
            await client.aclose()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.output_monitor", description=__doc__)
    parser.add_argument("--models", nargs="+", default=["mnist-gan", "fashion-cgan", "stacked-mnist"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=200, help="observe calls per round (direct)")
    parser.add_argument("--requests", type=int, default=50, help="requests per round (service)")
    parser.add_argument("--rounds", type=int, default=3, help="requests x rounds measured per app (service)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, Any]]] = {"direct": [], "service": []}
    for name in args.models:
        for row in direct(name, args.batches, args.window, args.repeats):
            results["direct"].append(row)
            if "scrape_ms" in row:
                print(
                    f"{name}: gauges of a full window of {row['window']} rows: {row['scrape_ms']:.2f} ms a scrape"
                )
            else:
                print(
                    f"{name} batch {row['batch']:4d}: monitor {row['monitor_us_per_image']:7.2f} us/image, "
                    f"ORT {row['ort_us_per_image']:8.2f} us/image ({row['share_of_ort']:.1%} of it)"
                )
        for row in asyncio.run(service(name, args.batches, args.requests, args.rounds)):
            results["service"].append(row)
            print(
                f"{name} /generate n={row['n']:4d}: monitoring on {row['on_us_per_image']:8.2f} us/image, "
                f"off {row['off_us_per_image']:8.2f} us/image: {row['on_over_off']:.3f}x"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
