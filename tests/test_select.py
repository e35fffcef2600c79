"""The snapshot selector: chooses on validation with the first evaluator, reports on test with the other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import training.image_protocols
import training.splits
from service.manifest import load_manifest
from tests.support import tiny_config
from training.__main__ import main
from training.select import SELECTION_FILE, rank, validation_metrics
from training.splits import HELD_OUT_SEED, VALIDATION_SEEDS


def test_rank_puts_more_gates_passed_before_a_better_primary_figure() -> None:
    candidates = {
        "a": {"class_accuracy": 0.91, "fd_ratio": 2.0},  # best FD, fails the accuracy gate
        "b": {"class_accuracy": 0.95, "fd_ratio": 2.9},
        "c": {"class_accuracy": 0.93, "fd_ratio": 2.5},  # passes both, best FD of those that do
        "d": {"class_accuracy": 0.93, "fd_ratio": 3.5},
    }
    assert rank("fashion-mnist", True, candidates) == ["c", "b", "a", "d"]
    stacked = {"x": {"stacked_modes": 1000, "stacked_kl": 0.029, "stacked_vendi": 870.0}}
    stacked["y"] = {"stacked_modes": 1000, "stacked_kl": 0.025, "stacked_vendi": 860.0}
    stacked["z"] = {"stacked_modes": 999, "stacked_kl": 0.020, "stacked_vendi": 850.0}
    assert rank("stacked-mnist", False, stacked) == ["x", "y", "z"]


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.loop import train

    run_dir = tmp_path_factory.mktemp("mnist-run")
    train(tiny_config("mlp", data="mnist", steps=2), run_dir, progress=False)
    return run_dir


def test_choices_never_read_the_test_split(mnist_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = training.splits.make_source

    def no_test(name: str, *args: object, split: str = "train", **kwargs: object) -> object:
        if split == "test":
            raise AssertionError(f"a choice read the {name} test split")
        return real(name, *args, split=split, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(training.splits, "make_source", no_test)
    monkeypatch.setattr(training.image_protocols, "make_source", no_test)
    metrics = validation_metrics(mnist_run, samples=100)
    assert {"fd", "fd_floor", "precision", "confident_pct"} <= set(metrics)
    assert not any(name.startswith("independent.") for name in metrics)


def test_select_trains_snapshots_chooses_on_validation_and_reports_on_test(
    mnist_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    argv = ["select", "--run-dir", str(mnist_run), "--every", "1", "--steps", "4"]
    assert main([*argv, "--model-dir", str(models), "--name", "digits-gan", "--samples", "150"]) == 0
    record = json.loads((mnist_run / SELECTION_FILE).read_text())
    snapshots = sorted(record["candidates"])
    assert [Path(s).name for s in snapshots] == ["3", "4"]
    assert record["chosen"] == record["order"][0] and record["chosen"] in snapshots
    assert record["chosen_by"] == {
        "evaluator": "first",
        "split": "validation",
        "seeds": list(VALIDATION_SEEDS),
    }
    assert record["reported_by"] == [{"evaluator": "independent", "split": "test", "seed": HELD_OUT_SEED}]
    manifest = load_manifest(models / "digits-gan" / "1" / "manifest.json")
    assert manifest.training.steps == int(Path(record["chosen"]).name)  # the chosen snapshot was exported
    assert manifest.evaluation is not None and manifest.evaluation.spaces[0].seed == HELD_OUT_SEED
    assert {"fd", "independent.fd", "independent.fd_floor"} <= set(manifest.metrics)
    mnist = {"precision", "confident_pct", "class_kl", "recall", "fd_ratio"}  # the MNIST protocol's gates
    assert {g.metric for g in manifest.gates} == mnist | {f"independent.{m}" for m in mnist}
    # What was reported is not what was chosen on: another split and seed (first space), another network.
    assert manifest.metrics["fd"] != record["candidates"][record["chosen"]]["fd"]
    assert record["reported"] == manifest.metrics
    assert "chosen on validation" in capsys.readouterr().out
