"""No unsafe unpickling: checkpoints load weights only, and no module loads pickles."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support import ROOT


class Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned > /dev/null",))


def test_a_checkpoint_carrying_code_is_refused(tmp_path: Path) -> None:
    """Checkpoints load with weights_only=True: a pickle that would run code is an error, not an exploit."""
    from training.checkpoint import ResumeError, load_checkpoint

    path = tmp_path / "checkpoint.pt"
    torch.save(
        {"format": 1, "step": 1, "payload": Exploit()}, path
    )  # a real torch file whose pickle runs code
    with pytest.raises(ResumeError, match="unreadable checkpoint"):
        load_checkpoint(path)


def test_no_module_loads_pickles_unsafely() -> None:
    """Every torch.load in the code base says weights_only=True; nothing calls pickle.load or np.load with pickles."""
    offenders = []
    for source in [
        *ROOT.glob("training/**/*.py"),
        *ROOT.glob("service/**/*.py"),
        *ROOT.glob("bench/**/*.py"),
    ]:
        for number, line in enumerate(source.read_text().splitlines(), 1):
            if ("torch.load(" in line and "weights_only=True" not in line) or "pickle.load" in line:
                offenders.append(f"{source.relative_to(ROOT)}:{number}: {line.strip()}")
            if "allow_pickle=True" in line:
                offenders.append(f"{source.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, offenders
