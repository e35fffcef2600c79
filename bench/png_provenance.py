"""What provenance in the PNG costs: µs per image to encode with and without it, bytes per image, and the
same for a whole POST /generate (format png) answered in-process.

    python -m bench.png_provenance
    python -m bench.png_provenance --rounds 30 --images 200 --n 64 --json docs/bench/png_provenance.json

Encoding: per image, "with" is what the service does for a PNG under GAN_PNG_PROVENANCE=true: build the
sample's `gan:*` text (encoding.sample_provenance) and encode it with the XMP packet (encoding.png_bytes);
"without" is the bare PNG; 28x28 grey and RGB, random pixels (the deflate works as hard as on generated samples).
Against PIL: the same bare PNG through PIL's encoder (compress_level 1, its adaptive row filters), as
encoding.png_bytes did before it wrote the chunks itself ("without" = PIL, "with" = ours; same pixels).
End to end: two apps on the bundled models, GAN_PNG_PROVENANCE true and false, each asked for the same `--n`
samples of fashion-cgan (28x28 grey) and stacked-mnist (28x28 RGB) through starlette's TestClient (no
sockets). Either way the two run interleaved, a block of each per round, so a busy neighbour slows both
alike. Each block is timed twice: CPU time of this process (what the work costs, even while other processes
take the cores) and wall time. The ratios are medians over rounds, the µs the median round's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from service import encoding
from service.settings import BUNDLED_MODELS, Settings

SHA256 = "0" * 64


def text_of(index: int) -> dict[str, str]:
    return encoding.sample_provenance("fashion-cgan", 4, SHA256, index, seed=7, label=3, class_name="Dress")


def interleaved(bare: Callable[[], int], marked: Callable[[], int], rounds: int) -> dict[str, Any]:
    """Per image (each callable returns how many it made): CPU and wall µs without and with, and ratios."""
    bare(), marked()  # warm
    cpu: dict[str, list[float]] = {"without": [], "with": []}
    wall: dict[str, list[float]] = {"without": [], "with": []}
    for r in range(rounds):
        order = [("without", bare), ("with", marked)]
        for name, run in order if r % 2 == 0 else order[::-1]:
            cpu_started, wall_started = time.process_time(), time.perf_counter()
            images = run()
            cpu[name].append((time.process_time() - cpu_started) / images * 1e6)
            wall[name].append((time.perf_counter() - wall_started) / images * 1e6)
    cpu_ratios = [w / b for w, b in zip(cpu["with"], cpu["without"], strict=True)]
    wall_ratios = [w / b for w, b in zip(wall["with"], wall["without"], strict=True)]
    return {
        "without_cpu_us": statistics.median(cpu["without"]),
        "with_cpu_us": statistics.median(cpu["with"]),
        "added_cpu_us": statistics.median(w - b for w, b in zip(cpu["with"], cpu["without"], strict=True)),
        "cpu_ratio": statistics.median(cpu_ratios),
        "cpu_ratio_quartiles": statistics.quantiles(cpu_ratios, n=4)[::2] if rounds > 1 else cpu_ratios * 2,
        "without_wall_us": statistics.median(wall["without"]),
        "with_wall_us": statistics.median(wall["with"]),
        "wall_ratio": statistics.median(wall_ratios),
    }


def measure_encoding(channels: int, size: int, images: int, rounds: int) -> dict[str, Any]:
    batch = np.random.default_rng(0).integers(0, 256, (images, size, size, channels), dtype=np.uint8)

    def bare() -> int:
        for image in batch:
            encoding.png_bytes(image)
        return images

    def marked() -> int:
        for index, image in enumerate(batch):
            encoding.png_bytes(image, text_of(index))
        return images

    sizes = {
        "without_bytes": len(encoding.png_bytes(batch[0])),
        "with_bytes": len(encoding.png_bytes(batch[0], text_of(0))),
    }
    return {"image": f"{size}x{size}x{channels}"} | interleaved(bare, marked, rounds) | sizes


def measure_against_pil(channels: int, size: int, images: int, rounds: int) -> dict[str, Any]:
    import io

    from PIL import Image

    batch = np.random.default_rng(0).integers(0, 256, (images, size, size, channels), dtype=np.uint8)

    def pil_png(image: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image[:, :, 0] if channels == 1 else image).save(buffer, "PNG", compress_level=1)
        return buffer.getvalue()

    def pil() -> int:
        for image in batch:
            pil_png(image)
        return images

    def ours() -> int:
        for image in batch:
            encoding.png_bytes(image)
        return images

    sizes = {"without_bytes": len(pil_png(batch[0])), "with_bytes": len(encoding.png_bytes(batch[0]))}
    return {"image": f"{size}x{size}x{channels}"} | interleaved(pil, ours, rounds) | sizes


def measure_service(model_dir: Path, n: int, rounds: int) -> list[dict[str, Any]]:
    from fastapi.testclient import TestClient

    from service.main import create_app

    def app(provenance: bool) -> TestClient:
        return TestClient(
            create_app(Settings(model_dir=model_dir, png_provenance=provenance, max_n=max(n, 1024)))
        )

    rows = []
    with app(False) as off, app(True) as on:
        for model in ("fashion-cgan", "stacked-mnist"):
            body = {"model": model, "n": n, "seed": 1, "format": "png"}

            def ask(client: TestClient, body: dict[str, Any] = body) -> int:
                response = client.post("/generate", json=body)
                assert response.status_code == 200, response.text
                return n

            rows.append({"model": model, "n": n} | interleaved(lambda: ask(off), lambda: ask(on), rounds))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=28, help="image height = width (encoding only)")
    parser.add_argument("--images", type=int, default=200, help="images per timed encoding block")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved encoding blocks of each")
    parser.add_argument("--model-dir", type=Path, default=BUNDLED_MODELS)
    parser.add_argument("--n", type=int, default=64, help="samples per /generate request (end to end)")
    parser.add_argument("--service-rounds", type=int, default=20, help="0: skip the end-to-end part")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    header = f"{'without µs':>10} {'with µs':>8} {'added µs':>9} {'CPU ratio':>9} {'wall ratio':>10}"

    def line(r: dict[str, Any]) -> str:
        return (f"{r['without_cpu_us']:>10.1f} {r['with_cpu_us']:>8.1f} {r['added_cpu_us']:>9.1f} "
                f"{r['cpu_ratio']:>9.3f} {r['wall_ratio']:>10.3f}")  # fmt: skip

    rows = [measure_encoding(c, args.size, args.images, args.rounds) for c in (1, 3)]
    print(f"encoding one PNG (CPU µs/image): {args.rounds} rounds of {args.images} images each way")
    print(f"{'image':>9} {header} {'bytes':>13}")
    for r in rows:
        print(f"{r['image']:>9} {line(r)} {r['without_bytes']:>5} -> {r['with_bytes']}")
    against_pil = [measure_against_pil(c, args.size, args.images, args.rounds) for c in (1, 3)]
    print('\nthe bare PNG, PIL ("without") against encoding.png_bytes ("with"), CPU µs/image')
    print(f"{'image':>9} {header} {'bytes':>13}")
    for r in against_pil:
        print(f"{r['image']:>9} {line(r)} {r['without_bytes']:>5} -> {r['with_bytes']}")
    service = measure_service(args.model_dir, args.n, args.service_rounds) if args.service_rounds else []
    if service:
        print(
            f"\nPOST /generate n={args.n} format png, in-process (CPU µs/image): {args.service_rounds} rounds"
        )
        print(f"{'model':>13} {header}")
        for r in service:
            print(f"{r['model']:>13} {line(r)}")
    if args.json:
        report = {"rounds": args.rounds, "images": args.images, "encoding": rows, "against_pil": against_pil,
                  "service": service}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
