"""Raw ONNX Runtime: images/s against batch size per model and thread setting, FLOPs per sample counted from
the graph, and this CPU's fp32 GEMM peak measured in the same run.

    python -m bench.raw_ort --json raw_ort.json
    python -m bench.raw_ort --models fashion-cgan --batches 1 64 --threads 2 --seconds 0.5

The limit for the serving layer is this number (same model, same threads, no HTTP); the limit for the
generator is the GEMM peak: `share of peak` = images/s x FLOPs per image / peak FLOP/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper, shape_inference

from service.batcher import lower_priority
from service.manifest import load_manifest
from service.model_folders import version_dirs
from service.runtime import intra_op_threads
from service.settings import BUNDLED_MODELS, Settings

DEFAULT_BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def session(model: Path | bytes, threads: int, spinning: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def timed_runs(run: Any, seconds: float, min_runs: int = 3) -> float:
    """Seconds per call: the best of 3 windows of about seconds/3 (a noisy neighbour only slows a window)."""
    run()  # warm
    best = float("inf")
    for _ in range(3):
        calls, started = 0, time.perf_counter()
        while calls < min_runs or time.perf_counter() - started < seconds / 3:
            run()
            calls += 1
        best = min(best, (time.perf_counter() - started) / calls)
    return best


# --- FLOPs from the graph ---------------------------------------------------------------------------------


def graph_flops(model_path: Path) -> dict[str, float]:
    """FLOPs (2 per multiply-add) per sample of the heavy ops, from shapes inferred at batch 1."""
    model = onnx.load(str(model_path))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, list[int]] = {}
    for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        shapes[value.name] = [d.dim_value for d in value.type.tensor_type.shape.dim]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    flops: dict[str, float] = {}
    for node in model.graph.node:
        op = node.op_type
        if op in ("Conv", "ConvTranspose"):
            w = shapes[node.input[1]]
            kernel = int(np.prod(w[2:]))
            # w[1] is already per group: Conv w = [Cout, Cin/g, kH, kW], ConvTranspose w = [Cin, Cout/g, kH, kW]
            if op == "Conv":  # every output element sums Cin/g * k products
                macs = int(np.prod(shapes[node.output[0]])) * w[1] * kernel
            else:  # w: [Cin, Cout/g, kH, kW]; every input element scatters into Cout/g * k outputs
                macs = int(np.prod(shapes[node.input[0]])) * w[1] * kernel
        elif op in ("Gemm", "MatMul"):
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            transposed = op == "Gemm" and any(x.name == "transB" and x.i for x in node.attribute)
            n = b[-2] if transposed else b[-1]
            macs = int(np.prod(a)) * n
        else:
            continue
        flops[op] = flops.get(op, 0.0) + 2.0 * macs
    flops["total"] = sum(flops.values())
    return flops


# --- the GEMM peak ----------------------------------------------------------------------------------------


def gemm_peak(threads: int, size: int = 1024, seconds: float = 1.0) -> dict[str, float]:
    """fp32 GEMM FLOP/s through ONNX Runtime's MatMul (MLAS) and through numpy (OpenBLAS); the peak is the best."""
    a = helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [size, size])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [size, size])
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((size, size), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"])], "gemm", [a], [y], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    sess = session(model.SerializeToString(), threads)
    x = np.random.default_rng(1).standard_normal((size, size), np.float32)
    flop = 2.0 * size**3
    ort_flops = flop / timed_runs(lambda: sess.run(None, {"a": x}), seconds)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(threads):
        b = numpy_helper.to_array(weight)
        numpy_flops = flop / timed_runs(lambda: x @ b, seconds)
    return {
        "ort_gflops": ort_flops / 1e9,
        "numpy_gflops": numpy_flops / 1e9,
        "peak_gflops": max(ort_flops, numpy_flops) / 1e9,
    }


# --- models -----------------------------------------------------------------------------------------------


def bundled(model_dir: Path, names: list[str] | None) -> list[Path]:
    """The highest version of each model (or of the named ones)."""
    newest = {found.name: found.path for found in version_dirs(model_dir)}  # by version: the last one wins
    return [path for name, path in newest.items() if not names or name in names]


def feeds_for(manifest: Any, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {"z": rng.standard_normal((batch, manifest.z_dim)).astype(np.float32)}
    if manifest.num_classes:
        feeds["c"] = np.eye(manifest.num_classes, dtype=np.float32)[
            rng.integers(0, manifest.num_classes, batch)
        ]
    return feeds


def measure_model(
    version_dir: Path, threads: list[int], batches: list[int], seconds: float, peaks: dict[int, float]
) -> dict[str, Any]:
    manifest = load_manifest(version_dir / "manifest.json")
    flops = graph_flops(version_dir / "model.onnx")
    rows = []
    for t in threads:
        sess = session(str(version_dir / "model.onnx"), t)
        for batch in batches:
            feeds = feeds_for(manifest, batch)
            per_call = timed_runs(lambda sess=sess, feeds=feeds: sess.run(["x"], feeds), seconds)
            images_per_s = batch / per_call
            rows.append(
                {
                    "threads": t,
                    "batch": batch,
                    "images_per_s": round(images_per_s, 1),
                    "ms_per_batch": round(per_call * 1000, 3),
                    # 3 significant figures, not decimals: a tiny model (ring8 v2's affine sub-generators,
                    # a few hundred FLOPs per image) would otherwise round to 0 on a busy machine.
                    "gflops": float(f"{images_per_s * flops['total'] / 1e9:.3g}"),
                    "share_of_peak": float(f"{images_per_s * flops['total'] / 1e9 / peaks[t]:.3g}"),
                }
            )
    return {
        "model": manifest.name,
        "version": manifest.version,
        "flops_per_image": flops,
        "onnx_bytes": (version_dir / "model.onnx").stat().st_size,
        "rows": rows,
    }


# --- the service's reference: its threads and runners, timed on demand ----------------------------------


def service_threads(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(ONNX Runtime threads per run, runners) the service uses under these settings (GAN_RUNNERS and
    GAN_INTRA_OP_THREADS in `env`, then the environment, then the defaults), as the service computes them."""
    setting = {**os.environ, **(env or {})}
    runners = int(setting.get("GAN_RUNNERS", str(Settings.model_fields["runners"].default)))
    return intra_op_threads(int(setting.get("GAN_INTRA_OP_THREADS", "0")), runners), runners


class RawOrt:
    """Raw ONNX Runtime on the same model, threads and runners as the service, timed on demand and cached.

    With R runners the service computes R batches at once on one session; so does the reference: R threads
    call `run` on the same session, and images/s is their total.
    """

    def __init__(self, version_dir: Path, threads: int, runners: int, seconds: float) -> None:
        self.manifest = load_manifest(version_dir / "manifest.json")
        self.sess = session(str(version_dir / "model.onnx"), threads)
        self.runners, self.seconds, self.cache = runners, seconds, {}  # type: ignore[var-annotated]

    def images_per_s(self, batch: int) -> float:
        if batch not in self.cache:
            feeds = feeds_for(self.manifest, batch)
            if self.runners == 1:
                rate = batch / timed_runs(lambda: self.sess.run(["x"], feeds), self.seconds)
            else:
                rate = concurrent_rate(self.sess, feeds, batch, self.runners, self.seconds)
            self.cache[batch] = rate
        return float(self.cache[batch])

    def latency_ms(self, batch: int = 1, calls: int = 500) -> float:
        """Median wall time of one run over `calls` runs: the direct-call floor under a single request."""
        feeds = feeds_for(self.manifest, batch)
        self.sess.run(["x"], feeds)
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            self.sess.run(["x"], feeds)
            times.append(time.perf_counter() - started)
        return float(np.median(times) * 1000)


def concurrent_rate(
    sess: Any, feeds: dict[str, np.ndarray], batch: int, runners: int, seconds: float, nice: int | None = None
) -> float:
    """Rows/s of `runners` threads calling the session at once for `seconds` (each at `nice` if given)."""
    counts = [0] * runners

    def loop(slot: int) -> None:
        if nice is not None:
            lower_priority(nice)
        while counts[slot] == 0 or time.perf_counter() < stop:  # every thread times at least one call
            sess.run(["x"], feeds)
            counts[slot] += 1

    sess.run(["x"], feeds)
    stop = time.perf_counter() + seconds  # after the warm run: a short window must still time some calls
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(runners)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) * batch / (time.perf_counter() - started)


def machine() -> dict[str, Any]:
    name = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": name,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=BUNDLED_MODELS)
    parser.add_argument("--models", nargs="+", help="default: every bundled model, highest version")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=DEFAULT_BATCHES)
    parser.add_argument("--seconds", type=float, default=1.5, help="measuring time per point")
    parser.add_argument("--gemm-size", type=int, default=1024)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    peaks = {t: gemm_peak(t, args.gemm_size, args.seconds) for t in args.threads}
    for t, p in peaks.items():
        print(f"fp32 GEMM {args.gemm_size}^3, {t} thread(s): ORT MatMul {p['ort_gflops']:.0f} GFLOP/s, "
              f"numpy {p['numpy_gflops']:.0f} GFLOP/s")  # fmt: skip
    results = []
    for version_dir in bundled(args.model_dir, args.models):
        result = measure_model(
            version_dir,
            args.threads,
            args.batches,
            args.seconds,
            {t: p["peak_gflops"] for t, p in peaks.items()},
        )
        results.append(result)
        print(
            f"\n{result['model']} v{result['version']}: {result['flops_per_image']['total'] / 1e6:.2f} MFLOP/image"
        )
        print(f"{'threads':>7} {'batch':>5} {'images/s':>10} {'ms/batch':>9} {'GFLOP/s':>8} {'of peak':>8}")
        for r in result["rows"]:
            print(f"{r['threads']:>7} {r['batch']:>5} {r['images_per_s']:>10} {r['ms_per_batch']:>9} "
                  f"{r['gflops']:>8} {r['share_of_peak']:>8.1%}")  # fmt: skip
    if args.json:
        report = {"machine": machine(), "gemm": peaks, "models": results}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
