"""Training pipeline: loss, schedule, sampling, slice data, end-to-end run, resume, CLI (CPU)."""

from __future__ import annotations

import csv
import logging
import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from MambaDoseLib.errors import InputError
from MambaDoseLib.phantom import make_phantom
from MambaDoseTrainingLib.augment import AugmentConfig
from MambaDoseTrainingLib.dataset import (
    balanced_epoch_indices,
    channels_for_preset,
    prepare_slice_set,
    shard_indices,
)
from MambaDoseTrainingLib.train import (
    BEST,
    LAST,
    MODEL_BEST,
    TrainConfig,
    ValReference,
    build_model_config,
    dose_volume_from_rows,
    lr_factor,
    make_val_reference,
    masked_smooth_l1,
    next_epoch_estimate,
    parameter_groups,
    rng_state,
    run_training,
    set_rng_state,
)

SHAPE = (32, 32, 16)
TINY = [8, 16, 32, 64]


@pytest.fixture(scope="module")
def phantoms():
    train = [make_phantom(SHAPE, seed=s, patient_id=f"pt_{s}") for s in (1, 2, 3)]
    val = [make_phantom(SHAPE, seed=s, patient_id=f"pt_{s}") for s in (201, 202)]
    return train, val


def _config(out, **kw) -> TrainConfig:
    base = dict(
        out=str(out),
        mixer="none",
        model_channels=TINY,
        batch_size=8,
        epochs=2,
        lr=3e-3,
        warmup_epochs=1,
        workers=0,
        progress=False,
        slices_per_epoch=24,
        augment=AugmentConfig(rotate_p=0.5, scale_p=0.5, shift_p=0.5),
    )
    base.update(kw)
    return TrainConfig(**base)


# --------------------------------------------------------------------------- pieces


def test_masked_smooth_l1_counts_only_mask_and_uses_beta():
    target = torch.zeros(2, 1, 4, 4)
    pred = torch.full_like(target, 0.1)
    weight = torch.zeros_like(target)
    weight[:, :, :2] = 1.0
    pred[weight == 0] = 5.0  # outside the mask: ignored
    loss = masked_smooth_l1(pred, target, weight, beta=0.05)
    assert loss.dtype == torch.float32
    assert math.isclose(loss.item(), 0.1 - 0.05 / 2, rel_tol=1e-6)  # linear branch above beta
    small = masked_smooth_l1(torch.full_like(target, 0.01), target, weight, beta=0.05)
    assert math.isclose(small.item(), 0.5 * 0.01**2 / 0.05, rel_tol=1e-5)  # quadratic branch


def test_lr_factor_warmup_then_cosine_to_zero():
    spe, warm, epochs = 10, 2, 12
    factors = [lr_factor(s, spe, warm, epochs) for s in range(spe * epochs)]
    assert factors[0] == pytest.approx(1 / 20) and factors[19] == pytest.approx(1.0)
    assert factors[20] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[20:], factors[21:], strict=False))
    assert lr_factor(spe * epochs, spe, warm, epochs) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0, spe, 0, epochs) == pytest.approx(1.0)


def test_next_epoch_estimate_skips_first_epoch_of_a_call():
    assert next_epoch_estimate([], [], 1) is None  # nothing known: run an epoch
    assert next_epoch_estimate([], [90.0, 10.0, 12.0], 1) == pytest.approx(1.1 * 12.0)  # median
    assert next_epoch_estimate([90.0], [], 1) == pytest.approx(99.0)  # only the compiling epoch
    assert next_epoch_estimate([90.0, 10.0, 14.0, 11.0], [], 1) == pytest.approx(1.1 * 14.0)


def test_parameter_groups_exclude_norms_biases_and_flagged():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 4))
    flagged = torch.nn.Parameter(torch.ones(3, 3))
    flagged._no_weight_decay = True
    model.register_parameter("A_log", flagged)
    decay, no_decay = parameter_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert any(p is flagged for p in no_decay["params"])
    assert len(no_decay["params"]) == 5  # conv bias, bn weight + bias, linear bias, A_log


