"""Where a MambaUNetV2 training step spends its GPU time: torch.profiler over a few steps.

For each variant (the ``model_speed.py`` syntax, e.g. ``mamba2-triton``, ``unet``,
``mamba2-triton:scan_directions=2``; a trailing ``@conv1d`` runs the Mamba-2 causal convolution
through cuDNN's depthwise ``F.conv1d`` instead of ``mamba2.causal_depthwise_conv``, the path it
replaced) this runs warm-up steps, then profiles ``--steps`` training
steps (forward + backward + AdamW, bf16 autocast, channels-last, batch ``--batch``) and prints:

- wall time per step and the summed GPU kernel time per step (their ratio is how busy the GPU
  was: far below 1 means the step waits on the CPU launching kernels);
- the number of kernel launches per step;
- the kernels with the most GPU time (``--top``), grouped by name.

    python benchmarks/profile_step.py --variants mamba2-triton,unet --json profile.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from MambaDoseLib import mamba2 as mamba2_module
from MambaDoseLib.inference import use_fast_cuda_math
from MambaDoseLib.model import MambaUNetV2
from model_speed import parse_variant, split_variants


def conv1d_cudnn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The causal depthwise convolution as nn.Conv1d computes it (the earlier code path)."""
    length, k = x.shape[1], weight.shape[-1]
    y = F.conv1d(x.transpose(1, 2), weight, bias, padding=k - 1, groups=x.shape[-1])
    return y[..., :length].transpose(1, 2)


ORIGINAL_CONV = mamba2_module.causal_depthwise_conv


def kernel_table(prof: torch.profiler.profile, steps: int) -> tuple[list[dict], float, int]:
    """(rows sorted by GPU time, GPU time per step in ms, kernel launches per step) from the trace."""
    total_us: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            total_us[event.name] += event.device_time
            count[event.name] += 1
    gpu_ms = sum(total_us.values()) / 1e3 / steps
    rows = [
        {"kernel": name, "ms_per_step": t / 1e3 / steps, "calls_per_step": count[name] / steps}
        for name, t in sorted(total_us.items(), key=lambda kv: -kv[1])
    ]
    return rows, gpu_ms, round(sum(count.values()) / steps)


def profile_variant(spec: str, args: argparse.Namespace, device: torch.device) -> dict:
    spec, _, conv = spec.partition("@")
    if conv not in ("", "conv1d"):
        raise SystemExit(f"unknown suffix @{conv}; the only one is @conv1d")
    mamba2_module.causal_depthwise_conv = conv1d_cudnn if conv else ORIGINAL_CONV
    label, cfg, _ = parse_variant(spec, args.in_channels)
    label += f"@{conv}" if conv else ""
    torch.manual_seed(0)
    model = MambaUNetV2(cfg).to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randn(args.batch, cfg.in_channels, args.size, args.size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    target = torch.randn(args.batch, 1, args.size, args.size, device=device)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            pred = model(x)
        torch.nn.functional.smooth_l1_loss(pred.float(), target, beta=0.05).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t0) * 1e3 / args.steps
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    rows, gpu_ms, launches = kernel_table(prof, args.steps)
    print(
        f"\n{label}: {wall_ms:.2f} ms per step wall ({args.batch * 1e3 / wall_ms:.0f} slices/s), "
        f"GPU kernels {gpu_ms:.2f} ms ({100 * gpu_ms / wall_ms:.0f} % busy), {launches} launches per step"
    )
    for row in rows[: args.top]:
        print(f"  {row['ms_per_step']:8.3f} ms  {row['calls_per_step']:6.1f}x  {row['kernel'][:110]}")
    return {
        "variant": label,
        "wall_ms_per_step": wall_ms,
        "slices_per_s": args.batch * 1e3 / wall_ms,
        "gpu_ms_per_step": gpu_ms,
        "launches_per_step": launches,
        "kernels": rows[: args.top],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="mamba2-triton,unet")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--in-channels", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_step.py profiles CUDA kernels: it needs a GPU")
    device = torch.device("cuda")
    use_fast_cuda_math()  # as training does
    results = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "variants": []}
    for spec in split_variants(args.variants):
        results["variants"].append(profile_variant(spec, args, device))
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
