"""How well a sampler recovers a known isotropic Gaussian mixture (the seeds' `gauss2`): pure numpy.

Per evaluation seed, on n generated samples and a held-out real sample of the same n:
- `loglik_fake`, `loglik_real`: the exact mean log-density of each under the true mixture; `loglik_gap` is
  fake − real (0 for a perfect sampler; > 0 when the modes are too sharp, < 0 when too wide) and
  `loglik_gap_abs` its absolute value.
- `weight_<k>`: the mixture weight recovered, the mean posterior responsibility of component k under the true
  mixture; `weight_error_max` = max_k |weight_k − π_k|. A sampler that drops a mode scores 0 on it.
- `mean_<k>_x/_y`, `cov_<k>_xx/_xy/_yy`: component k's mean and covariance recovered, each sample weighted by
  its responsibility (one E-step with the true parameters: for true samples these are consistent, since
  r_k(x) p(x) = π_k N_k(x)); `mean_error_max` = max_k ‖μ̂_k − μ_k‖, `cov_error_max` = max_k ‖Σ̂_k − σ²I‖_F.

The log-likelihood alone cannot see a collapsed sampler (all samples on one mode score like real ones) nor an
anisotropic one (it depends on E‖x − μ‖² only); the weights and covariances can, which is why all are gated.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

# A component no sample is responsible for (every responsibility underflows) has no mean or covariance: its
# errors are reported as this, which fails any gate.
MISSING = 1000.0


def log_density(x: np.ndarray, means: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(log p(x) of shape (N,), log responsibilities (N, K)) under the equal-weight isotropic mixture."""
    x64, means64 = x.astype(np.float64), means.astype(np.float64)
    d = x64.shape[1]
    sq = ((x64[:, None, :] - means64[None, :, :]) ** 2).sum(2)  # (N, K)
    log_joint = (
        -sq / (2 * sigma**2) - d * math.log(sigma) - 0.5 * d * math.log(2 * math.pi) - math.log(len(means))
    )
    peak = log_joint.max(1, keepdims=True)
    log_p = peak[:, 0] + np.log(np.exp(log_joint - peak).sum(1))
    return log_p, log_joint - log_p[:, None]


def sample_mixture(n: int, means: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """n real samples: a uniform component each, then N(μ_k, σ²I)."""
    component = rng.integers(len(means), size=n)
    return means[component] + sigma * rng.standard_normal((n, means.shape[1]))


def fit_scores(fake: np.ndarray, real: np.ndarray, means: np.ndarray, sigma: float) -> dict[str, float]:
    """Every figure of the module docstring for one seed."""
    finite = np.isfinite(fake).all(1)
    log_p, log_r = log_density(fake[finite], means, sigma)
    loglik_fake = float(log_p.sum() + (-MISSING) * (~finite).sum()) / len(fake)  # a NaN output: very unlikely
    loglik_real = float(log_density(real, means, sigma)[0].mean())
    scores = {
        "loglik_fake": loglik_fake,
        "loglik_real": loglik_real,
        "loglik_gap": loglik_fake - loglik_real,
        "loglik_gap_abs": abs(loglik_fake - loglik_real),
    }
    r = np.exp(log_r)  # (N', K)
    x = fake[finite].astype(np.float64)
    weight_errors, mean_errors, cov_errors = [], [], []
    for k, mu in enumerate(means.astype(np.float64)):
        mass = r[:, k].sum()
        scores[f"weight_{k}"] = float(mass / len(fake))
        weight_errors.append(abs(scores[f"weight_{k}"] - 1 / len(means)))
        if mass <= 1e-9:
            mean_errors.append(MISSING)
            cov_errors.append(MISSING)
            continue
        mean = (r[:, k, None] * x).sum(0) / mass
        centred = x - mean
        cov = (r[:, k, None, None] * centred[:, :, None] * centred[:, None, :]).sum(0) / mass
        scores |= {f"mean_{k}_x": float(mean[0]), f"mean_{k}_y": float(mean[1])}
        scores |= {
            f"cov_{k}_xx": float(cov[0, 0]),
            f"cov_{k}_xy": float(cov[0, 1]),
            f"cov_{k}_yy": float(cov[1, 1]),
        }
        mean_errors.append(float(np.linalg.norm(mean - mu)))
        cov_errors.append(float(np.linalg.norm(cov - sigma**2 * np.eye(len(mu)))))
    scores |= {
        "weight_error_max": max(weight_errors),
        "mean_error_max": max(mean_errors),
        "cov_error_max": max(cov_errors),
    }
    return scores


# A different stream from anything training draws (torch generators seeded by (training seed, step)).
REAL_SEED = 20261121


def mean_se(runs: list[dict[str, float]]) -> dict[str, float]:
    """Mean and standard error over seeds of every figure present in all runs."""
    names = [name for name in runs[0] if all(name in r for r in runs)]
    out: dict[str, float] = {}
    for name in names:
        values = np.array([r[name] for r in runs])
        out[name] = float(values.mean())
        out[f"{name}_se"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
    return out


def fit_metrics(
    sample: Callable[[int, int], np.ndarray], means: np.ndarray, sigma: float, n: int, seeds: int
) -> dict[str, float]:
    """`sample(n, seed)` on evaluation seeds 0..seeds-1, each against its own held-out real sample of n."""
    runs = []
    for seed in range(seeds):
        real = sample_mixture(n, means, sigma, np.random.default_rng([REAL_SEED, seed]))
        runs.append(fit_scores(sample(n, seed), real, means, sigma))
    return mean_se(runs)
