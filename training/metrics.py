"""Sample-quality metrics as plain numpy functions, with the exact definitions of ../shared/REFERENCE.md.

2-D mixtures: VEEGAN/PacGAN modes, % high quality and reverse KL. Stacked MNIST: modes and KL to uniform.
Stacked MNIST's Vendi score: the `vendi-score` package over the class probabilities.
Feature spaces: Fréchet distance, KID (unbiased, cubic kernel), improved precision/recall (k = 3) and
density/coverage (k = 5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MixtureScores:
    modes: int
    high_quality: float  # percent of samples within 3σ of their nearest mode
    reverse_kl: float  # KL(p̂ ‖ uniform) over high-quality samples, nats
    # Not in the VEEGAN/PacGAN protocol: E[d²] / (2σ²) over high-quality samples, d the distance to the
    # nearest mode. A perfect sampler gives (1 - 5.5 e^-4.5) / (1 - e^-4.5) = 0.949; far below that, the
    # modes are sharper than the data (% HQ above the perfect sampler's 98.9 % is the other sign); 0 with
    # no high-quality sample.
    spread: float


PERFECT_SPREAD = (1 - 5.5 * math.exp(-4.5)) / (1 - math.exp(-4.5))


def mixture_scores(x: np.ndarray, means: np.ndarray, sigma: float) -> MixtureScores:
    """VEEGAN/PacGAN: nearest mode, HQ if within 3σ, a mode captured when >= 1 HQ sample is nearest to it."""
    distances = np.linalg.norm(x[:, None, :].astype(np.float64) - means[None, :, :], axis=2)  # (N, K)
    nearest, closest = distances.argmin(1), distances.min(1)
    high = closest <= 3 * sigma
    counts = np.bincount(nearest[high], minlength=len(means))
    spread = float((closest[high] ** 2).mean() / (2 * sigma**2)) if high.any() else 0.0
    return MixtureScores(int((counts > 0).sum()), 100.0 * float(high.mean()), kl_to_uniform(counts), spread)


def kl_to_uniform(counts: np.ndarray) -> float:
    """KL(p̂ ‖ U_K) = Σ p log(K p) over the non-empty bins (0·log 0 = 0); log K when there are no samples."""
    total = counts.sum()
    if total == 0:
        return math.log(len(counts))
    p = counts[counts > 0] / total
    return float((p * np.log(len(counts) * p)).sum())


def stacked_modes(digits: np.ndarray) -> tuple[int, float]:
    """(modes out of 1,000, KL to uniform) from per-channel digit predictions of shape (N, 3)."""
    labels = digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]
    counts = np.bincount(labels, minlength=1000)
    return int((counts > 0).sum()), kl_to_uniform(counts)


def stacked_vendi(channels: list[np.ndarray]) -> float:
    """Vendi score (Friedman & Dieng 2023) of stacked samples under the probability product kernel with
    ρ = 1/2 (Jebara et al. 2004) over the classifier's 1,000-class probabilities:
    k(x, x') = Σ_y √p(y|x) √p(y|x'), so k(x, x) = 1 and K = Φ Φᵀ with Φ(x) = √p(·|x).

    The classifier reads each channel alone, so p(abc|x) = p₀(a) p₁(b) p₂(c) and Φ(x) is the outer product of
    the three channels' √p. The score is computed by the package's `score_dual` (the eigenvalues of Φᵀ Φ / N,
    which are the non-zero eigenvalues of K / N), so N = 26,000 needs a 1,000 × 1,000 matrix, not N × N;
    tests check it against `score_K` on the explicit kernel. It lies between 1 and 1,000.
    """
    from vendi_score import vendi

    roots = [np.sqrt(np.clip(p, 0.0, None)).astype(np.float32) for p in channels]
    phi = np.einsum("na,nb,nc->nabc", *roots).reshape(len(roots[0]), -1)
    return float(vendi.score_dual(phi, normalize=False))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||μ_a − μ_b||² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½) between the Gaussians fitted to two feature sets.

    Tr (Σ_a Σ_b)^½ is computed as Σ √λ of the symmetric PSD matrix Σ_a^½ Σ_b Σ_a^½ (same eigenvalues as
    Σ_a Σ_b), which stays exact when ReLU features leave the covariances singular.
    """
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = a64.mean(0), b64.mean(0)
    cov_a, cov_b = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)
    root_a = _psd_sqrt(cov_a)
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0.0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def kid(
    a: np.ndarray, b: np.ndarray, subsets: int = 100, size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Unbiased MMD² with k(x, y) = (xᵀy / d + 1)³ over subsets drawn without replacement: (mean, std)."""
    rng = np.random.default_rng(seed)
    size = min(size, len(a), len(b))
    d = a.shape[1]
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), size, replace=False)].astype(np.float64)
        y = b[rng.choice(len(b), size, replace=False)].astype(np.float64)
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        m = size
        values.append(
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.sum() / (m * m)
        )
    return float(np.mean(values)), float(np.std(values))


def _distances(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Euclidean distances (len(a), len(b)) in row chunks, float32 to bound memory."""
    out = np.empty((len(a), len(b)), dtype=np.float32)
    b_sq = (b.astype(np.float64) ** 2).sum(1)
    for start in range(0, len(a), chunk):
        rows = a[start : start + chunk].astype(np.float64)
        sq = (rows**2).sum(1)[:, None] + b_sq[None, :] - 2 * rows @ b.T.astype(np.float64)
        out[start : start + chunk] = np.sqrt(np.maximum(sq, 0.0))
    return out


def _kth(distances: np.ndarray, k: int) -> np.ndarray:
    """Per row, the distance to the k-th nearest neighbour within the same set (index 0 is the self-distance)."""
    return np.partition(distances, k, axis=1)[:, k]


def manifold_metrics(real: np.ndarray, fake: np.ndarray, k_pr: int = 3, k_dc: int = 5) -> dict[str, float]:
    """Precision/recall (Kynkäänniemi et al. 2019, k = 3, closed balls) and density/coverage (Naeem et al.
    2020, k = 5, strict < as `prdc`), from one pass over the three distance matrices."""
    real_real, fake_fake, real_fake = _distances(real, real), _distances(fake, fake), _distances(real, fake)
    r_pr_real, r_dc_real = _kth(real_real, k_pr), _kth(real_real, k_dc)
    r_pr_fake = _kth(fake_fake, k_pr)
    return {
        "precision": float((real_fake <= r_pr_real[:, None]).any(0).mean()),  # fakes inside the real manifold
        "recall": float((real_fake <= r_pr_fake[None, :]).any(1).mean()),  # reals inside the fake manifold
        "density": float((real_fake < r_dc_real[:, None]).sum() / (k_dc * len(fake))),
        "coverage": float((real_fake.min(1) < r_dc_real).mean()),  # real balls only
    }


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    scores = manifold_metrics(real, fake, k_pr=k)
    return scores["precision"], scores["recall"]


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> tuple[float, float]:
    scores = manifold_metrics(real, fake, k_dc=k)
    return scores["density"], scores["coverage"]
