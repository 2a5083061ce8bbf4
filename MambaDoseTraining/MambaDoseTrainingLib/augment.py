"""Joint geometric augmentation of a batch of axial slices, on the device the batch lives on.

Every input channel, the dose target and the loss weight (the possible-dose mask) get the *same*
transform, so the network always sees a consistent patient:

1. Flips (exact: ``torch.flip`` of the chosen samples). Axis layout is OpenKBP's
   ``(i, j)`` = (anterior->posterior, right->left), i.e. tensor dims ``(H, W)``. The left-right
   flip (``W``) mirrors the patient, which is anatomically plausible; when ``swap_lr_channels`` is
   on, the channels of paired left/right structures (``mask_LeftParotid`` <->
   ``mask_RightParotid`` and their PSDMs) are swapped as well, so that the structure called
   "Right" stays on the patient's right after the mirror. The anterior-posterior flip is off by
   default (a patient lying face down is not in the data). The transposition (``transpose_p``,
   off by default; square slices only) exchanges the two in-plane axes, a quarter turn and a
   mirror: with both flips it draws from all eight symmetries of the square. Coronal slices keep the right-left
   axis as their columns (``inference.VIEW_PLANE``), so they mirror the same way; a sagittal
   slice has no right-left axis in its plane: the mirrored patient's slice at the mirrored
   position is the same image with the Left/Right channels swapped, so for those samples
   (``lr_in_plane`` False) the mirror only swaps channels.
2. One affine transform per sample (rotation about the slice centre, isotropic scale, shift),
   applied with ``affine_grid`` + ``grid_sample`` in **one batched call** over all channels.
   Interpolation is bilinear for every channel, the binary ones included, and nothing is
   re-thresholded: a mask channel becomes a partial-volume fraction at its edge, and the loss
   weight (the possible-dose mask) is used as a float weight in the loss. With an identity
   transform all values come back exactly. Outside the image the border value is repeated
   (``padding_mode="border"``): at the edge of a 128 x 128 slice that is air for the CT, 0 for
   masks and dose, and a nearly right value for the distance maps.
   Samples that draw no affine transform are not resampled at all.

The random parameters (a few numbers per sample) are drawn from a CPU generator, so that the
augmentation never makes the host wait for the GPU; only the pixels are touched on the device.
With ``group`` = k > 1 (slab training: each run of k consecutive samples is a slab of k
neighbouring slices) one set of parameters is drawn per group and shared by its k samples, so a
slab is flipped, rotated, scaled and shifted as one 3D block.

Conventions of the transform (pixel units, about the slice centre, ``x`` = column ``j``,
``y`` = row ``i``): a point ``q = (x, y)`` of the input moves to ``scale * R(angle) @ q + shift``
in the output, with ``R(a) = [[cos a, -sin a], [sin a, cos a]]``. Since rows run downwards, a
positive angle turns the image clockwise on the screen.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    """Probabilities and ranges of the augmentation (per sample).

    flip_lr_p: probability of the left-right mirror (tensor dim W, OpenKBP axis 1).
    flip_ap_p: probability of the anterior-posterior flip (tensor dim H, OpenKBP axis 0).
    transpose_p: probability of exchanging the in-plane axes H and W (after the flips; square
        slices only). Drawn only when above 0, so a config without it keeps its random stream.
    swap_lr_channels: swap paired Left/Right structure channels when mirroring left-right (True
        here, as every config saved before the field existed was trained, so ``TrainConfig.from_dict``
        reads them right; ``mambadose train`` sets it from ``--lr-swap``, off by default since session 16).
    rotate_p, rotate_deg: probability of a rotation, angle uniform in [-rotate_deg, rotate_deg].
    scale_p, scale_min, scale_max: probability of an isotropic scale, factor log-uniform in range.
    shift_p, shift_frac: probability of a shift, each component uniform in
        [-shift_frac, shift_frac] x the image size (pixels).
    """

    flip_lr_p: float = 0.5
    flip_ap_p: float = 0.0
    transpose_p: float = 0.0
    swap_lr_channels: bool = True
    rotate_p: float = 0.3
    rotate_deg: float = 10.0
    scale_p: float = 0.3
    scale_min: float = 0.9
    scale_max: float = 1.1
    shift_p: float = 0.3
    shift_frac: float = 0.05

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all."""
        return cls(flip_lr_p=0.0, flip_ap_p=0.0, rotate_p=0.0, scale_p=0.0, shift_p=0.0)


def lr_swap_permutation(channels: tuple[str, ...] | list[str]) -> list[int] | None:
    """Channel order that exchanges each ``...Right...`` channel with its ``...Left...`` twin.

    Uses the same pairing as test-time augmentation (``inference.lr_swap_pairs``); None when no
    pair exists.
    """
    from MambaDoseLib.inference import lr_swap_pairs, swap_order

    pairs = lr_swap_pairs(channels)
    return swap_order(len(channels), pairs) if pairs else None


