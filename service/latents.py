"""Latent vectors and paths: pure numpy functions of (seed, index, z_dim, truncation)."""

from __future__ import annotations

import functools
import threading

import numpy as np

MAX_SEED = (1 << 63) - 1
MAX_INDEX = (1 << 62) - 1


def sample_latent(seed: int, index: int, z_dim: int, truncation: float | None = None) -> np.ndarray:
    """z of sample `index` for `seed`: its own Philox stream keyed by (seed, index), so no batch can affect it.

    With a truncation threshold t, coordinates with |z| > t are redrawn from the same stream until they
    fit: a truncated normal that is still a pure function of (seed, index, z_dim, t).
    """
    rng = _stream(seed, index)
    z = rng.standard_normal(z_dim)
    if truncation is not None:
        outside = np.abs(z) > truncation
        while outside.any():
            z[outside] = rng.standard_normal(int(outside.sum()))
            outside = np.abs(z) > truncation
    out: np.ndarray = z.astype(np.float32)
    return out


_streams = threading.local()  # one re-keyed Philox per thread: building a Generator per row cost 4x its draw


def _stream(seed: int, index: int) -> np.random.Generator:
    """The generator of `np.random.Generator(np.random.Philox(key=(seed << 64) | index))`, at its start.

    Re-keying one Philox through its state (key words low first, counter and buffers reset) gives the same
    stream as constructing it, for a quarter of the CPU; tests/test_latents.py checks the two agree.
    """
    cached = getattr(_streams, "philox", None)
    if cached is None:
        bit_generator = np.random.Philox(0)
        cached = _streams.philox = (bit_generator, np.random.Generator(bit_generator), bit_generator.state)
    bit_generator, generator, state = cached
    state["state"]["key"] = np.array([index, seed], dtype=np.uint64)
    state["state"]["counter"] = np.zeros(4, dtype=np.uint64)
    state["buffer_pos"], state["has_uint32"], state["uinteger"] = 4, 0, 0
    bit_generator.state = state
    return generator


def latents(seed: int, start: int, n: int, z_dim: int, truncation: float | None = None) -> np.ndarray:
    """(n, z_dim) latents of samples start .. start + n - 1."""
    out = np.empty((n, z_dim), dtype=np.float32)
    for k in range(n):
        out[k] = sample_latent(seed, start + k, z_dim, truncation)
    return out


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    out: np.ndarray = _identity(num_classes)[labels]  # fancy indexing: a new array, never the cached one
    return out


@functools.lru_cache(maxsize=64)
def _identity(num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)


def lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Rows a + t (b - a) for each t: (steps, dim)."""
    out: np.ndarray = (a[None, :] + t[:, None] * (b - a)[None, :]).astype(np.float32)
    return out


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation (Shoemake 1985): follows the great circle, keeping norms typical of N(0, I).

    Falls back to lerp when a and b are (anti-)parallel and the circle is undefined.
    """
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norm_a, norm_b = np.linalg.norm(a64), np.linalg.norm(b64)
    if norm_a == 0 or norm_b == 0:
        return lerp(a, b, t)
    cos = np.clip(np.dot(a64 / norm_a, b64 / norm_b), -1.0, 1.0)
    omega = np.arccos(cos)
    if np.sin(omega) < 1e-6:
        return lerp(a, b, t)
    wa = np.sin((1.0 - t) * omega) / np.sin(omega)
    wb = np.sin(t * omega) / np.sin(omega)
    out: np.ndarray = (wa[:, None] * a64[None, :] + wb[:, None] * b64[None, :]).astype(np.float32)
    return out
