"""MambaUNetV2 and its baselines: config, shapes, gradients, autocast, memory layout, checkpointing."""

from __future__ import annotations

import pytest
import torch
from MambaDoseLib.mamba2 import Mamba2
from MambaDoseLib.model import (
    MambaUNetConfig,
    MambaUNetV2,
    count_parameters,
    no_weight_decay_names,
    set_backend,
)

SMALL = dict(channels=(8, 16, 16, 32), d_state=8, headdim=8, chunk_size=16, attention_heads=2)


def small_config(**overrides) -> MambaUNetConfig:
    return MambaUNetConfig(in_channels=5, **{**SMALL, **overrides})


def test_config_round_trip_and_validation() -> None:
    cfg = small_config(mixer="attention", scan_directions=4, downsample="maxpool", skip="add")
    d = cfg.to_dict()
    assert d["channels"] == [8, 16, 16, 32]
    assert MambaUNetConfig.from_dict(d) == cfg
    bad = [
        dict(mixer="lstm"),
        dict(scan_directions=3),
        dict(downsample="stride"),
        dict(skip="mul"),
        dict(backend="cuda"),
        dict(mixer_min_level=4),
        dict(mixer_min_level=-1),
        dict(headdim=12),  # 2*16 not a multiple of 12
        dict(mixer="attention", attention_heads=3),
        dict(channels=(8,)),
        dict(chunk_size=0),
        dict(dropout=-0.1),
        dict(dropout=1.0),
    ]
    for overrides in bad:
        with pytest.raises(ValueError):
            small_config(**overrides)
    with pytest.raises(ValueError, match="unknown keys"):
        MambaUNetConfig.from_dict({**d, "depth": 3})


def test_default_config_puts_mamba_at_32x32_and_bottleneck() -> None:
    cfg = MambaUNetConfig(in_channels=20)
    assert cfg.channels == (32, 64, 128, 256) and cfg.mixer == "mamba2"
    assert [cfg.has_mixer(level) for level in range(4)] == [False, False, True, True]
    model = MambaUNetV2(cfg)
    mamba_widths = sorted(m.d_model for m in model.modules() if isinstance(m, Mamba2))
    assert mamba_widths == [128, 128, 256, 256]  # encoder + decoder level 2, two in the bottleneck


@pytest.mark.parametrize(
    "overrides",
    [
        dict(mixer="mamba2", scan_directions=1),
        dict(mixer="mamba2", scan_directions=2, mixer_min_level=0, downsample="maxpool"),
        dict(mixer="mamba2", scan_directions=4, skip="add"),
        dict(mixer="attention"),
        dict(mixer="none"),
    ],
)
@pytest.mark.parametrize("hw", [(16, 16), (24, 40)])
def test_output_shape_for_any_size_divisible_by_8(overrides: dict, hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = MambaUNetV2(small_config(**overrides)).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 5, *hw))
    assert y.shape == (2, 1, *hw) and y.dtype == torch.float32 and torch.isfinite(y).all()


def test_rejects_wrong_channels_or_size() -> None:
    model = MambaUNetV2(small_config()).eval()
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.randn(1, 5, 20, 16))
    with pytest.raises(ValueError, match="5 channels"):
        model(torch.randn(1, 4, 16, 16))


@pytest.mark.parametrize("mixer", ["mamba2", "attention", "none"])
def test_gradients_reach_every_parameter(mixer: str) -> None:
    torch.manual_seed(1)
    model = MambaUNetV2(small_config(mixer=mixer, scan_directions=2)).train()
    model(torch.randn(2, 5, 16, 16)).square().mean().backward()
    params = dict(model.named_parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())
    nonzero = sum(bool(p.grad.abs().sum() > 0) for p in params.values())
    assert nonzero >= 0.9 * len(params)


