"""MambaUNetV2: a 2D UNet whose lower-resolution stages carry a token mixer, and its baselines.

One network, one config, three token mixers on the same code path:
``"mamba2"`` (MambaUNetV2: Mamba-2 over the flattened H*W pixels), ``"attention"`` (global
multi-head self-attention, the paper's Transformer baseline) and ``"none"`` (the plain UNet).

Layout for ``channels=(32, 64, 128, 256)`` and a 128 x 128 slice (level i works at 128 / 2**i):

    encoder level 0 (128^2, 32) -> level 1 (64^2, 64) -> level 2 (32^2, 128) -> bottleneck (16^2, 256)
    decoder level 2 (32^2, 128) -> level 1 (64^2, 64) -> level 0 (128^2, 32) -> 1x1 conv -> dose

A level is ``convs_per_level`` blocks Conv2d(3x3) -> BatchNorm -> ReLU; the last one is followed
by token mixer -> LayerNorm -> residual where the level carries a mixer (level >=
``mixer_min_level``). The bottleneck is ``bottleneck_depth`` such blocks, each with its mixer.
Input (B, in_channels, H, W), H and W divisible by 2**(len(channels)-1); output (B, out_channels,
H, W) in float32, dose on the normalised [-1, 1] scale.

Slab mode (``slab=k`` > 1): the batch is B/k groups ("slabs") of k consecutive slices of one
patient, and every token mixer takes the k slices of its slab as one image of k*H rows (slice 0's
rows, then slice 1's, ...), so its scan runs through all of them; convolutions and BatchNorm stay
per slice. B must be a multiple of k.

3D (``conv_dims=3``, with ``slab=k``): the same network with 3D convolutions (3x3x3), BatchNorm3d
or GroupNorm, 2x2x2 down- and trilinear upsampling; each slab of k consecutive slices is one
(C, k, H, W) volume, k divisible by 2**levels, and every token mixer scans the flattened
(k/2**i * H/2**i * W/2**i) voxels of its level, slice after slice. Input and output keep the
slab layout (B slices, B/k slabs), so training, validation and prediction in slabs are the same
code for both.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .mamba2 import BACKENDS, SCAN_DIRECTIONS, Mamba2, Mamba2D

MIXERS = ("mamba2", "attention", "none")
DOWNSAMPLES = ("conv", "maxpool")
SKIPS = ("concat", "add")
NORMS = ("batch", "group")
CONV_DIMS = (2, 3)
GROUPS = 8  # GroupNorm groups (norm="group"); every width must be a multiple


@dataclass
class MambaUNetConfig:
    """Hyper-parameters of MambaUNetV2 and its baselines (plain JSON through to_dict/from_dict).

    Defaults: the token mixer sits at 32x32 and below (level 2 of encoder and decoder, and the
    bottleneck) with one scan direction (a raster scan: two or four directions measured no better
    on the validation dose score; one gives a 1.36x faster compiled training step with CUDA graphs
    on an H100, 1.12x in real compiled training runs); see the README's model section.

    ``conv_dims``: 2 (default) or 3 (3D convolutions over each slab as one volume; needs ``slab``
    a multiple of 2**levels). Cards written before the field existed load as 2.

    ``slab``: 1 (default) = every slice on its own. k > 1 = the batch holds groups of k
    consecutive slices of one patient and each token mixer scans the tokens of a group's k slices
    as one sequence (k*H rows of W tokens, slice by slice), giving the network context along the
    slice axis. With one scan direction information flows only from lower to higher slice index
    within a slab; two or four directions carry it both ways. The attention mixer gets the 2D
    position code of the stacked (k*H, W) image. Cards written before the field existed load as 1.

    ``residual_channel``: -1 (default) = the network predicts the dose. N >= 0 = it predicts a
    correction that is added to input channel N, a dose on the output's scale (a cascade's second
    stage: the ``prior_dose`` channel, a first stage's dose), so an untrained network already
    returns that dose. Needs ``out_channels`` 1. Cards written before the field existed load as -1.
    """

    in_channels: int
    out_channels: int = 1
    channels: tuple[int, ...] = (32, 64, 128, 256)
    mixer: str = "mamba2"
    mixer_min_level: int = (
        2  # first level carrying a mixer; 0 = full resolution, len(channels)-1 = bottleneck only
    )
    d_state: int = 64
    headdim: int = 32
    expand: int = 2
    d_conv: int = 4
    chunk_size: int = 64
    scan_directions: int = 1
    downsample: str = "conv"
    skip: str = "concat"
    convs_per_level: int = 2
    bottleneck_depth: int = 2
    attention_heads: int = 4
    backend: str = "auto"
    grad_checkpoint: bool = False
    dropout: float = 0.0  # channel dropout (Dropout2d) after the conv of each bottleneck / decoder block
    slab: int = 1  # consecutive slices whose tokens each mixer takes as one sequence (module docstring)
    norm: str = "batch"  # after each conv: BatchNorm2d, or GroupNorm(8 groups) (no batch statistics)
    conv_dims: int = 2  # 3: each slab is one volume through 3D convolutions (module docstring)
    residual_channel: int = -1  # >= 0: the output is input channel N plus the network's correction

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self._check()

    def _check(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"MambaUNetConfig: {msg}")

        if self.in_channels < 1 or self.out_channels < 1:
            fail(f"in_channels and out_channels must be >= 1 (got {self.in_channels}, {self.out_channels})")
        if len(self.channels) < 2 or min(self.channels) < 1:
            fail(f"channels needs >= 2 positive entries (levels + bottleneck), got {self.channels}")
        for name, allowed in (
            ("mixer", MIXERS),
            ("downsample", DOWNSAMPLES),
            ("skip", SKIPS),
            ("norm", NORMS),
            ("backend", BACKENDS),
        ):
            if getattr(self, name) not in allowed:
                fail(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        if self.scan_directions not in SCAN_DIRECTIONS:
            fail(f"scan_directions={self.scan_directions} is not one of {SCAN_DIRECTIONS}")
        if not 0 <= self.mixer_min_level <= self.levels:
            fail(f"mixer_min_level={self.mixer_min_level} must lie in [0, {self.levels}]")
        for name in (
            "d_state",
            "headdim",
            "expand",
            "d_conv",
            "chunk_size",
            "convs_per_level",
            "bottleneck_depth",
            "attention_heads",
            "slab",
        ):
            if getattr(self, name) < 1:
                fail(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            fail(f"dropout must lie in [0, 1), got {self.dropout}")
        if not -1 <= self.residual_channel < self.in_channels:
            fail(
                f"residual_channel={self.residual_channel} must be -1 (off) or an input channel (< {self.in_channels})"
            )
        if self.residual_channel >= 0 and self.out_channels != 1:
            fail(f"residual_channel needs out_channels 1, got {self.out_channels}")
        if self.conv_dims not in CONV_DIMS:
            fail(f"conv_dims={self.conv_dims!r} is not one of {CONV_DIMS}")
        if self.conv_dims == 3 and self.slab % 2**self.levels:
            fail(
                f"conv_dims=3 takes each slab as a volume: slab={self.slab} must be a multiple of "
                f"2**levels={2**self.levels} (one 2x2x2 downsampling per level)"
            )
        if self.norm == "group" and any(c % GROUPS for c in self.channels):
            fail(f"norm='group' needs every width a multiple of {GROUPS}, got {self.channels}")
        for c in self.mixer_channels:
            if self.mixer == "mamba2" and (self.expand * c) % self.headdim:
                fail(f"expand*channels={self.expand * c} is not a multiple of headdim={self.headdim}")
            if self.mixer == "attention" and c % self.attention_heads:
                fail(f"channels {c} is not a multiple of attention_heads={self.attention_heads}")

    @property
    def levels(self) -> int:
        """Number of encoder (and decoder) levels; the bottleneck is level ``levels``."""
        return len(self.channels) - 1

    @property
    def mixer_channels(self) -> tuple[int, ...]:
        """Channel counts of the levels (and bottleneck) that carry a token mixer."""
        if self.mixer == "none":
            return ()
        return self.channels[self.mixer_min_level :]

    def has_mixer(self, level: int) -> bool:
        """Whether encoder/decoder ``level`` (or the bottleneck, ``level == levels``) carries a mixer."""
        return self.mixer != "none" and level >= self.mixer_min_level

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (lists, not tuples)."""
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MambaUNetConfig:
        """Inverse of to_dict; unknown keys are an error (ValueError)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"MambaUNetConfig: unknown keys {unknown}")
        return cls(**d)


# --------------------------------------------------------------------------------------------
# Token mixers: (B, H, W, C) -> (B, H, W, C)
# --------------------------------------------------------------------------------------------
def sincos_position_2d(h: int, w: int, c: int, device: torch.device) -> torch.Tensor:
    """Fixed 2D sine-cosine position code, (h*w, c) float32: c/2 channels per axis (c % 4 == 0)."""
    quarter = c // 4
    freq = 1.0 / (10000.0 ** (torch.arange(quarter, device=device, dtype=torch.float32) / max(quarter, 1)))
    ys = torch.arange(h, device=device, dtype=torch.float32)[:, None] * freq  # (h, c/4)
    xs = torch.arange(w, device=device, dtype=torch.float32)[:, None] * freq  # (w, c/4)
    code_y = torch.cat([ys.sin(), ys.cos()], dim=-1)[:, None, :].expand(h, w, 2 * quarter)
    code_x = torch.cat([xs.sin(), xs.cos()], dim=-1)[None, :, :].expand(h, w, 2 * quarter)
    code = torch.cat([code_y, code_x], dim=-1).reshape(h * w, 4 * quarter)
    return F.pad(code, (0, c - 4 * quarter))


class SelfAttention2D(nn.Module):
    """Global multi-head self-attention over all pixels (scaled_dot_product_attention).

    A fixed 2D sine-cosine position code is added to the tokens before the q/k/v projection.
    (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, H, W, C) -> (B, H, W, C)."""
        n, h, w, c = x.shape
        tokens = x.reshape(n, h * w, c) + sincos_position_2d(h, w, c, x.device).to(x.dtype)
        qkv = self.qkv(tokens).view(n, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, HW, C/heads)
        return self.proj(y.transpose(1, 2).reshape(n, h * w, c)).view(n, h, w, c)


class MixerResidual(nn.Module):
    """x + LayerNorm(mixer(x)) on a (B, C, H, W) feature map; the mixer sees (B, H, W, C), or with
    ``cfg.slab`` = k > 1 the slabs of k consecutive slices as (B/k, k*H, W, C). A 3D feature map
    (B, C, D, H, W) (``conv_dims=3``) is one slab per volume: the mixer sees (B, D*H, W, C).

    With ``checkpoint=True`` the mixer and norm are recomputed in backward while training.
    """

    def __init__(self, channels: int, cfg: MambaUNetConfig) -> None:
        super().__init__()
        if cfg.mixer == "mamba2":
            self.mixer: nn.Module = Mamba2D(
                channels, cfg.scan_directions, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand,
                headdim=cfg.headdim, chunk_size=cfg.chunk_size, backend=cfg.backend,
            )  # fmt: skip
        else:
            self.mixer = SelfAttention2D(channels, cfg.attention_heads)
        self.norm = nn.LayerNorm(channels)
        self.checkpoint = cfg.grad_checkpoint
        self.slab = cfg.slab

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5:  # a volume: its slices stacked along the rows, one sequence per volume
            n, c, d, h, w = x.shape
            tokens = x.permute(0, 2, 3, 4, 1).reshape(n, d * h, w, c)
            y = self.norm(self.mixer(tokens)).reshape(n, d, h, w, c)
            return y.permute(0, 4, 1, 2, 3)
        n, c, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        if self.slab > 1:  # a slab's slices stacked along the rows: one sequence per slab
            tokens = tokens.reshape(n // self.slab, self.slab * h, w, c)  # (B/k, k*H, W, C)
        y = self.norm(self.mixer(tokens))
        if self.slab > 1:
            y = y.reshape(n, h, w, c)  # (B, H, W, C)
        return y.permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> (B, C, H, W), or (B, C, D, H, W) -> (B, C, D, H, W)."""
        if self.checkpoint and self.training and torch.is_grad_enabled():
            return x + checkpoint(self._branch, x, use_reentrant=False)
        return x + self._branch(x)


