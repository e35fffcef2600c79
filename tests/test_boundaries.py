"""Import direction: the service never imports torch or training; training imports only service.manifest."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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


def test_training_imports_only_the_manifest_from_the_service() -> None:
    for module, names in imported_modules("training").items():
        service = {n for n in names if n == "service" or n.startswith("service.")}
        assert service <= {"service.manifest"}, f"training/{module} imports {service}"


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


def test_manifest_loads_without_torch_or_fastapi() -> None:
    modules = _modules_after("import service.manifest")
    assert "torch" not in modules and "fastapi" not in modules and "training" not in modules


def test_training_at_run_time_touches_only_service_manifest() -> None:
    modules = _modules_after("import training.__main__, training.export, training.loop")
    assert {m for m in modules if m.split(".")[0] == "service"} == {"service", "service.manifest"}
    assert "torch" in modules  # the check above is meaningful only if the training stack really loaded
