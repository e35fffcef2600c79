"""The seeds' 2-D case, `gauss2`: its batches, its recovery figures and gates, and its contour figure."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from service.quality_gates import QualityGate, gate_results
from training.contours import kde, real_density, window
from training.data import MIXTURES, make_source
from training.evaluate import GATES, evaluate_mixture
from training.mixture_fit import fit_scores, log_density, sample_mixture

MEANS = MIXTURES["gauss2"][0]().numpy()
GAUSS2_GATES = [QualityGate(metric=m, op=op, threshold=t) for m, op, t in GATES["gauss2"]]  # type: ignore[arg-type]


Sample = Callable[[int, int], tuple[np.ndarray, None]]


def sampler(scale: tuple[float, float] = (1.0, 1.0), modes: tuple[int, ...] = (0, 1)) -> Sample:
    """A stand-in for the ONNX model: each sample on one of `modes`, N(μ, diag(scale)²) around it."""

    def sample(n: int, seed: int) -> tuple[np.ndarray, None]:
        rng = np.random.default_rng([99, seed])
        component = np.asarray(modes)[rng.integers(len(modes), size=n)]
        return (MEANS[component] + rng.standard_normal((n, 2)) * np.asarray(scale)).astype(np.float32), None

    return sample


def failing(sample: Sample) -> set[str]:
    metrics, _ = evaluate_mixture(sample, "gauss2", seeds=3)  # type: ignore[arg-type]
    return {g.metric for g in gate_results(GAUSS2_GATES, metrics) if not g.passed}


def test_batches_are_a_pure_function_of_seed_and_step_and_follow_the_mixture() -> None:
    source = make_source("gauss2", seed=3)
    x, y = source.batch(7, 4096)
    again, _ = make_source("gauss2", seed=3).batch(7, 4096)
    assert torch.equal(x, again) and not torch.equal(x, make_source("gauss2", seed=4).batch(7, 4096)[0])
    assert y is not None and abs(float((y == 0).float().mean()) - 0.5) < 0.03
    for k, mean in enumerate(MEANS):
        part = x[y == k].double()
        assert torch.allclose(part.mean(0), torch.tensor(mean, dtype=torch.float64), atol=0.08)
        assert torch.allclose(torch.cov(part.T), torch.eye(2, dtype=torch.float64), atol=0.1)


def test_log_density_is_the_exact_mixture_density() -> None:
    x = np.array([[-2.0, -2.0], [0.0, 0.0], [5.0, -1.0]])
    direct = sum(0.5 * np.exp(-((x - m) ** 2).sum(1) / 2) / (2 * np.pi) for m in MEANS)
    log_p, log_r = log_density(x, MEANS, 1.0)
    assert np.allclose(log_p, np.log(direct)) and np.allclose(np.exp(log_r).sum(1), 1.0)
    assert np.allclose(np.exp(log_r[1]), 0.5)  # the midpoint belongs to both equally


def test_true_samples_pass_every_gate() -> None:
    assert failing(sampler()) == set()


def test_a_one_mode_sampler_fails_the_weights_though_its_likelihood_looks_real() -> None:
    failed = failing(sampler(modes=(1,)))
    assert {"weight_error_max", "mean_error_max"} <= failed
    # Why the weights are gated: each sample alone looks real, and the VEEGAN mode count sees 2 modes (the one
    # mode's tail, 0.2 % of its samples, lies within 3σ of the other).
    assert "loglik_gap_abs" not in failed and "modes" not in failed


@pytest.mark.parametrize("scale", [1.3, 1.06, 0.7])
def test_a_too_wide_or_too_sharp_sampler_fails_the_likelihood_gap(scale: float) -> None:
    failed = failing(sampler(scale=(scale, scale)))
    assert "loglik_gap_abs" in failed and "weight_error_max" not in failed
    if scale in (1.3, 0.7):
        assert "cov_error_max" in failed


def test_an_anisotropic_sampler_fails_the_covariance_gate_only() -> None:
    assert failing(sampler(scale=(1.25, 0.7))) == {"cov_error_max"}


def test_recovered_weights_means_and_covariances() -> None:
    rng = np.random.default_rng(5)
    fake = np.concatenate(
        [MEANS[0] + rng.standard_normal((3000, 2)), MEANS[1] + 0.5 * rng.standard_normal((1000, 2))]
    )
    real = sample_mixture(4000, MEANS, 1.0, rng)
    scores = fit_scores(fake, real, MEANS, 1.0)
    assert scores["weight_0"] == pytest.approx(0.75, abs=0.01)
    assert scores["weight_error_max"] == pytest.approx(0.25, abs=0.01)
    assert scores["mean_1_x"] == pytest.approx(2.0, abs=0.05) and scores["mean_1_y"] == pytest.approx(
        2.0, abs=0.05
    )
    assert scores["cov_0_yy"] == pytest.approx(1.0, abs=0.08)
    # Responsibilities are those of the true mixture, so component 0's tail (3x as many samples) lends
    # component 1 a little width: 0.28 rather than 0.25.
    assert scores["cov_1_xx"] == pytest.approx(0.25, abs=0.05)
    assert scores["cov_error_max"] == pytest.approx(np.sqrt(2) * 0.75, abs=0.07)  # ‖0.25 I − I‖_F


def test_the_kde_of_true_samples_matches_the_smoothed_real_density() -> None:
    """KDE with h = σ/2 of true samples ≈ the mixture with variance σ² + h² (what the figure's panel 2 shows)."""
    lo, hi = window(MEANS, 1.0)
    bins = 120
    samples = sample_mixture(200_000, MEANS, 1.0, np.random.default_rng(0))
    estimate = kde(samples, lo, hi, bins, 0.5)
    width = (hi - lo) / bins
    axis = lo + width * (np.arange(bins) + 0.5)
    gx, gy = np.meshgrid(axis, axis)
    smoothed = real_density(np.stack([gx.ravel(), gy.ravel()], 1), MEANS, np.sqrt(1.25)).reshape(bins, bins)
    assert estimate.sum() * width**2 == pytest.approx(1.0, abs=0.01)
    assert np.abs(estimate - smoothed).max() < 0.05 * smoothed.max()
    # Rows are y, columns x (the figure draws them so): a point at (3, -1) peaks at row y = -1, column x = 3.
    iy, ix = np.unravel_index(kde(np.array([[3.0, -1.0]]), lo, hi, bins, 0.5).argmax(), (bins, bins))
    assert (axis[ix], axis[iy]) == (pytest.approx(3.0, abs=width), pytest.approx(-1.0, abs=width))


def test_contour_figure_is_a_small_png(tmp_path: Path) -> None:
    from PIL import Image

    from training.contours import contour_figure

    samples = sample_mixture(5000, MEANS, 1.0, np.random.default_rng(1))
    path = contour_figure(samples, MEANS, 1.0, "true samples", tmp_path / "c.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 2 * image.height
    assert path.stat().st_size < 200_000