# --------------------------------------------------------------------------------------------
# UNet parts
# --------------------------------------------------------------------------------------------
def _conv(dims: int) -> type[nn.Module]:
    return nn.Conv3d if dims == 3 else nn.Conv2d


class ConvBlock(nn.Sequential):
    """Conv(3x3, or 3x3x3 with ``dims=3``; no bias) -> BatchNorm (or GroupNorm, ``norm="group"``)
    -> ReLU; (B, c_in, [D,] H, W) -> (B, c_out, [D,] H, W)."""

    def __init__(self, c_in: int, c_out: int, norm: str = "batch", dims: int = 2) -> None:
        if norm == "batch":
            layer = nn.BatchNorm3d(c_out) if dims == 3 else nn.BatchNorm2d(c_out)
        else:
            layer = nn.GroupNorm(GROUPS, c_out)
        super().__init__(_conv(dims)(c_in, c_out, 3, padding=1, bias=False), layer, nn.ReLU(inplace=True))


class Block(nn.Module):
    """ConvBlock(c_in -> c_out), Dropout2d(``dropout``) when > 0, then MixerResidual if ``mixer``;
    (B, c_in, H, W) -> (B, c_out, H, W). Dropout has no parameters: the state_dict is the same."""

    def __init__(
        self, c_in: int, c_out: int, cfg: MambaUNetConfig, mixer: bool, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.conv = ConvBlock(c_in, c_out, cfg.norm, cfg.conv_dims)
        dropout_class = nn.Dropout3d if cfg.conv_dims == 3 else nn.Dropout2d
        self.drop = dropout_class(dropout) if dropout > 0 else None
        self.mix = MixerResidual(c_out, cfg) if mixer else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.drop is not None:
            x = self.drop(x)
        return x if self.mix is None else self.mix(x)


def make_stage(
    c_in: int,
    c_out: int,
    n_blocks: int,
    cfg: MambaUNetConfig,
    mixer: bool,
    mixer_every: bool,
    dropout: float = 0.0,
) -> nn.Sequential:
    """``n_blocks`` Blocks; the last (or each, if ``mixer_every``) carries a mixer when ``mixer``."""
    return nn.Sequential(
        *(
            Block(
                c_in if i == 0 else c_out, c_out, cfg, mixer and (mixer_every or i == n_blocks - 1), dropout
            )
            for i in range(n_blocks)
        )
    )


class Upsample(nn.Module):
    """Bilinear (trilinear with ``dims=3``) x2 upsampling followed by ConvBlock(c_in -> c_out)."""

    def __init__(self, c_in: int, c_out: int, norm: str = "batch", dims: int = 2) -> None:
        super().__init__()
        self.conv = ConvBlock(c_in, c_out, norm, dims)
        self.mode = "trilinear" if dims == 3 else "bilinear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, c_in, [D,] H, W) -> (B, c_out, [2D,] 2H, 2W)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode=self.mode, align_corners=False))


class MambaUNetV2(nn.Module):
    """UNet with token mixers at the levels ``config`` selects: (B, C_in, H, W) -> (B, C_out, H, W).

    Skips: ``"concat"`` feeds [upsampled, skip] (2c channels) to the level's first conv;
    ``"add"`` sums them (equal channels, since the upsampling conv maps to the level's width).
    """

    def __init__(self, config: MambaUNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        ch, n = cfg.channels, cfg.levels
        self.encoder = nn.ModuleList()
        self.down = nn.ModuleList()
        c_prev = cfg.in_channels
        for i in range(n):
            self.encoder.append(make_stage(c_prev, ch[i], cfg.convs_per_level, cfg, cfg.has_mixer(i), False))
            if cfg.downsample == "conv":
                self.down.append(_conv(cfg.conv_dims)(ch[i], ch[i], 3, stride=2, padding=1))
            else:
                self.down.append(nn.MaxPool3d(2) if cfg.conv_dims == 3 else nn.MaxPool2d(2))
            c_prev = ch[i]
        self.bottleneck = make_stage(
            ch[n - 1], ch[n], cfg.bottleneck_depth, cfg, cfg.has_mixer(n), True, cfg.dropout
        )
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in reversed(range(n)):
            self.up.append(Upsample(ch[i + 1], ch[i], cfg.norm, cfg.conv_dims))
            c_in = 2 * ch[i] if cfg.skip == "concat" else ch[i]
            self.decoder.append(
                make_stage(c_in, ch[i], cfg.convs_per_level, cfg, cfg.has_mixer(i), False, cfg.dropout)
            )
        self.head = _conv(cfg.conv_dims)(ch[0], cfg.out_channels, 1)
        if cfg.residual_channel >= 0:  # no correction before training: the output is that channel
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W), H and W divisible by 2**levels, B by ``slab`` -> (B, out_channels,
        H, W) float32."""
        factor = 2**self.config.levels
        if x.shape[1] != self.config.in_channels or x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"MambaUNetV2: input {tuple(x.shape)} needs {self.config.in_channels} channels and "
                f"H, W divisible by {factor}"
            )
        if x.shape[0] % self.config.slab:
            raise ValueError(
                f"MambaUNetV2: batch of {x.shape[0]} slices is not a whole number of slabs of "
                f"{self.config.slab} consecutive slices (slab={self.config.slab})"
            )
        k = self.config.slab
        base = None if self.config.residual_channel < 0 else x[:, self.config.residual_channel, None].float()
        three_d = self.config.conv_dims == 3
        if three_d:  # (B/k * k, C, H, W) -> (B/k, C, k, H, W): each slab one volume
            x = x.reshape(x.shape[0] // k, k, *x.shape[1:]).transpose(1, 2)
        skips = []
        for stage, down in zip(self.encoder, self.down, strict=True):
            x = stage(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for up, stage, skip in zip(self.up, self.decoder, reversed(skips), strict=True):
            x = up(x)
            x = torch.cat([x, skip], dim=1) if self.config.skip == "concat" else x + skip
            x = stage(x)
        y = self.head(x).float()
        if three_d:  # back to the slab layout (B, C_out, H, W)
            y = y.transpose(1, 2).reshape(-1, y.shape[1], *y.shape[3:])
        return y if base is None else base + y


class MambaUNetV2Ensemble(nn.Module):
    """MambaUNetV2 networks trained separately; the output is their mean.

    ``MambaUNetV2Ensemble(config, size)``: ``size`` networks of one config.
    ``MambaUNetV2Ensemble([config, ...])``: one network per config; the configs may differ (e.g. 2D
    and 3D members, other widths) but must take the same input channels and give the same outputs.
    Same interface as MambaUNetV2 ((B, C_in, H, W) -> (B, C_out, H, W); ``config`` is the first
    member's) as long as every member takes the same slab; members of different slabs take
    different batches, so ``forward`` refuses them and ``inference.predict_volume`` predicts each
    group of one slab on its own (:meth:`member_groups`) and weighs the groups' means by their sizes.
    state_dict keys are ``members.<i>.<MambaUNetV2 key>``. Averaging independently trained networks
    lowers the variance part of the error (README, "Training and results"); it costs one forward
    pass per member.
    """

    def __init__(self, config: MambaUNetConfig | list[MambaUNetConfig], size: int | None = None) -> None:
        super().__init__()
        if isinstance(config, MambaUNetConfig):
            configs = [config] * (size if size is not None else 0)
        else:
            if size is not None and size != len(config):
                raise ValueError(f"size={size} but {len(config)} member configs given")
            configs = list(config)
        if len(configs) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(configs)}")
        first = configs[0]
        for i, c in enumerate(configs[1:], start=1):
            if (c.in_channels, c.out_channels) != (first.in_channels, first.out_channels):
                raise ValueError(
                    f"ensemble member {i} takes {c.in_channels} channels to {c.out_channels}, "
                    f"member 0 {first.in_channels} to {first.out_channels}"
                )
        self.members = nn.ModuleList(MambaUNetV2(c) for c in configs)

    @property
    def config(self) -> MambaUNetConfig:
        """The first member's config (the input channels every member takes)."""
        return self.members[0].config

    @property
    def configs(self) -> list[MambaUNetConfig]:
        """Every member's config, in order."""
        return [m.config for m in self.members]

    def member_groups(self, keys: Sequence[Hashable] | None = None) -> list[tuple[nn.Module, int, Hashable]]:
        """The members grouped by slab and by ``keys`` (one per member, e.g. whether its flip TTA
        swaps the Left/Right channels; None: one key for all), in order of first appearance:
        (a module whose output is the group's mean, the group's size, its key). One group:
        ``[(self, len(members), key)]``."""
        if keys is None:
            keys = [None] * len(self.members)
        if len(keys) != len(self.members):
            raise ValueError(f"{len(keys)} member keys for an ensemble of {len(self.members)}")
        groups: dict[tuple[int, Hashable], list[MambaUNetV2]] = {}
        for member, key in zip(self.members, keys, strict=True):
            groups.setdefault((member.config.slab, key), []).append(member)
        if len(groups) == 1:
            return [(self, len(self.members), keys[0])]
        return [(_MemberMean(group), len(group), key) for (_, key), group in groups.items()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the members' outputs, float32."""
        if len({m.config.slab for m in self.members}) > 1:
            raise ValueError(
                "ensemble members take different slabs "
                f"({sorted({m.config.slab for m in self.members})}): predict them with "
                "inference.predict_volume, which runs each slab's members on their own"
            )
        return _mean_of(self.members, x)


def _mean_of(members, x: torch.Tensor) -> torch.Tensor:
    total = members[0](x)
    for member in members[1:]:
        total = total + member(x)
    return total / len(members)


class _MemberMean(nn.Module):
    """Members of one ensemble that take the same slab, as one model (their mean); a view of the
    ensemble's modules for prediction, never saved."""

    def __init__(self, members: list[MambaUNetV2]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    @property
    def config(self) -> MambaUNetConfig:
        return self.members[0].config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _mean_of(self.members, x)


def set_backend(model: nn.Module, backend: str) -> None:
    """Switch every Mamba-2 layer of ``model`` (and its config, if any) to scan ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown Mamba-2 backend {backend!r}; choose one of {BACKENDS}")
    for module in model.modules():
        if isinstance(module, Mamba2):
            module.backend = backend
        elif isinstance(module, MambaUNetV2):  # each member of an ensemble keeps its own config
            module.config = replace(module.config, backend=backend)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters that AdamW should not decay: Mamba's dt_bias/A_log/D, norms and biases."""
    names = set()
    for name, p in model.named_parameters():
        if getattr(p, "_no_weight_decay", False) or p.ndim <= 1:
            names.add(name)
    return names


def receptive_levels(config: MambaUNetConfig, height: int = 128) -> list[str]:
    """Human-readable list of the resolutions that carry a mixer, e.g. ['32x32', '16x16 (bottleneck)']."""
    out = []
    for level in range(config.levels + 1):
        if config.has_mixer(level):
            side = height // 2**level
            out.append(f"{side}x{side}" + (" (bottleneck)" if level == config.levels else ""))
    return out


__all__ = [
    "MambaUNetConfig",
    "MambaUNetV2",
    "MixerResidual",
    "SelfAttention2D",
    "count_parameters",
    "no_weight_decay_names",
    "receptive_levels",
    "set_backend",
    "sincos_position_2d",
]
