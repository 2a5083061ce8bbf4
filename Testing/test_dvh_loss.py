"""The optional sorted DVH loss (``--dvh-loss``): loss values, structure masks, config, CLI, training (CPU)."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from MambaDoseLib.errors import InputError
from MambaDoseLib.phantom import make_phantom
from MambaDoseTrainingLib.train import (
    TrainConfig,
    masked_smooth_l1,
    roi_channel_indices,
    roi_masks_from_features,
    run_training,
    sorted_dvh_loss,
)
from test_train import SHAPE, _config

# --------------------------------------------------------------------------- the loss


def test_sorted_dvh_loss_hand_computed():
    pred = torch.tensor([[[[0.3, -0.5], [0.9, 0.1]]]])
    target = torch.tensor([[[[0.0, 0.2], [0.4, -1.0]]]])
    full = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    # sorted pred -0.5 0.1 0.3 0.9, sorted target -1.0 0.0 0.2 0.4: |diff| 0.5 0.1 0.1 0.5
    loss = sorted_dvh_loss(pred, target, full, min_voxels=1)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.3, abs=1e-6)
    # without the last voxel: pred -0.5 0.3 0.9, target 0.0 0.2 0.4: |diff| 0.5 0.1 0.5
    part = full.clone()
    part[0, 0, 1, 1] = False
    assert sorted_dvh_loss(pred, target, part, min_voxels=1).item() == pytest.approx(1.1 / 3, abs=1e-6)
    both = torch.cat([full, part], dim=1)  # the mean over the two (sample, structure) pairs
    expected = (0.3 + 1.1 / 3) / 2
    assert sorted_dvh_loss(pred, target, both, min_voxels=1).item() == pytest.approx(expected, abs=1e-6)
    # bf16 predictions (autocast) are computed in float32
    assert sorted_dvh_loss(pred.bfloat16(), target, full, min_voxels=1).dtype == torch.float32


def test_sorted_dvh_loss_is_zero_for_a_perfect_prediction():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(3, 1, 16, 16, generator=gen) * 2 - 1
    masks = torch.rand(3, 4, 16, 16, generator=gen) > 0.5
    assert sorted_dvh_loss(target.clone(), target, masks).item() == 0.0


def test_sorted_dvh_loss_ignores_where_in_the_structure_a_dose_lies():
    gen = torch.Generator().manual_seed(1)
    target = torch.rand(1, 1, 12, 12, generator=gen) * 2 - 1
    pred = torch.rand(1, 1, 12, 12, generator=gen) * 2 - 1
    mask = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    mask[..., 2:9, 3:10] = True
    inside = mask[0, 0].flatten().nonzero().squeeze(1)
    shuffled = pred.clone().flatten()
    shuffled[inside] = shuffled[inside[torch.randperm(inside.numel(), generator=gen)]]
    shuffled = shuffled.view_as(pred)
    assert not torch.equal(shuffled, pred)
    a = sorted_dvh_loss(pred, target, mask)
    b = sorted_dvh_loss(shuffled, target, mask)
    assert a.item() > 0 and b.item() == pytest.approx(a.item(), abs=1e-6)
    weight = mask.float()  # the voxel-wise loss does see the permutation
    assert masked_smooth_l1(shuffled, target, weight, 0.05) != masked_smooth_l1(pred, target, weight, 0.05)


def test_sorted_dvh_loss_ignores_structures_under_eight_voxels():
    pred = torch.full((2, 1, 8, 8), 0.5)
    target = torch.zeros(2, 1, 8, 8)
    masks = torch.zeros(2, 2, 8, 8, dtype=torch.bool)
    masks[0, 0, :2, :4] = True  # 8 voxels: counted, |diff| 0.5
    masks[1, 1, 0, :7] = True  # 7 voxels: ignored
    assert sorted_dvh_loss(pred, target, masks).item() == pytest.approx(0.5)
    pred[1] = 5.0  # the ignored pair does not change the loss
    assert sorted_dvh_loss(pred, target, masks).item() == pytest.approx(0.5)
    masks[0] = False
    pred.requires_grad_(True)
    none = sorted_dvh_loss(pred, target, masks)  # no valid pair: 0, still connected to pred
    assert none.item() == 0.0 and none.grad_fn is not None
    none.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_sorted_dvh_loss_gradient_is_finite_and_only_inside_the_masks():
    gen = torch.Generator().manual_seed(2)
    pred = (torch.rand(2, 1, 10, 10, generator=gen) * 2 - 1).requires_grad_(True)
    target = torch.rand(2, 1, 10, 10, generator=gen) * 2 - 1
    masks = torch.zeros(2, 3, 10, 10, dtype=torch.bool)
    masks[0, 0, 1:5, 1:5] = True
    masks[0, 1, 3:8, 3:8] = True  # overlaps the first
    masks[1, 2, 6:10, 0:3] = True
    masks[1, 0, 0, 0:3] = True  # 3 voxels: no gradient
    sorted_dvh_loss(pred, target, masks).backward()
    grad = pred.grad
    assert torch.isfinite(grad).all()
    counted = masks.clone()
    counted[1, 0] = False
    inside = counted.any(dim=1, keepdim=True)
    assert torch.all(grad[~inside] == 0)
    assert torch.all(grad[inside] != 0)  # distinct random values: every voxel moves


# --------------------------------------------------------------------------- property


@st.composite
def _loss_case(draw):
    b, r = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    values = st.floats(-1.0, 1.0, width=32, allow_nan=False, allow_subnormal=False)
    pred = draw(hnp.arrays(np.float32, (b, 1, h, w), elements=values))
    target = draw(hnp.arrays(np.float32, (b, 1, h, w), elements=values))
    masks = draw(hnp.arrays(np.bool_, (b, r, h, w)))
    return pred, target, masks, draw(st.integers(1, 6))


def _reference(pred, target, masks, min_voxels) -> float:
    losses = []
    for i in range(masks.shape[0]):
        for j in range(masks.shape[1]):
            m = masks[i, j]
            if m.sum() >= min_voxels:
                p = np.sort(pred[i, 0][m].astype(np.float64))
                t = np.sort(target[i, 0][m].astype(np.float64))
                losses.append(np.mean(np.abs(p - t)))
    return float(np.mean(losses)) if losses else 0.0


@settings(max_examples=100, deadline=None)
@given(_loss_case())
def test_sorted_dvh_loss_matches_a_per_pair_numpy_computation(case):
    pred, target, masks, min_voxels = case
    p, t, m = torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(masks)
    loss = sorted_dvh_loss(p, t, m, min_voxels=min_voxels).item()
    assert loss >= 0
    assert loss == pytest.approx(sorted_dvh_loss(t, p, m, min_voxels=min_voxels).item(), abs=1e-6)
    assert loss == pytest.approx(_reference(pred, target, masks, min_voxels), abs=1e-5)


@st.composite
def _grouped_case(draw):
    group, volumes, r = draw(st.integers(1, 4)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    b = group * volumes
    values = st.floats(-1.0, 1.0, width=32, allow_nan=False, allow_subnormal=False)
    pred = draw(hnp.arrays(np.float32, (b, 1, h, w), elements=values))
    target = draw(hnp.arrays(np.float32, (b, 1, h, w), elements=values))
    masks = draw(hnp.arrays(np.bool_, (b, r, h, w)))
    return pred, target, masks, draw(st.integers(1, 6)), group


@settings(max_examples=100, deadline=None)
@given(_grouped_case())
def test_grouped_sorted_dvh_loss_matches_the_volumes_stacked_by_hand(case):
    """group=K takes K consecutive rows as one volume: the same as the ungrouped loss on those rows
    stacked along the first spatial axis (a slab's 3D DVH, not K slice DVHs)."""
    pred, target, masks, min_voxels, group = case
    volumes = pred.shape[0] // group

    def stack(a):  # (volumes * K, C, H, W) -> (volumes, C, K * H, W)
        v = a.reshape(volumes, group, a.shape[1], a.shape[2], a.shape[3]).transpose(0, 2, 1, 3, 4)
        return v.reshape(volumes, a.shape[1], group * a.shape[2], a.shape[3])

    expected = _reference(stack(pred), stack(target), stack(masks), min_voxels)
    p, t, m = torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(masks)
    loss = sorted_dvh_loss(p, t, m, min_voxels=min_voxels, group=group).item()
    assert loss == pytest.approx(expected, abs=1e-5)


def test_grouped_sorted_dvh_loss_refuses_a_batch_of_partial_groups():
    x = torch.zeros(6, 1, 4, 4)
    with pytest.raises(ValueError, match="groups of 4"):
        sorted_dvh_loss(x, x, torch.ones(6, 2, 4, 4, dtype=torch.bool), group=4)


def test_grouped_sorted_dvh_loss_differs_from_the_slice_by_slice_one():
    """Two slices whose doses are swapped between them: every slice DVH is wrong, the slab's is right."""
    target = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1).expand(2, 1, 3, 3).contiguous()
    pred = target.flip(0)
    masks = torch.ones(2, 1, 3, 3, dtype=torch.bool)
    assert sorted_dvh_loss(pred, target, masks, min_voxels=1).item() == pytest.approx(1.0)
    assert sorted_dvh_loss(pred, target, masks, min_voxels=1, group=2).item() == 0.0


