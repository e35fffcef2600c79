"""Dataset jobs: their throughput against raw ONNX Runtime, and interactive latency beside them, in one run.

1. Raw ONNX Runtime on the job's model with the service's threads and runners, batches of GAN_MAX_BATCH_ROWS:
   at the bench's priority (nice 0), and on threads at the job's priority (GAN_DATASET_NICE).
2. A job alone, per format, `--job-repeats` times: rows/s as the job measures it (rows / its active seconds)
   and from outside (202 to done), each as a ratio to the mean of raw ONNX Runtime measured right before and
   right after it (after a first, unmeasured job has started the worker processes); the median per format.
3. One client's closed loop of /generate (n=1, npy) with the service idle, then while a job runs, alternated
   `--repeats` times: p50 / p99, and the ratio of the p99s.

`python -m bench.datasets --json docs/bench/datasets.json`; every loop is bounded by time and request count.
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

import httpx
import numpy as np

from bench.load import closed_loop, running_service
from bench.raw_ort import RawOrt, concurrent_rate, feeds_for, machine, service_threads
from service.model_folders import version_path
from service.settings import BUNDLED_MODELS, Settings


def niced_rate(raw: RawOrt, batch: int, nice: int, seconds: float) -> float:
    """Raw ORT's rows/s with its `runners` threads at the given nice value (as the job's background runners)."""
    feeds = feeds_for(raw.manifest, batch)
    raw.sess.run(["x"], feeds)
    return concurrent_rate(raw.sess, feeds, batch, raw.runners, seconds, nice=nice)


def plan(model: str, rows: int, manifest: Any) -> dict[str, Any]:
    if manifest.num_classes:
        per, extra = divmod(rows, manifest.num_classes)
        return {"per_class": {str(c): per + (c < extra) for c in range(manifest.num_classes)}}
    return {"n": rows}


# Status polls cost CPU the (low-priority) job would use: as often as gan_client's `wait` (1 s), and more often
# only near the end (half the ETA), so the wall time from outside stays close.
POLL_S = 1.0


def job(url: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run one job to its end: its final status and the wall time from 202 to done (within a poll)."""
    with httpx.Client(base_url=url, timeout=60) as client:
        started = time.perf_counter()
        created = client.post("/datasets", json=body)
        if created.status_code != 202:
            raise SystemExit(f"POST /datasets: {created.status_code} {created.text}")
        job_url = created.json()["url"]
        deadline = started + timeout_s
        while (status := client.get(job_url).json())["state"] == "running":
            if time.perf_counter() > deadline:
                client.delete(job_url)
                raise SystemExit(f"the job did not finish within {timeout_s} s: {status['rows_done']} rows")
            eta = status.get("eta_s")
            time.sleep(POLL_S if eta is None else min(POLL_S, max(0.02, eta / 2)))
        wall = time.perf_counter() - started
        client.delete(job_url)
    if status["state"] != "done":
        raise SystemExit(f"the job failed: {status['error']}")
    return status | {"wall_s": wall}


async def loop(url: str, model: str, seconds: float, max_requests: int) -> dict[str, Any]:
    body = {"model": model, "n": 1, "seed": 1, "format": "npy"}
    return await closed_loop(url, body, 1, seconds, max_requests)


