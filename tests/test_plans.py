"""Request plans, without HTTP: labels, limits, the seed -> latents -> feeds block, augment pages, paths."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import numpy as np
import pytest

from service.latents import latents, one_hot, sample_latent
from service.manifest import Manifest
from service.plans import (
    PlanError,
    augment_counts,
    augment_plan,
    generate_plan,
    interpolate_plan,
    resolve_labels,
    sample_feeds,
)
from service.schemas import AugmentRequest, GenerateRequest, InterpolateRequest
from service.settings import Settings

SETTINGS = Settings(max_n=16, max_steps=8, max_page_rows=8, max_augment_rows=40)


def manifest(num_classes: int = 3) -> Manifest:
    classes = ["shirt", "dress", "bag"][:num_classes]
    return Manifest(
        name="m", version=1, kind="image", z_dim=4, num_classes=num_classes, class_names=classes,
        output_shape=[1, 8, 8], value_range=(-1.0, 1.0), input_names=["z", "c"] if num_classes else ["z"],
        output_names=["x"], opset=18, onnx_sha256="ab" * 32, created_at=datetime(2026, 1, 1, tzinfo=UTC),
        training={"preset": "cgan", "data": "d", "steps": 1, "seed": 0, "config": {}, "wall_time_s": 0,
                  "library_versions": {}},
        parity_max_abs_diff=0.0,
    )  # fmt: skip


def test_labels_by_name_index_or_cycle() -> None:
    m = manifest()
    assert resolve_labels(None, m, 4, 2).tolist() == [2, 0, 1, 2]  # cycles by sample index, not position
    assert resolve_labels("dress", m, 2, 0).tolist() == [1, 1]
    assert resolve_labels(["bag", 0, "1"], m, 3, 0).tolist() == [2, 0, 1]
    assert resolve_labels(None, manifest(0), 3, 0) is None
    with pytest.raises(PlanError, match="unknown class 'hat'") as error:
        resolve_labels(["bag", "hat"], m, 2, 0)
    assert error.value.field == "labels[1]"
    with pytest.raises(PlanError, match=re.escape("out of range: must be 0 .. 2")):
        resolve_labels(3, m, 1, 0)
    with pytest.raises(PlanError, match="unconditional"):
        resolve_labels(0, manifest(0), 1, 0)


def test_generate_and_augment_share_one_seed_to_feeds_block() -> None:
    m = manifest()
    generated = generate_plan(GenerateRequest(model="m", n=3, offset=5, labels="bag"), m, SETTINGS, seed=7)
    feeds = sample_feeds(7, 5, 3, m, None, np.array([2, 2, 2]))
    np.testing.assert_array_equal(generated.feeds["z"], latents(7, 5, 3, 4))
    np.testing.assert_array_equal(generated.feeds["c"], feeds["c"])
    assert generated.indices == [5, 6, 7] and generated.seed == 7
    page = augment_plan(AugmentRequest(model="m", per_class={"bag": 4}, offset=1, limit=2), m, SETTINGS, 7)
    np.testing.assert_array_equal(page.feeds["z"], latents(7, 1, 2, 4))  # row j has latent (seed, j)
    np.testing.assert_array_equal(page.feeds["c"], one_hot(np.array([2, 2]), 3))
    assert page.indices == [1, 2] and page.total_rows == 4


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"n": 17}, "n", "n must be <= 16 (GAN_MAX_N), got 17"),
        ({"labels": [0, 1]}, "labels", "labels has 2 entries but n is 1"),
    ],
)
def test_generate_limits_name_the_field(body: dict[str, object], field: str, message: str) -> None:
    with pytest.raises(PlanError, match=re.escape(message)) as error:
        generate_plan(GenerateRequest(model="m", **body), manifest(), SETTINGS, seed=0)
    assert error.value.field == field


def test_augment_counts_balance_ratio_and_pages() -> None:
    m = manifest()
    balance = AugmentRequest(model="m", class_counts={"shirt": 5, "dress": 2}, target="balance")
    assert augment_counts(balance, m).tolist() == [0, 3, 5]
    ratio = AugmentRequest(model="m", class_counts=[2, 4, 0], ratio=1.5)
    assert augment_counts(ratio, m).tolist() == [3, 6, 0]
    whole = augment_plan(ratio, m, SETTINGS, seed=1)
    assert whole.rows == 8 and whole.labels is not None and whole.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    last = augment_plan(ratio.model_copy(update={"offset": 8}), m, SETTINGS, seed=1)
    assert last.indices == [8] and last.labels is not None and last.labels.tolist() == [1]
    for request, field, message in [
        (ratio.model_copy(update={"offset": 9}), "offset", "offset must be < 9"),
        (ratio.model_copy(update={"limit": 9}), "limit", "limit must be <= 8"),
        (AugmentRequest(model="m", per_class={"bag": 41}), "per_class", "at most 40"),
        (AugmentRequest(model="m", per_class={"bag": 0}), "per_class", "0 synthetic rows"),
        (AugmentRequest(model="m", n=3), "n", "is conditional"),
    ]:
        with pytest.raises(PlanError, match=message) as error:
            augment_plan(request, m, SETTINGS, seed=1)
        assert error.value.field == field


def test_interpolation_ends_are_the_endpoints_and_classes_blend() -> None:
    m = manifest()
    body = InterpolateRequest(
        model="m",
        start={"seed": 3, "label": "shirt"},
        end={"seed": 4, "label": "bag"},
        steps=3,
        method="lerp",
    )
    plan = interpolate_plan(body, m, SETTINGS)
    np.testing.assert_allclose(plan.feeds["z"][0], sample_latent(3, 0, 4), atol=1e-6)
    np.testing.assert_allclose(plan.feeds["z"][-1], sample_latent(4, 0, 4), atol=1e-6)
    np.testing.assert_allclose(plan.feeds["c"][1], [0.5, 0.0, 0.5])
    assert plan.t == [0.0, 0.5, 1.0] and plan.seed is None
    unlabelled = body.model_copy(update={"end": body.end.model_copy(update={"label": None})})
    with pytest.raises(PlanError, match="is conditional: give a label") as error:
        interpolate_plan(unlabelled, m, SETTINGS)
    assert error.value.field == "end.label"
    wrong_z = body.model_copy(update={"start": body.start.model_copy(update={"seed": None, "z": [0.0] * 5})})
    with pytest.raises(PlanError, match="needs z_dim = 4") as error:
        interpolate_plan(wrong_z, m, SETTINGS)
    assert error.value.field == "start.z"


def test_response_size_is_checked_before_any_work() -> None:
    tight = Settings(max_response_bytes=1024)
    with pytest.raises(PlanError, match="GAN_MAX_RESPONSE_BYTES") as error:
        generate_plan(GenerateRequest(model="m", n=16, format="json"), manifest(), tight, seed=0)
    assert error.value.field == "n"
