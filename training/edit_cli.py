"""The editing verbs of `python -m training`: encoder, encoder-export, project, directions, edit-eval."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

VERBS = ("encoder", "encoder-export", "project", "directions", "edit-eval", "baseline-ae", "edit-figure")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", required=True, type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--version", type=int, help="default: the highest version")


def add_commands(commands: Any) -> None:
    e = commands.add_parser(
        "encoder", help="train an encoder (GAN inversion) for an exported model, export it"
    )
    _model_args(e)
    e.add_argument("--run-dir", required=True, type=Path)
    e.add_argument("--steps", type=int, default=2000)
    e.add_argument("--max-minutes", type=float, help="time budget; the lr schedule follows it")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=int)
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any EncoderConfig field")
    e.add_argument("--no-export", action="store_true", help="train only (export later with encoder-export)")

    x = commands.add_parser("encoder-export", help="export an encoder run into its model version folder")
    _model_args(x)
    x.add_argument("--run-dir", required=True, type=Path)

    p = commands.add_parser("project", help="project an image into z: encoder start, then Adam on z")
    _model_args(p)
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--label", type=int, help="conditional models: the class (default: the encoder's)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--run-dir", type=Path, help="the encoder run (perceptual net); default: beside the model")
    p.add_argument("--out", required=True, type=Path)

    d = commands.add_parser(
        "directions", help="named latent directions (InterFaceGAN) for unconditional models"
    )
    _model_args(d)
    d.add_argument("--run-dir", required=True, type=Path, help="the encoder run whose perceptual net labels")
    d.add_argument("--samples", type=int, default=20000)

    v = commands.add_parser("edit-eval", help="measure the encoder and the edits on held-out test images")
    _model_args(v)
    v.add_argument("--images", type=int, default=2000)
    v.add_argument("--run-dir", type=Path, help="encoder run (perceptual net) for the projector subset")
    v.add_argument("--project", type=int, default=0, help="also project this many test images")
    v.add_argument("--no-write", action="store_true")

    f = commands.add_parser("edit-figure", help="originals | reconstructions | edits, as one PNG")
    _model_args(f)
    f.add_argument("--out", required=True, type=Path)
    f.add_argument("--n", type=int, default=10)
    f.add_argument("--edits", help="comma-separated: class indices (conditional) or direction names")

    b = commands.add_parser("baseline-ae", help="the plain-autoencoder baseline for the encoder's figures")
    _model_args(b)
    b.add_argument("--run-dir", required=True, type=Path)
    b.add_argument("--max-minutes", type=float, default=15.0)
    b.add_argument("--threads", type=int)
    b.add_argument("--images", type=int, default=2000, help="test images measured")


def _overrides(pairs: list[str]) -> dict[str, Any]:
    from training.encoder import EncoderConfig

    types = {f.name: f.type for f in dataclasses.fields(EncoderConfig)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in types:
            raise ValueError(f"--set {key}: not an EncoderConfig field ({sorted(types)})")
        out[key] = json.loads(value) if value and value[0] in "0123456789-[{tfn" else value
        if isinstance(out[key], bool) is False and value in ("true", "false"):
            out[key] = value == "true"
    return out


def _train(args: argparse.Namespace, command: str) -> None:
    from training.encoder import EncoderConfig, train_encoder
    from training.onnx_generator import load_exported

    model = load_exported(args.model_dir, args.name, args.version)
    print(f"{model.path}: generator rebuilt from ONNX (parity {model.parity:.2e})")
    cfg = EncoderConfig(
        **{"steps": args.steps, "seed": args.seed, "threads": args.threads, "max_minutes": args.max_minutes}
        | _overrides(args.set)
    )
    train_encoder(model, cfg, args.run_dir, command=command)
    if not args.no_export:
        _export(args)


def _export(args: argparse.Namespace) -> None:
    from training.encoder import load_encoder
    from training.encoder_export import export_encoder
    from training.onnx_generator import load_exported

    model = load_exported(args.model_dir, args.name, args.version)
    net, state = load_encoder(args.run_dir, model)
    training = {
        "command": state.get("command"),
        "run_dir": str(args.run_dir),
        "steps": state["steps"],
        "best_step": state["best_step"],
        "best_val_psnr": round(state["best_val_psnr"], 4),
        "wall_time_s": state["wall_time_s"],
        "seed": state["config"]["seed"],
        "config": state["config"],
        "losses": "latent ||E(G(z,c),c)-z||^2 (w_latent); pixel l1/l2 (w_pixel) + perceptual (w_perceptual, "
        "own net, not the evaluator) on real train images; shell reg (|z|^2/d-1)^2 (w_reg); class CE (w_class)",
        "perceptual_val_accuracy": round(state["perceptual_val_accuracy"], 4),
        "generator_rebuild_parity": model.parity,
        "history": state["history"][-3:],
    }
    if state.get("init"):  # a warm start: the run(s) it continued, each with its command
        training["init"] = state["init"]
    manifest = export_encoder(net, model.path, training)
    assert manifest.encoder is not None
    print(f"exported {model.path / 'encoder.onnx'} (parity {manifest.encoder.parity_max_abs_diff:.2e})")


def run(args: argparse.Namespace, command: str) -> None:
    if args.command == "encoder":
        _train(args, command)
    elif args.command == "encoder-export":
        _export(args)
    elif args.command == "project":
        from training.project import project_file

        print(json.dumps(project_file(args), indent=2))
    elif args.command == "directions":
        from training.directions import fit_and_store

        print(json.dumps(fit_and_store(args, command), indent=2))
    elif args.command == "edit-figure":
        from training.edit_figure import write_figure

        print(json.dumps(write_figure(args), indent=2))
    elif args.command == "baseline-ae":
        from training.baseline import run_baseline

        print(json.dumps(run_baseline(args), indent=2))
    elif args.command == "edit-eval":
        from training.edit_eval import evaluate_cli

        print(evaluate_cli(args, command))
