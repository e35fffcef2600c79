"""DiffAugment: what each policy does to an image, that it is differentiable, seeded, and rank-independent."""

from __future__ import annotations

import pytest
import torch

from training.config import preset_config
from training.diffaugment import augmented, cutout, diff_augment, parse_policy, translation


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_policy_names_are_checked_where_the_config_is_made() -> None:
    assert parse_policy(" translation, cutout ") == ("translation", "cutout")
    assert parse_policy("") == ()
    with pytest.raises(ValueError, match="diffaug: unknown policy \\['flip'\\]"):
        preset_config("mlp", diffaug="translation,flip")


def test_translation_moves_the_image_and_fills_with_black() -> None:
    x = torch.full((64, 1, 16, 16), -1.0)
    x[:, :, 8, 8] = 1.0  # one white pixel in the middle: a shift of at most 2 keeps it inside
    out = translation(x, _gen(), 64, slice(None))
    assert out.shape == x.shape
    assert torch.all((out == 1.0).flatten(1).sum(1) == 1)  # moved, not lost or duplicated
    rows = (out == 1.0).nonzero()[:, 2] - 8
    cols = (out == 1.0).nonzero()[:, 3] - 8
    assert rows.abs().max() <= 2 and cols.abs().max() <= 2 and (rows != 0).any() and (cols != 0).any()
    edge = translation(torch.ones(64, 1, 16, 16), _gen(), 64, slice(None))
    assert (edge == -1.0).any() and set(edge.unique().tolist()) == {-1.0, 1.0}  # what comes in is black


def test_cutout_zeroes_one_square_of_half_the_side_at_most() -> None:
    out = cutout(torch.ones(200, 1, 16, 16), _gen(), 200, slice(None))
    zeros = (out == 0).flatten(1).sum(1)
    assert zeros.max() == 64 and zeros.min() > 0  # 8x8 inside, less where it hangs over an edge
    assert (zeros < 64).any()


def test_the_augmentation_is_differentiable_and_seeded() -> None:
    x = torch.randn(8, 1, 16, 16, requires_grad=True)
    policy = parse_policy("color,translation,cutout")
    out = diff_augment(x, policy, _gen(3), 8, slice(None))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    again = diff_augment(x.detach(), policy, _gen(3), 8, slice(None))
    assert torch.equal(out.detach(), again)
    assert not torch.equal(again, diff_augment(x.detach(), policy, _gen(4), 8, slice(None)))


def test_a_rank_augments_its_part_as_one_process_augments_the_whole_batch() -> None:
    x = torch.randn(8, 1, 16, 16)
    policy = parse_policy("color,translation,cutout")
    whole = diff_augment(x, policy, _gen(5), 8, slice(None))
    parts = [diff_augment(x[s], policy, _gen(5), 8, s) for s in (slice(0, 4), slice(4, 8))]
    assert torch.equal(torch.cat(parts), whole)


def test_without_a_policy_d_is_itself_and_with_one_each_call_draws_anew() -> None:
    class D(torch.nn.Module):
        def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
            return x.flatten(1)

    D = D()
    assert augmented(D, (), 0, 1, 0, 4, slice(None)) is D
    seen = augmented(D, ("cutout",), 0, 1, 0, 4, slice(None))
    x = torch.ones(4, 1, 8, 8)
    first, second = seen(x), seen(x)
    assert first.shape == (4, 64) and not torch.equal(first, second)
    assert torch.equal(first, augmented(D, ("cutout",), 0, 1, 0, 4, slice(None))(x))
