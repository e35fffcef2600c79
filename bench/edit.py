"""/edit images/s against its two graphs run raw in ONNX Runtime, in one run.

    python -m bench.edit --model fashion-cgan --images 1 16 --concurrency 1 8 --duration 4

Raw: the encoder then the generator on a batch of the request's size, in one process, the same threads the
service gives each run (`intra_op_threads` for GAN_RUNNERS): images/s = batch / (encoder + generator time),
measured before and after the server. Service: a bounded closed loop of POST /edit (JSON, base64 PNGs, the
`reconstruct` operation, npy out) on 127.0.0.1. ratio = service ÷ raw.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.load import closed_loop, running_service
from bench.raw_ort import machine, session, timed_runs
from service.manifest import load_manifest
from service.model_folders import version_path
from service.runtime import intra_op_threads
from service.settings import BUNDLED_MODELS, Settings


def test_images(shape: list[int], count: int) -> list[str]:
    """Base64 PNGs of the model's size (random pixels: the work per image does not depend on content)."""
    channels, height, width = shape
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels).save(buffer, format="PNG")
        out.append(base64.b64encode(buffer.getvalue()).decode())
    return out


def raw_images_per_s(version_dir: Path, batch: int, threads: int, seconds: float) -> float:
    manifest = load_manifest(version_dir / "manifest.json")
    encoder, generator = (
        session(str(version_dir / "encoder.onnx"), threads),
        session(str(version_dir / "model.onnx"), threads),
    )
    x = np.random.default_rng(0).uniform(-1, 1, (batch, *manifest.output_shape)).astype(np.float32)
    feeds = {"x": x} | (
        {"c": np.zeros((batch, manifest.num_classes), np.float32)} if manifest.num_classes else {}
    )

    def both() -> None:
        z = encoder.run(None, feeds)[0]
        generator.run(
            None,
            {"z": z}
            | (
                {"c": np.eye(manifest.num_classes, dtype=np.float32)[[0] * batch]}
                if manifest.num_classes
                else {}
            ),
        )

    return batch / timed_runs(both, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="fashion-cgan")
    parser.add_argument("--model-dir", type=Path, default=BUNDLED_MODELS)
    parser.add_argument("--images", type=int, nargs="+", default=[1, 16], help="images per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per point")
    parser.add_argument("--max-requests", type=int, default=20_000, help="requests per point at most")
    parser.add_argument("--raw-seconds", type=float, default=1.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    version_dir = version_path(args.model_dir, args.model)
    manifest = load_manifest(version_dir / "manifest.json")
    if manifest.encoder is None:
        print(f"{version_dir} has no encoder: nothing to benchmark", file=sys.stderr)
        return 2
    threads = intra_op_threads(0, Settings.model_fields["runners"].default)
    raw = {n: raw_images_per_s(version_dir, n, threads, args.raw_seconds) for n in args.images}
    points: list[dict[str, Any]] = []
    env = {"GAN_MODEL_DIR": str(args.model_dir), "GAN_MAX_QUEUE_ROWS": "16384"}
    with running_service(env) as (url, _):
        for n in args.images:
            body = {"model": args.model, "images": test_images(manifest.output_shape, n), "format": "npy"}
            for clients in args.concurrency:
                point = asyncio.run(
                    closed_loop(url, body, clients, args.duration, args.max_requests, path="/edit")
                )
                point |= {"images": n, "images_per_s": round(point["ok"] * n / point["seconds"], 1)}
                points.append(point)
    for n in args.images:  # the raw figure after the server too; the better of the two is the reference
        raw[n] = max(raw[n], raw_images_per_s(version_dir, n, threads, args.raw_seconds))
    for point in points:
        point |= {"raw_images_per_s": round(raw[point["images"]], 1)}
        point["ratio_to_raw"] = round(point["images_per_s"] / raw[point["images"]], 3)
        print(
            f"/edit {args.model} images={point['images']:<3} c={point['concurrency']:<3} "
            f"{point['images_per_s']:9.1f} img/s  p50 {point['p50_ms']:8.2f} ms  raw {point['raw_images_per_s']:9.1f}  "
            f"ratio {point['ratio_to_raw']:.2f}  errors {point['errors']}"
        )
    if args.json:
        report = {"model": args.model, "version": manifest.version, "machine": machine(), "threads": threads}
        args.json.write_text(json.dumps(report | {"points": points}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
