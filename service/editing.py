"""Editing plans, pure: images' classes -> encoder feeds; recovered latents + an operation -> generator feeds.

`z = E(x, c)`, `z' = edit(z)`, `x' = G(z', c')`: the encoder recovers z (and, for conditional models, predicts
the class where none is given); the operation moves z or changes c; the generator decodes.
"""

from __future__ import annotations

import numpy as np

from service.batcher import Feeds
from service.latents import lerp, one_hot, sample_latent, slerp
from service.manifest import Manifest
from service.plans import Plan, PlanError, resolve_label
from service.schemas import EditOperation, Label, Variations


def image_classes(
    labels: Label | list[Label] | None, manifest: Manifest, n: int, field: str
) -> np.ndarray | None:
    """The class of each image where the client gave it; None: unknown (the encoder predicts it)."""
    if labels is None:
        return None
    if isinstance(labels, list):
        if len(labels) != n:
            raise PlanError(f"{field} has {len(labels)} entries but there are {n} images", field)
        return np.array([resolve_label(v, manifest, f"{field}[{i}]") for i, v in enumerate(labels)], np.int64)
    return np.full(n, resolve_label(labels, manifest, field), dtype=np.int64)


def encoder_feeds(x: np.ndarray, classes: np.ndarray | None, manifest: Manifest) -> Feeds:
    """x, and for conditional models c: one-hot where known, all zeros where the encoder is to predict."""
    if not manifest.num_classes:
        return {"x": x}
    c = (
        np.zeros((len(x), manifest.num_classes), np.float32)
        if classes is None
        else one_hot(classes, manifest.num_classes)
    )
    return {"x": x, "c": c}


def split_encoded(
    out: np.ndarray, manifest: Manifest, known: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """(z, class per image): the given classes, else the encoder's predictions (argmax of its logits)."""
    z = np.ascontiguousarray(out[:, : manifest.z_dim])
    if not manifest.num_classes:
        return z, None
    return z, known if known is not None else out[:, manifest.z_dim :].argmax(axis=1).astype(np.int64)


def edited_latents(z: np.ndarray, op: EditOperation | None, manifest: Manifest) -> np.ndarray:
    if op is None or op.kind == "label":
        return z
    if op.kind == "direction":
        named = {d.name: d for d in manifest.directions}
        if op.direction not in named:
            raise PlanError(
                f"unknown direction '{op.direction}'; model {manifest.name} has {sorted(named) or 'none'}",
                "edit.direction",
            )
        direction = named[op.direction]
        strength = op.strength if op.strength is not None else direction.strength
        moved: np.ndarray = z + np.float32(strength) * np.asarray(direction.vector, np.float32)
        return moved.astype(np.float32)
    if op.kind == "mix":
        assert op.mix_seed is not None
        target = sample_latent(op.mix_seed, 0, manifest.z_dim)
        t = np.array([0.5 if op.t is None else op.t])
        move = slerp if op.method in (None, "slerp") else lerp
        return np.stack([move(row, target, t)[0] for row in z]).astype(np.float32)
    assert op.truncation is not None
    return (op.truncation * z).astype(np.float32)  # the mean latent of N(0, I) is 0


def edit_plan(
    z: np.ndarray, classes: np.ndarray | None, op: EditOperation | None, manifest: Manifest
) -> Plan:
    """Generator feeds for the edited images; the plan's labels are the classes decoded."""
    if op is not None and op.kind == "label":
        assert op.label is not None
        if not manifest.num_classes:
            raise PlanError(
                f"model {manifest.name} is unconditional: edit by 'direction' instead", "edit.label"
            )
        classes = np.full(len(z), resolve_label(op.label, manifest, "edit.label"), dtype=np.int64)
    feeds = {"z": edited_latents(z, op, manifest)}
    if classes is not None:
        feeds["c"] = one_hot(classes, manifest.num_classes)
    return Plan(feeds, None, list(range(len(z))), classes)


def variations_plan(
    z: np.ndarray,
    classes: np.ndarray | None,
    spec: Variations,
    seed: int,
    offset: int,
    rows: int,
    manifest: Manifest,
) -> Plan:
    """Rows offset .. offset + rows - 1 of the variations set: row j is image j // per_image, at
    z + sigma * eps(seed, j), with that image's class."""
    index = np.arange(offset, offset + rows)
    source = index // spec.per_image
    eps = np.stack([sample_latent(seed, int(j), manifest.z_dim) for j in index])
    feeds = {"z": (z[source] + spec.sigma * eps).astype(np.float32)}
    labels = classes[source] if classes is not None else None
    if labels is not None:
        feeds["c"] = one_hot(labels, manifest.num_classes)
    return Plan(feeds, seed, index.tolist(), labels, total_rows=len(z) * spec.per_image)