def during_job(
    url: str, body: dict[str, Any], model: str, seconds: float, max_requests: int
) -> dict[str, Any]:
    """The 1-client loop while a job runs; whether the job ran throughout; then the job is deleted."""
    created = httpx.post(f"{url}/datasets", json=body, timeout=60)
    if created.status_code != 202:
        raise SystemExit(f"POST /datasets: {created.status_code} {created.text}")
    job_url = f"{url}{created.json()['url']}"
    time.sleep(0.2)  # the job's first rows reach the batcher
    result = asyncio.run(loop(url, model, seconds, max_requests))
    status = httpx.get(job_url, timeout=60).json()
    httpx.delete(job_url, timeout=60)
    return result | {
        "job_running_throughout": status["state"] == "running",
        "job_rows_meanwhile": status["rows_done"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="fashion-cgan")
    parser.add_argument("--model-dir", type=Path, default=BUNDLED_MODELS)
    parser.add_argument(
        "--rows", type=int, default=20_000,
        help="rows of each throughput job (a pipeline's job is tens of thousands: a short one measures its start)",
    )  # fmt: skip
    parser.add_argument("--shard-rows", type=int, default=500)
    parser.add_argument("--formats", nargs="+", default=["npz", "webdataset", "parquet"])
    parser.add_argument("--nice", type=int, default=Settings.model_fields["dataset_nice"].default)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of each latency loop")
    parser.add_argument(
        "--max-requests", type=int, default=20_000, help="requests of each latency loop, at most"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="idle / during-a-job latency pairs (the median p99 of each)"
    )
    parser.add_argument(
        "--job-repeats", type=int, default=5,
        help="throughput jobs of each format (the host's speed drifts by 10 %% and more: the median of 5 is steadier)",
    )  # fmt: skip
    parser.add_argument("--raw-seconds", type=float, default=3.0)
    parser.add_argument("--job-timeout", type=float, default=600.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    settings = Settings(model_dir=args.model_dir)
    folder = version_path(args.model_dir, args.model)
    with tempfile.TemporaryDirectory() as data_dir:
        env = {
            "GAN_MODEL_DIR": str(args.model_dir),
            "GAN_DATA_DIR": data_dir,
            "GAN_DATASET_NICE": str(args.nice),
        }
        threads, runners = service_threads(env)
        batch = settings.max_batch_rows
        with running_service(env) as (url, _):
            raw = RawOrt(folder, threads, runners, args.raw_seconds)
            raw_rate = raw.images_per_s(batch)
            raw_niced = niced_rate(raw, batch, args.nice, args.raw_seconds)
            body = plan(args.model, args.rows, raw.manifest) | {"model": args.model, "seed": 1}
            # Not measured: the first job starts the service's worker processes (about a second), and a worker's
            # first parquet shard imports pyarrow (about a second of CPU in each): a small job of each format.
            for fmt in args.formats:
                warm = plan(args.model, 64 * len(args.formats), raw.manifest)
                job(
                    url,
                    warm | {"model": args.model, "seed": 0, "format": fmt, "shard_rows": 16},
                    args.job_timeout,
                )
            jobs, raws = [], [raw_rate]
            for repeat in range(args.job_repeats):
                for fmt in args.formats:
                    # Raw ORT right before and after each job: this machine's speed drifts by 10 % and more
                    # within a run (shared hosts), so each job is compared with the mean of its neighbours.
                    before = raws[-1]
                    status = job(url, body | {"format": fmt, "shard_rows": args.shard_rows}, args.job_timeout)
                    raw.cache.clear()
                    raws.append(raw.images_per_s(batch))
                    around = (before + raws[-1]) / 2
                    rate, wall = status["rate_rows_per_s"], status["rows_total"] / status["wall_s"]
                    jobs.append({
                        "format": fmt, "repeat": repeat, "rows": status["rows_total"],
                        "shards": status["shards_total"], "bytes": status["bytes"], "rows_per_s": round(rate, 1),
                        "wall_rows_per_s": round(wall, 1), "raw_around_rows_per_s": [round(before, 1), round(raws[-1], 1)],
                        "ratio_to_raw": round(rate / around, 3), "wall_ratio_to_raw": round(wall / around, 3),
                        "ratio_to_raw_at_job_nice": round(rate / raw_niced, 3),
                    })  # fmt: skip
            ratios = {fmt: [j["ratio_to_raw"] for j in jobs if j["format"] == fmt] for fmt in args.formats}
            formats = {
                fmt: {"ratio_to_raw_median": float(np.median(r)), "ratios_to_raw": r}
                for fmt, r in ratios.items()
            }
            # A latency job big enough to outlast the loop at the rate just measured (npz: the cheapest format).
            rate = max(j["rows_per_s"] for j in jobs)
            big = min(settings.max_dataset_rows, max(args.rows, int(rate * (args.duration + 5) * 2)))
            long_job = plan(args.model, big, raw.manifest) | {"model": args.model, "seed": 2, "format": "npz"}
            idle, during = [], []
            for _ in range(args.repeats):
                idle.append(asyncio.run(loop(url, args.model, args.duration, args.max_requests)))
                during.append(during_job(url, long_job | {"shard_rows": args.shard_rows}, args.model,
                                         args.duration, args.max_requests))  # fmt: skip
    idle_p99 = float(np.median([r["p99_ms"] for r in idle]))
    during_p99 = float(np.median([r["p99_ms"] for r in during]))
    report = {
        "model": args.model,
        "machine": machine(),
        "threads_per_run": threads,
        "runners": runners,
        "batch_rows": batch,
        "dataset_nice": args.nice,
        "raw_ort_rows_per_s": round(raw_rate, 1),
        "raw_ort_rows_per_s_measurements": [round(r, 1) for r in raws],
        "raw_ort_rows_per_s_at_job_nice": round(raw_niced, 1),
        "jobs": jobs,
        "formats": formats,
        "latency": {
            "idle": [{k: r[k] for k in ("ok", "errors", "p50_ms", "p99_ms")} for r in idle],
            "during_job": [
                {
                    k: r[k]
                    for k in (
                        "ok",
                        "errors",
                        "p50_ms",
                        "p99_ms",
                        "job_running_throughout",
                        "job_rows_meanwhile",
                    )
                }
                for r in during
            ],
            "idle_p99_ms": idle_p99,
            "during_p99_ms": during_p99,
            "p99_ratio": round(during_p99 / idle_p99, 3),
        },
    }
    print(f"{args.model}: raw ONNX Runtime {min(raws):.0f}-{max(raws):.0f} rows/s over the run ({threads} threads x "
          f"{runners} runners, batch {batch}); at nice {args.nice}: {raw_niced:.0f} rows/s")  # fmt: skip
    for j in jobs:
        print(f"  job {j['format']:<10} {j['rows_per_s']:>8.1f} rows/s  = {j['ratio_to_raw']:.2f} x raw around it "
              f"({j['ratio_to_raw_at_job_nice']:.2f} x raw at nice {args.nice}); from outside "
              f"{j['wall_rows_per_s']:.1f} rows/s = {j['wall_ratio_to_raw']:.2f} x raw")  # fmt: skip
    for fmt, f in formats.items():
        print(f"  {fmt:<10} median {f['ratio_to_raw_median']:.2f} x raw over {len(f['ratios_to_raw'])} jobs")
    latency = report["latency"]
    print(f"  1-client /generate p99: idle {idle_p99:.2f} ms, during a job {during_p99:.2f} ms "
          f"= {latency['p99_ratio']:.2f} x idle")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
