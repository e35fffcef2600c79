from __future__ import annotations

import numpy as np
import pytest

from service.latents import latents, lerp, one_hot, sample_latent, slerp


def test_a_sample_is_a_pure_function_of_seed_and_index() -> None:
    whole = latents(7, 0, 10, 16)
    np.testing.assert_array_equal(latents(7, 0, 5, 16), whole[:5])  # n=5 is the prefix of n=10
    np.testing.assert_array_equal(latents(7, 5, 1, 16)[0], whole[5])  # offsets address the same samples
    assert not np.array_equal(latents(8, 0, 10, 16), whole)
    assert len({row.tobytes() for row in whole}) == 10


def test_latents_are_standard_normal() -> None:
    z = latents(1, 0, 2000, 64)
    assert z.dtype == np.float32 and z.shape == (2000, 64)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1.0) < 0.01


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0])
def test_truncation_is_bounded_and_deterministic(t: float) -> None:
    z = latents(3, 0, 200, 32, truncation=t)
    assert float(np.abs(z).max()) <= t
    np.testing.assert_array_equal(z, latents(3, 0, 200, 32, truncation=t))
    untruncated = latents(3, 0, 200, 32)
    inside = np.abs(untruncated) <= t
    np.testing.assert_array_equal(
        z[inside.all(1)], untruncated[inside.all(1)]
    )  # rows already inside are kept


@pytest.mark.parametrize("truncation", [None, 0.7])
def test_the_rekeyed_stream_is_the_constructed_one(truncation: float | None) -> None:
    """sample_latent re-keys one Philox per thread; the values are those of a Philox built for (seed, index)."""
    for seed, index in [(0, 0), (7, 3), (2**40 + 1, 2**33), ((1 << 63) - 1, (1 << 62) - 1)]:
        rng = np.random.Generator(np.random.Philox(key=(seed << 64) | index))
        z = rng.standard_normal(24)
        if truncation is not None:
            while (outside := np.abs(z) > truncation).any():
                z[outside] = rng.standard_normal(int(outside.sum()))
        np.testing.assert_array_equal(sample_latent(seed, index, 24, truncation), z.astype(np.float32))
    sample_latent(5, 5, 8)  # a stream left part-used (buffered words) must not leak into the next one
    np.testing.assert_array_equal(sample_latent(7, 3, 3), latents(7, 3, 1, 3)[0])


def test_large_seeds_and_indices() -> None:
    big = sample_latent((1 << 63) - 1, (1 << 62) - 1, 4)
    assert big.shape == (4,) and np.isfinite(big).all()


def test_slerp_and_lerp() -> None:
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    t = np.linspace(0, 1, 5)
    path = slerp(a, b, t)
    np.testing.assert_allclose(path[0], a, atol=1e-6)
    np.testing.assert_allclose(path[-1], b, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), 1.0, atol=1e-6)  # stays on the circle
    np.testing.assert_allclose(lerp(a, b, t)[2], [0.5, 0.5])
    np.testing.assert_allclose(slerp(a, 2 * a, t), lerp(a, 2 * a, t))  # parallel: the circle is undefined


def test_one_hot() -> None:
    np.testing.assert_array_equal(one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
