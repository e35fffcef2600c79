from __future__ import annotations

from pathlib import Path

import pytest

from training.__main__ import main


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--run-dir", "{tmp}/r"], "--preset is required"),
        (["train", "--resume", "--run-dir", "{tmp}/r"], "config.json: not found"),
        (["train", "--preset", "dcgan", "--data-dir", "{tmp}/absent", "--run-dir", "{tmp}/r"], "data directory not found"),
        (["train", "--preset", "dcgan", "--data", "folder", "--run-dir", "{tmp}/r"], "'folder' needs --data-dir"),
        (["train", "--preset", "dcgan", "--set", "z_dim=-3", "--run-dir", "{tmp}/r"], "z_dim must be >= 1"),
        (["train", "--preset", "dcgan", "--set", "colour=red", "--run-dir", "{tmp}/r"], "--set colour: unknown"),
        (["train", "--preset", "dcgan", "--data", "digits", "--batch-size", "5000", "--run-dir", "{tmp}/r"],
         "batch_size 5000 exceeds the 1797 samples"),
        (["train", "--preset", "dcgan", "--data", "ring8", "--run-dir", "{tmp}/r"], "DCGAN needs square images"),
    ],
)  # fmt: skip
def test_errors_exit_2_with_a_message(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run([a.format(tmp=tmp_path) for a in args], capsys)
    assert code == 2
    assert message in err and err.startswith("error: ")


def test_steps_and_epochs_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--preset", "dcgan", "--steps", "3", "--epochs", "1", "--run-dir", str(tmp_path)])
    assert exit_info.value.code == 2


def test_resume_reads_the_saved_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--run-dir", str(tmp_path), "--no-progress"]
    assert (
        main(["train", "--preset", "toy2d", "--data", "ring8", "--steps", "2", "--set", "g_width=8", *base])
        == 0
    )
    assert main(["train", "--resume", "--steps", "4", *base]) == 0
    assert "checkpoint:" in capsys.readouterr().out
    from training.checkpoint import CHECKPOINT, load_checkpoint

    recorded = load_checkpoint(tmp_path / CHECKPOINT)["train_command"]
    assert "--steps 2" in recorded and recorded.endswith("--resume --steps 4 " + " ".join(base))
