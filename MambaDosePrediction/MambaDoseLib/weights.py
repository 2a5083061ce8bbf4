"""Model weights on disk: a safetensors file plus a JSON model card beside it.

``MambaUNetV2_OpenKBP.safetensors`` holds every tensor of the state_dict (BatchNorm running
statistics included); ``MambaUNetV2_OpenKBP.json`` says what they are::

    {"format": "mambadose-model/1", "architecture": "MambaUNetV2",
     "config": MambaUNetConfig.to_dict(), "channels": [feature channel names, in order],
     "normalisation": {...}, "training": {...},
     "tensors": {name: shape}, "sha256": hex digest of the safetensors file}

An ensemble of MambaUNetV2 networks (``model.MambaUNetV2Ensemble``) is one file too: its card adds
``"ensemble_size": N`` and its tensors are named ``members.<i>.<name>``. Members of different
configs (e.g. 2D and 3D) add ``"member_configs"``, one config per member (``"config"`` is then
member 0's); without it every member has ``"config"``.

A model trained on one common in-plane voxel size (``mambadose train --inplane-spacing``) has
``"inplane_spacing_mm"`` in its card (absent: trained on each patient's own grid); prediction
resamples to it (``inference.predict_patient``). An ensemble's card takes it from its members'
training configs (``training.members[i].config``), which must agree.

Loading checks the card against the file and refuses any mismatch with a WeightsError naming the
file and the problem. Weights are never unpickled (no ``torch.load``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .errors import WeightsError
from .model import MambaUNetConfig, MambaUNetV2, MambaUNetV2Ensemble, set_backend

CARD_FORMAT = "mambadose-model/1"
ARCHITECTURE = "MambaUNetV2"
DEFAULT_MODEL_NAME = "MambaUNetV2_OpenKBP.safetensors"
#: The shipped ensemble: five 2D MambaUNetV2 and one 3D (since session 8; better on validation,
#: about 7x slower on a CPU than the single network; docs/experiments.md, "Session 9").
ENSEMBLE_MODEL_NAME = "MambaUNetV2_OpenKBP_ensemble.safetensors"
#: What ``--model ensemble`` names.
ENSEMBLE_ALIAS = "ensemble"
#: The shipped DVH stream (since session 20): three 2D networks trained with the DVH term, for
#: ``dvh_stream`` (``--dvh-model dvh``; docs/experiments.md, "Session 20").
DVH_MODEL_NAME = "MambaUNetV2_OpenKBP_dvh.safetensors"
#: What ``--dvh-model dvh`` (or ``--model dvh``) names.
DVH_ALIAS = "dvh"
#: Shipped files a short name stands for, and how an error names them.
SHIPPED_ALIASES = {
    ENSEMBLE_ALIAS: (ENSEMBLE_MODEL_NAME, "ensemble"),
    DVH_ALIAS: (DVH_MODEL_NAME, "DVH stream"),
}
MODEL_ENV = "MAMBADOSE_MODEL"


def card_path(path: str | os.PathLike) -> Path:
    """The model card beside a weights file: same name, ``.json`` suffix."""
    return Path(path).with_suffix(".json")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(
    path: str | os.PathLike,
    model: MambaUNetV2 | MambaUNetV2Ensemble,
    card: dict,
    storage_dtype: torch.dtype | None = None,
) -> dict:
    """Write ``model``'s state_dict to ``path`` (safetensors) and its card to ``path.with_suffix('.json')``.

    ``card`` supplies "channels" (feature channel names, one per input channel), and usually
    "normalisation" and "training"; "format", "architecture", "config", "tensors" and "sha256"
    are filled in here. ``storage_dtype`` (e.g. ``torch.float16``) stores the floating-point
    tensors in that type to halve the file (the card says ``"storage_dtype"``); loading copies them
    into the float32 model. Both files are written atomically. Returns the full card.
    """
    from safetensors.torch import save_file

    path = Path(path)
    config: MambaUNetConfig = model.config
    channels = list(card.get("channels", []))
    if len(channels) != config.in_channels:
        raise WeightsError(
            f"{path}: card lists {len(channels)} channels but the model takes in_channels={config.in_channels}"
        )
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    if storage_dtype is not None:
        if not storage_dtype.is_floating_point:
            raise WeightsError(f"{path}: storage_dtype must be a floating-point type, got {storage_dtype}")
        tensors = {n: t.to(storage_dtype) if t.is_floating_point() else t for n, t in tensors.items()}
        overflow = sorted(n for n, t in tensors.items() if t.is_floating_point() and not t.isfinite().all())
        if overflow:
            raise WeightsError(f"{path}: {storage_dtype} cannot hold the values of {overflow[:3]}")
    full = dict(card)
    full.update(
        format=CARD_FORMAT,
        architecture=ARCHITECTURE,
        config=config.to_dict(),
        channels=channels,
        tensors={name: list(t.shape) for name, t in tensors.items()},
    )
    if storage_dtype is not None:
        full["storage_dtype"] = str(storage_dtype).removeprefix("torch.")
    else:
        full.pop("storage_dtype", None)
    full.pop("member_configs", None)
    if isinstance(model, MambaUNetV2Ensemble):
        full["ensemble_size"] = len(model.members)
        configs = [c.to_dict() for c in model.configs]
        if any(c != configs[0] for c in configs):
            full["member_configs"] = configs
        _inherit_member_spacing(path, full)  # checked before anything is written
    else:
        full.pop("ensemble_size", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": CARD_FORMAT}))
    full["sha256"] = file_sha256(path)
    full.setdefault("normalisation", {})
    full.setdefault("training", {})
    text = json.dumps(full, indent=2) + "\n"
    _atomic_write(card_path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return full


def _inherit_member_spacing(path: Path, card: dict) -> None:
    """An ensemble predicts on its members' grid: the in-plane spacing each member records
    (``training.members[i].inplane_spacing_mm``, the member card's own key, else its training
    config's ``config.inplane_spacing_mm``; None = native grids) must agree among the members and
    with the card's ``inplane_spacing_mm``, which is set from them when absent. Members recording
    neither are not counted. Raises WeightsError."""
    members = [m for m in card.get("training", {}).get("members") or [] if isinstance(m, dict)]
    found = set()
    for m in members:
        if "inplane_spacing_mm" in m:
            found.add(m["inplane_spacing_mm"])
        elif isinstance(m.get("config"), dict):
            found.add(m["config"].get("inplane_spacing_mm"))
    if len(found) > 1:
        shown = ", ".join("native" if v is None else f"{v:g} mm" for v in sorted(found, key=lambda v: v or 0))
        raise WeightsError(f"{path}: ensemble members were trained on different in-plane grids ({shown})")
    if not found:
        return
    members_spacing = found.pop()
    stated = card.get("inplane_spacing_mm")
    if stated is None and members_spacing is not None:
        card["inplane_spacing_mm"] = float(members_spacing)
    elif stated != members_spacing:
        raise WeightsError(
            f"{path}: card says inplane_spacing_mm {stated} but the members were trained with {members_spacing}"
        )


def read_card(path: str | os.PathLike) -> dict:
    """The model card of weights file ``path``, checked for its format; raises WeightsError."""
    path = Path(path)
    card_file = card_path(path)
    if not card_file.is_file():
        raise WeightsError(f"{path}: model card {card_file.name} not found beside the weights")
    try:
        card = json.loads(card_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{card_file}: unreadable model card ({exc})") from exc
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise WeightsError(f"{card_file}: not a {CARD_FORMAT} model card")
    if card.get("architecture") != ARCHITECTURE:
        raise WeightsError(
            f"{card_file}: architecture {card.get('architecture')!r}, expected {ARCHITECTURE!r}"
        )
    for key in ("config", "channels", "tensors", "sha256"):
        if key not in card:
            raise WeightsError(f"{card_file}: model card has no {key!r}")
    from .inference import card_inplane_spacing

    try:
        card_inplane_spacing(card)
    except WeightsError as exc:
        raise WeightsError(f"{card_file}: {str(exc).removeprefix('model card: ')}") from None
    return card


def _check_tensors(path: Path, tensors: dict[str, torch.Tensor], card: dict, model: nn.Module) -> None:
    """Card, file and model must list the same tensor names with the same shapes."""
    in_file = {name: list(t.shape) for name, t in tensors.items()}
    in_card = {name: list(shape) for name, shape in card["tensors"].items()}
    in_model = {name: list(t.shape) for name, t in model.state_dict().items()}
    for label, other in (("model card", in_card), ("model built from the card's config", in_model)):
        if in_file != other:
            missing = sorted(set(other) - set(in_file))[:3]
            extra = sorted(set(in_file) - set(other))[:3]
            shapes = sorted(k for k in set(in_file) & set(other) if in_file[k] != other[k])[:3]
            raise WeightsError(
                f"{path}: tensors do not match the {label} (missing {missing}, unexpected {extra}, "
                f"different shapes {shapes})"
            )


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", backend: str = "auto"
) -> tuple[MambaUNetV2, dict]:
    """Load weights and card written by save_model; returns (model in eval mode on ``device``, card).
    The model is a MambaUNetV2, or a MambaUNetV2Ensemble when the card has ``ensemble_size`` > 1
    (with ``member_configs``: members of different configs).

    Checks: card present and well-formed, file SHA-256 equals the card's, file readable as
    safetensors, tensor names/shapes equal in card, file and model, ``in_channels ==
    len(channels)``; loads with ``strict=True``. ``backend`` sets the Mamba-2 scan. Any failure
    raises WeightsError naming the file and the problem.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    card = read_card(path)
    digest = file_sha256(path)
    if digest != card["sha256"]:
        raise WeightsError(
            f"{path}: SHA-256 {digest[:12]}... differs from the model card's {str(card['sha256'])[:12]}... "
            "(file corrupted or card from another model)"
        )
    try:
        config = MambaUNetConfig.from_dict({**card["config"], "backend": backend})
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{card_path(path)}: invalid config in the model card ({exc})") from exc
    if config.in_channels != len(card["channels"]):
        raise WeightsError(
            f"{card_path(path)}: config in_channels={config.in_channels} but {len(card['channels'])} channels listed"
        )
    size = card.get("ensemble_size", 1)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise WeightsError(f"{card_path(path)}: ensemble_size must be a positive integer, got {size!r}")
    members = _member_configs(path, card, size, backend)
    try:
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
    if size == 1:
        model = MambaUNetV2(config)
    else:
        try:
            model = MambaUNetV2Ensemble(members or config, size)
        except ValueError as exc:
            raise WeightsError(f"{card_path(path)}: {exc}") from exc
    _check_tensors(path, tensors, card, model)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: state_dict does not load ({exc})") from exc
    set_backend(model, backend)
    return model.to(device).eval(), card


def _member_configs(path: Path, card: dict, size: int, backend: str) -> list[MambaUNetConfig] | None:
    """The card's ``member_configs`` (None when absent), each with ``backend``: one per member,
    the first equal to ``config``. Raises WeightsError."""
    raw = card.get("member_configs")
    if raw is None:
        return None
    where = card_path(path)
    if not isinstance(raw, list) or len(raw) != size or size < 2:
        raise WeightsError(f"{where}: member_configs must list one config per member ({size})")
    if any(not isinstance(c, dict) for c in raw) or raw[0] != card["config"]:
        raise WeightsError(f"{where}: member_configs must be configs, the first equal to 'config'")
    try:
        return [MambaUNetConfig.from_dict({**c, "backend": backend}) for c in raw]
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{where}: invalid member config in the model card ({exc})") from exc


def default_model_path() -> Path:
    """The shipped weights: ``$MAMBADOSE_MODEL`` if set, else Resources/Models/MambaUNetV2_OpenKBP.safetensors.

    Raises WeightsError when the file is not there.
    """
    env = os.environ.get(MODEL_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise WeightsError(f"{path}: weights file named by ${MODEL_ENV} not found")
        return path
    path = models_dir() / DEFAULT_MODEL_NAME
    if not path.is_file():
        raise WeightsError(
            f"{path}: no shipped model weights; train one (mambadose train) or set ${MODEL_ENV} to a .safetensors file"
        )
    return path


def models_dir() -> Path:
    """Where the shipped weights live (``Resources/Models`` of the extension)."""
    return Path(__file__).resolve().parents[2] / "Resources" / "Models"


def model_path_from_arg(value: str | os.PathLike | None) -> Path:
    """A ``--model`` / ``--dvh-model`` value -> weights file: None = ``default_model_path()``;
    ``"ensemble"`` = the shipped ensemble, ``"dvh"`` = the shipped DVH stream (unless a file of that
    name exists); anything else is a path. Raises WeightsError when the shipped file asked for is
    not there."""
    if value is None:
        return default_model_path()
    path = Path(value)
    if str(value) in SHIPPED_ALIASES and not path.exists():
        name, what = SHIPPED_ALIASES[str(value)]
        path = models_dir() / name
        if not path.is_file():
            raise WeightsError(f"{path}: the shipped {what} is not installed; pass a weights FILE")
    return path
