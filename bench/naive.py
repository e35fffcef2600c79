"""The naive baseline: FastAPI + ONNX Runtime, one `session.run` per request, no batching — the way the seed
scripts serve a generator. Same request and response formats as the service, so the same client measures both.

    python -m bench.naive --model-dir models --model fashion-cgan --port 8100   (binds 127.0.0.1)
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Response
from PIL import Image

from service.manifest import load_manifest
from service.model_folders import version_path
from service.settings import BUNDLED_MODELS


def build_app(version_dir: Path) -> FastAPI:
    manifest = load_manifest(version_dir / "manifest.json")
    sess = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/generate")
    def generate(body: dict[str, Any]) -> Any:  # a plain def: FastAPI runs it on its thread pool
        n, seed = int(body.get("n", 1)), int(body.get("seed", 0))
        rng = np.random.default_rng(seed)
        feeds = {"z": rng.standard_normal((n, manifest.z_dim)).astype(np.float32)}
        if manifest.num_classes:
            labels = np.full(n, int(body.get("labels", 0)))
            feeds["c"] = np.eye(manifest.num_classes, dtype=np.float32)[labels]
        (x,) = sess.run(["x"], feeds)
        if manifest.kind != "image":
            return {"data": x.tolist()}
        pixels = ((x.transpose(0, 2, 3, 1) + 1) * 127.5).clip(0, 255).astype(np.uint8)
        if body.get("format") == "npy":
            buffer = io.BytesIO()
            np.save(buffer, pixels)
            return Response(buffer.getvalue(), media_type="application/octet-stream")
        images = []
        for image in pixels:
            buffer = io.BytesIO()
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
            images.append(base64.b64encode(buffer.getvalue()).decode())
        return {"images": images}

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=BUNDLED_MODELS)
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(
        build_app(version_path(args.model_dir, args.model)),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
