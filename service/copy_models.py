"""`python -m service.copy_models SRC DST`: copy the model versions of SRC that DST lacks, each atomically.

Containers use it to put the bundled models into a shared model volume on first start. A version that
already exists in DST is never touched (versions are immutable), and each new version appears whole: it is
copied into a hidden temporary folder beside it and renamed into place, so a service reading DST, or another
replica filling it at the same moment, never sees half a model.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from service.model_folders import version_dirs


def copy_models(source: Path, target: Path) -> list[str]:
    """Copy each `<name>/<version>` of `source` that `target` lacks; returns the copied ones."""
    copied = []
    for name, version, version_dir in version_dirs(source):
        destination = target / name / str(version)
        if destination.exists():
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=destination.parent))
        try:
            shutil.copytree(version_dir, staging, dirs_exist_ok=True)
            staging.chmod(0o755)
            os.rename(staging, destination)  # atomic; fails if another copier won the race
            copied.append(f"{name}/{version}")
        except OSError:
            if not destination.exists():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return copied


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m service.copy_models SOURCE_DIR TARGET_DIR", file=sys.stderr)
        return 2
    source, target = Path(argv[0]), Path(argv[1])
    if not source.is_dir():
        print(f"{source}: no such model directory", file=sys.stderr)
        return 2
    copied = copy_models(source, target)
    print(f"copied {len(copied)} model versions into {target}: {', '.join(copied) or 'none missing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
