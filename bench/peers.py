"""Issue 18's sweep: the service (default settings) against the peers' asyncio batcher and naive app, every
point as images/s ÷ raw ONNX Runtime, and the issue's four goals evaluated, in one run.

    python -m bench.peers --json docs/bench/peers.json --plot docs/bench/peers.png      (the whole grid)
    python -m bench.peers --quick                                    (seconds: proves the plumbing, no figures)

Models: `fashion-cgan` (bundled, highest version) and the peers' DCGAN (bench.peer_servers builds its model
version at run time). Servers, one at a time on a free 127.0.0.1 port and stopped after their points:
`python -m service` with its default settings (`--env GAN_X=V` adds settings; the default quality gate, warn,
serves the DCGAN, which has no metrics), and `../shared/peers/batcher.py` and `naive.py` started as their README
says. The same work from each: n images as base64 PNGs in JSON (the service's `format: png`), seed 1.
Each point is a bounded closed loop (bench.load: `--duration` seconds, `--max-requests` requests); the whole
grid runs `--repeats` times (the server order reversed every other round) and is reported as min–max.
The denominator is raw ONNX Runtime on the same file at batch 64 in its best configuration for this machine's
CPUs (bench.workers.best_raw: one session with a thread per CPU, or one 1-thread session called by a thread per
CPU at once), measured before and after the servers; the mean of the two bests divides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from bench.load import Connection, closed_loop
from bench.peer_servers import (
    MODELS,
    PEERS,
    SERVERS,
    SERVICE,
    SweepModel,
    request_body,
    serving,
    sweep_models,
)
from bench.raw_ort import RawOrt, machine
from bench.workers import best_raw
from service.runtime import available_cpus
from service.settings import BUNDLED_MODELS

THROUGHPUT_GOALS = ((1, 32, 0.70), (64, 8, 0.90))  # (n, clients, least images/s ÷ raw)
LOW_LOAD_TAX_MS = 0.3  # 1 client, n=1: p50 at most this above an HTTP round trip plus one raw call
QUICK = {"clients": [1, 2], "n": [1], "duration": 0.3, "repeats": 1, "models": ["fashion-cgan"],
         "raw_seconds": 0.05, "raw_calls": 50, "max_requests": 40}  # fmt: skip


def raw_reference(model: SweepModel, seconds: float, calls: int) -> dict[str, Any]:
    """Batch 64 in both configurations, and the fastest single call at n=1 (one thread or a thread per CPU)."""
    cpus = available_cpus()
    one_call = min(RawOrt(model.version_dir, t, 1, seconds).latency_ms(1, calls) for t in sorted({1, cpus}))
    return {"batch64": best_raw(model.version_dir, seconds), "n1_call_ms": round(one_call, 3)}


async def round_trip_ms(url: str, path: str = "/healthz", count: int = 300) -> float:
    """Median of `count` GETs on one keep-alive connection: the HTTP round trip under the service's own stack."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    connection = await Connection.open(host, port)
    payload = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    await connection.request(payload)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        status, _, _ = await connection.request(payload)
        times.append(time.perf_counter() - started)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}")
    connection.close()
    return float(np.median(times) * 1000)


