"""Markdown tables from the benchmarks' JSON files (the tables in docs/BENCHMARKS.md are pasted from this).

python -m bench.report --raw raw_ort.json --serve serve.json --train train.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def raw_tables(report: dict[str, Any]) -> str:
    out = []
    gemm = report["gemm"]
    out.append(
        table(
            ["threads", "ORT MatMul GFLOP/s", "numpy GFLOP/s", "peak used"],
            [
                [t, f"{g['ort_gflops']:.0f}", f"{g['numpy_gflops']:.0f}", f"{g['peak_gflops']:.0f}"]
                for t, g in gemm.items()
            ],
        )
    )
    for model in report["models"]:
        by_threads: dict[int, dict[int, dict[str, Any]]] = {}
        for r in model["rows"]:
            by_threads.setdefault(r["threads"], {})[r["batch"]] = r
        batches = sorted({r["batch"] for r in model["rows"]})
        rows = []
        for t, points in sorted(by_threads.items()):
            rows.append([f"{t} thread(s): images/s"] + [f"{points[b]['images_per_s']:,.0f}" for b in batches])
            rows.append(
                [f"{t} thread(s): share of peak"] + [f"{points[b]['share_of_peak']:.0%}" for b in batches]
            )
        flops = model["flops_per_image"]["total"] / 1e6
        out.append(
            f"**{model['model']} v{model['version']}** — {flops:.2f} MFLOP per image, {model['onnx_bytes'] / 1e6:.1f} MB\n"
        )
        out.append(table(["batch"] + [str(b) for b in batches], rows))
    return "\n\n".join(out)


def serve_tables(report: dict[str, Any]) -> str:
    points = report["points"]
    out = []
    for fmt in sorted({p["format"] for p in points}):
        for n in sorted({p["n"] for p in points}):
            rows = []
            for p in points:
                if p["format"] != fmt or p["n"] != n:
                    continue
                ratio = f"{p['ratio_to_raw']:.2f}" if "ratio_to_raw" in p else ""
                batch = f"{p['mean_batch_rows']:.1f}" if "mean_batch_rows" in p else ""
                raw = f"{p['raw_ort_images_per_s']:,.0f}" if "raw_ort_images_per_s" in p else ""
                rows.append([p["server"], p["concurrency"], f"{p['images_per_s']:,.0f}", f"{p['requests_per_s']:,.0f}",
                             p["p50_ms"], p["p95_ms"], p["p99_ms"], p["errors"], p["server_cores"], batch, raw, ratio])  # fmt: skip
            out.append(f"**{fmt}, n={n}**\n")
            out.append(table(["server", "clients", "images/s", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors",
                              "server cores", "rows/batch", "raw ORT images/s", "service ÷ raw"], rows))  # fmt: skip
    gains = report["gains"]
    out.append(
        "**Gains at each point** (service images/s ÷ the same point with `GAN_MAX_BATCH_ROWS=1`, and ÷ naive)\n"
    )
    out.append(table(["format", "n", "clients", "batching gain", "÷ naive"],
                     [[g["format"], g["n"], g["concurrency"], g["batching_gain"], g["vs_naive"]] for g in gains]))  # fmt: skip
    if report.get("low_load"):
        t = report["low_load"]
        out.append(
            f"Low load (1 client, n=1, npy): service p50 {t['service_p50_ms']} ms = bare HTTP p50 {t['http_p50_ms']} ms "
            f"+ one direct ORT call {t['ort_ms']} ms + **{t['tax_ms']} ms** of service work."
        )
    return "\n\n".join(out)


def train_table(report: dict[str, Any]) -> str:
    rows = [[r["preset"], f"{r['plain_fp32']:,.0f}", f"{r['ours_fp32']:,.0f}", f"{r['ours_auto']:,.0f}", f"{r['speedup']:.2f}×"]
            for r in report["rows"]]  # fmt: skip
    return table(
        ["preset", "plain loop, fp32", "ours, fp32", "ours, precision=auto", "ours auto ÷ plain"], rows
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path)
    parser.add_argument("--serve", type=Path, nargs="*", default=[])
    parser.add_argument("--train", type=Path)
    args = parser.parse_args(argv)
    if args.raw:
        print(raw_tables(json.loads(args.raw.read_text())) + "\n")
    for path in args.serve:
        print(serve_tables(json.loads(path.read_text())) + "\n")
    if args.train:
        print(train_table(json.loads(args.train.read_text())) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
