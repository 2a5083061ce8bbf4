"""Slice-wise inference (MambaDoseLib.inference) with tiny models of known behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from MambaDoseLib import inference
from MambaDoseLib.errors import InputError, MambaDoseError
from MambaDoseLib.patient import Patient


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _features(c: int = 3, shape=(6, 5, 7), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, size=(c, *shape)).astype(np.float32)


def _conv1x1(c: int, seed: int = 0) -> torch.nn.Module:
    """A 1x1 conv: acts per pixel, so it commutes with every flip."""
    torch.manual_seed(seed)
    return torch.nn.Conv2d(c, 1, kernel_size=1)


class _Difference(torch.nn.Module):
    """Channel 0 minus channel 1: changes sign when the two channels are swapped."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, 0:1] - x[:, 1:2]) + self.dummy


class _RowRamp(torch.nn.Module):
    """Channel 0 plus a ramp along rows (axis I): NOT equivariant under an axis-0 flip."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.arange(x.shape[2], dtype=x.dtype).view(1, 1, -1, 1)
        return x[:, 0:1] + ramp + self.dummy


def test_predict_volume_matches_direct_model_on_each_slice():
    f = _features()
    model = _conv1x1(3)
    got = inference.predict_volume(model, f, batch_size=4, device="cpu", denormalise=_identity)
    assert got.shape == (6, 5, 7) and got.dtype == np.float32
    with torch.no_grad():
        x = torch.from_numpy(np.moveaxis(f, 3, 0).copy())  # (K, C, I, J)
        ref = np.moveaxis(model(x)[:, 0].numpy(), 0, 2)
    np.testing.assert_allclose(got, np.maximum(ref, 0.0), atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 3, 7, 100])
def test_batching_gives_the_same_result(batch_size):
    f = _features()
    model = _conv1x1(3, seed=1)
    one = inference.predict_volume(model, f, batch_size=f.shape[3], device="cpu", denormalise=_identity)
    got = inference.predict_volume(model, f, batch_size=batch_size, device="cpu", denormalise=_identity)
    np.testing.assert_allclose(got, one, atol=1e-6)


def test_tta_with_flip_equivariant_model_equals_no_tta():
    f = _features()
    model = _conv1x1(3, seed=2)
    plain = inference.predict_volume(model, f, device="cpu", denormalise=_identity)
    for flips in (inference.LR_FLIPS, inference.FOUR_FLIPS):
        tta = inference.predict_volume(
            model, f, device="cpu", tta=True, tta_flips=flips, denormalise=_identity
        )
        np.testing.assert_allclose(tta, plain, atol=1e-6)


def test_tta_flips_are_undone_and_ap_flip_is_optional():
    f = _features(c=1)
    model = _RowRamp()
    plain = inference.predict_volume(model, f, device="cpu", denormalise=_identity)
    lr = inference.predict_volume(model, f, device="cpu", tta=True, denormalise=_identity)
    np.testing.assert_allclose(lr, plain, atol=1e-6)  # the ramp is constant along axis 1
    four = inference.predict_volume(
        model, f, device="cpu", tta=True, tta_flips=inference.FOUR_FLIPS, denormalise=_identity
    )
    # the ramp 0..5 along axis 0 averages with its flip to 2.5 everywhere
    np.testing.assert_allclose(four, f[0] + 2.5, atol=1e-5)


def test_tta_swaps_right_left_channels_under_lr_flip():
    f = _features(c=2)
    f[1] = 0.0
    model = _Difference()
    swapped = inference.predict_volume(
        model, f, device="cpu", tta=True, swap_channels=[(0, 1)], denormalise=lambda x: x + 10.0
    )
    # identity branch: f0 - f1 = f0; flipped + swapped branch: f1 - f0 = -f0 -> mean 0
    np.testing.assert_allclose(swapped, 10.0, atol=1e-6)
    not_swapped = inference.predict_volume(model, f, device="cpu", tta=True, denormalise=lambda x: x + 10.0)
    np.testing.assert_allclose(not_swapped, f[0] + 10.0, atol=1e-6)


def test_lr_swap_pairs_from_channel_names():
    channels = ["ct", "mask_RightParotid", "mask_LeftParotid", "psdm_LeftParotid", "psdm_RightParotid"]
    assert inference.lr_swap_pairs(channels) == [(1, 2), (4, 3)]


def test_progress_and_cancel():
    f = _features()
    seen: list[tuple[int, int]] = []
    inference.predict_volume(
        _conv1x1(3),
        f,
        batch_size=3,
        device="cpu",
        denormalise=_identity,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert seen == [(3, 7), (6, 7), (7, 7)]
    calls = iter([False, True])
    with pytest.raises(inference.PredictionCancelled, match="after 3 of 7"):
        inference.predict_volume(
            _conv1x1(3), f, batch_size=3, device="cpu", denormalise=_identity, cancel=lambda: next(calls)
        )
    assert issubclass(inference.PredictionCancelled, MambaDoseError)


def test_model_left_in_eval_mode_and_negative_dose_clipped():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 1, 1), torch.nn.BatchNorm2d(1))
    model.train()
    f = _features(c=2)
    got = inference.predict_volume(model, f, device="cpu", denormalise=lambda x: x - 100.0)
    assert not model.training
    assert np.all(got == 0.0)


def test_bad_inputs():
    with pytest.raises(MambaDoseError):
        inference.predict_volume(_conv1x1(3), np.zeros((3, 4, 4), np.float32), denormalise=_identity)
    with pytest.raises(ValueError):
        inference.predict_volume(
            _conv1x1(3), _features(), tta=True, tta_flips=[(2,)], device="cpu", denormalise=_identity
        )


def test_resolve_device():
    assert inference.resolve_device("cpu") == torch.device("cpu")
    auto = inference.resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(MambaDoseError, match="no CUDA GPU"):
            inference.resolve_device("cuda")
    with pytest.raises(MambaDoseError, match="unknown device"):
        inference.resolve_device("tpu")


def _tiny_patient(shape=(8, 8, 4)) -> Patient:
    ct = np.full(shape, 1024.0, np.float32)
    mask = np.zeros(shape, bool)
    mask[2:6, 2:6, :] = True
    ptv = np.zeros(shape, bool)
    ptv[3:5, 3:5, 1:3] = True
    return Patient("pt_1", ct, (4.0, 4.0, 2.5), mask, {"PTV70": ptv})


def test_predict_patient_is_zero_outside_the_possible_dose_mask():
    features = pytest.importorskip("MambaDoseLib.features")
    patient = _tiny_patient()
    card = {"channels": ["ct", "ptv_map", "possible_dose_mask"]}
    model = _conv1x1(3, seed=3)
    with torch.no_grad():
        model.bias.fill_(0.5)  # a positive dose everywhere
    dose = inference.predict_patient(model, card, patient, device="cpu", batch_size=2)
    assert dose.shape == patient.shape and dose.dtype == np.float32
    assert np.all(dose[~patient.possible_dose_mask] == 0.0)
    assert np.all(dose[patient.possible_dose_mask] > 0.0)
    # equals predict_volume on the features, masked
    f = features.build_features(patient, tuple(card["channels"]))
    ref = inference.predict_volume(model, f, device="cpu")
    np.testing.assert_allclose(dose[patient.possible_dose_mask], ref[patient.possible_dose_mask], atol=1e-6)


# --------------------------------------------------------------------------- views


@pytest.mark.parametrize("view", list(inference.VIEWS))
def test_view_slices_round_trip_and_layout(view):
    vol = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # (C, I, J, K)
    slices = inference.to_slices(vol, view)
    axis = inference.VIEWS[view]
    rows, cols = inference.VIEW_PLANE[view]
    assert slices.shape == (vol.shape[1 + axis], 2, vol.shape[1 + rows], vol.shape[1 + cols])
    # slice n, channel c, pixel (r, q) is the voxel with index n on the cut axis, r on rows, q on cols
    idx = [0, 0, 0]
    idx[axis], idx[rows], idx[cols] = 2, 1, 3 if vol.shape[1 + cols] > 3 else 0
    assert slices[2, 1, 1, idx[cols]] == vol[1][tuple(idx)]
    assert np.array_equal(inference.from_slices(inference.to_slices(vol[0], view), view), vol[0])
    assert inference.lr_in_plane(view) == (view != "sagittal")


def test_pointwise_model_gives_the_same_dose_in_every_view_and_pads_odd_sizes():
    torch.manual_seed(0)
    model = _conv1x1(3)
    f = np.random.default_rng(0).normal(size=(3, 8, 6, 5)).astype(np.float32)  # no side divisible by 8
    model.config = type("C", (), {"levels": 3})()  # asks for multiples of 8: every view is padded
    axial = inference.predict_volume(model, f, device="cpu", denormalise=_identity)
    three = inference.predict_volume(
        model, f, device="cpu", views=("axial", "coronal", "sagittal"), denormalise=_identity
    )
    assert three.shape == f.shape[1:]
    np.testing.assert_allclose(three, axial, atol=1e-6)


def test_unknown_or_repeated_view_is_refused():
    f = np.zeros((3, 4, 4, 4), np.float32)
    with pytest.raises(InputError, match="oblique"):
        inference.predict_volume(_conv1x1(3), f, views=("oblique",), denormalise=_identity)
    with pytest.raises(InputError, match="repeat"):
        inference.check_views(("axial", "axial"))
    assert inference.card_views({"channels": []}) == ("axial",)


# --------------------------------------------------------------------------- skipping empty slices


class _Counting(torch.nn.Module):
    """Wraps a model and counts the slices it is asked for."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.slices = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.slices += x.shape[0]
        return self.inner(x)


