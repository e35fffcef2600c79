"""The Open Inference Protocol (KServe v2) routes beside the native route and raw ONNX Runtime, in one run.

    python -m bench.protocols --json protocols.json
    python -m bench.protocols --ns 1 --concurrency 1 --duration 0.5   (a quick look)

One service process on 127.0.0.1 (HTTP, and gRPC on a free GAN_GRPC_PORT), default settings. For each n (rows
per request), concurrency and protocol — native `POST /generate` (format npy), v2 HTTP with JSON tensors, v2
HTTP with binary tensors (Triton's extension, `binary_data_output: true`), v2 gRPC (tritonclient.grpc.aio) —
a bounded closed loop measures images/s, requests/s and p50/p95, and the CPU of the server and of the client.
The protocols take turns at each (n, concurrency), so a drift of the machine touches them alike.

The work per request is the same everywhere. By default (`--inputs seed`) every request carries the sample
parameters (n, seed, labels) and no tensors, so the server plans and computes the very samples `/generate`
computes; `--inputs tensors` sends explicit z (and c) instead: as JSON data, as binary tensors, and as gRPC raw
contents (/generate stays seeded: it takes no z). x comes back as UINT8 [N, H, W, C] (`--datatype`), the bytes
of /generate's npy; vector models are FP32 only. Every client decodes each response into a numpy array (and
checks its rows) inside the timed request: np.load, the JSON data, the bytes after the JSON header, as_numpy.
The HTTP clients are bench.load's raw keep-alive connections with the request bytes built once; the gRPC client
is one aio channel (HTTP/2) whose `infer` builds each request message itself, as tritonclient users do.

Then raw ONNX Runtime at batch n with the service's threads and runners (bench.raw_ort.RawOrt), in the same
run after the server has stopped: ratio = protocol images/s ÷ raw images/s, and ÷ native /generate's images/s
at the same n and concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.load import closed_loop, drive, free_port, running_service, summary
from bench.raw_ort import RawOrt, feeds_for, machine, service_threads
from service.manifest import Manifest, load_manifest
from service.model_folders import version_path
from service.protocols.v2_tensors import HEADER_LENGTH, NUMPY_DTYPES
from service.settings import BUNDLED_MODELS

PROTOCOLS = {
    "native": "native /generate (npy)",
    "v2-json": "v2 HTTP, JSON tensors",
    "v2-binary": "v2 HTTP, binary tensors",
    "v2-grpc": "v2 gRPC",
}


def rows_checked(array: np.ndarray, n: int) -> np.ndarray:
    if array.shape[0] != n:
        raise RuntimeError(f"asked for {n} rows, decoded {array.shape}")
    return array


def decode_json(headers: dict[bytes, bytes], body: bytes) -> np.ndarray:
    out = json.loads(body)["outputs"][0]
    return np.asarray(out["data"], NUMPY_DTYPES[out["datatype"]]).reshape(out["shape"])


def decode_binary(headers: dict[bytes, bytes], body: bytes) -> np.ndarray:
    length = int(headers[HEADER_LENGTH.lower().encode()])
    out = json.loads(body[:length])["outputs"][0]
    return np.frombuffer(body, NUMPY_DTYPES[out["datatype"]], offset=length).reshape(out["shape"])


def decode_npy(headers: dict[bytes, bytes], body: bytes) -> np.ndarray:
    return np.asarray(np.load(io.BytesIO(body)))


class Workload:
    """The requests for one model, n and input choice, in each protocol's terms."""

    def __init__(self, manifest: Manifest, n: int, inputs: str, datatype: str) -> None:
        self.manifest, self.n, self.inputs, self.datatype = manifest, n, inputs, datatype
        self.sample = {"n": n, "seed": 1} | ({"labels": 1} if manifest.num_classes else {})
        self.feeds = feeds_for(manifest, n)

    def native(self) -> dict[str, Any]:
        return {"model": self.manifest.name, "format": "npy", **self.sample}

    def v2_http(self, binary: bool) -> tuple[dict[str, Any] | bytes, dict[str, str]]:
        """(body, headers) of a v2 HTTP request: JSON, or JSON then the binary inputs' bytes."""
        params: dict[str, Any] = {"datatype": self.datatype} | (
            {"binary_data_output": True} if binary else {}
        )
        if self.inputs == "seed":
            return {"inputs": [], "parameters": params | self.sample}, {}
        specs = [{"name": k, "shape": list(v.shape), "datatype": "FP32"} for k, v in self.feeds.items()]
        if not binary:
            data = [s | {"data": v.ravel().tolist()} for s, v in zip(specs, self.feeds.values(), strict=True)]
            return {"inputs": data, "parameters": params}, {}
        sized = [
            s | {"parameters": {"binary_data_size": v.nbytes}}
            for s, v in zip(specs, self.feeds.values(), strict=True)
        ]
        header = json.dumps({"inputs": sized, "parameters": params}).encode()
        tail = b"".join(v.astype("<f4").tobytes() for v in self.feeds.values())
        return header + tail, {HEADER_LENGTH: str(len(header))}

    def grpc(self) -> tuple[list[Any], dict[str, Any]]:
        """(inputs, parameters) for tritonclient.grpc's infer: x always comes back raw over gRPC."""
        import tritonclient.grpc as triton

        params: dict[str, Any] = {"datatype": self.datatype}
        if self.inputs == "seed":
            return [], params | self.sample
        inputs = []
        for name, value in self.feeds.items():
            given = triton.InferInput(name, list(value.shape), "FP32")
            given.set_data_from_numpy(value)  # raw_input_contents
            inputs.append(given)
        return inputs, params


