"""Mamba-2 layer: the chunked PyTorch scan against a plain recurrence, parameters, 2D scan orders.

The GPU tests (marked cuda) compare against mamba-ssm's Triton kernel and module; they skip
where CUDA or mamba-ssm is missing.
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from MambaDoseLib.errors import MambaDoseError
from MambaDoseLib.mamba2 import (
    GatedRMSNorm,
    Mamba2,
    Mamba2D,
    causal_depthwise_conv,
    resolve_backend,
    ssd_chunked,
    ssd_reference_recurrence,
    triton_available,
)


def _random_scan_inputs(b: int, length: int, h: int, p: int, n: int, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, length, h, p, generator=g, dtype=dtype)
    dt = torch.nn.functional.softplus(torch.randn(b, length, h, generator=g, dtype=dtype) - 1.0)
    A = -torch.rand(h, generator=g, dtype=dtype) * 4.0 - 0.1
    B = torch.randn(b, length, n, generator=g, dtype=dtype)
    C = torch.randn(b, length, n, generator=g, dtype=dtype)
    D = torch.randn(h, generator=g, dtype=dtype)
    return x, dt, A, B, C, D


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("length", [1, 5, 16, 37, 64, 100])
@pytest.mark.parametrize("chunk_size", [1, 8, 16, 64])
def test_chunked_scan_equals_recurrence_float64(length: int, chunk_size: int) -> None:
    x, dt, A, B, C, D = _random_scan_inputs(2, length, 3, 4, 5, seed=length * 7 + chunk_size)
    y_ref = ssd_reference_recurrence(x, dt, A, B, C, D)
    y = ssd_chunked(x, dt, A, B, C, D, chunk_size)
    assert y.shape == (2, length, 3, 4)
    assert _rel(y, y_ref) < 1e-6


def test_chunked_scan_strong_decay_stays_finite() -> None:
    """Decays far beyond float32's exp range (exp(-1000)) give no inf/NaN and still match."""
    x, dt, A, B, C, D = _random_scan_inputs(1, 90, 2, 3, 4, seed=3)
    dt = dt * 50.0  # |dt * A| up to a few hundred per step
    y = ssd_chunked(x.float(), dt.float(), A.float(), B.float(), C.float(), D.float(), 32)
    y_ref = ssd_reference_recurrence(x, dt, A, B, C, D)
    assert torch.isfinite(y).all()
    assert _rel(y.double(), y_ref) < 1e-5


def test_chunked_scan_gradients_equal_recurrence_gradients() -> None:
    inputs = [t.requires_grad_() for t in _random_scan_inputs(1, 23, 2, 3, 4, seed=5)]
    grads_ref = torch.autograd.grad(ssd_reference_recurrence(*inputs).square().sum(), inputs)
    grads = torch.autograd.grad(ssd_chunked(*inputs, chunk_size=8).square().sum(), inputs)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert _rel(g, g_ref) < 1e-9


