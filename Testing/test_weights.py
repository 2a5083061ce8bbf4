"""Weights on disk: safetensors + model card round trip, and clean refusals of bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from MambaDoseLib.errors import WeightsError
from MambaDoseLib.model import MambaUNetConfig, MambaUNetV2
from MambaDoseLib.weights import card_path, default_model_path, load_model, save_model

CHANNELS = ["ct", "ptv_map", "possible_dose_mask"]


def _trained_like_model(seed: int = 0, **overrides) -> MambaUNetV2:
    torch.manual_seed(seed)
    cfg = MambaUNetConfig(
        in_channels=3, channels=(8, 16, 16, 32), d_state=8, headdim=8, chunk_size=16, **overrides
    )
    model = MambaUNetV2(cfg)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 16, 16))  # moves the BatchNorm running statistics off their init
    return model.eval()


def _card() -> dict:
    return {"channels": CHANNELS, "normalisation": {"ct": [0, 2500]}, "training": {"epochs": 1}}


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[Path, MambaUNetV2]:
    model = _trained_like_model()
    path = tmp_path / "model.safetensors"
    save_model(path, model, _card())
    return path, model


def test_round_trip_gives_equal_outputs_and_full_card(saved) -> None:
    path, model = saved
    loaded, card = load_model(path)
    assert card["format"] == "mambadose-model/1" and card["architecture"] == "MambaUNetV2"
    assert card["channels"] == CHANNELS and card["training"] == {"epochs": 1}
    assert MambaUNetConfig.from_dict(card["config"]) == model.config
    assert set(card["tensors"]) == set(model.state_dict())
    assert any(name.endswith("running_var") for name in card["tensors"])
    assert not loaded.training
    x = torch.randn(2, 3, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert not list(path.parent.glob("*.tmp"))  # atomic writes leave no temporary files


def test_save_refuses_channel_count_mismatch(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="in_channels=3"):
        save_model(tmp_path / "m.safetensors", _trained_like_model(), {"channels": ["ct"]})


def test_missing_weights_or_card(saved, tmp_path: Path) -> None:
    path, _ = saved
    with pytest.raises(WeightsError, match="not found"):
        load_model(tmp_path / "absent.safetensors")
    card_path(path).unlink()
    with pytest.raises(WeightsError, match="model card"):
        load_model(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_file_fails_cleanly(saved, damage: str) -> None:
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 100)
    with pytest.raises(WeightsError, match=str(path.name)):
        load_model(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_file_with_a_matching_sha_fails_cleanly(saved, damage: str) -> None:
    """Even when the card's digest was (wrongly) made from the damaged file, loading refuses it."""
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff" * 64)
    from MambaDoseLib.weights import file_sha256

    card = json.loads(card_path(path).read_text())
    card["sha256"] = file_sha256(path)
    card_path(path).write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="safetensors"):
        load_model(path)


def test_card_with_another_sha_or_config_is_refused(saved) -> None:
    path, _ = saved
    original = json.loads(card_path(path).read_text())

    card = dict(original, sha256="0" * 64)
    card_path(path).write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="SHA-256"):
        load_model(path)

    card = dict(original, config=dict(original["config"], channels=[8, 16, 32, 32]))
    card_path(path).write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="do not match"):
        load_model(path)

    card = dict(original, config=dict(original["config"], in_channels=4))
    card_path(path).write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="in_channels=4"):
        load_model(path)

    card = dict(original, config=dict(original["config"], mixer="rnn"))
    card_path(path).write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="invalid config"):
        load_model(path)

    card_path(path).write_text("{not json")
    with pytest.raises(WeightsError, match="unreadable"):
        load_model(path)


def test_weights_of_another_variant_are_refused(saved, tmp_path: Path) -> None:
    path, _ = saved
    other = tmp_path / "other.safetensors"
    save_model(other, _trained_like_model(mixer="attention", attention_heads=2), _card())
    card = json.loads(card_path(path).read_text())
    card["sha256"] = json.loads(card_path(other).read_text())["sha256"]
    card_path(path).write_text(json.dumps(card))
    path.write_bytes(other.read_bytes())  # attention weights under a mamba2 card
    with pytest.raises(WeightsError, match="do not match"):
        load_model(path)


def test_default_model_path(monkeypatch, saved, tmp_path: Path) -> None:
    path, _ = saved
    monkeypatch.setenv("MAMBADOSE_MODEL", str(path))
    assert default_model_path() == path
    monkeypatch.setenv("MAMBADOSE_MODEL", str(tmp_path / "nope.safetensors"))
    with pytest.raises(WeightsError, match="MAMBADOSE_MODEL"):
        default_model_path()
    monkeypatch.delenv("MAMBADOSE_MODEL")
    shipped = Path(__file__).resolve().parents[1] / "Resources" / "Models" / "MambaUNetV2_OpenKBP.safetensors"
    if shipped.is_file():
        assert default_model_path() == shipped
    else:
        with pytest.raises(WeightsError, match="no shipped model weights"):
            default_model_path()