def test_rng_state_survives_weights_only_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = tmp_path / "rng.pt"
    torch.save({"rng": rng_state()}, path)
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(torch.load(path, weights_only=True)["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_balanced_epoch_draws_every_patient_equally_and_shards_evenly():
    patient_index = torch.tensor([0] * 3 + [1] * 10 + [2] * 5)
    rows = balanced_epoch_indices(patient_index, 3, torch.Generator().manual_seed(0))
    assert rows.numel() == 3 * 6  # ceil(18 / 3) slices of each patient
    counts = torch.bincount(patient_index[rows], minlength=3)
    assert counts.tolist() == [6, 6, 6]
    # a patient with enough slices gets distinct ones
    assert len(set(rows[patient_index[rows] == 1].tolist())) == 6
    same = balanced_epoch_indices(patient_index, 3, torch.Generator().manual_seed(0))
    assert torch.equal(rows, same)
    shards = [shard_indices(torch.arange(17), r, 2) for r in range(2)]
    assert shards[0].numel() == shards[1].numel() == 8
    assert set(shards[0].tolist()) | set(shards[1].tolist()) == set(range(16))


def test_dose_volume_from_rows_places_slices_and_zeroes_outside_mask():
    mask = np.zeros((4, 4, 5), bool)
    mask[1:3, 1:3, 1] = mask[1:3, 1:3, 3] = True
    ref = ValReference("pt_x", np.zeros((4, 4, 5), np.float32), mask, {}, 1.0, {}, {})
    rows = np.full((2, 4, 4), 0.0, np.float32)  # normalised 0 = 40 Gy
    rows[1] = -2.0  # below the range: clipped at 0 Gy
    dose = dose_volume_from_rows(rows, np.array([1, 3]), ref)
    assert np.allclose(dose[..., 1][mask[..., 1]], 40.0)
    assert np.all(dose[..., 3] == 0.0)
    assert np.all(dose[~mask] == 0.0)


def test_channel_presets():
    two_d = channels_for_preset("2d")
    assert len(two_d) == 20 and two_d[0] == "ct"
    two_half = channels_for_preset("2.5d")
    assert two_half[:3] == ("ct_prev", "ct", "ct_next") and len(two_half) == 22
    with pytest.raises(InputError):
        channels_for_preset("3d")
    with pytest.raises(InputError):
        _config("x", channels="ct,not_a_channel").channel_names()


def test_slice_set_keeps_dose_slices_and_reuses_feature_cache(phantoms, tmp_path, monkeypatch):
    train, _ = phantoms
    channels = ("ct", "possible_dose_mask", "ct_next")
    ids = [p.patient_id for p in train]
    data = prepare_slice_set(ids, channels, patients=train, feature_cache=tmp_path, source_name="t")
    expected = sum(int(p.possible_dose_mask.any(axis=(0, 1)).sum()) for p in train)
    assert len(data) == expected and data.features.dtype == torch.float16
    assert data.features.shape[1:] == (3, 32, 32) and data.dose.shape == (expected, 32, 32)
    # rows map back to (patient, slice) and carry that slice's mask and features
    p0 = train[0]
    k = int(data.slice_index[0])
    assert int(data.patient_index[0]) == 0
    assert torch.equal(data.mask[0], torch.from_numpy(p0.possible_dose_mask[..., k]))
    assert torch.equal(data.features[0, 1].bool(), data.mask[0])
    assert bool(data.mask.flatten(1).any(1).all())  # no slice without possible-dose voxels

    import MambaDoseTrainingLib.dataset as dataset

    def fail(*_a, **_k):
        raise AssertionError("feature cache not reused")

    monkeypatch.setattr(dataset, "patient_slices", fail)
    again = prepare_slice_set(ids, channels, patients=train, feature_cache=tmp_path, source_name="t")
    assert torch.equal(again.features, data.features)


# --------------------------------------------------------------------------- end to end


def test_train_resume_after_time_limit_matches_uninterrupted_run(phantoms, tmp_path, caplog):
    from MambaDoseLib.weights import load_model

    train, val = phantoms
    out = tmp_path / "full"
    full = run_training(_config(out), train, val)
    assert full["status"] == "completed" and full["epochs"] == 2
    losses = [h["train_loss"] for h in full["history"]]
    assert losses[-1] < losses[0]
    for name in (LAST, BEST, MODEL_BEST, "model_best.json", "history.csv", "curves.png", "train.log"):
        assert (out / name).is_file(), name
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(math.isfinite(float(r["val_dose_score"])) for r in rows)

    model, card = load_model(out / MODEL_BEST)
    assert card["channels"] == list(channels_for_preset("2d"))
    assert card["training"]["best_epoch"] == full["best_epoch"] and card["training"]["train_patients"] == 3
    assert math.isfinite(card["training"]["validation"]["val_dose_score"])
    assert model(torch.zeros(1, 20, 32, 32)).shape == (1, 1, 32, 32)

    part = tmp_path / "part"
    first = run_training(_config(part, time_limit_s=1e-3), train, val)  # stops after epoch 1
    assert first["status"] == "time_limit" and first["epochs"] == 1
    assert "stopped at time limit, resume with --resume" in (part / "train.log").read_text()
    with pytest.raises(InputError):
        run_training(_config(part), train, val)  # an existing run needs --resume
    ckpt = torch.load(part / LAST, weights_only=True)
    assert ckpt["state"]["epoch"] == 1 and ckpt["optimizer"]["state"]
    resumed = run_training(_config(part, resume=True), train, val)
    assert resumed["status"] == "completed" and resumed["epochs"] == 2
    assert [h["train_loss"] for h in resumed["history"]] == losses
    a = torch.load(out / LAST, weights_only=True)["model"]
    b = torch.load(part / LAST, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the scan backend may change on resume (e.g. --compile picks the PyTorch scan), the architecture not
    with pytest.raises(InputError, match="differs"):
        run_training(_config(part, resume=True, epochs=3, model_channels=(8, 16, 32, 32)), train, val)
    # so may the loss, with a warning: the card records only the new value
    caplog.set_level(logging.WARNING)
    more = run_training(
        _config(
            part,
            resume=True,
            epochs=3,
            model_options={"backend": "torch"},
            dvh_loss_weight=0.5,
            dvh_loss_rois="targets",
        ),  # fmt: skip
        train,
        val,
    )
    assert more["epochs"] == 3
    assert "--dvh-loss was 0.0, now 0.5" in caplog.text and "--loss-beta" not in caplog.text
    assert "--dvh-loss-rois was all, now targets" in caplog.text


def test_mamba2_torch_backend_trains(phantoms, tmp_path):
    train, val = phantoms
    cfg = _config(
        tmp_path,
        mixer="mamba2",
        mixer_min_level=3,
        d_state=16,
        epochs=1,
        slices_per_epoch=8,
        model_options={"backend": "torch"},
        max_val_patients=1,
        channels="2.5d",
    )
    result = run_training(cfg, train, val)
    assert result["epochs"] == 1 and math.isfinite(result["history"][0]["train_loss"])
    assert (tmp_path / LAST).is_file()


def test_resume_compares_architectures_with_defaults_for_fields_added_later(tmp_path):
    """A checkpoint saved before a model field existed (e.g. dropout) still resumes."""
    from MambaDoseTrainingLib.train import _architecture, _model_config_dict

    now = _model_config_dict(build_model_config(_config(tmp_path, mixer="mamba2"), 20))
    older = {k: v for k, v in now.items() if k != "dropout"}
    assert _architecture(older) == _architecture(now)
    assert _architecture({**now, "dropout": 0.2}) != _architecture(older)
    assert _architecture({**now, "backend": "triton"}) == _architecture(now)


def test_compile_picks_the_torch_scan_unless_a_backend_is_given(tmp_path):
    """Compiled, the PyTorch scan fuses with the network (faster than the compiled Triton op)."""
    assert build_model_config(_config(tmp_path, mixer="mamba2"), 20).backend == "auto"
    assert build_model_config(_config(tmp_path, mixer="mamba2", compile=True), 20).backend == "torch"
    given = _config(tmp_path, mixer="mamba2", compile=True, model_options={"backend": "triton"})
    assert build_model_config(given, 20).backend == "triton"
    # any other MambaUNetConfig field, e.g. `--model-option dropout=0.1`
    assert build_model_config(_config(tmp_path, model_options={"dropout": 0.1}), 20).dropout == 0.1


def test_compile_mode_is_checked_parsed_and_defaults_for_older_configs(tmp_path):
    import argparse

    from MambaDoseTrainingLib.commands import train as command
    from MambaDoseTrainingLib.train import COMPILE_MODES

    assert command.COMPILE_MODES == COMPILE_MODES  # spelt out twice (the parser imports no torch)
    for mode in COMPILE_MODES:
        _config(tmp_path, compile=True, compile_mode=mode).check()
    _config(tmp_path).check()  # "default" without --compile: the plain eager run
    with pytest.raises(InputError, match="'fastest'"):
        _config(tmp_path, compile=True, compile_mode="fastest").check()
    with pytest.raises(InputError, match="--compile-mode reduce-overhead needs --compile"):
        _config(tmp_path, compile_mode="reduce-overhead").check()
    assert not _config(tmp_path, compile=True).cudagraphs
    assert _config(tmp_path, compile=True, compile_mode="max-autotune").cudagraphs

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    base = ["--train-cache", "t", "--val-cache", "v", "--out", "o"]
    assert TrainConfig.from_args(parser.parse_args(base)).compile_mode == "default"
    cfg = TrainConfig.from_args(parser.parse_args([*base, "--compile", "--compile-mode", "reduce-overhead"]))
    assert cfg.compile and cfg.compile_mode == "reduce-overhead"
    cfg.check()
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--compile", "--compile-mode", "fastest"])
    # a config saved before the option existed (checkpoints, cards) reads as the default mode
    older = {k: v for k, v in cfg.to_dict().items() if k != "compile_mode"}
    assert TrainConfig.from_dict(older).compile_mode == "default"
    assert TrainConfig.from_dict(cfg.to_dict()).compile_mode == "reduce-overhead"


class _RecordingCompiled(torch.nn.Module):
    """Stands in for ``torch.compile``'s result: runs ``module`` and records each forward."""

    def __init__(self, module: torch.nn.Module, events: list[str]) -> None:
        super().__init__()
        self.module = module
        self.events = events

    def forward(self, x):
        self.events.append("forward")
        return self.module(x)


def test_cuda_graph_modes_mark_every_step_before_the_forward_and_resume_in_another_mode(
    phantoms, tmp_path, monkeypatch
):
    """torch.compile stood in by a recording wrapper (inductor ignores CUDA graphs on the CPU):
    with reduce-overhead every training step starts a new CUDA-graph step before its forward, and
    validation runs the uncompiled model; the default mode marks nothing; the card records the
    mode; a run may resume in another mode (not part of the architecture)."""
    from MambaDoseLib.weights import load_model

    train, val = phantoms
    events: list[str] = []
    modes: list[str] = []
    compiled: list[torch.nn.Module] = []

    def fake_compile(model, mode=None, **kw):
        modes.append(mode)
        compiled.append(_RecordingCompiled(model, events))
        return compiled[-1]

    def mark() -> None:
        # the previous step's gradients (which may live in the graph's buffers) are gone by now
        assert all(p.grad is None for p in compiled[-1].parameters())
        events.append("mark")

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", mark)
    out = tmp_path / "run"
    first = run_training(_config(out, epochs=1, compile=True, compile_mode="reduce-overhead"), train, val)
    assert first["epochs"] == 1 and first["steps_per_epoch"] == 3
    assert modes == ["reduce-overhead"]
    assert events == ["mark", "forward"] * 3  # nothing from validation
    _, card = load_model(out / MODEL_BEST)
    assert (
        card["training"]["config"]["compile"]
        and card["training"]["config"]["compile_mode"] == "reduce-overhead"
    )

    events.clear()
    resumed = run_training(_config(out, epochs=2, compile=True, resume=True), train, val)
    assert resumed["epochs"] == 2 and math.isfinite(resumed["history"][-1]["train_loss"])
    assert modes == ["reduce-overhead", "default"]
    assert events == ["forward"] * 3
    _, card = load_model(out / MODEL_BEST)
    assert card["training"]["config"]["compile_mode"] == "default"


def _write_cache(cache_dir, patients) -> None:
    """A cache folder of in-memory (small) patients, in the format ``cache.load_all`` reads."""
    import json

    from MambaDoseTrainingLib import cache

    cache_dir.mkdir(parents=True)
    for p in patients:
        cache.patient_file(cache_dir, p.patient_id).write_bytes(cache.encode_patient(p))
    index = {
        "format": cache.FORMAT_NAME,
        "format_version": cache.FORMAT_VERSION,
        "patients": [{"id": p.patient_id} for p in patients],
    }
    (cache_dir / cache.INDEX_FILE).write_text(json.dumps(index))


def test_cli_trains_from_cache_folders(phantoms, tmp_path):
    import subprocess
    import sys

    train, val = phantoms
    _write_cache(tmp_path / "train", train)
    _write_cache(tmp_path / "val", val)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "MambaDoseLib.cli",
        "train",
        "--train-cache",
        str(tmp_path / "train"),
        "--val-cache",
        str(tmp_path / "val"),
        "--out",
        str(out),
        "--mixer",
        "none",
        "--model-channels",
        "8,16,32,64",
        "--batch-size",
        "8",
        "--epochs",
        "2",
        "--slices-per-epoch",
        "8",
        "--workers",
        "2",
        "--feature-cache",
        str(tmp_path / "features"),
        "--max-val-patients",
        "1",
        "--no-progress",
        "--device",
        "cpu",
        "--time-limit",
        "0.001",
    ]
    done = subprocess.run(cmd, capture_output=True, encoding="utf-8", timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stopped at time limit, resume with --resume" in done.stderr
    assert (out / LAST).is_file() and (out / MODEL_BEST).is_file()
    again = subprocess.run([*cmd[:-2], "--resume"], capture_output=True, encoding="utf-8", timeout=240)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already built" in again.stderr  # features reused from --feature-cache
    assert torch.load(out / LAST, weights_only=True)["state"]["epoch"] == 2


# --------------------------------------------------------------------------- views


def test_slices_of_all_views_pad_to_one_size_and_rebuild_the_dose(phantoms):
    from MambaDoseLib.features import normalise_dose
    from MambaDoseLib.inference import slices_with_voxels, to_slices
    from MambaDoseTrainingLib.dataset import patient_slices

    p = phantoms[0][0]  # (32, 32, 16): axial slices 32 x 32, coronal and sagittal 16 x 32
    views = ("axial", "coronal", "sagittal")
    s = patient_slices(p, ("ct", "possible_dose_mask"), views)
    assert s.features.shape[2:] == (32, 32)
    for number, view in enumerate(views):
        sel = s.view_index == number
        keep = slices_with_voxels(p.possible_dose_mask, view)
        assert np.array_equal(s.slice_index[sel], keep)
        h, w = to_slices(p.possible_dose_mask, view).shape[1:]
        assert np.array_equal(s.mask[sel][:, :h, :w], to_slices(p.possible_dose_mask, view)[keep])
        assert not s.mask[sel][:, h:, :].any() and not s.mask[sel][:, :, w:].any()
        assert np.array_equal(s.features[sel][:, 1, :h, :w].astype(bool), s.mask[sel][:, :h, :w])
    # the reference dose itself, as rows of every view, comes back as the dose (views averaged)
    ref = make_val_reference(p)
    rows = s.dose.astype(np.float32)
    dose = dose_volume_from_rows(rows, s.slice_index, ref, s.view_index, views)
    inside = p.possible_dose_mask
    expected = np.maximum(np.asarray(normalise_dose(p.dose_gy), np.float16).astype(np.float32), -1)
    from MambaDoseLib.features import denormalise_dose

    assert np.allclose(dose[inside], np.maximum(denormalise_dose(expected), 0)[inside], atol=1e-4)
    assert np.all(dose[~inside] == 0.0)


def test_multi_view_training_writes_views_into_the_card(phantoms, tmp_path):
    import json

    train, val = phantoms
    cfg = _config(tmp_path, views="axial,sagittal", epochs=1, max_val_patients=1)
    result = run_training(cfg, train, val)
    assert result["epochs"] == 1 and math.isfinite(result["best_val_dose_score"])
    card = json.loads((tmp_path / "model_best.json").read_text())
    assert card["views"] == ["axial", "sagittal"]
    with pytest.raises(InputError, match="views"):
        _config(tmp_path, views="axial,oblique").check()


def test_weight_average_is_validated_exported_and_resumed(phantoms, tmp_path):
    from MambaDoseTrainingLib.train import make_ema

    # the average follows avg = d * avg + (1 - d) * current, BatchNorm buffers included
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    ema = make_ema(net, 0.9)
    start = [t.detach().clone() for t in ema.module.state_dict().values()]
    with torch.no_grad():
        for t in net.parameters():
            t.add_(1.0)
        net[1].running_mean.add_(1.0)
    ema.update_parameters(net)  # the first update copies
    ema.update_parameters(net)
    assert torch.allclose(ema.module[1].running_mean, net[1].running_mean)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ema.update_parameters(net)
    assert torch.allclose(ema.module[0].weight, net[0].weight - 0.9)
    assert make_ema(net, 0.0) is None and len(start) == 7

    train, val = phantoms
    full = run_training(_config(tmp_path / "full", ema_decay=0.9), train, val)
    ckpt = torch.load(tmp_path / "full" / LAST, weights_only=True)
    best = torch.load(tmp_path / "full" / BEST, weights_only=True)["model"]
    averaged = {k[len("module.") :]: v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    assert set(best) == set(averaged) == set(ckpt["model"])
    if full["best_epoch"] == full["epochs"]:  # the best checkpoint holds the average, not the raw weights
        assert all(torch.equal(best[k], averaged[k]) for k in best)
        assert not all(torch.equal(best[k], ckpt["model"][k]) for k in best)
    # a run stopped by its time limit continues the average exactly
    part = tmp_path / "part"
    run_training(_config(part, ema_decay=0.9, time_limit_s=1e-3), train, val)
    resumed = run_training(_config(part, ema_decay=0.9, resume=True), train, val)
    assert [h["val_dose_score"] for h in resumed["history"]] == [h["val_dose_score"] for h in full["history"]]
    again = torch.load(part / LAST, weights_only=True)["ema"]
    assert all(torch.equal(again[k], ckpt["ema"][k]) for k in again)
    with pytest.raises(InputError, match="ema"):
        _config(tmp_path / "x", ema_decay=1.0).check()


# --------------------------------------------------------------------------- common in-plane spacing


@pytest.fixture(scope="module")
def mixed_spacing_phantoms():
    """Tiny phantoms on three in-plane voxel sizes (validation: one already on 3.906 mm)."""
    train = [
        make_phantom(SHAPE, (s, s, 2.5), seed=seed, patient_id=f"pt_{seed}")
        for seed, s in ((1, 3.0), (2, 4.688), (3, 5.078))
    ]
    val = [
        make_phantom(SHAPE, (s, s, 2.5), seed=seed, patient_id=f"pt_{seed}")
        for seed, s in ((201, 4.5), (202, 3.906))
    ]
    return train, val


def test_validation_rows_on_a_resampled_grid_come_back_to_the_native_dose(mixed_spacing_phantoms):
    from MambaDoseLib.features import normalise_dose
    from MambaDoseLib.metrics import dose_score
    from MambaDoseLib.spacing import resample_patient_inplane
    from MambaDoseTrainingLib.dataset import patient_slices

    p = mixed_spacing_phantoms[1][0]  # 4.5 mm
    resampled, _ = resample_patient_inplane(p, 3.906)
    views = ("axial", "coronal")
    s = patient_slices(resampled, ("ct", "possible_dose_mask"), views)
    assert s.features.shape[2:] == (128, 128)
    ref = make_val_reference(p, 3.906)
    assert ref.dose_gy.shape == p.shape and ref.inplane_pdm.shape == (128, 128, SHAPE[2])
    assert np.array_equal(ref.inplane_pdm, resampled.possible_dose_mask)
    # the resampled reference itself, as rows, comes back close to the native reference
    dose = dose_volume_from_rows(s.dose.astype(np.float32), s.slice_index, ref, s.view_index, views)
    assert dose.shape == p.shape
    assert np.all(dose[~p.possible_dose_mask] == 0.0)
    assert dose_score(dose, p.dose_gy, p.possible_dose_mask) < 0.5  # Gy; float16 rows + round trip
    # a patient already on the grid keeps the native path exactly
    on_grid = make_phantom((128, 128, 4), (3.906, 3.906, 2.5), seed=5)
    assert make_val_reference(on_grid, 3.906).inplane is None
    rows = np.asarray(normalise_dose(on_grid.dose_gy), np.float32).transpose(2, 0, 1)
    keep = np.arange(on_grid.shape[2])
    a = dose_volume_from_rows(rows, keep, make_val_reference(on_grid, 3.906))
    b = dose_volume_from_rows(rows, keep, make_val_reference(on_grid))
    assert np.array_equal(a, b)


def test_inplane_spacing_trains_scores_on_native_grids_and_writes_the_card(mixed_spacing_phantoms, tmp_path):
    import json

    from MambaDoseTrainingLib.dataset import feature_folder

    train, val = mixed_spacing_phantoms
    features = tmp_path / "features"
    out = tmp_path / "run"
    cfg = _config(out, inplane_spacing_mm=3.906, epochs=1, feature_cache=str(features))
    result = run_training(cfg, train, val)
    assert result["epochs"] == 1 and math.isfinite(result["best_val_dose_score"])
    card = json.loads((out / "model_best.json").read_text())
    assert card["inplane_spacing_mm"] == 3.906
    assert card["training"]["config"]["inplane_spacing_mm"] == 3.906
    assert "in-plane 3.906 mm (scored on the native grids)" in (out / "train.log").read_text()
    # the slice files live in folders keyed by the spacing; native runs keep their old keys
    channels = channels_for_preset("2d")
    resampled = feature_folder(features, "train-patients", channels, ("axial",), 3.906)
    native = feature_folder(features, "train-patients", channels, ("axial",))
    assert resampled.is_dir() and resampled != native and not native.exists()
    assert native == feature_folder(features, "train-patients", channels)
    first = np.load(resampled / "pt_1.features.npy", mmap_mode="r")
    assert first.shape[2:] == (128, 128)
    # a run cannot be continued on another grid
    with pytest.raises(InputError, match="inplane-spacing"):
        run_training(_config(out, epochs=2, resume=True), train, val)
    with pytest.raises(InputError, match="inplane-spacing"):
        _config(out, inplane_spacing_mm=0.0).check()


def test_cli_option_inplane_spacing_reaches_the_config():
    import argparse

    from MambaDoseTrainingLib.commands.train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--train-cache", "t", "--val-cache", "v", "--out", "o"]
    assert TrainConfig.from_args(parser.parse_args(base)).inplane_spacing_mm is None
    cfg = TrainConfig.from_args(parser.parse_args([*base, "--inplane-spacing", "3.906"]))
    assert cfg.inplane_spacing_mm == 3.906
    assert TrainConfig.from_dict(cfg.to_dict()).inplane_spacing_mm == 3.906


def test_slice_build_summarises_field_of_view_cropping(tmp_path, caplog):
    import logging

    from MambaDoseTrainingLib.dataset import build_slice_files

    wide = make_phantom((128, 128, 2), (5.422, 5.422, 3.0), seed=1, patient_id="pt_wide")
    wide.possible_dose_mask = np.ones(wide.shape, bool)  # reaches the edge of a 694 mm field
    with caplog.at_level(logging.WARNING):
        build_slice_files(
            tmp_path, ["pt_wide"], ("ct", "possible_dose_mask"), patients=[wide], inplane_spacing_mm=3.906
        )
    assert "pt_wide:" in caplog.text  # the patient's own warning
    assert "1 of 1 patients have possible-dose voxels outside the field" in caplog.text
    assert np.load(tmp_path / "pt_wide.features.npy").shape == (2, 2, 128, 128)


def test_resume_with_another_architecture_names_the_differing_field(phantoms, tmp_path):
    """A run started with two scan directions (the default before session 6) does not resume as
    one: the error names the field, both values and the option to pass."""
    train, val = phantoms
    out = tmp_path / "run"
    tiny_mamba = dict(mixer="mamba2", mixer_min_level=3, d_state=8)
    run_training(_config(out, epochs=1, scan_directions=2, **tiny_mamba), train, val)
    with pytest.raises(InputError, match=r"scan_directions saved 2, now 1.*--scan-directions 2"):
        run_training(_config(out, epochs=2, resume=True, **tiny_mamba), train, val)
    resumed = run_training(_config(out, epochs=2, resume=True, scan_directions=2, **tiny_mamba), train, val)
    assert resumed["epochs"] == 2


def test_cuda_graph_mode_with_the_dvh_loss_marks_each_step(phantoms, tmp_path, monkeypatch):
    """The sorted DVH loss reads the compiled output within its step only: with reduce-overhead
    (torch.compile stood in by a recording wrapper) each step is marked once before its forward
    and the loss stays finite."""
    train, val = phantoms
    events: list[str] = []

    from MambaDoseTrainingLib import train as train_module

    real_dvh_loss = train_module.sorted_dvh_loss

    def dvh_loss(*args, **kwargs):
        events.append("dvh")
        return real_dvh_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "sorted_dvh_loss", dvh_loss)
    monkeypatch.setattr(torch, "compile", lambda model, mode=None, **kw: _RecordingCompiled(model, events))
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: events.append("mark"))
    cfg = _config(
        tmp_path / "run", epochs=1, compile=True, compile_mode="reduce-overhead", dvh_loss_weight=0.5
    )
    result = run_training(cfg, train, val)
    assert events == ["mark", "forward", "dvh"] * result["steps_per_epoch"]
    assert math.isfinite(result["history"][-1]["train_loss"])


# --------------------------------------------------------------------------- slab mode


def _brute_slab_starts(patient, slice_, view, k) -> list[int]:
    n = len(patient)
    return [
        r
        for r in range(n - k + 1)
        if all(
            patient[r + j] == patient[r] and view[r + j] == view[r] and slice_[r + j] == slice_[r] + j
            for j in range(k)
        )
    ]


def test_slab_starts_stop_at_gaps_and_patient_and_view_boundaries():
    from MambaDoseTrainingLib.dataset import slab_starts

    # patient 0: slices 3 4 5 _ 7 8 | patient 1: 9 10 11 (8 -> 9 crosses patients) |
    # patient 2: view 0 slices 5 6, view 1 slices 7 8 (6 -> 7 crosses views)
    patient = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    slice_ = torch.tensor([3, 4, 5, 7, 8, 9, 10, 11, 5, 6, 7, 8])
    view = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    assert slab_starts(patient, slice_, view, 1).tolist() == list(range(12))
    assert slab_starts(patient, slice_, view, 2).tolist() == [0, 1, 3, 5, 6, 8, 10]
    assert slab_starts(patient, slice_, view, 3).tolist() == [0, 5]
    assert slab_starts(patient, slice_, view, 4).tolist() == []
    assert slab_starts(patient[:1], slice_[:1], view[:1], 2).tolist() == []
    with pytest.raises(ValueError):
        slab_starts(patient, slice_, view, 0)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(  # patients: lists of views: sorted sets of kept slice numbers
        st.lists(st.sets(st.integers(0, 12), max_size=10), min_size=1, max_size=2), min_size=1, max_size=4
    ),
    st.integers(1, 5),
)
def test_slab_starts_match_a_brute_force_search(patients, k):
    from MambaDoseTrainingLib.dataset import slab_starts

    rows = [(p, sorted(slices), v) for p, views in enumerate(patients) for v, slices in enumerate(views)]
    patient = [p for p, slices, _ in rows for _ in slices]
    slice_ = [s for _, slices, _ in rows for s in slices]
    view = [v for _, slices, v in rows for _ in slices]
    got = slab_starts(torch.tensor(patient, dtype=torch.long), torch.tensor(slice_, dtype=torch.long),
                      torch.tensor(view, dtype=torch.long), k)  # fmt: skip
    assert got.tolist() == _brute_slab_starts(patient, slice_, view, k)


def test_balanced_epoch_slabs_draw_whole_slabs_equally_and_k1_is_the_slice_epoch():
    from MambaDoseTrainingLib.dataset import balanced_epoch_slabs, slab_starts

    # patient 0: 3 slices; 1: 10 slices with a gap; 2: 5 slices; 3: one slice (no slab of 2)
    patient = torch.tensor([0] * 3 + [1] * 10 + [2] * 5 + [3])
    slice_ = torch.tensor([0, 1, 2, *range(5), *range(10, 15), *range(4, 9), 7])
    view = torch.zeros(19, dtype=torch.long)
    for seed in range(3):
        slices = balanced_epoch_slabs(patient, slice_, view, 4, 1, torch.Generator().manual_seed(seed))
        same = balanced_epoch_indices(patient, 4, torch.Generator().manual_seed(seed))
        assert torch.equal(slices, same)  # k = 1: existing runs draw the same epochs
    for k in (2, 3):
        rows = balanced_epoch_slabs(patient, slice_, view, 4, k, torch.Generator().manual_seed(0))
        per_patient = math.ceil(19 / (4 * k))
        slabs = rows.view(-1, k)
        starts = set(slab_starts(patient, slice_, view, k).tolist())
        assert all(int(s[0]) in starts and s.tolist() == list(range(int(s[0]), int(s[0]) + k)) for s in slabs)
        assert torch.bincount(patient[slabs[:, 0]], minlength=4).tolist() == [per_patient] * 3 + [0]
        again = balanced_epoch_slabs(patient, slice_, view, 4, k, torch.Generator().manual_seed(0))
        assert torch.equal(rows, again)
    # slabs of one patient are distinct while it has enough; the order is shuffled across patients
    rows = balanced_epoch_slabs(patient, slice_, view, 4, 2, torch.Generator().manual_seed(1), per_patient=4)
    firsts = rows.view(-1, 2)[:, 0]
    assert len(set(firsts[patient[firsts] == 1].tolist())) == 4
    assert not torch.equal(patient[firsts], patient[firsts].sort().values)


@pytest.mark.parametrize("length, k", [(20, 8), (33, 16), (9, 4), (8, 8), (40, 32)])
def test_balanced_epoch_slabs_train_on_every_slice_about_equally(length, k):
    """Slabs tile each run from a random offset: over many epochs no slice of a run is in fewer
    slabs than the inner ones (starts drawn uniformly would put the run's first slice in one slab
    out of length - k + 1, an inner one in k), and none in more than twice as many."""
    from MambaDoseTrainingLib.dataset import balanced_epoch_slabs

    patient = torch.tensor([0] * length + [1] * length)
    slice_ = torch.cat([torch.arange(length), torch.arange(length) + 50])
    view = torch.zeros(2 * length, dtype=torch.long)
    gen = torch.Generator().manual_seed(3)
    counts = torch.zeros(2 * length)
    for _ in range(400):
        rows = balanced_epoch_slabs(patient, slice_, view, 2, k, gen)
        slabs = rows.view(-1, k)
        assert all(s.tolist() == list(range(int(s[0]), int(s[0]) + k)) for s in slabs)
        assert (patient[slabs] == patient[slabs[:, :1]]).all()  # never across the patients
        counts += torch.bincount(rows, minlength=2 * length)
    for p in range(2):
        c = counts[p * length : (p + 1) * length]
        assert c.min() > 0.0 and c.max() / c.min() <= 2.0 + 0.25, c.tolist()


def test_slab_epoch_plan_and_shards_keep_slabs_whole(tmp_path):
    from MambaDoseTrainingLib.train import epoch_plan

    cfg = _config(tmp_path, slab=2, batch_size=4, slices_per_epoch=None)
    assert epoch_plan(30, 3, cfg, 1) == (30, 7)  # ceil(30 / 6) = 5 slabs of each of 3 patients
    assert epoch_plan(30, 3, cfg, 1, slab_patients=2) == (20, 5)
    assert epoch_plan(30, 3, cfg, 4) == (30, 1)  # 15 slabs: 3 slabs per rank, one full batch
    capped = _config(tmp_path, slab=3, batch_size=6, slices_per_epoch=20)
    assert epoch_plan(60, 2, capped, 1) == (18, 3)  # the cap rounded down to whole slabs
    assert epoch_plan(30, 3, _config(tmp_path, slices_per_epoch=None), 2) == (30, 1)  # k = 1 as before
    slabs = torch.arange(14).view(-1, 2)  # 7 slabs of 2 rows
    shards = [shard_indices(slabs, r, 2).reshape(-1) for r in range(2)]
    assert shards[0].tolist() == [0, 1, 4, 5, 8, 9] and shards[1].tolist() == [2, 3, 6, 7, 10, 11]


def test_slab_options_are_checked_parsed_and_default_for_older_configs(tmp_path):
    import argparse

    from MambaDoseTrainingLib.commands.train import add_arguments

    with pytest.raises(InputError, match="--batch-size 6 is not a multiple of --slab 4"):
        _config(tmp_path, slab=4, batch_size=6).check()
    with pytest.raises(InputError, match="--slab 2 works on axial slices only"):
        _config(tmp_path, slab=2, views="axial,coronal").check()
    with pytest.raises(InputError, match="--slab"):
        _config(tmp_path, slab=0).check()
    with pytest.raises(InputError, match="set by --slab"):
        _config(tmp_path, model_options={"slab": 2}).check()
    with pytest.raises(InputError, match="--slices-per-epoch 3 is less than one slab of --slab 4"):
        _config(tmp_path, slab=4, batch_size=8, slices_per_epoch=3).check()
    _config(tmp_path, slab=4, batch_size=8).check()
    three_d = {"conv_dims": 3}
    with pytest.raises(InputError, match="--channels-last is for 2D"):
        _config(tmp_path, slab=8, batch_size=8, channels_last=True, model_options=three_d).check()
    with pytest.raises(InputError, match="slab=4 must be a multiple of 2\\*\\*levels=8"):
        build_model_config(_config(tmp_path, slab=4, model_options=three_d), 20)
    assert build_model_config(_config(tmp_path, slab=8, model_options=three_d), 20).conv_dims == 3
    assert build_model_config(_config(tmp_path, slab=4), 20).slab == 4
    assert build_model_config(_config(tmp_path), 20).slab == 1

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--train-cache", "t", "--val-cache", "v", "--out", "o"]
    assert TrainConfig.from_args(parser.parse_args(base)).slab == 1
    cfg = TrainConfig.from_args(parser.parse_args([*base, "--slab", "4"]))
    assert cfg.slab == 4 and TrainConfig.from_dict(cfg.to_dict()).slab == 4
    older = {k: v for k, v in cfg.to_dict().items() if k != "slab"}  # saved before the option existed
    assert TrainConfig.from_dict(older).slab == 1


def test_check_slabs_warns_about_patients_without_a_slab(caplog):
    from types import SimpleNamespace

    from MambaDoseTrainingLib.train import check_slabs

    data = SimpleNamespace(
        patient_ids=["pt_a", "pt_b", "pt_c"],
        patient_index=torch.tensor([0, 0, 0, 1, 1, 2]),
        slice_index=torch.tensor([4, 5, 6, 2, 4, 9]),
        view_index=torch.zeros(6, dtype=torch.long),
    )
    with caplog.at_level(logging.WARNING):
        assert check_slabs(data, 2) == 1
    assert "2 of 3 training patients" in caplog.text and "pt_b, pt_c" in caplog.text
    with pytest.raises(InputError, match="no training patient has 4 consecutive slices"):
        check_slabs(data, 4)


class _SlabMean(torch.nn.Module):
    """A stand-in slab model: each slice's output is its channel 0 plus the mean of channel 0
    over its slab, so the result depends on how slices are grouped into windows."""

    def __init__(self, slab: int) -> None:
        super().__init__()
        self.config = type("C", (), {"slab": slab})()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.config.slab
        ch0 = x[:, :1]
        slab_mean = ch0.view(-1, k, *ch0.shape[1:]).mean(dim=1).repeat_interleave(k, dim=0)
        return ch0 + slab_mean + self.dummy


class _SlabRows:
    """The fields of a SliceSet that slab validation reads: axial rows of patients' kept slices."""

    def __init__(self, patients: list[tuple[np.ndarray, list[int]]]) -> None:
        """patients: (features (C, I, J, K) float32, kept slice numbers ascending) each."""
        self.features = torch.cat([torch.from_numpy(np.moveaxis(f[..., kept], 3, 0)) for f, kept in patients])
        self.features = self.features.half()
        self.patient_index = torch.tensor([n for n, (_, kept) in enumerate(patients) for _ in kept])
        self.slice_index = torch.tensor([s for _, kept in patients for s in kept])

    def __len__(self) -> int:
        return int(self.features.shape[0])


@pytest.mark.parametrize("k", [2, 3])
def test_slab_validation_windows_are_the_prediction_windows(k, caplog):
    """Validation predicts a slab model's rows in the windows prediction uses
    (``inference.predict_in_slabs``): the same dose as ``inference.predict_volume`` where the
    kept slices run without a gap; a patient with fewer kept slices than the slab gets rows too
    (its missing window slices repeat the kept ones)."""
    from MambaDoseLib.inference import predict_volume
    from MambaDoseTrainingLib.train import predict_rows_in_slabs

    rng = np.random.default_rng(k)
    patients, refs = [], []
    for number, (depth, kept) in enumerate(
        ((9, [2, 3, 4, 5, 6]), (4, [0, 1, 2, 3]), (5, [2, 3, 4]), (3, [1]))
    ):
        f = rng.uniform(0, 1, size=(2, 8, 8, depth)).astype(np.float16).astype(np.float32)  # exact in float16
        within = np.zeros((8, 8, depth), bool)
        within[2:6, 2:6, kept] = True
        patients.append((f, kept))
        refs.append(
            ValReference(f"pt_{number}", np.zeros((8, 8, depth), np.float32), within, {}, 1.0, {}, {})
        )
    data = _SlabRows(patients)
    model = _SlabMean(k)
    rows = predict_rows_in_slabs(model, data, refs, k, 4, torch.device("cpu"), channels_last=False).numpy()
    assert np.isfinite(rows).all()
    warned = [r.getMessage() for r in caplog.records if "kept slices" in r.getMessage()]
    short = [f"pt_{n}" for n, (_, kept) in enumerate(patients) if len(kept) < k]  # warned about
    assert [w.split(":")[0] for w in warned] == [f"validation patient {p}" for p in short]
    for number, ((f, kept), ref) in enumerate(zip(patients[:3], refs, strict=False)):
        expected = predict_volume(
            model, f, device="cpu", within=ref.possible_dose_mask, denormalise=lambda x: x
        )
        sel = data.patient_index.numpy() == number
        for row, s in zip(rows[sel], kept, strict=True):
            inside = ref.possible_dose_mask[..., s]
            np.testing.assert_allclose(row[inside], expected[..., s][inside], atol=1e-6)


def test_slab_training_writes_a_slab_model_that_predicts(phantoms, tmp_path, monkeypatch):
    from MambaDoseLib.inference import predict_patient
    from MambaDoseLib.weights import load_model
    from MambaDoseTrainingLib import train as train_module

    train, val = phantoms
    groups: list[int] = []
    real_augment = train_module.augment_batch

    def augment(*args, group=1, **kwargs):
        groups.append(group)
        return real_augment(*args, group=group, **kwargs)

    monkeypatch.setattr(train_module, "augment_batch", augment)
    cfg = _config(
        tmp_path,
        mixer="mamba2",
        mixer_min_level=2,
        d_state=8,
        slab=2,
        epochs=1,
        max_val_patients=1,
        model_options={"backend": "torch"},
    )
    result = run_training(cfg, train, val)
    assert result["epochs"] == 1 and math.isfinite(result["best_val_dose_score"])
    assert groups == [2] * result["steps_per_epoch"]
    assert "(slabs of 2)" in (tmp_path / "train.log").read_text()
    model, card = load_model(tmp_path / MODEL_BEST)
    assert card["config"]["slab"] == 2 and card["training"]["config"]["slab"] == 2
    dose = predict_patient(model, card, val[0], device="cpu")
    assert np.isfinite(dose).all() and np.all(dose[~val[0].possible_dose_mask] == 0.0)
    assert dose[val[0].possible_dose_mask].max() > 0.0
    with pytest.raises(InputError, match="differs"):  # the slab is part of the architecture
        run_training(
            TrainConfig.from_dict({**cfg.to_dict(), "slab": 1, "resume": True, "epochs": 2}), train, val
        )


def test_3d_training_writes_a_3d_model_that_predicts_and_resumes(phantoms, tmp_path):
    """``--model-option conv_dims=3 --slab 8``: the slab machinery trains a 3D network (one
    volume of 8 slices per slab), the card says so, prediction runs it in windows, and a resumed
    run continues it."""
    from MambaDoseLib.inference import predict_patient
    from MambaDoseLib.weights import load_model

    train, val = phantoms
    cfg = _config(
        tmp_path, mixer="mamba2", d_state=8, slab=8, epochs=1, max_val_patients=1,
        model_options={"backend": "torch", "conv_dims": 3, "norm": "group"},
    )  # fmt: skip
    result = run_training(cfg, train, val)
    assert result["epochs"] == 1 and math.isfinite(result["best_val_dose_score"])
    model, card = load_model(tmp_path / MODEL_BEST)
    assert card["config"]["conv_dims"] == 3 and model.head.weight.ndim == 5
    dose = predict_patient(model, card, val[0], device="cpu")
    assert np.isfinite(dose).all() and np.all(dose[~val[0].possible_dose_mask] == 0.0)
    assert dose[val[0].possible_dose_mask].max() > 0.0
    resumed = run_training(TrainConfig.from_dict({**cfg.to_dict(), "resume": True, "epochs": 2}), train, val)
    assert resumed["epochs"] == 2


def test_slab_training_takes_the_dvh_term_over_each_slab(phantoms, tmp_path, monkeypatch):
    """``--slab K --dvh-loss W``: the DVH term matches each slab's K slices as one volume (3D DVHs),
    and such a run trains with a finite loss."""
    from MambaDoseTrainingLib import train as train_module

    train, val = phantoms
    calls: list[tuple[int, int]] = []
    real_dvh_loss = train_module.sorted_dvh_loss

    def dvh_loss(pred, target, masks, **kwargs):
        calls.append((masks.shape[0], kwargs.get("group", 1)))
        return real_dvh_loss(pred, target, masks, **kwargs)

    monkeypatch.setattr(train_module, "sorted_dvh_loss", dvh_loss)
    cfg = _config(
        tmp_path, mixer="mamba2", d_state=8, slab=8, epochs=1, max_val_patients=1, dvh_loss_weight=0.5,
        model_options={"backend": "torch", "conv_dims": 3, "norm": "group"},
    )  # fmt: skip
    result = run_training(cfg, train, val)
    assert calls and all(group == 8 and rows % 8 == 0 for rows, group in calls)
    assert math.isfinite(result["history"][-1]["train_loss"])


def test_lr_swap_is_off_by_default_and_both_spellings_work():
    """Since session 16 a mirrored training patient keeps its structure names unless --lr-swap
    asks for the swap; --no-lr-swap (the spelling of sessions 14-15's scripts) still parses."""
    import argparse

    from MambaDoseTrainingLib.commands.train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--train-cache", "t", "--val-cache", "v", "--out", "o"]
    assert TrainConfig.from_args(parser.parse_args(base)).augment.swap_lr_channels is False
    assert TrainConfig.from_args(parser.parse_args([*base, "--lr-swap"])).augment.swap_lr_channels is True
    assert TrainConfig.from_args(parser.parse_args([*base, "--no-lr-swap"])).augment.swap_lr_channels is False
    assert TrainConfig.from_args(parser.parse_args([*base, "--no-augment"])).augment.flip_lr_p == 0.0
    assert TrainConfig.from_args(parser.parse_args(base)).augment.transpose_p == 0.0
    both = TrainConfig.from_args(parser.parse_args([*base, "--flip-ap-p", "0.5", "--transpose-p", "0.5"]))
    assert (both.augment.flip_ap_p, both.augment.transpose_p) == (0.5, 0.5)
