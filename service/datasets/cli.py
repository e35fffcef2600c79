"""`python -m service.datasets`: a job's shards written by ONNX Runtime directly, with no service in between.

One pod of a Kubernetes Indexed Job runs `write`: pod k of K (JOB_COMPLETION_INDEX, --count) writes shards
k, k + K, k + 2K, ... of the spec to a shared volume, through the same row plan, encoders and atomic writes as
the service (service.datasets.spec and .shards), so every shard is byte for byte the service's. A shard already
on the volume is complete (written atomically) and is skipped: a retried pod goes on where it stopped.
`metadata` then describes the finished set (Croissant, like GET /datasets/{id}/metadata).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from service.datasets.croissant import describe
from service.datasets.shards import Identity, encode_shard, remove_partial, served, shard_name, write_shard
from service.datasets.spec import JobSpec, RowPlan
from service.datasets.store import Job, Shard
from service.encoding import SOFTWARE
from service.manifest import ONNX_FILE, Manifest
from service.model_folders import VersionDir, version_path
from service.runtime import SessionInfo, intra_op_threads, open_session
from service.settings import Settings
from service.versions import check_graph, infer, read_manifest


def read_spec(path: Path) -> JobSpec:
    """A resolved spec: GET /datasets/{id}'s `spec`, or one written by hand with a seed and a version."""
    try:
        return JobSpec.model_validate_json(path.read_bytes())
    except ValueError as error:
        raise SystemExit(
            f"{path}: not a resolved dataset spec (it needs 'seed' and 'version'): {error}"
        ) from None


def load(spec: JobSpec, model_dir: Path) -> tuple[Manifest, Path]:
    """The spec's version: its manifest, checked against its folder and its graph's sha256, and its folder."""
    folder = version_path(model_dir, spec.model, spec.version)
    return read_manifest(VersionDir(spec.model, spec.version, folder)), folder


def shard_range_of(index: int, count: int, shards: int) -> list[int]:
    """The shards pod `index` of `count` writes: index, index + count, ..."""
    if not 0 <= index < count:
        raise SystemExit(f"the completion index must be in 0 .. {count - 1}, got {index}")
    return list(range(index, shards, count))


def compute(session: SessionInfo, feeds: dict[str, np.ndarray], rows: int, batch_rows: int) -> np.ndarray:
    """The generator's output, in batches of `batch_rows` (outputs do not depend on the batch)."""
    return np.concatenate(
        [
            infer(session, {k: v[i : i + batch_rows] for k, v in feeds.items()})
            for i in range(0, rows, batch_rows)
        ]
    )


def write(args: argparse.Namespace) -> int:
    spec, settings = read_spec(args.spec), Settings()
    manifest, folder = load(spec, args.model_dir or settings.model_dir)
    plan, identity = RowPlan.of(spec, manifest), Identity.of(spec, manifest)
    mine = shard_range_of(args.index, args.count, plan.shards)
    threads = args.threads or intra_op_threads(0, 1)
    session = open_session(folder / ONNX_FILE, args.device or settings.device, threads)
    check_graph(session, manifest)
    args.out.mkdir(parents=True, exist_ok=True)
    remove_partial(args.out)
    started, written = time.perf_counter(), 0
    for k in mine:
        path = args.out / shard_name(k, spec.format)
        if path.is_file():
            continue  # written atomically by an earlier try: complete
        rows = plan.shard_plan(k)
        x = compute(session, rows.feeds, rows.rows, args.batch_rows or settings.max_batch_rows)
        write_shard(path, encode_shard(spec.format, identity, rows, served(x, identity.kind)))
        written += rows.rows
    seconds = time.perf_counter() - started
    print(
        f"pod {args.index} of {args.count}: shards {mine[:4]}{' ...' if len(mine) > 4 else ''} of {plan.shards} "
        f"in {args.out} ({written} rows computed in {seconds:.1f} s on {session.provider})"
    )
    return 0


def metadata(args: argparse.Namespace) -> int:
    """croissant.json for a finished set on the volume: every shard present, with its sha256."""
    spec = read_spec(args.spec)
    manifest, _ = load(spec, args.model_dir or Settings().model_dir)
    plan = RowPlan.of(spec, manifest)
    deadline = time.monotonic() + args.wait
    while missing := [k for k in range(plan.shards) if not (args.out / shard_name(k, spec.format)).is_file()]:
        if time.monotonic() >= deadline:
            raise SystemExit(f"{len(missing)} of {plan.shards} shards are not written yet: {missing[:10]}")
        time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
    shards = []
    for k in range(plan.shards):
        data = (args.out / shard_name(k, spec.format)).read_bytes()
        start, stop = plan.shard_range(k)
        shards.append(Shard(k, start, stop, len(data), hashlib.sha256(data).hexdigest(), time.time()))
    digest = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]
    now = time.time()
    job = Job(
        digest, spec.model_dump(mode="json"), "done", spec.model, spec.version, manifest.onnx_sha256,
        plan.total_rows, plan.shards, sum(s.bytes for s in shards), now, now, 0.0, None, plan.info(),
    )  # fmt: skip
    base = args.base_url.rstrip("/") if args.base_url else ""
    body = describe(
        job, shards, base or ".", SOFTWARE, lambda k: f"{base}/{shard_name(k, spec.format)}".lstrip("/")
    )
    (args.out / "croissant.json").write_text(json.dumps(body, indent=1))
    print(f"{args.out / 'croissant.json'}: {plan.shards} shards, {plan.total_rows} rows")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m service.datasets", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True)
    w = commands.add_parser(
        "write", help="write this pod's shards of a spec (no service, ONNX Runtime directly)"
    )
    w.add_argument("--spec", type=Path, required=True, help="resolved spec JSON (GET /datasets/{id} -> spec)")
    w.add_argument("--out", type=Path, required=True, help="the folder of the set's shards (a shared volume)")
    w.add_argument("--model-dir", type=Path, default=None, help="default: GAN_MODEL_DIR")
    index = int(os.environ.get("JOB_COMPLETION_INDEX", "0"))
    w.add_argument(
        "--index", type=int, default=index, help="this pod's index (default: JOB_COMPLETION_INDEX, else 0)"
    )
    w.add_argument("--count", type=int, default=1, help="pods in the job: the Indexed Job's completions")
    w.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="default: GAN_DEVICE")
    w.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: the available CPUs)"
    )
    w.add_argument("--batch-rows", type=int, default=0, help="rows per run (default: GAN_MAX_BATCH_ROWS)")
    m = commands.add_parser("metadata", help="write croissant.json for a finished set")
    m.add_argument("--spec", type=Path, required=True)
    m.add_argument("--out", type=Path, required=True, help="the folder holding every shard")
    m.add_argument("--model-dir", type=Path, default=None)
    m.add_argument("--base-url", default="", help="where the shards will be served (default: relative names)")
    m.add_argument(
        "--wait", type=float, default=0.0, help="wait up to this many seconds for the shards to appear"
    )
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return write(args) if args.command == "write" else metadata(args)


if __name__ == "__main__":
    sys.exit(main())