@pytest.mark.parametrize("tta", [False, True])
def test_within_mask_skips_empty_slices_and_keeps_the_dose_inside(tta):
    f = _features(shape=(6, 5, 7), seed=4)
    within = np.zeros((6, 5, 7), bool)
    within[1:4, 2:4, 2:5] = True  # rows 1-3, columns 2-3, axial slices 2-4
    views = ("axial", "coronal", "sagittal")
    kw = dict(device="cpu", views=views, tta=tta, tta_flips=inference.FOUR_FLIPS, batch_size=2)
    plain_model, skip_model = _Counting(_RowRamp()), _Counting(_RowRamp())  # not flip-equivariant
    plain = inference.predict_volume(plain_model, f, denormalise=_identity, **kw)
    calls = []
    skipped = inference.predict_volume(
        skip_model, f, denormalise=_identity, within=within, progress=lambda d, t: calls.append((d, t)), **kw
    )
    np.testing.assert_allclose(skipped[within], plain[within], atol=1e-6)
    assert np.all(skipped[~within] == 0.0)
    flips = 4 if tta else 1
    assert plain_model.slices == flips * (7 + 6 + 5)
    assert skip_model.slices == flips * (3 + 3 + 2)  # axial 2-4, coronal rows 1-3, sagittal columns 2-3
    assert calls[-1] == (skip_model.slices, skip_model.slices)


