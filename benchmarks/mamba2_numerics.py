"""Mamba-2 numerics on the GPU: Triton (mamba-ssm) vs the PyTorch chunked scan vs a float64 recurrence.

For each sequence length 128^2, 64^2, 32^2, 16^2 (the UNet levels, with their widths 32..256)
prints the relative error (||a - b|| / ||b||) of the layer output and of the input gradient
between the two backends in float32 (TF32 off), and of each backend's scan against the float64
step-by-step recurrence. Run on a CUDA machine with mamba-ssm:

    python benchmarks/mamba2_numerics.py [--batch 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import torch
from MambaDoseLib.mamba2 import Mamba2, ssd_chunked, ssd_reference_recurrence, triton_available

LEVELS = ((128, 32), (64, 64), (32, 128), (16, 256))  # (side, d_model)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def scan_inputs(layer: Mamba2, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The scan's inputs (x, dt before bias, B, C) that ``layer`` computes from ``u``."""
    zxbcdt = layer.in_proj(u)
    length = u.shape[1]
    _, xbc, dt = torch.split(zxbcdt, [layer.d_inner, layer.d_inner + 2 * layer.d_state, layer.nheads], dim=-1)
    xbc = torch.nn.functional.silu(layer.conv1d(xbc.transpose(1, 2))[..., :length].transpose(1, 2))
    x, B, C = torch.split(xbc, [layer.d_inner, layer.d_state, layer.d_state], dim=-1)
    return x.reshape(*x.shape[:2], layer.nheads, layer.headdim), dt, B, C


def measure(side: int, d_model: int, batch: int, chunk_size: int) -> dict:
    torch.manual_seed(side)
    layer = Mamba2(d_model, d_state=64, headdim=32, chunk_size=chunk_size).cuda()
    u = torch.randn(batch, side * side, d_model, device="cuda")
    out, grads = {}, {}
    for backend in ("triton", "torch"):
        layer.backend = backend
        ui = u.clone().requires_grad_()
        y = layer(ui)
        y.square().mean().backward()
        out[backend], grads[backend] = y.detach(), ui.grad
    row = {
        "length": side * side,
        "d_model": d_model,
        "output_triton_vs_torch": rel(out["triton"], out["torch"]),
        "input_grad_triton_vs_torch": rel(grads["triton"], grads["torch"]),
    }
    with torch.no_grad():  # scans alone against the float64 recurrence (first sequence)
        x, dt, B, C = (t[:1] for t in scan_inputs(layer, u))
        A = -torch.exp(layer.A_log.double())
        dt64 = torch.nn.functional.softplus(dt.double() + layer.dt_bias.double())
        ref = ssd_reference_recurrence(x.double(), dt64, A, B.double(), C.double(), layer.D.double())
        dt32 = torch.nn.functional.softplus(dt + layer.dt_bias)
        row["scan_torch_vs_float64"] = rel(ssd_chunked(x, dt32, A.float(), B, C, layer.D, chunk_size), ref)
        layer.backend = "triton"
        row["scan_triton_vs_float64"] = rel(layer.scan(x, dt, B, C), ref)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--json", help="write the rows to this JSON file")
    args = parser.parse_args()
    if not (torch.cuda.is_available() and triton_available()):
        print("needs CUDA and mamba-ssm (Triton SSD); nothing measured")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows = [measure(side, d, args.batch, args.chunk_size) for side, d in LEVELS]
    keys = list(rows[0])
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(f"{r[k]:.2e}" if isinstance(r[k], float) else str(r[k]) for k in keys))
    worst = max(r["output_triton_vs_torch"] for r in rows)
    print(
        f"worst output relative error triton vs torch: {worst:.2e} ({'OK' if worst < 1e-3 else 'ABOVE 1e-3'})"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