def test_ensemble_averages_its_members_and_round_trips(tmp_path: Path) -> None:
    from MambaDoseLib.model import MambaUNetV2Ensemble, set_backend

    members = [_trained_like_model(seed) for seed in (0, 1, 2)]
    ensemble = MambaUNetV2Ensemble(members[0].config, 3)
    for slot, member in zip(ensemble.members, members, strict=True):
        slot.load_state_dict(member.state_dict())
    ensemble.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = sum(m(x) for m in members) / 3
        torch.testing.assert_close(ensemble(x), expected)
    path = tmp_path / "ensemble.safetensors"
    card = save_model(path, ensemble, _card())
    assert card["ensemble_size"] == 3 and all(k.startswith("members.") for k in card["tensors"])
    loaded, card = load_model(path, backend="torch")
    assert isinstance(loaded, MambaUNetV2Ensemble) and loaded.config.backend == "torch"
    assert all(m.config.backend == "torch" for m in loaded.members)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected)
    set_backend(loaded, "auto")
    assert loaded.members[2].config.backend == "auto"
    with pytest.raises(ValueError, match="at least 2"):
        MambaUNetV2Ensemble(members[0].config, 1)
    # a card that claims another size, or a bad one, is refused by name
    for size in (2, 0, "3"):
        bad = dict(card, ensemble_size=size)
        card_path(path).write_text(json.dumps(bad))
        with pytest.raises(WeightsError, match="ensemble_size|tensors do not match"):
            load_model(path)


def test_single_model_card_has_no_ensemble_size(saved) -> None:
    path, _ = saved
    assert "ensemble_size" not in json.loads(card_path(path).read_text())


def test_shipped_models_load_and_agree_with_their_cards() -> None:
    from MambaDoseLib.features import CHANNELS
    from MambaDoseLib.model import MambaUNetV2Ensemble

    models = Path(__file__).resolve().parents[1] / "Resources" / "Models"
    single, single_card = load_model(models / "MambaUNetV2_OpenKBP.safetensors", backend="torch")
    ensemble, card = load_model(models / "MambaUNetV2_OpenKBP_ensemble.safetensors", backend="torch")
    assert isinstance(ensemble, MambaUNetV2Ensemble) and card["ensemble_size"] == 6
    # five 2D networks (session 1-3) and one 3D network of slabs of 32 (session 8)
    assert [(c.conv_dims, c.slab) for c in ensemble.configs] == [(2, 1)] * 5 + [(3, 32)]
    assert card["channels"] == single_card["channels"] == list(CHANNELS) and card["views"] == ["axial"]
    assert card["storage_dtype"] == single_card["storage_dtype"] == "float16"
    # the single model shipped until session 5 is the ensemble's member 0; the single model's card
    # lists it among its baselines
    previous = single_card["training"]["baselines"]["MambaUNetV2 (session 1)"]
    assert card["training"]["members"][0]["sha256"] == previous["sha256"]
    assert set(single_card["training"]["baselines"]) >= {"UNet", "Transformer"}
    assert len(single_card["training"]["code_commit"]) == 40  # the commit it was trained from
    dose = single_card["training"]["validation"]["val_dose_score"]
    assert dose < previous["validation"]["val_dose_score"]  # what replaced it is better
    assert card["training"]["validation"]["val_dose_score"] < dose  # the ensemble better still
    assert single.config.scan_directions == 1 and ensemble.members[0].config.scan_directions == 2
    # the DVH stream (session 20): three 2D networks trained with the DVH term and without the
    # Left/Right swap, none of them a member of the ensemble
    dvh, dvh_card = load_model(models / "MambaUNetV2_OpenKBP_dvh.safetensors", backend="torch")
    assert isinstance(dvh, MambaUNetV2Ensemble) and dvh_card["ensemble_size"] == 3
    assert [(c.conv_dims, c.slab) for c in dvh.configs] == [(2, 1)] * 3
    assert dvh_card["channels"] == list(CHANNELS) and dvh_card["storage_dtype"] == "float16"
    dvh_members = dvh_card["training"]["members"]
    recipes = [m["config"] for m in dvh_members]
    assert all(r["dvh_loss_weight"] == 1.0 and not r["augment"]["swap_lr_channels"] for r in recipes)
    assert not {m["sha256"] for m in dvh_members} & {m["sha256"] for m in card["training"]["members"]}
    # as a model of its own it has the lower DVH score and the higher dose score
    assert len(dvh_card["training"]["code_commit"]) == 40  # the commit they were trained from
    dvh_validation = dvh_card["training"]["validation"]
    assert dvh_validation["val_dvh_score"] < card["training"]["validation"]["val_dvh_score"]
    assert dvh_validation["val_dose_score"] > card["training"]["validation"]["val_dose_score"]