def test_within_mask_of_another_shape_is_refused():
    with pytest.raises(InputError, match="within mask"):
        inference.predict_volume(
            _conv1x1(3), _features(), within=np.ones((6, 5, 6), bool), denormalise=_identity
        )


# --------------------------------------------------------------------------- slab models


class _SliceWiseSlab(torch.nn.Module):
    """A per-slice 1x1 conv that calls itself a slab model (``config.slab``): windows of k
    slices averaged over a per-slice function must give the slice-wise prediction back."""

    def __init__(self, c: int, slab: int, seed: int = 0) -> None:
        super().__init__()
        self.inner = _conv1x1(c, seed)
        self.config = type("C", (), {"slab": slab})()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[0] % self.config.slab == 0  # whole windows only
        self.batches.append(x.shape[0])
        return self.inner(x)


def test_slab_windows_cover_the_range_and_end_at_its_end():
    windows = inference.slab_windows
    assert windows(np.arange(7), 7, 3).tolist() == [0, 1, 2, 3, 4]  # stride max(1, 3 // 2) = 1
    assert windows(np.arange(7), 7, 4).tolist() == [0, 2, 3]  # stride 2, the last ends at slice 6
    assert windows(np.array([2, 5]), 9, 2).tolist() == [2, 3, 4]  # the range, gaps included
    assert windows(np.array([5]), 10, 4).tolist() == [4]  # widened about evenly
    assert windows(np.array([9]), 10, 4).tolist() == [6]  # ... within the volume
    assert windows(np.array([0, 1]), 2, 3).tolist() == [0]  # fewer slices than k: reaches past the end
    assert windows(np.zeros(0, np.int64), 5, 2).size == 0
    for n in range(1, 12):
        for k in range(1, 6):
            for lo in range(n):
                for hi in range(lo, n):
                    starts = windows(np.array([lo, hi]), n, k)
                    held = set((starts[:, None] + np.arange(k)).ravel().tolist())
                    assert set(range(lo, hi + 1)) <= held
                    assert starts.min() >= 0 and starts.max() + k <= max(n, k)
                    assert np.all(np.diff(starts) > 0) and np.all(np.diff(starts) <= max(1, k // 2))


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("depth", [1, 2, 5, 7])
@pytest.mark.parametrize("mask", ["none", "middle", "one", "gap"])
def test_slab_windows_of_a_slice_wise_model_give_the_slice_wise_dose(k, depth, mask):
    f = _features(shape=(6, 5, depth), seed=k + depth)
    within = None
    if mask != "none":
        within = np.zeros(f.shape[1:], bool)
        picked = {"middle": [depth // 2, depth - 1], "one": [depth - 1], "gap": [0, depth - 1]}[mask]
        within[1:4, 1:4, picked] = True
    plain = inference.predict_volume(
        _conv1x1(3, seed=5), f, device="cpu", within=within, denormalise=_identity
    )
    model = _SliceWiseSlab(3, k, seed=5)
    seen: list[tuple[int, int]] = []
    got = inference.predict_volume(
        model,
        f,
        device="cpu",
        within=within,
        batch_size=5,
        denormalise=_identity,
        tta=True,
        progress=lambda d, t: seen.append((d, t)),
    )
    np.testing.assert_allclose(got, plain, atol=1e-6)
    assert all(b <= max(k, 5 // k * k) for b in model.batches)  # batch_size // k windows, at least one
    assert seen[-1][0] == seen[-1][1] == sum(model.batches)  # slices computed, windows x k


def test_slab_model_predicts_axial_only_and_can_be_cancelled():
    f = _features(shape=(6, 5, 7))
    model = _SliceWiseSlab(3, 2)
    with pytest.raises(InputError, match="slab=2.*axial"):
        inference.predict_volume(model, f, device="cpu", views=("axial", "coronal"), denormalise=_identity)
    with pytest.raises(InputError, match="axial view only, not sagittal"):  # what the commands check first
        inference.check_slab_views(model, ("sagittal",))
    inference.check_slab_views(model, ("axial",))
    inference.check_slab_views(_conv1x1(3), ("coronal", "sagittal"))  # a slice-wise model takes any view
    calls = iter([False, True])
    with pytest.raises(inference.PredictionCancelled, match="after 2 of 12"):  # 6 windows of 2 slices
        inference.predict_volume(
            model, f, device="cpu", batch_size=2, denormalise=_identity, cancel=lambda: next(calls)
        )


def test_slab_mamba_unet_predicts_a_phantom():
    from MambaDoseLib.features import CHANNELS
    from MambaDoseLib.model import MambaUNetConfig, MambaUNetV2
    from MambaDoseLib.phantom import make_phantom

    torch.manual_seed(0)
    config = MambaUNetConfig(
        in_channels=len(CHANNELS), channels=(8, 16, 32), d_state=8, headdim=8, chunk_size=16,
        mixer_min_level=1, backend="torch", slab=2,
    )  # fmt: skip
    model = MambaUNetV2(config)
    assert inference.model_slab(model) == 2
    patient = make_phantom((32, 32, 9), seed=3)
    dose = inference.predict_patient(model, {"channels": list(CHANNELS)}, patient, device="cpu", tta=True)
    assert dose.shape == patient.shape and np.isfinite(dose).all()
    assert np.all(dose[~patient.possible_dose_mask] == 0.0)


def test_mixed_ensemble_predicts_the_mean_of_its_members_group_by_group():
    """An ensemble of a 2D network and a 3D one (slab 8) predicts, through predict_volume, the
    mean of what each member predicts alone (flip TTA and a possible-dose mask included; a linear
    denormalisation so the mean commutes with it), counts every computed slice of both groups in
    its progress, and is refused for a view other than axial."""
    from MambaDoseLib.model import MambaUNetConfig, MambaUNetV2, MambaUNetV2Ensemble

    torch.manual_seed(4)
    flat = MambaUNetConfig(in_channels=3, channels=(8, 16, 16, 32), d_state=8, headdim=8, chunk_size=16)
    deep = MambaUNetConfig(**{**flat.to_dict(), "slab": 8, "conv_dims": 3})
    ensemble = MambaUNetV2Ensemble([flat, flat, deep]).eval()
    f = np.random.default_rng(0).standard_normal((3, 16, 16, 12)).astype(np.float32)
    within = np.zeros((16, 16, 12), bool)
    within[4:12, 3:13, 1:11] = True
    shift = lambda x: x + 10.0  # noqa: E731 (linear and positive: no clipping)
    kwargs = dict(device="cpu", denormalise=shift, within=within, tta=True, swap_channels=[(1, 2)])
    seen = []
    got = inference.predict_volume(ensemble, f, progress=lambda d, t: seen.append((d, t)), **kwargs)
    alone = [inference.predict_volume(m, f, **kwargs) for m in ensemble.members]
    np.testing.assert_allclose(got, (alone[0] + alone[1] + alone[2]) / 3, rtol=1e-5, atol=1e-5)
    assert seen[-1][0] == seen[-1][1] == 2 * (10 + 16)  # flips x (10 slices for the 2D pair + 2 windows of 8)
    assert isinstance(ensemble.members[0], MambaUNetV2)
    assert inference.model_slab(ensemble) == 8  # the largest of its members'
    with pytest.raises(InputError, match="slab=8"):
        inference.predict_volume(ensemble, f, device="cpu", views=("axial", "coronal"))


def test_ensemble_of_members_of_different_depth_pads_for_the_deepest():
    """A volume whose in-plane size fits the shallower member only is padded for the deepest
    member, whatever the members' order."""
    from MambaDoseLib.model import MambaUNetConfig, MambaUNetV2Ensemble

    torch.manual_seed(5)
    shallow = MambaUNetConfig(in_channels=3, channels=(8, 16, 32), d_state=8, headdim=8, chunk_size=16)
    deep = MambaUNetConfig(**{**shallow.to_dict(), "channels": (8, 16, 32, 64)})
    f = np.random.default_rng(1).standard_normal((3, 12, 12, 3)).astype(np.float32)
    for order in ([shallow, deep], [deep, shallow]):
        dose = inference.predict_volume(MambaUNetV2Ensemble(order).eval(), f, device="cpu")
        assert dose.shape == (12, 12, 3) and np.isfinite(dose).all()


def _card_with_augment(augment: dict | None) -> dict:
    card = {"channels": ["ct", "mask_RightParotid", "mask_LeftParotid"]}
    if augment is not None:
        card["training"] = {"config": {"augment": augment}}
    return card


def test_card_tta_swaps_lr_follows_the_training_mirror():
    assert inference.card_tta_swaps_lr(_card_with_augment(None))  # cards that do not say: swap
    assert inference.card_tta_swaps_lr(_card_with_augment({"flip_lr_p": 0.5, "swap_lr_channels": True}))
    assert not inference.card_tta_swaps_lr(_card_with_augment({"flip_lr_p": 0.5, "swap_lr_channels": False}))
    # trained without the mirror: the swapped mirror is the input that looks like an unmirrored patient
    assert inference.card_tta_swaps_lr(_card_with_augment({"flip_lr_p": 0.0, "swap_lr_channels": False}))


def _predict_patient_kwargs(monkeypatch, card: dict) -> dict:
    """The keyword arguments predict_patient(tta=True) gives predict_volume for ``card`` (features
    and prediction faked)."""
    from MambaDoseLib import features
    from MambaDoseLib.phantom import make_phantom

    seen = {}

    def fake_predict_volume(model, feats, **kwargs):
        seen.update(kwargs)
        return np.zeros(feats.shape[1:], np.float32)

    monkeypatch.setattr(features, "build_features", lambda p, ch: np.zeros((len(ch), *p.shape), np.float32))
    monkeypatch.setattr(inference, "predict_volume", fake_predict_volume)
    inference.predict_patient(None, card, make_phantom(shape=(32, 32, 16), seed=3), tta=True)
    return seen


@pytest.mark.parametrize(("swap", "expected"), [(True, [(1, 2)]), (False, [])])
def test_predict_patient_tta_swaps_as_the_network_was_trained(monkeypatch, swap, expected):
    card = _card_with_augment({"flip_lr_p": 0.5, "swap_lr_channels": swap})
    seen = _predict_patient_kwargs(monkeypatch, card)
    assert [tuple(p) for p in seen["swap_channels"]] == expected and seen["tta"] is True


def test_ensemble_tta_swaps_per_member_as_each_was_trained():
    """An ensemble whose members were mirrored in training with and without the Left/Right swap
    (member_swaps) predicts, under flip TTA, the mean of what each member predicts alone with its
    own swap; with every member swapping it equals the plain call; member_swaps of the wrong
    length are refused."""
    from MambaDoseLib.model import MambaUNetConfig, MambaUNetV2Ensemble

    torch.manual_seed(6)
    flat = MambaUNetConfig(in_channels=3, channels=(8, 16, 16, 32), d_state=8, headdim=8, chunk_size=16)
    deep = MambaUNetConfig(**{**flat.to_dict(), "slab": 8, "conv_dims": 3})
    ensemble = MambaUNetV2Ensemble([flat, flat, deep]).eval()
    f = np.random.default_rng(2).standard_normal((3, 16, 16, 8)).astype(np.float32)
    shift = lambda x: x + 10.0  # noqa: E731 (linear and positive: no clipping)
    kwargs = dict(device="cpu", denormalise=shift, tta=True)
    swaps = [True, False, True]
    got = inference.predict_volume(ensemble, f, swap_channels=[(1, 2)], member_swaps=swaps, **kwargs)
    alone = [
        inference.predict_volume(m, f, swap_channels=[(1, 2)] if s else (), **kwargs)
        for m, s in zip(ensemble.members, swaps, strict=True)
    ]
    np.testing.assert_allclose(got, sum(alone) / 3, rtol=1e-5, atol=1e-5)
    unswapped = inference.predict_volume(ensemble.members[1], f, swap_channels=[(1, 2)], **kwargs)
    assert np.abs(unswapped - alone[1]).max() > 1e-4  # the swap matters for this member
    plain = inference.predict_volume(ensemble, f, swap_channels=[(1, 2)], **kwargs)
    every = inference.predict_volume(ensemble, f, swap_channels=[(1, 2)], member_swaps=[True] * 3, **kwargs)
    np.testing.assert_allclose(every, plain, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="2 member keys for an ensemble of 3"):
        inference.predict_volume(ensemble, f, member_swaps=[True, False], **kwargs)
    with pytest.raises(ValueError, match="member keys for a single network"):
        inference.predict_volume(ensemble.members[0], f, member_swaps=[True, False], **kwargs)


def test_member_groups_split_by_slab_and_key_in_order():
    from MambaDoseLib.model import MambaUNetConfig, MambaUNetV2Ensemble

    flat = MambaUNetConfig(in_channels=3, channels=(8, 16, 16, 32), d_state=8, headdim=8, chunk_size=16)
    deep = MambaUNetConfig(**{**flat.to_dict(), "slab": 4})
    ensemble = MambaUNetV2Ensemble([flat, deep, flat, flat])
    assert [(n, k) for _, n, k in ensemble.member_groups([True, True, False, True])] == [
        (2, True),
        (1, True),
        (1, False),
    ]
    assert [n for _, n, _ in ensemble.member_groups()] == [3, 1]  # by slab alone
    same = MambaUNetV2Ensemble([flat, flat])
    assert same.member_groups([False, False]) == [(same, 2, False)]  # one group: the whole ensemble


def _ensemble_card(swaps: list[bool] | None, size: int = 3) -> dict:
    card = {"channels": ["ct", "mask_RightParotid", "mask_LeftParotid"], "ensemble_size": size}
    if swaps is not None:
        card["training"] = {
            "members": [{"config": {"augment": {"flip_lr_p": 0.5, "swap_lr_channels": s}}} for s in swaps]
        }
    return card


def test_card_member_tta_swaps_reads_each_member():
    assert inference.card_member_tta_swaps(
        _card_with_augment({"flip_lr_p": 0.5, "swap_lr_channels": False})
    ) == [False]
    assert inference.card_member_tta_swaps(_ensemble_card([True, False, True])) == [True, False, True]
    assert inference.card_member_tta_swaps(_ensemble_card(None)) == [True] * 3  # shipped cards: swap
    assert inference.card_member_tta_swaps(_ensemble_card([False, False], size=3)) == [True] * 3


@pytest.mark.parametrize(
    ("swaps", "pairs", "member_swaps"),
    [
        ([True, False, True], [(1, 2)], [True, False, True]),
        ([False] * 3, [], None),
        ([True] * 3, [(1, 2)], None),
    ],
)
def test_predict_patient_passes_each_members_swap(monkeypatch, swaps, pairs, member_swaps):
    seen = _predict_patient_kwargs(monkeypatch, _ensemble_card(swaps))
    assert [tuple(p) for p in seen["swap_channels"]] == pairs
    assert seen.get("member_swaps") == member_swaps


def test_card_tta_flips_add_the_ap_flip_only_for_networks_trained_with_it():
    lr = {"flip_lr_p": 0.5, "swap_lr_channels": False}
    assert inference.card_tta_flips(_card_with_augment(None)) == inference.LR_FLIPS
    assert inference.card_tta_flips(_card_with_augment(lr)) == inference.LR_FLIPS
    assert inference.card_tta_flips(_card_with_augment({**lr, "flip_ap_p": 0.5})) == inference.FOUR_FLIPS
    both = _ensemble_card([False, False], size=2)
    assert inference.card_tta_flips(both) == inference.LR_FLIPS
    for member in both["training"]["members"][:1]:
        member["config"]["augment"]["flip_ap_p"] = 0.5
    assert inference.card_tta_flips(both) == inference.LR_FLIPS  # one member never saw it
    for member in both["training"]["members"]:
        member["config"]["augment"]["flip_ap_p"] = 0.5
    assert inference.card_tta_flips(both) == inference.FOUR_FLIPS
    assert inference.card_tta_flips(_ensemble_card(None)) == inference.LR_FLIPS  # shipped cards


@pytest.mark.parametrize(("ap", "flips"), [(0.0, ((), (1,))), (0.5, ((), (0,), (1,), (0, 1)))])
def test_predict_patient_tta_uses_the_flips_the_network_was_trained_with(monkeypatch, ap, flips):
    card = _card_with_augment({"flip_lr_p": 0.5, "flip_ap_p": ap, "swap_lr_channels": False})
    assert tuple(_predict_patient_kwargs(monkeypatch, card)["tta_flips"]) == flips


def test_four_flip_tta_is_the_mean_over_the_four_flipped_inputs():
    """FOUR_FLIPS averages the model's output over the identity and the three flips, each flipped
    back: for a model that only looks at its own voxel (a 1x1 convolution), every pass gives the
    same dose, so the TTA equals the plain prediction; for a UNet, the mean of the four passes."""
    torch.manual_seed(1)
    f = np.random.default_rng(4).standard_normal((3, 16, 16, 4)).astype(np.float32)
    pointwise = torch.nn.Conv2d(3, 1, 1)
    kwargs = dict(device="cpu", denormalise=lambda x: x + 10.0)
    plain = inference.predict_volume(pointwise, f, **kwargs)
    four = inference.predict_volume(pointwise, f, tta=True, tta_flips=inference.FOUR_FLIPS, **kwargs)
    np.testing.assert_allclose(four, plain, rtol=1e-5, atol=1e-5)
    from MambaDoseLib.model import MambaUNetConfig, MambaUNetV2

    net = MambaUNetV2(
        MambaUNetConfig(in_channels=3, channels=(8, 16, 16, 32), d_state=8, headdim=8, chunk_size=16)
    )
    passes = [
        np.flip(
            inference.predict_volume(net, np.ascontiguousarray(np.flip(f, [a + 1 for a in flip])), **kwargs),
            flip,
        )
        if flip
        else inference.predict_volume(net, f, **kwargs)
        for flip in inference.FOUR_FLIPS
    ]
    four = inference.predict_volume(net, f, tta=True, tta_flips=inference.FOUR_FLIPS, **kwargs)
    np.testing.assert_allclose(four, np.mean(passes, axis=0), rtol=1e-4, atol=1e-4)
    assert np.abs(four - passes[0]).max() > 1e-4
