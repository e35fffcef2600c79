from __future__ import annotations

import math

import numpy as np
import pytest

from training.data import grid25_means, ring8_means
from training.metrics import (
    PERFECT_SPREAD,
    density_coverage,
    frechet_distance,
    kid,
    kl_to_uniform,
    mixture_scores,
    precision_recall,
    stacked_modes,
    stacked_vendi,
)


def true_mixture(means: np.ndarray, sigma: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return means[rng.integers(len(means), size=n)] + sigma * rng.standard_normal((n, 2))


@pytest.mark.parametrize(
    ("means", "sigma", "k", "rkl_floor"),
    [(ring8_means(), 0.01, 8, 0.0015), (grid25_means(), 0.05, 25, 0.005)],
)
def test_a_perfect_sampler_scores_the_reference_values(means, sigma: float, k: int, rkl_floor: float) -> None:  # type: ignore[no-untyped-def]
    runs = [
        mixture_scores(true_mixture(means.numpy(), sigma, 2500, seed), means.numpy(), sigma)
        for seed in range(20)
    ]
    assert all(r.modes == k for r in runs)
    hq = np.mean([r.high_quality for r in runs])
    assert abs(hq - 100 * (1 - math.exp(-4.5))) < 0.3  # P(χ²₂ <= 9) = 98.89 %
    assert np.mean([r.reverse_kl for r in runs]) == pytest.approx(rkl_floor, rel=0.5)
    assert np.mean([r.spread for r in runs]) == pytest.approx(PERFECT_SPREAD, abs=0.01)
    assert pytest.approx(0.9494, abs=1e-4) == PERFECT_SPREAD


def test_spread_sees_modes_sharper_than_the_data() -> None:
    """Every mode hit but each one a tenth as wide: % HQ and reverse KL look perfect, the spread does not."""
    means = grid25_means().numpy()
    sharp = mixture_scores(true_mixture(means, 0.005, 2500, 0), means, 0.05)
    assert sharp.modes == 25 and sharp.high_quality == 100.0 and sharp.reverse_kl < 0.01
    assert sharp.spread == pytest.approx(0.01, rel=0.1)  # (σ'/σ)² = 0.01


def test_a_collapsed_sampler_has_one_mode() -> None:
    means = grid25_means().numpy()
    scores = mixture_scores(
        means[3] + 0.01 * np.random.default_rng(0).standard_normal((2500, 2)), means, 0.05
    )
    assert (
        scores.modes == 1
        and scores.high_quality == 100.0
        and scores.reverse_kl == pytest.approx(math.log(25))
    )


def test_samples_far_from_every_mode_are_not_high_quality() -> None:
    means = ring8_means().numpy()
    scores = mixture_scores(np.full((100, 2), 5.0), means, 0.01)
    assert (scores.modes, scores.high_quality, scores.reverse_kl) == (0, 0.0, pytest.approx(math.log(8)))


def test_kl_to_uniform() -> None:
    assert kl_to_uniform(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    assert kl_to_uniform(np.array([10, 0, 0, 0])) == pytest.approx(math.log(4))
    assert kl_to_uniform(np.array([1, 1, 0, 0])) == pytest.approx(math.log(2))


def test_stacked_modes() -> None:
    every = np.array([[a, b, c] for a in range(10) for b in range(10) for c in range(10)])
    assert stacked_modes(np.repeat(every, 3, axis=0)) == (1000, pytest.approx(0.0))
    assert stacked_modes(np.zeros((50, 3), dtype=int)) == (1, pytest.approx(math.log(1000)))


def exact_moments(mean: np.ndarray, cov: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Samples whose empirical mean and covariance (ddof 1) are exactly `mean` and `cov`."""
    x = np.random.default_rng(seed).standard_normal((n, len(mean)))
    x -= x.mean(0)
    x = x @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False))).T  # whiten exactly
    return x @ np.linalg.cholesky(cov).T + mean


def test_frechet_distance_matches_the_closed_form() -> None:
    # Diagonal covariances commute: FD = ||μ1 − μ2||² + Σ (σ1 − σ2)².
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([2.0, 1.0, 0.5])
    a = exact_moments(mu1, np.diag(s1**2), 500, 0)
    b = exact_moments(mu2, np.diag(s2**2), 700, 1)
    assert frechet_distance(a, b) == pytest.approx(
        ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum(), rel=1e-6
    )
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2000, 16)), rng.standard_normal((2000, 16))
    same, _ = kid(a, b, subsets=20, size=500)
    shifted, _ = kid(a, b + 0.5, subsets=20, size=500)
    assert abs(same) < 0.01 and shifted > 0.1


def test_precision_recall_density_coverage() -> None:
    rng = np.random.default_rng(0)
    real, same, other = (
        rng.standard_normal((1500, 8)),
        rng.standard_normal((1500, 8)),
        rng.standard_normal((1500, 8)) + 3,
    )
    assert precision_recall(real, real) == (1.0, 1.0)  # every point lies in its own ball
    precision, recall = precision_recall(real, same)
    assert precision > 0.7 and recall > 0.7
    assert precision_recall(real, other)[0] < 0.05
    density, coverage = density_coverage(real, same)
    assert (
        0.85 < density < 1.15 and abs(coverage - (1 - 2**-5)) < 0.03
    )  # ≈ 1 and ≈ 1 − 2^−k for one distribution
    assert density_coverage(real, other)[1] < 0.05


def test_frechet_distance_with_a_dead_feature() -> None:
    # A ReLU unit that never fires makes both covariances singular; the distance must stay exact.
    mu1, mu2 = np.array([0.0, 1.0]), np.array([1.0, 1.0])
    a = np.column_stack([exact_moments(mu1, np.diag([1.0, 4.0]), 400, 0), np.zeros(400)])
    b = np.column_stack([exact_moments(mu2, np.diag([4.0, 1.0]), 400, 1), np.zeros(400)])
    assert frechet_distance(a, b) == pytest.approx(1.0 + (1 - 2) ** 2 + (2 - 1) ** 2, rel=1e-9)


def _one_hot(digits: np.ndarray) -> np.ndarray:
    return np.eye(10)[digits]


def test_stacked_vendi_counts_equally_likely_distinct_triples() -> None:
    every = np.array([[a, b, c] for a in range(10) for b in range(10) for c in range(10)])
    confident = [_one_hot(every[:, k]) for k in range(3)]
    assert stacked_vendi(confident) == pytest.approx(1000.0, rel=1e-4)
    collapsed = [_one_hot(np.zeros(500, dtype=int))] * 3
    assert stacked_vendi(collapsed) == pytest.approx(1.0, rel=1e-4)
    # Two triples, one three times as common: exp(H(1/4, 3/4)).
    two = [_one_hot(np.array([1, 2, 2, 2]))] * 3
    assert stacked_vendi(two) == pytest.approx(math.exp(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75))))


# vendi_score 0.0.3's score_K type-checks against scipy.sparse.csr.csr_matrix, a deprecated path.
@pytest.mark.filterwarnings("ignore:Please import `csr_matrix`:DeprecationWarning")
def test_stacked_vendi_is_the_packages_score_k_on_the_probability_product_kernel() -> None:
    """The dual (1,000 x 1,000) computation equals vendi.score_K on the explicit N x N kernel
    k(x, x') = Σ_y √p(y|x) √p(y|x') over the 1,000 triples, with soft probabilities."""
    from vendi_score import vendi

    rng = np.random.default_rng(0)
    channels = [rng.dirichlet(np.full(10, 0.3), size=60) for _ in range(3)]
    joint = np.einsum("na,nb,nc->nabc", *channels).reshape(60, -1)
    kernel = np.sqrt(joint) @ np.sqrt(joint).T
    assert np.allclose(np.diag(kernel), 1.0)
    assert stacked_vendi(channels) == pytest.approx(vendi.score_K(kernel), rel=1e-4)
    # An unsure classifier blurs distinct triples together: the same triples score lower when soft.
    every = np.array([[a, b, c] for a in range(10) for b in range(10) for c in range(10)])
    soft = [0.5 * _one_hot(every[:, k]) + 0.05 for k in range(3)]
    assert 1.0 < stacked_vendi(soft) < 0.9 * stacked_vendi([_one_hot(every[:, k]) for k in range(3)])