# --------------------------------------------------------------------------- structure masks


def test_roi_masks_from_features_uses_masks_and_target_distance_maps():
    channels = (
        "ct",
        "mask_Brainstem",
        "mask_Brainstem_prev",  # a neighbour slice: ignored
        "psdm_Brainstem",  # an OAR's distance map: ignored
        "psdm_PTV70",
        "psdm_PTV56_next",  # ignored
        "mask_PTV63",
        "psdm_PTV63",  # the target has a mask channel: not used twice
    )
    assert roi_channel_indices(channels) == ([1, 6], [4])
    assert roi_channel_indices(channels, "targets") == ([6], [4])  # mask_PTV63, psdm_PTV70
    assert roi_channel_indices(channels, "oars") == ([1], [])  # mask_Brainstem
    assert roi_channel_indices(("mask_Body", "mask_Larynx"), "oars") == ([1], [])  # organs at risk only
    with pytest.raises(ValueError, match="rois must be one of all, targets, oars"):
        roi_channel_indices(channels, "ptvs")
    x = torch.zeros(2, len(channels), 2, 3)
    x[:, 1] = torch.tensor([[0.6, 0.4, 1.0], [0.0, 0.51, 0.5]])  # interpolated mask values
    x[:, 2] = 1.0
    x[:, 3] = -1.0
    x[:, 4] = torch.tensor([[-0.3, 0.0, 0.01], [0.2, -0.0, 1.0]])  # 0 = on the boundary: inside
    x[:, 5] = -1.0
    x[:, 6] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.9]])
    x[:, 7] = -1.0
    masks = roi_masks_from_features(x, channels)
    assert masks.dtype == torch.bool and masks.shape == (2, 3, 2, 3)
    expected = torch.tensor(
        [
            [[True, False, True], [False, True, False]],  # mask_Brainstem
            [[True, False, False], [False, False, True]],  # mask_PTV63
            [[True, True, False], [False, True, False]],  # psdm_PTV70
        ]
    )
    assert torch.equal(masks, expected.expand(2, -1, -1, -1))
    assert (
        roi_masks_from_features(
            x[:, [0, 2, 3, 5, 2]],
            ("ct", "mask_Brainstem_prev", "psdm_Brainstem", "psdm_PTV56_next", "mask_PTV63_next2"),
        )
        is None
    )
    only_psdm = roi_masks_from_features(x[:, [0, 4]], ("ct", "psdm_PTV70"))
    assert torch.equal(only_psdm, masks[:, 2:3])