def affine_theta(
    angle_rad: torch.Tensor,
    scale: torch.Tensor,
    shift_px: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """``affine_grid`` matrices (B, 2, 3) for the forward transform ``q -> scale * R q + shift``.

    angle_rad, scale: (B,); shift_px: (B, 2) as (x = column, y = row) pixels.
    ``affine_grid`` maps each *output* position to the *input* position it samples, so the
    matrix is the inverse transform, expressed in the normalised coordinates of
    ``align_corners=False`` (u = D^-1 q with D = diag(W/2, H/2)).
    """
    cos, sin = torch.cos(angle_rad), torch.sin(angle_rad)
    # inverse of s R is R^T / s
    inv = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # (B, 2, 2)
    inv = inv / scale[:, None, None]
    d = torch.tensor([width / 2.0, height / 2.0], dtype=inv.dtype, device=inv.device)
    linear = inv * d[None, None, :] / d[None, :, None]  # D^-1 A^-1 D
    offset = -(inv @ shift_px.unsqueeze(-1)).squeeze(-1) / d  # -D^-1 A^-1 t, (B, 2)
    return torch.cat([linear, offset.unsqueeze(-1)], dim=-1)


def apply_affine(stack: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample (B, C, H, W) with per-sample matrices (B, 2, 3): bilinear, border padding."""
    grid = F.affine_grid(theta.to(stack.dtype), list(stack.shape), align_corners=False)
    return F.grid_sample(stack, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _coin(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) < p


def _replace_rows(stack: torch.Tensor, rows: torch.Tensor, transform) -> torch.Tensor:
    """``stack`` with ``transform`` applied to the rows ``rows`` (CPU indices; no device sync)."""
    if rows.numel() == 0:
        return stack
    if rows.numel() == stack.shape[0]:
        return transform(stack)
    index = rows.to(stack.device, non_blocking=True)
    return stack.index_copy(0, index, transform(stack.index_select(0, index)))


def augment_batch(
    inputs: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    config: AugmentConfig,
    generator: torch.Generator,
    channels: tuple[str, ...] | list[str] | None = None,
    lr_in_plane: torch.Tensor | None = None,
    group: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augment a batch jointly.

    inputs: float (B, C, H, W); target: float (B, 1, H, W) dose on the [-1, 1] scale;
    weight: float (B, 1, H, W) loss weight (the possible-dose mask), all on one device.
    generator: a CPU ``torch.Generator``, the only source of randomness. The per-sample
    parameters are drawn on the CPU (a few numbers), so the device never has to report back to
    the host (no synchronisation); the pixels are moved on the batch's device.
    channels: names of the C input channels (for the left/right channel swap); None = no swap.
    lr_in_plane: CPU bool (B,), whether each sample's columns run right -> left (axial and coronal
    slices; default all True); where False the left-right mirror only swaps channels.
    group: the parameters are drawn once per run of ``group`` consecutive samples (B a multiple
    of it) and shared within the run; 1 draws them per sample.
    Returns the three tensors transformed identically (same shapes and dtypes).
    """
    b, c, h, w = inputs.shape
    if group < 1 or b % group:
        raise ValueError(f"augment_batch: batch of {b} is not a whole number of groups of {group}")
    stack = torch.cat([inputs, target, weight], dim=1)  # (B, C + 2, H, W)

    # the same number of draws whatever the probabilities: reproducible streams
    n = b // group  # independent draws
    flip_lr = _coin(n, config.flip_lr_p, generator)
    flip_ap = _coin(n, config.flip_ap_p, generator)
    rotate = _coin(n, config.rotate_p, generator)
    scale_on = _coin(n, config.scale_p, generator)
    shift_on = _coin(n, config.shift_p, generator)
    max_angle = math.radians(config.rotate_deg)
    angle = torch.where(rotate, _uniform(n, -max_angle, max_angle, generator), 0.0)
    log_s = _uniform(n, math.log(config.scale_min), math.log(config.scale_max), generator)
    scale = torch.where(scale_on, torch.exp(log_s), 1.0)
    shift = torch.rand(n, 2, generator=generator) * 2.0 - 1.0
    shift = torch.where(shift_on[:, None], shift * config.shift_frac * torch.tensor([w, h]), 0.0)
    # drawn last and only when on, so that configs without it keep their streams
    transpose = (
        _coin(n, config.transpose_p, generator)
        if config.transpose_p > 0
        else torch.zeros(n, dtype=torch.bool)
    )
    if config.transpose_p > 0 and h != w:  # refused at the first batch, not when first drawn
        raise ValueError(f"augment_batch: transpose_p > 0 needs square slices, got {h} x {w}")
    if group > 1:  # one draw per group, repeated for its samples
        flip_lr, flip_ap, transpose, rotate, scale_on, shift_on, angle, scale, shift = (
            t.repeat_interleave(group, dim=0)
            for t in (flip_lr, flip_ap, transpose, rotate, scale_on, shift_on, angle, scale, shift)
        )

    perm = lr_swap_permutation(channels) if (channels and config.swap_lr_channels) else None
    order = None if perm is None else perm + [c, c + 1]

    def swap_only(x: torch.Tensor) -> torch.Tensor:
        return x if order is None else x[:, order]

    def mirror(x: torch.Tensor) -> torch.Tensor:
        return swap_only(x.flip(-1))

    in_plane = torch.ones(b, dtype=torch.bool) if lr_in_plane is None else lr_in_plane.to("cpu", torch.bool)
    stack = _replace_rows(stack, torch.nonzero(flip_lr & in_plane).squeeze(1), mirror)
    stack = _replace_rows(stack, torch.nonzero(flip_lr & ~in_plane).squeeze(1), swap_only)
    stack = _replace_rows(stack, torch.nonzero(flip_ap).squeeze(1), lambda x: x.flip(-2))
    stack = _replace_rows(stack, torch.nonzero(transpose).squeeze(1), lambda x: x.transpose(-1, -2))

    chosen = torch.nonzero(rotate | scale_on | shift_on).squeeze(1)
    if chosen.numel() > 0:
        theta = affine_theta(angle[chosen], scale[chosen], shift[chosen], h, w)
        theta = theta.to(stack.device, non_blocking=True)
        stack = _replace_rows(stack, chosen, lambda x: apply_affine(x.float(), theta).to(x.dtype))

    return stack[:, :c], stack[:, c : c + 1], stack[:, c + 1 :]
