"""The layout of a model directory: `<name>/<version>/`, a version being a folder named by a positive integer
(each holds a manifest.json and its model.onnx, service.manifest). Hidden folders are exports and copies still in
flight, never versions."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


class VersionDir(NamedTuple):
    name: str
    version: int
    path: Path


def version_numbers(model_root: Path) -> list[int]:
    """The versions of one model folder, ascending: subfolders named by a positive integer."""
    if not model_root.is_dir():
        return []
    found = (p for p in model_root.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)
    return sorted(int(p.name) for p in found)


def version_path(model_dir: Path, name: str, version: int | None = None) -> Path:
    """The folder of `name`'s `version`, or of its highest version; LookupError when there is none."""
    root = Path(model_dir) / name
    if version is None:
        versions = version_numbers(root)
        if not versions:
            raise LookupError(f"{root}: no model versions")
        version = versions[-1]
    return root / str(version)


def version_dirs(model_dir: Path) -> list[VersionDir]:
    """Every `<name>/<version>` folder of a model directory, by name then version; hidden folders are skipped
    (they are exports and copies still in flight)."""
    names = sorted(p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [VersionDir(d.name, v, d / str(v)) for d in names for v in version_numbers(d)]
