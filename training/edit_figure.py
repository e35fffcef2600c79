"""`python -m training edit-figure`: originals | reconstructions | edits for one model, through the served
ONNX artifacts, on test images. Rows: the originals, G(E(x)), then one row per edit: for conditional models
G(E(x, y), k) for a few classes k; for unconditional ones E(x) + strength * n for a few named directions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training.edit_data import RealImages
from training.edit_eval import Served


def figure_rows(served: Served, n: int = 10, edits: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    m = served.manifest
    data = m.training.data.split(":", 1)[0]
    x_t, y_t = RealImages(data, "test").first(400)
    assert y_t is not None
    x, y = x_t.numpy(), y_t.numpy()
    if m.num_classes:  # one test image per class
        index = np.array([np.flatnonzero(y == k)[0] for k in range(min(n, m.num_classes))])
    else:
        index = np.arange(n)
    x, y = x[index], y[index]
    c = served.onehot(y) if m.num_classes else None
    z, _ = served.encode(x, c)
    rows, names = [x, served.decode(z, c)], ["original", "reconstruction"]
    if m.num_classes:
        for k in [int(e) for e in (edits or ["0", "7", "9"])]:
            rows.append(served.decode(z, served.onehot(np.full(len(z), k))))
            names.append(f"edit: label {m.class_names[k]}")
    else:
        chosen = edits or [d.name for d in m.directions][:3]
        by_name = {d.name: d for d in m.directions}
        for name in chosen:
            d = by_name[name]
            rows.append(served.decode(z + d.strength * np.asarray(d.vector, np.float32)))
            names.append(f"edit: {name} (strength {d.strength:g})")
    return np.concatenate(rows), names


def write_figure(args: Any) -> dict[str, Any]:
    from training.onnx_generator import served_version
    from training.preview import image_grid

    served = Served(served_version(args.model_dir, args.name, args.version))
    grid, names = figure_rows(served, args.n, args.edits.split(",") if args.edits else None)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    image = image_grid(grid, nrow=args.n)
    image.resize((image.width * 2, image.height * 2), 0).save(args.out)
    return {"figure": str(args.out), "rows": names}