def test_roi_masks_of_the_default_channels_match_the_phantom_structures():
    from MambaDoseLib.features import build_features
    from MambaDoseLib.rois import OAR_NAMES, TARGET_NAMES
    from MambaDoseTrainingLib.dataset import channels_for_preset

    patient = make_phantom(SHAPE, seed=1, patient_id="pt_1")
    channels = channels_for_preset("2d")
    feats = torch.from_numpy(build_features(patient, channels)).permute(3, 0, 1, 2)  # (K, C, I, J)
    masks = roi_masks_from_features(feats, channels)
    assert masks.shape[1] == len(OAR_NAMES) + len(TARGET_NAMES)
    for r, name in enumerate((*OAR_NAMES, *TARGET_NAMES)):
        roi = patient.structures.get(name)
        if roi is None:
            continue
        assert torch.equal(masks[:, r], torch.from_numpy(np.asarray(roi, bool)).permute(2, 0, 1)), name


# --------------------------------------------------------------------------- config, CLI, training


def test_config_refuses_a_negative_or_non_finite_weight(tmp_path):
    _config(tmp_path, dvh_loss_weight=0.0).check()
    _config(tmp_path, dvh_loss_weight=0.5).check()
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(InputError, match="--dvh-loss"):
            _config(tmp_path, dvh_loss_weight=bad).check()