def grid(
    url: str, server: str, model: SweepModel, repeat: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    rows = []
    for n in args.n:
        body = request_body(server, model, n)
        for clients in args.clients:
            result = asyncio.run(
                closed_loop(url, body, clients, args.duration, args.max_requests, n=n, fmt="png")
            )
            result |= {"model": model.name, "server": server, "repeat": repeat}
            rows.append(result)
            print(f"[{repeat}] {model.name:<13} {server:<12} n={n:<3} c={clients:<4} {result['images_per_s']:>9} "
                  f"img/s  p50 {result['p50_ms']:>8} p99 {result['p99_ms']:>8} ms  errors {result['errors']}",
                  flush=True)  # fmt: skip
    return rows


def picks(points: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [p for p in points if all(p[k] == v for k, v in match.items())]


def behind_peers(points: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
    """(comparisons made, the ones where the service's images/s is below a peer's in the same repeat)."""
    index = {(p["model"], p["n"], p["concurrency"], p["repeat"], p["server"]): p for p in points}
    compared, behind = 0, []
    for (model, n, clients, repeat, server), p in index.items():
        if server != SERVICE:
            continue
        for peer in SERVERS[1:]:
            other = index.get((model, n, clients, repeat, peer))
            if other is None:
                continue
            compared += 1
            if p["images_per_s"] < other["images_per_s"]:
                behind.append({"model": model, "n": n, "clients": clients, "repeat": repeat, "peer": peer,
                               "service": p["images_per_s"], "peer_images_per_s": other["images_per_s"]})  # fmt: skip
    return compared, behind


def evaluate_goals(
    points: list[dict[str, Any]], raw: dict[str, dict[str, Any]], round_trips: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The issue's four goals; `met` is None where the grid did not measure the point."""
    goals: list[dict[str, Any]] = []
    for n, clients, floor in THROUGHPUT_GOALS:
        for model in raw:
            ratios = [
                p["ratio_to_raw"]
                for p in picks(points, server=SERVICE, model=model, n=n, concurrency=clients)
            ]
            goals.append({"goal": f"n={n} at {clients} clients >= {floor:.2f} of raw ORT", "model": model,
                          "ratios": ratios, "met": min(ratios) >= floor if ratios else None})  # fmt: skip
    compared, behind = behind_peers(points)
    goals.append({"goal": "never behind a peer (images/s, every point, every repeat)", "model": "all",
                  "compared": compared, "behind": behind, "met": not behind if compared else None})  # fmt: skip
    for model in raw:
        taxes = []
        for p in picks(points, server=SERVICE, model=model, n=1, concurrency=1):
            (trip,) = [t["ms"] for t in round_trips if t["model"] == model and t["repeat"] == p["repeat"]]
            taxes.append(round(p["p50_ms"] - trip - raw[model]["n1_call_ms"], 3))
        goals.append({"goal": f"1 client, n=1: p50 within {LOW_LOAD_TAX_MS} ms of HTTP round trip + one raw call",
                      "model": model, "tax_ms": taxes, "met": max(taxes) <= LOW_LOAD_TAX_MS if taxes else None})  # fmt: skip
    return goals


def spread(values: list[float], fmt: str = ",.0f") -> str:
    low, high = min(values), max(values)
    return f"{low:{fmt}}" if f"{low:{fmt}}" == f"{high:{fmt}}" else f"{low:{fmt}}–{high:{fmt}}"


def print_grid(points: list[dict[str, Any]], raw: dict[str, dict[str, Any]]) -> None:
    for model, ref in raw.items():
        print(f"\n{model}: raw ORT at batch 64, images/s: before {ref['before']}, after {ref['after']}; "
              f"denominator {ref['images_per_s']:,.0f}; one raw call at n=1 {ref['n1_call_ms']} ms")  # fmt: skip
        print(f"{'server':<12} {'n':>3} {'clients':>7} {'images/s':>15} {'÷ raw':>11} {'p50 ms':>13} "
              f"{'p99 ms':>15} {'errors':>6}")  # fmt: skip
        for server in SERVERS:
            for n in sorted({p["n"] for p in points}):
                for clients in sorted({p["concurrency"] for p in points}):
                    found = picks(points, model=model, server=server, n=n, concurrency=clients)
                    if not found:
                        continue
                    column = {
                        k: [p[k] for p in found] for k in ("images_per_s", "ratio_to_raw", "p50_ms", "p99_ms")
                    }
                    print(f"{server:<12} {n:>3} {clients:>7} {spread(column['images_per_s']):>15} "
                          f"{spread(column['ratio_to_raw'], '.2f'):>11} {spread(column['p50_ms'], '.2f'):>13} "
                          f"{spread(column['p99_ms'], '.2f'):>15} {sum(p['errors'] for p in found):>6}")  # fmt: skip


def print_goals(goals: list[dict[str, Any]]) -> None:
    print("\ngoals (issue 18):")
    for g in goals:
        verdict = {True: "MET", False: "NOT MET", None: "not measured (point not in this grid)"}[g["met"]]
        detail = ""
        if g.get("ratios"):
            detail = f"service ÷ raw {spread(g['ratios'], '.2f')}"
        elif g.get("tax_ms"):
            detail = f"p50 - (round trip + raw call) = {spread(g['tax_ms'], '.3f')} ms"
        elif "behind" in g:
            detail = f"{len(g['behind'])} of {g['compared']} comparisons behind"
        print(f"  goal: {g['goal']} [{g['model']}]: {verdict}  {detail}")
        for b in g.get("behind", []):
            print(f"    behind: {b['model']} n={b['n']} c={b['clients']} repeat {b['repeat']}: service "
                  f"{b['service']:,.0f} < {b['peer']} {b['peer_images_per_s']:,.0f} images/s")  # fmt: skip


def plot(points: list[dict[str, Any]], raw: dict[str, dict[str, Any]], path: Path) -> None:
    """images/s against clients: a panel per model × n, a line per server (median, min–max band), raw ORT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted({p["n"] for p in points})
    fig, axes = plt.subplots(len(raw), len(ns), figsize=(4.5 * len(ns), 3.6 * len(raw)), squeeze=False)
    for row, model in zip(axes, raw, strict=True):
        for ax, n in zip(row, ns, strict=True):
            for server in SERVERS:
                clients = sorted({p["concurrency"] for p in picks(points, model=model, server=server, n=n)})
                if not clients:
                    continue
                rates = [[p["images_per_s"] for p in picks(points, model=model, server=server, n=n, concurrency=c)]
                         for c in clients]  # fmt: skip
                (line,) = ax.plot(clients, [np.median(r) for r in rates], marker="o", label=server)
                ax.fill_between(clients, [min(r) for r in rates], [max(r) for r in rates], color=line.get_color(),
                                alpha=0.2)  # fmt: skip
            ax.axhline(
                raw[model]["images_per_s"], color="gray", linestyle="--", label="raw ORT, batch 64 (best)"
            )
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel("images/s")
            ax.set_title(f"{model}, n={n}")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--n", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per point")
    parser.add_argument("--max-requests", type=int, default=200_000, help="requests per point at most")
    parser.add_argument("--repeats", type=int, default=2, help="the whole grid this many times")
    parser.add_argument("--raw-seconds", type=float, default=1.5, help="raw ORT timing per configuration")
    parser.add_argument("--raw-calls", type=int, default=500, help="raw ORT calls timed at n=1")
    parser.add_argument("--env", nargs="*", default=[], metavar="GAN_X=V", help="settings for the service")
    parser.add_argument("--model-dir", type=Path, default=BUNDLED_MODELS, help="where fashion-cgan is")
    parser.add_argument("--peers", type=Path, default=PEERS, help="the peers' folder (run from there)")
    parser.add_argument("--quick", action="store_true", help="tiny settings: " + json.dumps(QUICK))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path, help="write the PNG plot here")
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    env = dict(item.split("=", 1) for item in args.env)
    print(f"request: n images as base64 PNGs in JSON (service: format=png), seed 1; service settings: "
          f"{env or 'defaults'}; CPUs: {available_cpus()}", flush=True)  # fmt: skip
    started = time.perf_counter()
    points: list[dict[str, Any]] = []
    round_trips: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as folder:
        models = sweep_models(args.models, args.model_dir, args.peers, Path(folder))
        before = {m.name: raw_reference(m, args.raw_seconds, args.raw_calls) for m in models}
        for repeat in range(args.repeats):
            for model in models:
                for server in args.servers if repeat % 2 == 0 else args.servers[::-1]:
                    with serving(server, model, args.peers, env) as (url, _):
                        if server == SERVICE:
                            trip = asyncio.run(round_trip_ms(url))
                            round_trips.append({"model": model.name, "repeat": repeat, "ms": round(trip, 3)})
                        points += grid(url, server, model, repeat, args)
        after = {m.name: raw_reference(m, args.raw_seconds, args.raw_calls) for m in models}
    raw = {}
    for m in models:
        b, a = before[m.name], after[m.name]
        raw[m.name] = {"before": {k: round(v) for k, v in b["batch64"].items()},
                       "after": {k: round(v) for k, v in a["batch64"].items()},
                       "images_per_s": (max(b["batch64"].values()) + max(a["batch64"].values())) / 2,
                       "n1_call_ms": min(b["n1_call_ms"], a["n1_call_ms"])}  # fmt: skip
    for p in points:
        p["ratio_to_raw"] = round(p["images_per_s"] / raw[p["model"]]["images_per_s"], 3)
    print_grid(points, raw)
    goals = evaluate_goals(points, raw, round_trips)
    print(
        f"\nHTTP round trip (GET /healthz on the service), ms: {[(t['model'], t['ms']) for t in round_trips]}"
    )
    print_goals(goals)
    seconds = time.perf_counter() - started
    print(f"sweep took {seconds:.0f} s")
    if args.plot:
        plot(points, raw, args.plot)
        print(f"wrote {args.plot}")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "plot", "quick")}
        report = {"machine": machine(), "cpus": available_cpus(), "args": json.loads(json.dumps(settings, default=str)),
                  "service_settings": env or "defaults", "request": "n images, base64 PNG in JSON, seed 1",
                  "raw": raw, "round_trips": round_trips, "points": points, "goals": goals, "seconds": round(seconds)}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
