"""Command line: `python -m training train|export ...`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

from service.manifest import Manifest
from training import edit_cli
from training.checkpoint import CHECKPOINT, ResumeError
from training.config import PRESETS, TrainConfig, parse_overrides, preset_config
from training.data import SOURCES
from training.distributed import launched_world_size
from training.export import ExportError, export
from training.loop import train
from training.readers import DataError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    t = commands.add_parser("train", help="train a generator (resumable)")
    t.add_argument("--preset", choices=sorted(PRESETS), help="required unless --resume")
    t.add_argument("--data", choices=SOURCES, help="data source (default: the preset's)")
    t.add_argument("--data-dir", help="IDX folder, image folder or .npz file")
    length = t.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="generator steps")
    length.add_argument("--epochs", type=float, help="passes over the data set (converted to steps)")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--image-size", type=int, help="folder data: resize images to this square size")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"))
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config field")
    t.add_argument("--run-dir", required=True, type=Path)
    t.add_argument("--resume", action="store_true", help="continue the checkpoint in --run-dir")
    t.add_argument("--dry-run", action="store_true", help="2 steps on fake data: tests the plumbing")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = commands.add_parser("export", help="export a run's generator to ONNX with a manifest")
    e.add_argument("--run-dir", required=True, type=Path)
    e.add_argument("--model-dir", required=True, type=Path)
    e.add_argument("--name", required=True)
    e.add_argument("--version", type=int, help="default: one above the highest existing version")
    e.add_argument("--weights", choices=("ema", "raw"), default="ema", help="default: the EMA generator")
    q = commands.add_parser("evaluate", help="measure an exported model's quality; writes metrics and gates")
    q.add_argument("--model-dir", required=True, type=Path)
    q.add_argument("--name", required=True)
    q.add_argument("--version", type=int, help="default: the highest version")
    q.add_argument("--seeds", type=int, default=5, help="2-D mixtures: runs of 2,500 samples")

    f = commands.add_parser("contours", help="2-D models: (re)write the real-vs-generated density contours")
    f.add_argument("--model-dir", required=True, type=Path)
    f.add_argument("--name", required=True)
    f.add_argument("--version", type=int, help="default: the highest version")
    f.add_argument("--out", type=Path, help="default: contours.png beside the version's manifest")

    u = commands.add_parser("utility", help="downstream utility of the synthetic data (TSTR, low-data gains)")
    u.add_argument("--model-dir", required=True, type=Path)
    u.add_argument("--name", required=True)
    u.add_argument("--version", type=int, help="default: the highest version")
    u.add_argument("--sizes", type=int, nargs="*", default=[10_000, 60_000], help="TSTR/TRTR rows")
    u.add_argument("--shots", type=int, nargs="*", default=[10, 50, 500], help="real rows per class")
    u.add_argument("--threads", type=int, help="torch threads (default: torch's)")

    o = commands.add_parser(
        "output-reference", help="add the output monitor's reference statistics to manifests"
    )
    o.add_argument("--model-dir", required=True, type=Path)
    o.add_argument("--name", help="default: every model")
    o.add_argument("--version", type=int, help="default: every version")

    s = commands.add_parser("select", help="choose a snapshot on validation, report it on the test split")
    s.add_argument("--run-dir", required=True, type=Path, help="the run; selection.json is written here")
    s.add_argument("--snapshots", type=Path, nargs="*", default=[], help="folders holding a checkpoint.pt")
    s.add_argument("--every", type=int, help="resume the run in segments of this many steps, a snapshot each")
    s.add_argument("--steps", type=int, help="with --every: train up to this step")
    s.add_argument("--model-dir", required=True, type=Path)
    s.add_argument("--name", required=True)
    s.add_argument("--samples", type=int, help="smaller image protocols (a quick check)")

    v = commands.add_parser("evaluator", help="train and ship an evaluator network (quality metrics)")
    v.add_argument("--data", required=True, choices=("fashion-mnist", "mnist"))
    v.add_argument("--space", choices=("first", "independent"), default="first", help="which evaluator")
    v.add_argument("--epochs", type=int, help="default: 3 (first), 10 / 20 (independent, fashion / mnist)")
    v.add_argument("--seed", type=int, help="default: 0 (first), 1 (independent)")
    v.add_argument("--out", type=Path, help="default: training/evaluators/<data>[/independent]")
    edit_cli.add_commands(commands)
    return parser


def _config(args: argparse.Namespace) -> TrainConfig:
    flags = {
        "data": args.data,
        "data_dir": args.data_dir,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "image_size": args.image_size,
        "device": args.device,
    }
    overrides = {k: v for k, v in flags.items() if v is not None} | parse_overrides(args.set)
    if args.resume and args.preset is None:
        saved = args.run_dir / "config.json"
        if not saved.is_file():
            raise ResumeError(f"{saved}: not found; is {args.run_dir} a run directory?")
        return dataclasses.replace(TrainConfig.from_saved(json.loads(saved.read_text())), **overrides)
    if args.preset is None:
        raise ValueError("--preset is required (or --resume an existing --run-dir)")
    return preset_config(args.preset, **overrides)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = shlex.join(["python", "-m", "training", *(sys.argv[1:] if argv is None else argv)])
    try:
        if args.command == "train":
            cfg = _config(args)
            path = train(
                cfg, args.run_dir, resume=args.resume, dry_run=args.dry_run, epochs=args.epochs,
                command=command, progress=not args.no_progress,
            )  # fmt: skip
            if os.environ.get("RANK", "0") == "0":  # under torchrun: rank 0 speaks for the job
                print(f"checkpoint: {path}")
        elif args.command == "utility":
            import torch

            from service.model_folders import version_path
            from training.utility import evaluate_utility, report_utility

            if args.threads:
                torch.set_num_threads(args.threads)
            path = version_path(args.model_dir, args.name, args.version)
            print(report_utility(evaluate_utility(path, command, tuple(args.sizes), tuple(args.shots))))
        elif args.command == "evaluate":
            from training.evaluate import evaluate, report

            print(report(evaluate(args.model_dir, args.name, args.version, args.seeds, command)))
        elif args.command == "contours":
            from training.contours import contours_command

            print(f"wrote {contours_command(args.model_dir, args.name, args.version, args.out)}")
        elif args.command == "select":
            from training.evaluate import report
            from training.select import make_snapshots, select

            snapshots = list(args.snapshots)
            if args.every:
                if not args.steps:
                    raise ValueError("--every needs --steps (the step to train up to)")
                snapshots += make_snapshots(args.run_dir, args.every, args.steps, command)
            record, manifest = select(
                args.run_dir, snapshots, args.model_dir, args.name, args.samples, command
            )
            print(f"chosen on validation: {record['chosen']} -> {record['exported']}")
            print(report(manifest))
        elif args.command == "output-reference":
            from training.output_reference import add_references

            print("\n".join(add_references(args.model_dir, args.name, args.version, command)))
        elif args.command in edit_cli.VERBS:
            edit_cli.run(args, command)
        elif args.command == "evaluator":
            from training.feature_net import build
            from training.independent_evaluator import build_independent

            if args.space == "independent":
                seed = 1 if args.seed is None else args.seed
                info = build_independent(args.data, args.epochs, seed, args.out, command)
            else:
                seed = 0 if args.seed is None else args.seed
                info = build(args.data, args.epochs or 3, seed, args.out, command)
            print(
                f"{args.data} evaluator: test accuracy {info['test_accuracy']:.4f} in {info['wall_time_s']} s"
            )
        else:
            target = export(
                args.run_dir, args.model_dir, args.name, args.version, weights=args.weights, command=command
            )
            manifest = Manifest.model_validate_json((target / "manifest.json").read_text())
            print(f"exported {target} (parity max |diff| {manifest.parity_max_abs_diff:.2e})")
    except (DataError, ExportError, ResumeError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"interrupted; continue with --resume (checkpoint in {args.run_dir / CHECKPOINT})",
            file=sys.stderr,
        )
        return 130
    return 0


def exit_rank(code: int) -> None:
    """End a torchrun rank without the interpreter's finalization. DistributedDataParallel's reducer keeps
    its gloo process group alive past `destroy_process_group` (torch 2.13: its worker and tcp threads are still
    running at exit, even after `del` and `gc.collect()`), and tearing those down during finalization now and
    then aborts the rank ("terminate called without an active exception", SIGABRT: torchrun then fails the
    whole job: CI saw it once, and it came once in about 60 runs here). Every file is closed by now; only the streams need flushing."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run() -> None:
    code = main()
    if launched_world_size() > 1:  # a torchrun rank
        exit_rank(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
