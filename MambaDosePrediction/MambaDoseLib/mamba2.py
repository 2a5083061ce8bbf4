"""Mamba-2 layer (state-space duality, SSD) with a Triton and a pure-PyTorch scan, and a 2D wrapper.

``Mamba2`` has the parameter names, shapes, initialisation and function of
``mamba_ssm.modules.mamba2.Mamba2`` with ``ngroups=1`` (non-fused path, ``rmsnorm=True``,
``norm_before_gate=False``), so a state_dict saved on one path loads strictly on the other.

Symbols (the Mamba-2 paper's): ``b`` batch, ``l`` sequence length, ``h`` heads, ``p`` head
dimension, ``n`` state size, ``Q`` chunk length, ``c`` number of chunks. Per head the scan is

    state_t = exp(dt_t * A) * state_{t-1} + dt_t * x_t B_t^T        (p, n)
    y_t     = state_t C_t + D * x_t                                  (p,)

Backends: ``"triton"`` (mamba-ssm's SSD kernel, CUDA only), ``"torch"`` (chunked SSD below, any
device, memory linear in ``l``), ``"auto"`` (triton where it can run, else torch). mamba-ssm is
imported lazily, once; importing this module never needs it.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import MambaDoseError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "triton", "torch")
SCAN_DIRECTIONS = (1, 2, 4)
CPU_INFERENCE_TOKEN_HEADS = 65536  # positions x heads per piece in CPU inference (see Mamba2.mix)


# --------------------------------------------------------------------------------------------
# Backend discovery
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _triton_chunk_scan() -> Callable | None:
    """The Triton SSD scan as a PyTorch custom op (see ``_register_triton_ops``), or None when
    mamba-ssm does not import."""
    try:
        from mamba_ssm.ops.triton import ssd_combined
    except Exception as exc:  # ImportError, or a broken CUDA/Triton install
        log.info("mamba-ssm Triton SSD not available (%s): using the PyTorch scan", exc)
        return None
    try:
        return torch.ops.mambadose.ssd_scan  # registered before (e.g. the module was reloaded)
    except (AttributeError, RuntimeError):
        pass
    try:
        return _register_triton_ops(ssd_combined)
    except Exception as exc:  # e.g. torch < 2.4 has no torch.library.custom_op
        log.info("mamba-ssm Triton SSD not usable as a custom op (%s): using the PyTorch scan", exc)
        return None


def _register_triton_ops(ssd_combined, namespace: str = "mambadose") -> Callable:
    """Register mamba-ssm's chunked SSD forward and backward as the custom ops
    ``mambadose::ssd_scan`` / ``mambadose::ssd_scan_bwd`` and return the forward.

    mamba-ssm's own entry point is an ``autograd.Function`` around Triton launches, which
    ``torch.compile`` cannot trace: every Mamba-2 layer would split the compiled graph in two.
    As opaque custom ops with fake (shape-only) implementations and a registered backward, the
    whole network compiles into one graph (and can be replayed as a CUDA graph). The forward
    and backward are mamba-ssm's ``_mamba_chunk_scan_combined_fwd`` / ``_bwd``, called exactly
    as its ``MambaChunkScanCombinedFn`` calls them (one group, no z, softplus on dt + dt_bias).
    ``ssd_combined`` is the module that holds them; ``namespace`` names the ops (tests register
    a PyTorch stand-in under another one).
    Inputs: x (b, l, h, p), dt (b, l, h) before bias and softplus, A (h,), B and C (b, l, 1, n),
    D (h,), dt_bias (h,). Output: y (b, l, h, p) in x's dtype.
    """
    fwd, bwd = ssd_combined._mamba_chunk_scan_combined_fwd, ssd_combined._mamba_chunk_scan_combined_bwd

    @torch.library.custom_op(f"{namespace}::ssd_scan", mutates_args=())
    def ssd_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, dt_bias: Tensor, chunk_size: int) -> Tensor:  # fmt: skip
        out = fwd(x, dt, A, B, C, chunk_size, D=D, z=None, dt_bias=dt_bias, dt_softplus=True)[0]
        return out.to(x.dtype).contiguous()

    @ssd_scan.register_fake
    def _(x, dt, A, B, C, D, dt_bias, chunk_size):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.custom_op(f"{namespace}::ssd_scan_bwd", mutates_args=())
    def ssd_scan_bwd(dout: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, dt_bias: Tensor, out: Tensor, chunk_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
        dx, ddt, dA, dB, dC, dD, _, ddt_bias, _ = bwd(
            dout, x, dt, A, B, C, out, chunk_size, D=D, z=None, dt_bias=dt_bias, dt_softplus=True
        )
        grads = (dx, ddt, dA, dB, dC, dD, ddt_bias)
        like = (x, dt, A, B, C, D, dt_bias)
        return tuple(g.to(t.dtype).contiguous() for g, t in zip(grads, like, strict=True))

    @ssd_scan_bwd.register_fake
    def _(dout, x, dt, A, B, C, D, dt_bias, out, chunk_size):
        return tuple(
            torch.empty_like(t, memory_format=torch.contiguous_format) for t in (x, dt, A, B, C, D, dt_bias)
        )

    def setup_context(ctx, inputs, output) -> None:
        x, dt, A, B, C, D, dt_bias, chunk_size = inputs
        ctx.save_for_backward(x, dt, A, B, C, D, dt_bias, output)
        ctx.chunk_size = chunk_size

    def backward(ctx, dout):
        x, dt, A, B, C, D, dt_bias, out = ctx.saved_tensors
        grads = ssd_scan_bwd(dout.contiguous(), x, dt, A, B, C, D, dt_bias, out, ctx.chunk_size)
        return (*grads, None)

    ssd_scan.register_autograd(backward, setup_context=setup_context)
    return ssd_scan


def _triton_scan_op() -> Callable:
    """The registered Triton scan op, looked up in ``torch.ops`` (which ``torch.compile`` reads
    as a constant; the registration itself runs eagerly, in ``_use_triton``)."""
    return torch.ops.mambadose.ssd_scan


@torch.compiler.assume_constant_result
def _use_triton(backend: str, device_type: str) -> bool:
    """``resolve_backend(...) == "triton"``, a constant to ``torch.compile`` (no import traced)."""
    return resolve_backend(backend, torch.device(device_type)) == "triton"


def triton_available() -> bool:
    """True when mamba-ssm's Triton SSD kernel imports (it still needs CUDA tensors to run)."""
    return _triton_chunk_scan() is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    """The scan that runs for ``backend`` on ``device``: ``"triton"`` or ``"torch"``."""
    if backend == "torch":
        return "torch"
    usable = device.type == "cuda" and triton_available()
    if backend == "triton":
        if not usable:
            raise MambaDoseError(
                f"Mamba-2 backend 'triton' needs mamba-ssm and a CUDA tensor (device {device}, "
                f"mamba-ssm importable: {triton_available()}); use backend='torch' or 'auto'"
            )
        return "triton"
    if backend == "auto":
        return "triton" if usable else "torch"
    raise ValueError(f"unknown Mamba-2 backend {backend!r}; choose one of {BACKENDS}")