def test_channels_last_and_bf16_autocast_on_cpu() -> None:
    torch.manual_seed(2)
    model = MambaUNetV2(small_config(scan_directions=2)).eval()
    x = torch.randn(2, 5, 16, 24)
    with torch.no_grad():
        y = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        y_cl = model_cl(x.to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_bf16 = model_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(y_cl, y, rtol=1e-4, atol=1e-5)
    assert y_bf16.dtype == torch.float32 and torch.isfinite(y_bf16).all()
    assert ((y_bf16 - y).norm() / y.norm()) < 0.1


def test_bf16_autocast_training_step() -> None:
    torch.manual_seed(3)
    model = MambaUNetV2(small_config(mixer_min_level=1)).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(torch.randn(2, 5, 16, 16))
    torch.nn.functional.smooth_l1_loss(y, torch.zeros_like(y)).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(4)
    plain = MambaUNetV2(small_config()).train()
    ckpt = MambaUNetV2(small_config(grad_checkpoint=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5, 16, 16)
    plain(x).sum().backward()
    ckpt(x).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    for (name, b), c in zip(plain.named_buffers(), ckpt.buffers(), strict=True):
        torch.testing.assert_close(c, b, msg=name)  # BatchNorm statistics updated once


def test_dropout_acts_in_training_only_and_adds_no_parameters() -> None:
    torch.manual_seed(5)
    plain = MambaUNetV2(small_config())
    drop = MambaUNetV2(small_config(dropout=0.3))
    assert drop.state_dict().keys() == plain.state_dict().keys()  # weights load either way
    drop.load_state_dict(plain.state_dict())

    def count(module: torch.nn.Module) -> int:
        return sum(isinstance(m, torch.nn.Dropout2d) for m in module.modules())

    cfg = drop.config  # one after the conv of every bottleneck and decoder block, none in the encoder
    assert count(drop.bottleneck) == cfg.bottleneck_depth
    assert count(drop.decoder) == cfg.levels * cfg.convs_per_level
    assert count(drop.encoder) == count(drop.up) == count(plain) == 0
    for block in [*drop.bottleneck, *(b for stage in drop.decoder for b in stage)]:
        assert isinstance(block.drop, torch.nn.Dropout2d) and block.drop.p == 0.3
    x = torch.randn(2, 5, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(drop.eval()(x), plain.eval()(x))  # off in eval mode
        drop.train()
        a, b = drop(x), drop(x)
    assert not torch.equal(a, b)  # stochastic in training
    assert MambaUNetConfig.from_dict(drop.config.to_dict()).dropout == 0.3
    old = plain.config.to_dict()
    del old["dropout"]  # a card written before the field existed
    assert MambaUNetConfig.from_dict(old).dropout == 0.0


def test_group_norm_replaces_every_batch_norm_and_makes_slices_independent() -> None:
    torch.manual_seed(6)
    group = MambaUNetV2(small_config(norm="group")).train()
    batch = MambaUNetV2(small_config())
    n_batch = sum(isinstance(m, torch.nn.BatchNorm2d) for m in batch.modules())
    assert n_batch > 0 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in group.modules())
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in group.modules()) == n_batch
    assert all(m.num_groups == 8 for m in group.modules() if isinstance(m, torch.nn.GroupNorm))
    x = torch.randn(4, 5, 16, 16)
    with torch.no_grad():  # in training mode a slice's output does not depend on the rest of its batch
        torch.testing.assert_close(group(x)[:1], group(x[:1]))
        assert not torch.allclose(batch.train()(x)[:1], batch(x[:1]))  # BatchNorm's does
    assert MambaUNetConfig.from_dict(group.config.to_dict()).norm == "group"
    old = batch.config.to_dict()
    del old["norm"]  # a card written before the field existed
    assert MambaUNetConfig.from_dict(old).norm == "batch"
    with pytest.raises(ValueError, match="norm="):
        small_config(norm="layer")
    with pytest.raises(ValueError, match="multiple of 8"):
        small_config(norm="group", channels=(8, 12, 16, 32))


def test_set_backend_and_helpers() -> None:
    model = MambaUNetV2(small_config())
    set_backend(model, "torch")
    assert model.config.backend == "torch"
    assert all(m.backend == "torch" for m in model.modules() if isinstance(m, Mamba2))
    no_decay = no_weight_decay_names(model)
    assert any(name.endswith("A_log") for name in no_decay)
    assert not any(name.endswith("in_proj.weight") for name in no_decay)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


def test_variants_share_the_unet_parameters() -> None:
    """The 'none' baseline is the same network minus the mixers (same conv parameter names)."""
    names = {m: set(MambaUNetV2(small_config(mixer=m)).state_dict()) for m in ("mamba2", "attention", "none")}
    assert names["none"] < names["mamba2"] and names["none"] < names["attention"]


# --------------------------------------------------------------------------- slab mode


def test_slab_config_round_trip_validation_and_older_cards() -> None:
    cfg = small_config(slab=3)
    assert MambaUNetConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["slab"] == 3
    with pytest.raises(ValueError, match="slab"):
        small_config(slab=0)
    old = small_config().to_dict()
    del old["slab"]  # a card written before the field existed
    assert MambaUNetConfig.from_dict(old).slab == 1


def test_slab_one_is_slice_wise_and_slab_models_share_its_weights() -> None:
    """The default (slab 1) predicts every slice on its own; a slab model has the same
    parameters, so a slice-wise state dict loads into it."""
    torch.manual_seed(6)
    plain = MambaUNetV2(small_config()).eval()
    assert plain.config.slab == 1
    x = torch.randn(4, 5, 16, 16)
    with torch.no_grad():
        together = plain(x)
        alone = torch.cat([plain(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    slab = MambaUNetV2(small_config(slab=2))
    slab.load_state_dict(plain.state_dict())  # strict: same names and shapes


def _influence(model: MambaUNetV2, x: torch.Tensor, source: int, target: int) -> float:
    """Largest change of slice ``target``'s output when slice ``source``'s input changes."""
    with torch.no_grad():
        base = model(x)
        changed = x.clone()
        changed[source] += 5.0
        return float((model(changed)[target] - base[target]).abs().max())


@pytest.mark.parametrize(
    "mixer, directions, backwards",
    [("mamba2", 1, False), ("mamba2", 2, True), ("mamba2", 4, True), ("attention", 1, True)],
)
def test_slab_mixers_see_the_slices_of_their_slab_only(mixer: str, directions: int, backwards: bool) -> None:
    """Slabs of 2 slices (batch rows 0-1 and 2-3), eval mode (BatchNorm per slice): slice 0 of a
    slab reaches slice 1; with one scan direction (a causal raster scan) slice 1 does not reach
    slice 0, with two or four it does, and attention sees the whole slab; slices of different
    slabs never meet."""
    torch.manual_seed(7)
    model = MambaUNetV2(small_config(mixer=mixer, scan_directions=directions, slab=2)).double().eval()
    x = torch.randn(4, 5, 16, 16, dtype=torch.float64)  # float64: any nonzero change is real
    assert _influence(model, x, 0, 1) > 0.0
    assert _influence(model, x, 2, 3) > 0.0
    if backwards:
        assert _influence(model, x, 1, 0) > 0.0
    else:
        assert _influence(model, x, 1, 0) == 0.0
    for source, target in ((0, 2), (1, 3), (2, 0), (3, 1)):
        assert _influence(model, x, source, target) == 0.0


def test_slab_batch_must_hold_whole_slabs_and_ensembles_keep_the_slab() -> None:
    from MambaDoseLib.model import MambaUNetV2Ensemble

    model = MambaUNetV2(small_config(slab=3)).eval()
    with pytest.raises(ValueError, match="slabs of 3"):
        model(torch.randn(4, 5, 16, 16))
    ensemble = MambaUNetV2Ensemble(small_config(slab=2), 2).eval()
    assert ensemble.config.slab == 2
    with torch.no_grad():
        assert ensemble(torch.randn(4, 5, 16, 16)).shape == (4, 1, 16, 16)
    with pytest.raises(ValueError, match="slabs of 2"):
        ensemble(torch.randn(3, 5, 16, 16))


# --------------------------------------------------------------------------- 3D (conv_dims=3)


def test_3d_config_needs_a_slab_divisible_by_the_downsampling_and_old_cards_are_2d() -> None:
    cfg = small_config(conv_dims=3, slab=8)
    assert MambaUNetConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (dict(conv_dims=3, slab=1), dict(conv_dims=3, slab=12), dict(conv_dims=1, slab=8)):
        with pytest.raises(ValueError, match="conv_dims"):
            small_config(**bad)
    old = small_config().to_dict()
    del old["conv_dims"]  # a card written before the field existed
    assert MambaUNetConfig.from_dict(old).conv_dims == 2


@pytest.mark.parametrize("mixer, norm", [("mamba2", "batch"), ("attention", "group"), ("none", "batch")])
def test_3d_network_mixes_every_slice_of_its_slab_and_keeps_slabs_apart(mixer: str, norm: str) -> None:
    """Two slabs of 8 slices (rows 0-7, 8-15), eval mode: 3D convolutions carry every slice of a
    slab to every other, in both directions and whatever the mixer (one causal scan direction
    included); slabs stay independent; the output keeps the slab layout; the weights are 3D."""
    torch.manual_seed(9)
    model = MambaUNetV2(small_config(mixer=mixer, norm=norm, conv_dims=3, slab=8)).double().eval()
    assert model.head.weight.ndim == 5
    x = torch.randn(16, 5, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert model(x).shape == (16, 1, 16, 16)
    for source, target in ((0, 7), (7, 0), (9, 15), (15, 8)):
        assert _influence(model, x, source, target) > 0.0
    for source, target in ((0, 8), (7, 15), (8, 0), (15, 7)):
        assert _influence(model, x, source, target) == 0.0
    with pytest.raises(ValueError, match="slabs of 8"):
        model(x[:12])


def test_3d_network_trains_under_autocast_with_gradients_everywhere() -> None:
    """bf16 autocast as on the GPU (training uses it on CUDA only), here on the CPU without oneDNN:
    torch 2.13's oneDNN bf16 3D-convolution weight gradient came back NaN at times on these CPUs
    (about 1 fresh process in 5, the first backward only; never with oneDNN off, never in float32)."""
    torch.manual_seed(10)
    model = MambaUNetV2(small_config(conv_dims=3, slab=8, grad_checkpoint=True, backend="torch"))
    x = torch.randn(8, 5, 16, 16)
    with torch.backends.mkldnn.flags(enabled=False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().square().mean()
        loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_residual_channel_adds_a_correction_to_that_input_channel() -> None:
    """residual_channel=N: output = input channel N + the network's output (a cascade's second stage);
    validated, round-tripped, -1 for older cards, the same path in 2D and 3D."""
    cfg = small_config(residual_channel=3)
    assert MambaUNetConfig.from_dict(cfg.to_dict()).residual_channel == 3
    old = cfg.to_dict()
    del old["residual_channel"]
    assert MambaUNetConfig.from_dict(old).residual_channel == -1
    for bad in (
        dict(residual_channel=5),
        dict(residual_channel=-2),
        dict(residual_channel=0, out_channels=2),
    ):
        with pytest.raises(ValueError, match="residual_channel"):
            small_config(**bad)
    torch.manual_seed(0)
    x = torch.randn(4, 5, 16, 16)
    for extra in ({}, dict(conv_dims=3, slab=8, norm="group", mixer="none", channels=(8, 16, 32, 64))):
        plain = MambaUNetV2(small_config(backend="torch", **extra)).eval()
        resid = MambaUNetV2(small_config(backend="torch", residual_channel=3, **extra)).eval()
        batch = x.repeat(2, 1, 1, 1) if extra else x  # 3D: one slab of 8 slices
        with torch.no_grad():
            # a new network makes no correction (zero head): its output is channel 3 itself
            torch.testing.assert_close(resid(batch), batch[:, 3:4])
            resid.load_state_dict(plain.state_dict())  # the same parameters: only the output differs
            torch.testing.assert_close(resid(batch), plain(batch) + batch[:, 3:4])
