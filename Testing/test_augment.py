"""Joint geometric augmentation: flips, identity, rotation geometry, joint transform."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from MambaDoseTrainingLib.augment import (
    AugmentConfig,
    affine_theta,
    apply_affine,
    augment_batch,
    lr_swap_permutation,
)


def _batch(b: int = 4, c: int = 3, h: int = 32, w: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, w, generator=g)
    y = torch.rand(b, 1, h, w, generator=g) * 2 - 1
    m = (torch.rand(b, 1, h, w, generator=g) > 0.5).float()
    return x, y, m


def _blob(h: int, w: int, i0: float, j0: float, sigma: float = 1.5) -> torch.Tensor:
    i = torch.arange(h, dtype=torch.float64)[:, None]
    j = torch.arange(w, dtype=torch.float64)[None, :]
    return torch.exp(-((i - i0) ** 2 + (j - j0) ** 2) / (2 * sigma**2))


def _centroid(img: torch.Tensor) -> tuple[float, float]:
    h, w = img.shape
    i = torch.arange(h, dtype=img.dtype)[:, None]
    j = torch.arange(w, dtype=img.dtype)[None, :]
    total = img.sum()
    return float((img * i).sum() / total), float((img * j).sum() / total)


def test_flip_twice_is_identity():
    x, y, m = _batch()
    cfg = AugmentConfig(flip_lr_p=1.0, flip_ap_p=1.0, rotate_p=0, scale_p=0, shift_p=0)
    once = augment_batch(x, y, m, cfg, torch.Generator().manual_seed(1))
    assert not torch.equal(once[0], x)
    assert torch.equal(once[0], x.flip(-1).flip(-2))
    twice = augment_batch(*once, cfg, torch.Generator().manual_seed(2))
    for a, b in zip(twice, (x, y, m), strict=True):
        assert torch.equal(a, b)


def test_lr_flip_swaps_paired_channels_and_twice_restores():
    names = ("ct", "mask_RightParotid", "mask_LeftParotid", "psdm_RightParotid", "psdm_LeftParotid")
    assert lr_swap_permutation(names) == [0, 2, 1, 4, 3]
    assert lr_swap_permutation(("ct", "mask_Brainstem")) is None
    x, y, m = _batch(c=len(names))
    cfg = AugmentConfig(flip_lr_p=1.0, rotate_p=0, scale_p=0, shift_p=0)
    xf, yf, mf = augment_batch(x, y, m, cfg, torch.Generator().manual_seed(0), names)
    assert torch.equal(xf[:, 1], x[:, 2].flip(-1))
    assert torch.equal(xf[:, 4], x[:, 3].flip(-1))
    assert torch.equal(yf, y.flip(-1)) and torch.equal(mf, m.flip(-1))
    back = augment_batch(xf, yf, mf, cfg, torch.Generator().manual_seed(0), names)
    assert torch.equal(back[0], x)


def test_zero_transform_is_identity():
    x, y, m = _batch(h=24, w=40)
    b = x.shape[0]
    theta = affine_theta(torch.zeros(b), torch.ones(b), torch.zeros(b, 2), 24, 40)
    out = apply_affine(torch.cat([x, y, m], 1), theta)
    assert torch.allclose(out, torch.cat([x, y, m], 1), atol=1e-5)
    # probabilities on, ranges zero: every sample resampled with the identity transform
    cfg = AugmentConfig(
        flip_lr_p=0, rotate_p=1, rotate_deg=0, scale_p=1, scale_min=1, scale_max=1, shift_p=1, shift_frac=0
    )
    for a, ref in zip(augment_batch(x, y, m, cfg, torch.Generator().manual_seed(3)), (x, y, m), strict=True):
        assert torch.allclose(a, ref, atol=1e-5)


def test_no_augmentation_returns_input_exactly():
    x, y, m = _batch()
    out = augment_batch(x, y, m, AugmentConfig.none(), torch.Generator().manual_seed(0))
    for a, ref in zip(out, (x, y, m), strict=True):
        assert torch.equal(a, ref)


def test_rotation_scale_shift_move_a_point_where_the_matrix_says():
    h = w = 64
    i0, j0 = 20.0, 40.0
    img = _blob(h, w, i0, j0)[None, None]
    for angle_deg, scale, shift in (
        (30.0, 1.0, (0.0, 0.0)),
        (-20.0, 1.1, (3.0, -5.0)),
        (90.0, 0.9, (0.0, 0.0)),
    ):
        a = math.radians(angle_deg)
        theta = affine_theta(
            torch.tensor([a], dtype=torch.float64),
            torch.tensor([scale], dtype=torch.float64),
            torch.tensor([shift], dtype=torch.float64),
            h,
            w,
        )
        out = apply_affine(img, theta)[0, 0]
        # pixel-centred (x = column, y = row) coordinates about the image centre
        qx, qy = j0 + 0.5 - w / 2, i0 + 0.5 - h / 2
        px = scale * (math.cos(a) * qx - math.sin(a) * qy) + shift[0]
        py = scale * (math.sin(a) * qx + math.cos(a) * qy) + shift[1]
        ci, cj = _centroid(out)
        assert abs(ci - (py + h / 2 - 0.5)) < 0.05, (angle_deg, ci, py)
        assert abs(cj - (px + w / 2 - 0.5)) < 0.05, (angle_deg, cj, px)


def test_rotation_of_non_square_image_keeps_geometry():
    h, w = 48, 80
    img = _blob(h, w, 30.0, 50.0)[None, None]
    a = math.radians(45)
    theta = affine_theta(
        torch.tensor([a], dtype=torch.float64),
        torch.ones(1, dtype=torch.float64),
        torch.zeros(1, 2, dtype=torch.float64),
        h,
        w,
    )
    out = apply_affine(img, theta)[0, 0]
    qx, qy = 50.0 + 0.5 - w / 2, 30.0 + 0.5 - h / 2
    ci, cj = _centroid(out)
    assert abs(cj - (math.cos(a) * qx - math.sin(a) * qy + w / 2 - 0.5)) < 0.05
    assert abs(ci - (math.sin(a) * qx + math.cos(a) * qy + h / 2 - 0.5)) < 0.05


def test_inputs_target_and_mask_transformed_identically():
    x, _, _ = _batch(b=8, c=2)
    y = x[:, :1].clone()
    m = x[:, 1:2].clone()
    cfg = AugmentConfig(flip_lr_p=0.5, flip_ap_p=0.5, rotate_p=0.7, scale_p=0.7, shift_p=0.7)
    xa, ya, ma = augment_batch(x, y, m, cfg, torch.Generator().manual_seed(7))
    assert torch.equal(xa[:, :1], ya)
    assert torch.equal(xa[:, 1:2], ma)
    assert not torch.allclose(xa, x)  # something happened


def test_same_generator_seed_gives_same_augmentation():
    x, y, m = _batch(b=6)
    cfg = AugmentConfig(rotate_p=0.5, scale_p=0.5, shift_p=0.5)
    a = augment_batch(x, y, m, cfg, torch.Generator().manual_seed(11))
    b = augment_batch(x, y, m, cfg, torch.Generator().manual_seed(11))
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)


def test_groups_share_one_transform_and_group_one_is_unchanged():
    """group=k: one set of parameters per run of k samples (a slab moves as one block): k equal
    slices stay equal; group=1 draws as before (the stream of a fixed seed is unchanged)."""
    names = ("ct", "mask_RightParotid", "mask_LeftParotid")
    x, y, m = _batch(b=3, c=3)
    k = 4
    xs, ys, ms = (t.repeat_interleave(k, dim=0) for t in (x, y, m))  # 3 groups of 4 equal slices
    cfg = AugmentConfig(flip_lr_p=0.5, flip_ap_p=0.5, rotate_p=0.7, scale_p=0.7, shift_p=0.7)
    out = augment_batch(xs, ys, ms, cfg, torch.Generator().manual_seed(5), names, group=k)
    for t in out:
        groups = t.view(3, k, *t.shape[1:])
        assert all(torch.equal(groups[:, 0], groups[:, j]) for j in range(1, k))
    assert not all(torch.equal(out[0][i * k], out[0][j * k]) for i in range(3) for j in range(3))
    # group 1 is the per-sample augmentation: the same draws as without the argument
    for seed in range(3):
        a = augment_batch(xs, ys, ms, cfg, torch.Generator().manual_seed(seed), names)
        b = augment_batch(xs, ys, ms, cfg, torch.Generator().manual_seed(seed), names, group=1)
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    # and it draws a different transform for equal slices of one group
    per_sample = augment_batch(xs, ys, ms, cfg, torch.Generator().manual_seed(5), names)[0]
    assert not all(torch.equal(per_sample[0], per_sample[j]) for j in range(1, k))
    with pytest.raises(ValueError, match="groups of 5"):
        augment_batch(xs, ys, ms, cfg, torch.Generator().manual_seed(0), names, group=5)


def test_transpose_exchanges_the_axes_and_with_both_flips_is_a_quarter_turn():
    x, y, m = _batch(b=2, c=3, h=16, w=16)
    cfg = AugmentConfig(flip_lr_p=0, flip_ap_p=0, transpose_p=1.0, rotate_p=0, scale_p=0, shift_p=0)
    xt, yt, mt = augment_batch(x, y, m, cfg, torch.Generator().manual_seed(0))
    for a, b in zip((xt, yt, mt), (x, y, m), strict=True):
        assert torch.equal(a, b.transpose(-1, -2))
    # AP flip, then transposition: a quarter turn (torch.rot90 over the last two dims, k = -1)
    turn = AugmentConfig(flip_lr_p=0, flip_ap_p=1.0, transpose_p=1.0, rotate_p=0, scale_p=0, shift_p=0)
    xq = augment_batch(x, y, m, turn, torch.Generator().manual_seed(0))[0]
    assert torch.equal(xq, torch.rot90(x, k=-1, dims=(-2, -1)))
    with pytest.raises(ValueError, match="square slices"):
        augment_batch(*_batch(h=16, w=24), cfg, torch.Generator().manual_seed(0))
    # refused even when no sample of the batch draws the transposition, so a run stops at its start
    rare = dataclasses.replace(cfg, transpose_p=1e-9)
    with pytest.raises(ValueError, match="square slices"):
        augment_batch(*_batch(h=16, w=24), rare, torch.Generator().manual_seed(0))


def test_transpose_off_keeps_the_random_stream():
    """A config without the transposition draws exactly as before the field existed."""
    x, y, m = _batch(b=6)
    cfg = AugmentConfig(rotate_p=0.5, scale_p=0.5, shift_p=0.5)
    g = torch.Generator().manual_seed(3)
    augment_batch(x, y, m, cfg, g)
    after = torch.rand(4, generator=g)
    expected = torch.Generator().manual_seed(3)
    for shape in [(6,)] * 7 + [(6, 2)]:  # 5 coins, angle, log-scale, then the 2-d shift
        torch.rand(*shape, generator=expected)
    assert torch.equal(after, torch.rand(4, generator=expected))