def test_config_refuses_unknown_dvh_loss_rois(tmp_path):
    from MambaDoseTrainingLib.commands import train as command
    from MambaDoseTrainingLib.train import DVH_LOSS_ROIS

    assert command.DVH_LOSS_ROIS == DVH_LOSS_ROIS  # spelt out twice (the parser imports no torch)
    for rois in ("all", "targets", "oars"):
        _config(tmp_path, dvh_loss_weight=1.0, dvh_loss_rois=rois).check()
    with pytest.raises(InputError, match="--dvh-loss-rois must be one of all, targets, oars"):
        _config(tmp_path, dvh_loss_weight=1.0, dvh_loss_rois="ptv").check()
    with pytest.raises(InputError, match="--dvh-loss-rois oars has no effect without --dvh-loss"):
        _config(tmp_path, dvh_loss_rois="oars").check()


def test_cli_option_dvh_loss_reaches_the_config_and_old_configs_load():
    from MambaDoseTrainingLib.commands.train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--train-cache", "t", "--val-cache", "v", "--out", "o"]
    assert TrainConfig.from_args(parser.parse_args(base)).dvh_loss_weight == 0.0
    cfg = TrainConfig.from_args(parser.parse_args([*base, "--dvh-loss", "0.25"]))
    assert cfg.dvh_loss_weight == 0.25
    assert TrainConfig.from_dict(cfg.to_dict()).dvh_loss_weight == 0.25
    assert cfg.dvh_loss_rois == "all"
    targets = TrainConfig.from_args(
        parser.parse_args([*base, "--dvh-loss", "1", "--dvh-loss-rois", "targets"])
    )
    assert TrainConfig.from_dict(targets.to_dict()).dvh_loss_rois == "targets"
    old = cfg.to_dict()
    del old["dvh_loss_weight"], old["dvh_loss_rois"]  # a config saved before the options existed
    old["some_future_option"] = 1
    restored = TrainConfig.from_dict(old)
    assert restored.dvh_loss_weight == 0.0 and restored.dvh_loss_rois == "all"
    assert restored.inplane_spacing_mm == cfg.inplane_spacing_mm


def test_training_with_the_dvh_loss_runs_and_adds_the_term(tmp_path):
    train = [make_phantom(SHAPE, seed=s, patient_id=f"pt_{s}") for s in (1, 2)]
    val = [make_phantom(SHAPE, seed=201, patient_id="pt_201")]
    # one optimiser step per run: the logged loss is that of the same initial weights and batch
    common = dict(epochs=1, slices_per_epoch=8, warmup_epochs=0)
    plain = run_training(_config(tmp_path / "plain", **common), train, val)
    dvh = run_training(_config(tmp_path / "dvh", dvh_loss_weight=0.5, **common), train, val)
    assert dvh["status"] == "completed" and dvh["epochs"] == 1
    assert math.isfinite(dvh["history"][0]["train_loss"]) and math.isfinite(dvh["best_val_dose_score"])
    assert dvh["history"][0]["train_loss"] > plain["history"][0]["train_loss"]  # the total loss is logged


def test_training_with_the_dvh_loss_on_targets_or_organs_only(tmp_path):
    train = [make_phantom(SHAPE, seed=s, patient_id=f"pt_{s}") for s in (1, 2)]
    val = [make_phantom(SHAPE, seed=201, patient_id="pt_201")]
    common = dict(epochs=1, slices_per_epoch=8, warmup_epochs=0, dvh_loss_weight=0.5)
    losses = {}
    for rois in ("all", "targets", "oars"):
        result = run_training(_config(tmp_path / rois, dvh_loss_rois=rois, **common), train, val)
        assert result["status"] == "completed"
        losses[rois] = result["history"][0]["train_loss"]
    plain = run_training(_config(tmp_path / "plain", **{**common, "dvh_loss_weight": 0.0}), train, val)
    # same weights and batch: each term adds to the voxel loss, and the three terms differ
    assert min(losses["targets"], losses["oars"]) > plain["history"][0]["train_loss"]
    assert len({round(v, 9) for v in losses.values()}) == 3