def test_parameters_match_mamba_ssm_names_and_shapes() -> None:
    d_model, d_state, headdim, d_conv = 32, 16, 8, 4
    layer = Mamba2(d_model, d_state=d_state, d_conv=d_conv, expand=2, headdim=headdim)
    d_inner, nheads = 64, 8
    conv_dim = d_inner + 2 * d_state
    expected = {
        "in_proj.weight": (2 * d_inner + 2 * d_state + nheads, d_model),
        "conv1d.weight": (conv_dim, 1, d_conv),
        "conv1d.bias": (conv_dim,),
        "dt_bias": (nheads,),
        "A_log": (nheads,),
        "D": (nheads,),
        "norm.weight": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == expected


def test_initialisation_follows_mamba_ssm() -> None:
    torch.manual_seed(0)
    layer = Mamba2(64, d_state=16, headdim=4)  # 32 heads: enough samples for the ranges
    dt = torch.nn.functional.softplus(layer.dt_bias.detach())
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    A = layer.A_log.detach().exp()
    assert A.min() >= 1.0 and A.max() <= 16.0
    assert torch.equal(layer.D.detach(), torch.ones(32))
    assert torch.equal(layer.norm.weight.detach(), torch.ones(128))
    for p in (layer.dt_bias, layer.A_log, layer.D):
        assert p._no_weight_decay is True
    assert layer.in_proj.bias is None and layer.out_proj.bias is None and layer.conv1d.bias is not None


def test_gated_rmsnorm_formula() -> None:
    norm = GatedRMSNorm(6, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    x, z = torch.randn(3, 6), torch.randn(3, 6)
    y = x * torch.nn.functional.silu(z)
    expected = y / torch.sqrt(y.square().mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x, z), expected)


@pytest.mark.parametrize("b,length,c,k", [(2, 1, 3, 4), (1, 7, 5, 4), (3, 33, 8, 2), (2, 16, 4, 1)])
def test_causal_depthwise_conv_equals_conv1d(b: int, length: int, c: int, k: int) -> None:
    g = torch.Generator().manual_seed(b * 100 + length)
    x = torch.randn(b, length, c, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(c, 1, k, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(c, generator=g, dtype=torch.float64, requires_grad=True)
    ref = torch.nn.functional.conv1d(x.transpose(1, 2), w, bias, padding=k - 1, groups=c)[..., :length]
    ref = ref.transpose(1, 2)
    got = causal_depthwise_conv(x, w, bias)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    # gradients too (the training path): same for the input, weight and bias
    grad = torch.randn(b, length, c, generator=g, dtype=torch.float64)
    expected = torch.autograd.grad(ref, (x, w, bias), grad)
    for a, e in zip(torch.autograd.grad(got, (x, w, bias), grad), expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    # causal: changing the last position changes nothing before it
    x2 = x.detach().clone()
    x2[:, -1] += 1.0
    torch.testing.assert_close(causal_depthwise_conv(x2, w, bias)[:, :-1], got[:, :-1].detach())


def _mamba2_forward_by_hand(layer: Mamba2, u: torch.Tensor) -> torch.Tensor:
    """Mamba2's function written out from the mamba-ssm description, float64 recurrence scan."""
    b, length, _ = u.shape
    d_inner, n, h = layer.d_inner, layer.d_state, layer.nheads
    z, xbc, dt = layer.in_proj(u).split([d_inner, d_inner + 2 * n, h], dim=-1)
    xbc = torch.nn.functional.conv1d(
        xbc.transpose(1, 2),
        layer.conv1d.weight,
        layer.conv1d.bias,
        padding=layer.d_conv - 1,
        groups=xbc.shape[-1],
    )[..., :length].transpose(1, 2)
    x, B, C = torch.nn.functional.silu(xbc).split([d_inner, n, n], dim=-1)
    dt = torch.nn.functional.softplus(dt + layer.dt_bias)
    y = ssd_reference_recurrence(
        x.reshape(b, length, h, -1).double(),
        dt.double(),
        -layer.A_log.double().exp(),
        B.double(),
        C.double(),
        layer.D.double(),
    ).reshape(b, length, d_inner)
    return layer.out_proj(layer.norm(y.float(), z))


def test_layer_forward_matches_hand_written_function() -> None:
    torch.manual_seed(1)
    layer = Mamba2(16, d_state=8, headdim=8, chunk_size=8, backend="torch")
    u = torch.randn(2, 29, 16)
    torch.testing.assert_close(layer(u), _mamba2_forward_by_hand(layer, u), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("directions", [1, 2, 4])
def test_2d_scan_orders_equal_mean_of_permuted_layer_calls(directions: int) -> None:
    torch.manual_seed(2)
    mixer = Mamba2D(16, directions, d_state=8, headdim=8, chunk_size=8)
    x = torch.randn(2, 4, 6, 16)  # (B, H, W, C), H != W
    n, h, w, c = x.shape
    layer = mixer.mamba
    rows = x.reshape(n, h * w, c)
    cols = x.transpose(1, 2).reshape(n, h * w, c)
    outs = [layer(rows), layer(rows.flip(1)).flip(1)]
    col_outs = [layer(cols), layer(cols.flip(1)).flip(1)]
    outs += [o.view(n, w, h, c).transpose(1, 2).reshape(n, h * w, c) for o in col_outs]
    expected = (sum(outs[:directions]) / directions).view(n, h, w, c)
    torch.testing.assert_close(mixer(x), expected, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_keeps_the_scan_in_float32() -> None:
    torch.manual_seed(3)
    layer = Mamba2(16, d_state=8, headdim=8, chunk_size=8)
    u = torch.randn(2, 40, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(u)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    torch.testing.assert_close(y.float(), layer(u), rtol=0.05, atol=0.05)


def test_backend_resolution_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu) == "torch"
    assert resolve_backend("torch", cpu) == "torch"
    with pytest.raises(MambaDoseError, match="triton"):
        resolve_backend("triton", cpu)
    with pytest.raises(ValueError):
        Mamba2(16, headdim=8, backend="cuda")
    with pytest.raises(ValueError):
        Mamba2(12, headdim=16)  # d_inner 24 not a multiple of 16


# ------------------------------------------------------------------------------------------
# GPU: Triton (mamba-ssm) against the PyTorch scan, and the state_dict between the two modules
# ------------------------------------------------------------------------------------------
needs_triton = pytest.mark.skipif(
    not (torch.cuda.is_available() and triton_available()), reason="needs CUDA and mamba-ssm"
)


@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("side", [16, 32, 64, 128])
def test_triton_and_torch_backends_agree(side: int) -> None:
    torch.manual_seed(side)
    d_model = {16: 256, 32: 128, 64: 64, 128: 32}[side]
    layer = Mamba2(d_model, d_state=64, headdim=32, chunk_size=64).cuda()
    u = torch.randn(4, side * side, d_model, device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        layer.backend = "triton"
        y_triton = layer(u)
        layer.backend = "torch"
        y_torch = layer(u)
    assert _rel(y_triton, y_torch) < 1e-3


@pytest.mark.cuda
@needs_triton
def test_state_dict_loads_strictly_into_mamba_ssm_and_back() -> None:
    from mamba_ssm.modules.mamba2 import Mamba2 as RefMamba2

    torch.manual_seed(0)
    ours = Mamba2(64, d_state=64, headdim=32, chunk_size=64).cuda()
    ref = RefMamba2(64, d_state=64, headdim=32, chunk_size=64, use_mem_eff_path=False).cuda()
    ref.load_state_dict(ours.state_dict(), strict=True)
    back = Mamba2(64, d_state=64, headdim=32, chunk_size=64).cuda()
    back.load_state_dict(ref.state_dict(), strict=True)
    u = torch.randn(2, 1024, 64, device="cuda")
    with torch.no_grad():
        for backend in ("triton", "torch"):
            back.backend = backend
            assert _rel(back(u), ref(u)) < 1e-3
    assert not math.isnan(_rel(back(u), ref(u)))


class _TorchSSDCombined:
    """Stand-in for mamba-ssm's ``ssd_combined`` module on CPU: the same two entry points
    (signatures and return layout), computed by the chunked PyTorch scan and autograd."""

    @staticmethod
    def _forward(x, dt, A, B, C, chunk_size, D, dt_bias):
        dt = torch.nn.functional.softplus(dt + dt_bias)
        return ssd_chunked(x, dt, A, B[:, :, 0], C[:, :, 0], D, chunk_size)

    @classmethod
    def _mamba_chunk_scan_combined_fwd(cls, x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False):  # fmt: skip
        assert z is None and dt_softplus
        out = cls._forward(x, dt, A, B, C, chunk_size, D, dt_bias)
        return out, None, None, None, None, None

    @classmethod
    def _mamba_chunk_scan_combined_bwd(cls, dout, x, dt, A, B, C, out, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False):  # fmt: skip
        def grads():  # autograd is off inside a custom op's kernel (thread-local): use a thread
            inputs = [t.detach().requires_grad_() for t in (x, dt, A, B, C, D, dt_bias)]
            with torch.enable_grad():
                y = cls._forward(*inputs[:5], chunk_size, inputs[5], inputs[6])
                return torch.autograd.grad(y, inputs, dout)

        with ThreadPoolExecutor(1) as pool:
            dx, ddt, dA, dB, dC, dD, ddt_bias = pool.submit(grads).result()
        return dx, ddt, dA, dB, dC, dD, None, ddt_bias, None


@functools.lru_cache(maxsize=1)
def _stand_in_op():
    """The custom op around the PyTorch stand-in (registered once per process)."""
    from MambaDoseLib.mamba2 import _register_triton_ops

    return _register_triton_ops(_TorchSSDCombined, namespace="mambadose_test")


def test_scan_custom_op_matches_autograd_and_compiles() -> None:
    """The custom-op wrapper around mamba-ssm's forward/backward (exercised here with a PyTorch
    stand-in): same output and gradients as the plain scan, passes torch.library.opcheck, and
    traces into one graph under torch.compile (no graph break at the scan)."""
    op = _stand_in_op()
    x, dt, A, B, C, D = _random_scan_inputs(2, 20, 3, 4, 5, seed=3, dtype=torch.float64)
    dt_raw = torch.randn_like(dt)
    dt_bias = torch.randn(3, dtype=torch.float64)
    args = [x, dt_raw, A, B.unsqueeze(2), C.unsqueeze(2), D, dt_bias]
    leaves = [a.clone().requires_grad_() for a in args]
    got = op(*leaves, 8)
    ref_leaves = [a.clone().requires_grad_() for a in args]
    ref = _TorchSSDCombined._forward(*ref_leaves[:5], 8, ref_leaves[5], ref_leaves[6])
    torch.testing.assert_close(got, ref)
    grad = torch.randn_like(ref)
    for a, e in zip(
        torch.autograd.grad(got, leaves, grad), torch.autograd.grad(ref, ref_leaves, grad), strict=True
    ):
        torch.testing.assert_close(a, e)
    torch.library.opcheck(
        op, (*leaves, 8), test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static")
    )

    def block(*tensors):
        return (op(*tensors, 8) * 2.0).sum()

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*leaves), block(*leaves))


@pytest.mark.parametrize("slab, conv_dims", [(1, 2), (2, 2), (4, 3)])
def test_whole_network_compiles_without_graph_breaks_on_the_scan_op(
    monkeypatch, slab: int, conv_dims: int
) -> None:
    """With the scan behind the custom op (the Triton path, here the stand-in on CPU), a whole
    MambaUNetV2 training step traces into one graph: torch.compile(fullgraph=True) gives the
    eager output and gradients; in slab mode too (the mixers' reshapes to slabs), and 3D."""
    from MambaDoseLib import mamba2
    from MambaDoseLib.model import MambaUNetConfig, MambaUNetV2

    monkeypatch.setattr(mamba2, "_use_triton", lambda backend, device_type: True)
    _stand_in_op()  # registered as torch.ops.mambadose_test.ssd_scan
    monkeypatch.setattr(mamba2, "_triton_scan_op", lambda: torch.ops.mambadose_test.ssd_scan)
    torch.manual_seed(0)
    cfg = MambaUNetConfig(
        in_channels=3,
        channels=(8, 16, 32),
        headdim=8,
        d_state=8,
        chunk_size=16,
        mixer_min_level=1,
        slab=slab,
        conv_dims=conv_dims,
    )
    model = MambaUNetV2(cfg).double()
    x = torch.randn(2 * slab, 3, 16, 16, dtype=torch.float64)

    def step(net):
        net.zero_grad(set_to_none=True)
        loss = net(x).square().mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in net.parameters()]

    eager_loss, eager_grads = step(model)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    loss, grads = step(compiled)
    torch.testing.assert_close(loss, eager_loss)
    for g, e in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(g, e)
