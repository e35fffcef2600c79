"""Import direction: the service never imports torch or training; training imports only the contract modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).glob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        found[path.name] = names
    return found


# What training may import from the service: the manifest contract (the manifest, and beside it the graph
# signature, the <name>/<version> folder layout and the quality gates it records), the file primitives it writes
# with, the latents (pure numpy), so the utility measurement draws exactly the rows /augment serves, and the
# output statistics (pure numpy, imported by the manifest), so the export's reference is what the monitor
# computes.
CONTRACT = {
    "service.manifest", "service.graph_signature", "service.model_folders", "service.quality_gates",
    "service.files", "service.latents", "service.output_stats",
}  # fmt: skip


def test_training_imports_only_the_contract_from_the_service() -> None:
    for module, names in imported_modules("training").items():
        service = {n for n in names if n == "service" or n.startswith("service.")}
        assert service <= CONTRACT, f"training/{module} imports {service}"


def test_service_never_imports_torch_or_training() -> None:
    for module, names in imported_modules("service").items():
        bad = {n for n in names if n.split(".")[0] in ("torch", "training", "torchvision")}
        assert not bad, f"service/{module} imports {bad}"


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


@pytest.mark.parametrize("module", sorted(CONTRACT))
def test_the_contract_loads_without_torch_or_fastapi(module: str) -> None:
    modules = _modules_after(f"import {module}")
    assert "torch" not in modules and "fastapi" not in modules and "training" not in modules
    assert {m for m in modules if m.split(".")[0] == "service"} <= {"service", *CONTRACT}


def test_training_at_run_time_touches_only_the_contract() -> None:
    modules = _modules_after("import training.__main__, training.export, training.loop, training.utility")
    assert {m for m in modules if m.split(".")[0] == "service"} == {"service", *CONTRACT}
    assert "torch" in modules  # the check above is meaningful only if the training stack really loaded
