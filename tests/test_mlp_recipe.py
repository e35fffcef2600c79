"""The vanilla MLP GAN's recipe options: BatchNorm in G (`g_norm`), exported with parity."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from torch import nn

from service.manifest import load_manifest
from training.checkpoint import CHECKPOINT, load_checkpoint
from training.config import preset_config
from training.data import builtin_spec
from training.export import export
from training.networks import NetSpec, build_networks


def test_g_norm_puts_batch_norm_after_each_hidden_layer_of_the_mlp_g() -> None:
    cfg = preset_config("mlp", g_norm="batch", mlp_layers=3)
    G, D = build_networks(NetSpec.from_config(cfg, builtin_spec("mnist")))
    assert sum(isinstance(m, nn.BatchNorm1d) for m in G.modules()) == 3
    assert not any(isinstance(m, nn.BatchNorm1d) for m in D.modules())
    plain, _ = build_networks(NetSpec.from_config(preset_config("mlp"), builtin_spec("mnist")))
    assert not any(isinstance(m, nn.BatchNorm1d) for m in plain.modules())


@pytest.mark.parametrize(
    ("preset", "overrides"), [("dcgan", {}), ("toy2d", {"g_mixture": 4}), ("mlp", {"g_norm": "layer"})]
)
def test_g_norm_is_refused_where_it_does_not_apply(preset: str, overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="g_norm must be 'none' or 'batch'"):
        preset_config(preset, **{"g_norm": "batch", **overrides})


def test_a_batch_norm_mlp_g_exports_with_parity(tmp_path: Path) -> None:
    from tests.conftest import tiny_config
    from training.loop import train

    run_dir = tmp_path / "run"
    train(tiny_config("mlp", data="digits", steps=3, g_norm="batch", ema_decay=0.9), run_dir, progress=False)
    version = export(run_dir, tmp_path / "models", "bn-mlp")  # parity at 1, 7 and 64 rows checked inside
    manifest = load_manifest(version / "manifest.json")
    assert manifest.parity_max_abs_diff is not None and manifest.parity_max_abs_diff < 1e-4
    # The exported G uses the running statistics that training moved (eval mode), not fresh ones.
    state = load_checkpoint(run_dir / CHECKPOINT)["G_ema"]
    means = [value for key, value in state.items() if key.endswith("running_mean")]
    assert len(means) == 2 and all(float(m.abs().sum()) > 0 for m in means)
    assert len(onnx.load(str(version / "model.onnx")).graph.node) > 0


def test_a_resume_may_turn_the_augmentation_down_and_records_it(tmp_path: Path) -> None:
    import dataclasses

    from tests.conftest import tiny_config
    from training.loop import train

    cfg = tiny_config("mlp", data="digits", steps=2, diffaug="translation,cutout")
    train(cfg, tmp_path, progress=False, command="first")
    train(
        dataclasses.replace(cfg, steps=4, diffaug="translation"),
        tmp_path,
        resume=True,
        progress=False,
        command="second",
    )
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["step"] == 4 and state["config"]["diffaug"] == "translation"
    assert state["train_command"] == "first && second"


def test_diffaugment_is_refused_on_vector_data(tmp_path: Path) -> None:
    from tests.conftest import tiny_config
    from training.loop import train

    with pytest.raises(
        ValueError, match="diffaug 'translation' augments images; data 'ring8' is vector data"
    ):
        train(tiny_config("toy2d", data="ring8", steps=1, diffaug="translation"), tmp_path, progress=False)