# --------------------------------------------------------------------------------------------
# Scans
# --------------------------------------------------------------------------------------------
def ssd_reference_recurrence(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor
) -> torch.Tensor:
    """Plain step-by-step SSM recurrence (slow, for tests); computes in the inputs' dtype.

    x (b, l, h, p); dt (b, l, h), already positive (after softplus); A (h,), negative;
    B, C (b, l, n) (one group); D (h,). Returns y (b, l, h, p).
    """
    b, length, h, p = x.shape
    n = B.shape[-1]
    state = x.new_zeros(b, h, p, n)
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A)  # (b, h)
        inp = (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, None, None, :]  # (b, h, p, n)
        state = state * decay[..., None, None] + inp
        ys.append(torch.einsum("bhpn,bn->bhp", state, C[:, t]) + D[:, None] * x[:, t])
    return torch.stack(ys, dim=1)


def _segsum_exp(a: torch.Tensor) -> torch.Tensor:
    """exp of segment sums: out[..., i, j] = exp(sum_{k=j+1..i} a[..., k]) for i >= j, else 0.

    a (..., T). Built by a cumulative sum over a masked (T, T) copy, which stays exact for long
    sequences (no difference of two large cumulative sums). Returns (..., T, T).
    """
    T = a.shape[-1]
    strict = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    seg = a[..., :, None].expand(*a.shape, T).masked_fill(~strict, 0.0).cumsum(dim=-2)  # [i, j]
    return seg.masked_fill(
        ~strict.logical_or(torch.eye(T, dtype=torch.bool, device=a.device)), -math.inf
    ).exp()


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    """Chunked SSD scan in pure PyTorch ("SSD minimal"): exact, memory linear in the length.

    Within each chunk of ``Q`` steps the output is a masked (Q, Q) quadratic form; chunk-end
    states are passed between chunks by a small (c, c) decay matrix. The length is zero-padded
    at the end to a multiple of ``Q`` (exact: the scan is causal) and cut back. Tensors stay in
    the (b, c, Q, h, p) order of the input so that most products are copy-free batched matmuls.

    x (b, l, h, p); dt (b, l, h), positive (after softplus); A (h,); B, C (b, l, n); D (h,).
    Computes in the inputs' dtype (call it in float32 or float64). Returns y (b, l, h, p).
    """
    b, length, h, p = x.shape
    n = B.shape[-1]
    Q = min(chunk_size, length)
    pad = (-length) % Q
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, pad))
    c = (length + pad) // Q
    B = B.view(b, c, Q, n)
    C = C.view(b, c, Q, n)
    dt = dt.view(b, c, Q, h)
    x = x.view(b, c, Q, h, p)
    x_dt = x * dt[..., None]  # (b, c, Q, h, p)
    a_cum = (dt * A).cumsum(dim=2)  # (b, c, Q, h): log-decay from the chunk start, <= 0
    a_end = a_cum[:, :, -1]  # (b, c, h)

    # 1. intra-chunk: y_i = sum_{j<=i} (C_i . B_j) exp(a_i - a_j) dt_j x_j, one (Q, Q) per head.
    #    exp(a_i - a_j) is clamped to <= 0 in the exponent so the masked (j > i) half stays finite.
    cb = (C @ B.transpose(-1, -2)).tril()  # (b, c, Q, Q), shared by the heads
    a_h = a_cum.transpose(2, 3).contiguous()  # (b, c, h, Q)
    decay = a_h[..., :, None] - a_h[..., None, :]  # (b, c, h, Q, Q), the largest tensor here
    if torch.is_grad_enabled():
        decay = decay.clamp(max=0.0).exp() * cb[:, :, None]
    else:  # inference: reuse the buffer (large fresh allocations are slow on CPU)
        decay = decay.clamp_(max=0.0).exp_().mul_(cb[:, :, None])
    y = decay @ x_dt.transpose(2, 3)  # (b, c, h, Q, p)

    # 2. each chunk's own end state: sum_j exp(a_end - a_j) dt_j x_j B_j^T
    x_end = x * (dt * (a_end[:, :, None] - a_cum).exp())[..., None]  # (b, c, Q, h, p)
    states = x_end.view(b, c, Q, h * p).transpose(-1, -2) @ B  # (b, c, h*p, n)

    # 3. state entering chunk z: sum_{k<z} exp(a_end[k+1] + ... + a_end[z-1]) states[k]; shifted
    #    by one chunk (a zero state in front) this is a (c, c) segment-sum product per head.
    a_prev = F.pad(a_end[:, :-1], (0, 0, 1, 0))  # (b, c, h): [0, a_end[0..c-2]]
    states_prev = F.pad(states[:, :-1], (0, 0, 0, 0, 1, 0)).view(b, c, h, p * n)
    decay_chunks = _segsum_exp(a_prev.transpose(1, 2))  # (b, h, c, c)
    entering = torch.einsum("bhzk,bkhm->bzhm", decay_chunks, states_prev)  # (b, c, h, p*n)

    # 4. the entering state read out at each position: exp(a_i) C_i . state
    y_off = C @ entering.reshape(b, c, h * p, n).transpose(-1, -2)  # (b, c, Q, h*p)
    y_off = y_off.view(b, c, Q, h, p) * a_cum.exp()[..., None]
    y = torch.addcmul(y_off + y.transpose(2, 3), x, D[:, None])  # + skip D x
    return y.view(b, c * Q, h, p)[:, :length]


