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


# Pickles that are safe by construction, each with the reason. service/datasets/workers.py: the service and the
# worker processes it spawned exchange calls over the child's own stdin/stdout pipes, which nothing else can write
# to (what multiprocessing does internally); no file, socket or request body is ever unpickled.
TRUSTED_PIPES = {"service/datasets/workers.py"}


def test_no_module_loads_pickles_unsafely() -> None:
    """Every torch.load in the code base says weights_only=True; nothing calls pickle.load or np.load with pickles
    (outside the listed private pipes to the service's own worker processes)."""
    offenders = []
    for source in [
        *ROOT.glob("training/**/*.py"),
        *ROOT.glob("service/**/*.py"),
        *ROOT.glob("bench/**/*.py"),
    ]:
        for number, line in enumerate(source.read_text().splitlines(), 1):
            trusted = str(source.relative_to(ROOT)) in TRUSTED_PIPES
            if ("torch.load(" in line and "weights_only=True" not in line) or (
                "pickle.load" in line and not trusted
            ):
                offenders.append(f"{source.relative_to(ROOT)}:{number}: {line.strip()}")
            if "allow_pickle=True" in line:
                offenders.append(f"{source.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, offenders