async def grpc_loop(
    address: str, work: Workload, concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    """`concurrency` coroutines on one tritonclient.grpc.aio client, each awaiting its response before the next."""
    import tritonclient.grpc.aio as triton_aio
    from tritonclient.utils import InferenceServerException

    inputs, parameters = work.grpc()
    async with triton_aio.InferenceServerClient(address) as client:

        async def request() -> Any:
            try:
                result = await client.infer(work.manifest.name, inputs, parameters=parameters)
            except InferenceServerException as error:
                return f"grpc {error.status()}"
            rows_checked(result.as_numpy("x"), work.n)
            return 200

        await request()  # one warm request, not counted
        clients: list[Callable[[], Awaitable[Any]]] = [request] * concurrency
        run = await drive(clients, args.duration, args.max_requests)
    return summary(run, concurrency, work.n, "grpc")


def point(
    protocol: str, url: str, grpc: str, work: Workload, c: int, args: argparse.Namespace
) -> dict[str, Any]:
    def check(decode: Callable[[dict[bytes, bytes], bytes], np.ndarray]) -> Callable[..., np.ndarray]:
        return lambda headers, body: rows_checked(decode(headers, body), work.n)

    bounds = (c, args.duration, args.max_requests)
    if protocol == "native":
        return asyncio.run(closed_loop(url, work.native(), *bounds, decode=check(decode_npy)))
    if protocol == "v2-grpc":
        return asyncio.run(grpc_loop(grpc, work, c, args))
    binary = protocol == "v2-binary"
    body, headers = work.v2_http(binary)
    path, fmt = f"/v2/models/{work.manifest.name}/infer", "binary" if binary else "json"
    decode = check(decode_binary if binary else decode_json)
    return asyncio.run(
        closed_loop(url, body, *bounds, path, headers=headers, decode=decode, n=work.n, fmt=fmt)
    )


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="fashion-cgan")
    parser.add_argument("--model-dir", type=Path, default=BUNDLED_MODELS)
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 16], help="rows per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument(
        "--inputs", default="seed", choices=("seed", "tensors"), help="what the v2 requests carry"
    )
    parser.add_argument("--datatype", default="UINT8", choices=("UINT8", "FP32"), help="x's datatype over v2")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per point at most")
    parser.add_argument("--max-requests", type=int, default=100_000, help="requests per point at most")
    parser.add_argument("--raw-seconds", type=float, default=1.0, help="raw ORT timing per n")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    version_dir = version_path(args.model_dir, args.model)
    manifest = load_manifest(version_dir / "manifest.json")
    datatype = args.datatype if manifest.kind == "image" else "FP32"
    grpc_port = free_port()
    env = {
        "GAN_MODEL_DIR": str(args.model_dir),
        "GAN_GRPC_PORT": str(grpc_port),
        "GAN_MAX_QUEUE_ROWS": "16384",
    }
    points: list[dict[str, Any]] = []
    started = time.perf_counter()
    with running_service(env) as (url, process):
        server, client = psutil.Process(process.pid), psutil.Process()
        for n in args.ns:
            work = Workload(manifest, n, args.inputs, datatype)
            for c in args.concurrency:
                for protocol in args.protocols:
                    before = cpu_seconds(server), cpu_seconds(client)
                    result = point(protocol, url, f"127.0.0.1:{grpc_port}", work, c, args)
                    seconds = result["seconds"]
                    result |= {
                        "protocol": protocol,
                        "server_cores": round((cpu_seconds(server) - before[0]) / seconds, 2),
                        "client_cores": round((cpu_seconds(client) - before[1]) / seconds, 2),
                    }
                    points.append(result)
                    print(f"{PROTOCOLS[protocol]:<24} n={n:<3} c={c:<3} {result['images_per_s']:>9} img/s "
                          f"p50 {result['p50_ms']:>7} ms  errors {result['errors']}", flush=True)  # fmt: skip
    threads, runners = service_threads(env)
    reference = RawOrt(version_dir, threads, runners, args.raw_seconds)
    raw = {n: round(reference.images_per_s(n), 1) for n in args.ns}
    native = {(p["n"], p["concurrency"]): p["images_per_s"] for p in points if p["protocol"] == "native"}
    for p in points:
        p["raw_ort_images_per_s"] = raw[p["n"]]
        p["ratio_to_raw"] = round(p["images_per_s"] / raw[p["n"]], 3)
        base = native.get((p["n"], p["concurrency"]))
        p["ratio_to_native"] = round(p["images_per_s"] / base, 3) if base else None
    print(f"\n{manifest.name} v{manifest.version}; v2 inputs: {args.inputs}; x: {datatype}; raw ORT: {threads} "
          f"thread(s) x {runners} runner(s) on one session\n")  # fmt: skip
    print(f"{'protocol':<24} {'n':>3} {'clients':>7} {'images/s':>9} {'req/s':>8} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'errors':>6} {'server':>6} {'client':>6} {'raw ORT':>9} {'÷ raw':>6} {'÷ native':>8}")  # fmt: skip
    for p in points:
        vs_native = f"{p['ratio_to_native']:.2f}" if p["ratio_to_native"] is not None else "-"
        print(f"{PROTOCOLS[p['protocol']]:<24} {p['n']:>3} {p['concurrency']:>7} {p['images_per_s']:>9} "
              f"{p['requests_per_s']:>8} {p['p50_ms']:>7} {p['p95_ms']:>7} {p['errors']:>6} {p['server_cores']:>6} "
              f"{p['client_cores']:>6} {p['raw_ort_images_per_s']:>9} {p['ratio_to_raw']:>6.2f} {vs_native:>8}")  # fmt: skip
    print(f"\nserver and client: cores busy; run took {time.perf_counter() - started:.0f} s")
    if args.json:
        report = {"machine": machine(), "model": manifest.name, "version": manifest.version, "inputs": args.inputs,
                  "datatype": datatype, "reference": {"threads": threads, "runners": runners}, "raw_ort": raw,
                  "protocols": PROTOCOLS, "points": points}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