def causal_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Causal depthwise 1D convolution along the sequence: x (b, l, c) -> (b, l, c).

    ``y[:, t] = bias + sum_j weight[:, 0, j] * x[:, t - (k - 1) + j]`` (zero before the start), the
    function of ``nn.Conv1d(c, c, k, groups=c, padding=k - 1)`` cut to the first ``l`` outputs
    (mamba-ssm's ``causal_conv1d``). Written as ``k`` shifted multiply-adds on the (b, l, c)
    layout: no transposes, and its backward is a few elementwise kernels and one reduction, where
    cuDNN's depthwise weight gradient is slow on long sequences. Computes in x's dtype (under
    bf16 autocast the sum is rounded after each of its ``k`` terms, where cuDNN keeps float32
    inside: about one bf16 rounding step more).
    """
    k = weight.shape[-1]
    length = x.shape[1]
    w = weight.to(x.dtype).reshape(-1, k)  # (c, k)
    xp = F.pad(x, (0, 0, k - 1, 0))  # k - 1 zeros in front of the sequence
    y = xp[:, k - 1 :] * w[:, k - 1]
    if bias is not None:
        y = y + bias.to(x.dtype)
    for j in range(k - 1):
        y = torch.addcmul(y, xp[:, j : j + length], w[:, j])
    return y


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------
class GatedRMSNorm(nn.Module):
    """RMSNorm of ``x * silu(z)`` (mamba-ssm's RMSNormGated, ``norm_before_gate=False``).

    Normalises over groups of ``group_size`` channels (one group: the whole last dimension for
    ``ngroups=1``); computes in float32 and returns ``z``'s dtype. Parameter: ``weight`` (d,).
    """

    def __init__(self, d: int, eps: float = 1e-5, group_size: int | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.group_size = d if group_size is None else group_size
        if d % self.group_size:
            raise ValueError(f"GatedRMSNorm: d={d} is not a multiple of group_size={self.group_size}")
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x, z (..., d) -> (..., d)."""
        shape = x.shape
        y = x.float() * F.silu(z.float())
        if self.group_size == shape[-1]:
            return F.rms_norm(y, (self.group_size,), self.weight.float(), self.eps).to(z.dtype)
        y = y.view(*shape[:-1], shape[-1] // self.group_size, self.group_size)
        y = y * torch.rsqrt(y.square().mean(dim=-1, keepdim=True) + self.eps)
        return (y.view(shape) * self.weight.float()).to(z.dtype)


class Mamba2(nn.Module):
    """Mamba-2 mixer: (batch, length, d_model) -> (batch, length, d_model).

    Same parameters as ``mamba_ssm.modules.mamba2.Mamba2(ngroups=1)``: ``in_proj.weight``
    (2*d_inner + 2*d_state + nheads, d_model), order [z, x, B, C, dt]; ``conv1d.weight``
    (conv_dim, 1, d_conv) and ``conv1d.bias`` (conv_dim,), conv_dim = d_inner + 2*d_state;
    ``dt_bias``, ``A_log``, ``D`` (nheads,); ``norm.weight`` (d_inner,); ``out_proj.weight``
    (d_model, d_inner). d_inner = expand * d_model, nheads = d_inner / headdim.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        chunk_size: int = 256,
        backend: str = "auto",
        *,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        bias: bool = False,
        conv_bias: bool = True,
    ) -> None:
        super().__init__()
        d_inner = expand * d_model
        if d_inner % headdim:
            raise ValueError(f"Mamba2: expand*d_model={d_inner} is not a multiple of headdim={headdim}")
        if backend not in BACKENDS:
            raise ValueError(f"Mamba2: unknown backend {backend!r}; choose one of {BACKENDS}")
        if chunk_size < 1 or d_state < 1 or d_conv < 1:
            raise ValueError("Mamba2: chunk_size, d_state and d_conv must be positive")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner, self.headdim, self.nheads = d_inner, headdim, d_inner // headdim
        self.chunk_size, self.backend = chunk_size, backend
        conv_dim = d_inner + 2 * d_state

        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * d_state + self.nheads, bias=bias)
        self.conv1d = nn.Conv1d(
            conv_dim, conv_dim, kernel_size=d_conv, groups=conv_dim, padding=d_conv - 1, bias=conv_bias
        )
        # dt sampled log-uniformly in [dt_min, dt_max], floored; dt_bias = softplus^-1(dt)
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.empty(self.nheads).uniform_(*A_init_range).log())
        self.D = nn.Parameter(torch.ones(self.nheads))
        for param in (self.dt_bias, self.A_log, self.D):
            param._no_weight_decay = True
        self.norm = GatedRMSNorm(d_inner, eps=1e-5, group_size=d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (batch, length, d_model) -> (batch, length, d_model)."""
        return self.out_proj(self.mix(self.in_proj(u)))

    def mix(self, zxbcdt: torch.Tensor) -> torch.Tensor:
        """Everything between the two projections: conv, scan and gated norm.

        zxbcdt (batch, length, 2*d_inner + 2*d_state + nheads) -> y (batch, length, d_inner).
        Each position's projections are per token, so a caller may permute the sequence of
        ``zxbcdt`` (scan directions) and undo the permutation on ``y``.
        """
        b, length, _ = zxbcdt.shape
        rows = max(1, CPU_INFERENCE_TOKEN_HEADS // (length * self.nheads))
        if zxbcdt.device.type == "cpu" and b > rows and not torch.is_grad_enabled():
            # CPU inference: a few sequences at a time keep the (b, c, h, Q, Q) buffers small
            # enough to be reused from the heap and to stay in cache (~40 % less time)
            return torch.cat([self.mix(part) for part in zxbcdt.split(rows)])
        z, xBC, dt = torch.split(zxbcdt, [self.d_inner, self.d_inner + 2 * self.d_state, self.nheads], dim=-1)
        xBC = F.silu(causal_depthwise_conv(xBC, self.conv1d.weight, self.conv1d.bias))  # (b, l, conv_dim)
        x, B, C = torch.split(xBC, [self.d_inner, self.d_state, self.d_state], dim=-1)
        y = self.scan(x.reshape(b, length, self.nheads, self.headdim), dt, B, C)  # (b, l, h, p)
        return self.norm(y.reshape(b, length, self.d_inner), z)

    def scan(self, x: torch.Tensor, dt: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        """SSD scan with ``dt = softplus(dt + dt_bias)``, ``A = -exp(A_log)`` and skip ``D``.

        x (b, l, h, p); dt (b, l, h) before the bias; B, C (b, l, n). Returns y (b, l, h, p)
        (float32 from the torch backend, x's dtype from triton).
        """
        A = -torch.exp(self.A_log.float())  # (h,)
        if _use_triton(self.backend, x.device.type):  # (registers the op on first use)
            kernel = _triton_scan_op()
            return kernel(x, dt, A, B.unsqueeze(2), C.unsqueeze(2), self.D, self.dt_bias, self.chunk_size)
        with torch.autocast(device_type=x.device.type, enabled=False):
            dt = F.softplus(dt.float() + self.dt_bias.float())
            return ssd_chunked(x.float(), dt, A, B.float(), C.float(), self.D.float(), self.chunk_size)


class Mamba2D(nn.Module):
    """Mamba-2 over an image's pixels in 1, 2 or 4 scan orders, averaged: (B, H, W, C) -> (B, H, W, C).

    Orders: 1 = raster (row by row); 2 = raster and its reverse; 4 = those two plus the
    column-by-column raster and its reverse. All orders go through the same ``Mamba2`` (its
    parameters live under ``mamba.``) in one call, stacked along the batch. Since the in/out
    projections act per token, they run once on the image order; only conv, scan and gated
    norm see the permuted copies. The result equals the mean over orders of
    ``unpermute(Mamba2(permute(x)))``.
    """

    def __init__(self, d_model: int, scan_directions: int = 1, **mamba_kwargs) -> None:
        super().__init__()
        if scan_directions not in SCAN_DIRECTIONS:
            raise ValueError(f"scan_directions must be one of {SCAN_DIRECTIONS}, got {scan_directions}")
        self.scan_directions = scan_directions
        self.mamba = Mamba2(d_model, **mamba_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, H, W, C) (any memory layout; a channels_last image permuted is free) -> (B, H, W, C)."""
        n, h, w, c = x.shape
        k = self.scan_directions
        zxbcdt = self.mamba.in_proj(x.reshape(n, h * w, c))  # (B, HW, D), raster order
        if k > 1:
            seqs = [zxbcdt, zxbcdt.flip(1)]
            if k == 4:
                cols = zxbcdt.view(n, h, w, -1).transpose(1, 2).reshape(n, h * w, -1)  # column order
                seqs += [cols, cols.flip(1)]
            zxbcdt = torch.cat(seqs, dim=0)  # (k*B, HW, D)
        y = self.mamba.mix(zxbcdt)  # (k*B, HW, d_inner)
        if k > 1:
            parts = y.chunk(k, dim=0)
            y = parts[0] + parts[1].flip(1)
            if k == 4:
                cols = parts[2] + parts[3].flip(1)  # column order
                y = y + cols.view(n, w, h, -1).transpose(1, 2).reshape(n, h * w, -1)
            y = y * (1.0 / k)
        return self.mamba.out_proj(y).view(n, h, w, c)