def test_float16_storage_halves_the_file_and_loads_into_float32(tmp_path: Path) -> None:
    from MambaDoseLib.model import MambaUNetV2Ensemble

    torch.manual_seed(3)
    cfg = MambaUNetConfig(
        in_channels=4, channels=(8, 16), headdim=8, d_state=8, chunk_size=16, mixer_min_level=1
    )
    model = MambaUNetV2Ensemble(cfg, 2)
    card = {"channels": [f"c{i}" for i in range(4)]}
    full = save_model(tmp_path / "f32.safetensors", model, card)
    half = save_model(tmp_path / "f16.safetensors", model, card, storage_dtype=torch.float16)
    assert "storage_dtype" not in full and half["storage_dtype"] == "float16"
    size32, size16 = ((tmp_path / f"{n}.safetensors").stat().st_size for n in ("f32", "f16"))
    assert size16 < 0.6 * size32  # half the data; the safetensors header stays
    with pytest.raises(WeightsError, match="floating-point"):
        save_model(tmp_path / "i.safetensors", model, card, storage_dtype=torch.int32)
    big = MambaUNetV2Ensemble(cfg, 2)
    with torch.no_grad():
        next(big.parameters()).fill_(1e6)  # beyond float16's range
    with pytest.raises(WeightsError, match="cannot hold"):
        save_model(tmp_path / "big.safetensors", big, card, storage_dtype=torch.float16)
    assert not (tmp_path / "big.safetensors").exists()
    loaded, _ = load_model(tmp_path / "f16.safetensors", backend="torch")
    original = model.state_dict()
    for name, t in loaded.state_dict().items():
        assert t.dtype == original[name].dtype  # float32 parameters, int64 counters
        if t.is_floating_point():
            torch.testing.assert_close(t, original[name], rtol=1e-3, atol=1e-4)
        else:
            assert torch.equal(t, original[name])


def test_model_argument_names_a_file_or_the_shipped_ensemble(tmp_path: Path, monkeypatch) -> None:
    from MambaDoseLib import weights

    monkeypatch.delenv(weights.MODEL_ENV, raising=False)
    assert weights.model_path_from_arg(None) == weights.models_dir() / weights.DEFAULT_MODEL_NAME
    assert weights.model_path_from_arg("ensemble") == weights.models_dir() / weights.ENSEMBLE_MODEL_NAME
    assert weights.model_path_from_arg(tmp_path / "x.safetensors") == tmp_path / "x.safetensors"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ensemble").write_bytes(b"")  # a file of that name wins
    assert weights.model_path_from_arg("ensemble") == Path("ensemble")
    (tmp_path / "ensemble").unlink()
    monkeypatch.setattr(weights, "models_dir", lambda: tmp_path)
    with pytest.raises(WeightsError, match="ensemble is not installed"):
        weights.model_path_from_arg("ensemble")
    with pytest.raises(WeightsError, match="DVH stream is not installed"):
        weights.model_path_from_arg("dvh")


def test_dvh_argument_names_the_shipped_dvh_stream(monkeypatch) -> None:
    from MambaDoseLib import weights

    monkeypatch.delenv(weights.MODEL_ENV, raising=False)
    assert weights.model_path_from_arg("dvh") == weights.models_dir() / weights.DVH_MODEL_NAME


def test_mixed_ensemble_of_2d_and_3d_members_round_trips_with_member_configs(tmp_path: Path) -> None:
    """Members of different configs (a 2D network and a 3D one of slab 8): the card lists each
    member's config, loading rebuilds each (backend set on every member, its slab and conv_dims
    kept), and a card whose member configs are wrong is refused by name."""
    from MambaDoseLib.model import MambaUNetV2Ensemble, set_backend

    flat = _trained_like_model(0)
    deep = MambaUNetV2(MambaUNetConfig(**{**flat.config.to_dict(), "slab": 8, "conv_dims": 3}))
    ensemble = MambaUNetV2Ensemble([flat.config, deep.config])
    ensemble.members[0].load_state_dict(flat.state_dict())
    ensemble.members[1].load_state_dict(deep.state_dict())
    path = tmp_path / "mixed.safetensors"
    card = save_model(path, ensemble, _card())
    assert card["ensemble_size"] == 2 and card["member_configs"][1]["conv_dims"] == 3
    assert card["member_configs"][0] == card["config"]
    loaded, _ = load_model(path, backend="torch")
    assert [(c.slab, c.conv_dims, c.backend) for c in loaded.configs] == [(1, 2, "torch"), (8, 3, "torch")]
    set_backend(loaded, "auto")
    assert [(c.slab, c.backend) for c in loaded.configs] == [(1, "auto"), (8, "auto")]
    for name, tensor in ensemble.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)
    with pytest.raises(ValueError, match="different slabs"):
        loaded(torch.randn(8, 3, 16, 16))
    # a homogeneous ensemble's card has no member_configs
    same = save_model(tmp_path / "same.safetensors", MambaUNetV2Ensemble(flat.config, 2), _card())
    assert "member_configs" not in same
    for bad in (card["member_configs"][:1], [card["member_configs"][1], card["member_configs"][0]], "x"):
        card_path(path).write_text(json.dumps(dict(card, member_configs=bad)))
        with pytest.raises(WeightsError, match="member_configs"):
            load_model(path)
    with pytest.raises(ValueError, match="takes 4 channels"):
        MambaUNetV2Ensemble([flat.config, MambaUNetConfig(**{**flat.config.to_dict(), "in_channels": 4})])
