"""Speed, memory, parameters and FLOPs of MambaUNetV2 and its baselines on 128 x 128 slices.

Variants (``--variants``, comma-separated; each may carry config overrides after a colon,
``name:key=value;key=value``):

    mamba2          MambaUNetV2 with the default config (one scan direction since session 6;
                    add ``:scan_directions=2`` for the earlier default), backend "auto"
    mamba2-triton   the same, Triton SSD scan (mamba-ssm, CUDA)
    mamba2-torch    the same, chunked PyTorch SSD scan
    attention       global self-attention at the same levels (the Transformer baseline)
    unet            no token mixer (the UNet baseline)

Per variant: parameters; forward FLOPs per slice counted by torch.utils.flop_counter (on CPU, with
the PyTorch scan, whose batched matmuls are counted like any other) plus the analytic SSD scan
FLOPs (see ``ssd_flops``); the FLOP floor (slices/s if the GPU ran all of a training step's
~3x forward FLOPs at ``--peak-tflops``); on CUDA, training slices/s (forward + backward + AdamW, bf16
autocast, channels_last for 2D networks) and peak memory per ``--batch``; inference time of one 128-slice volume.

    python benchmarks/model_speed.py --device cuda --json speed.json            # GPU (lead)
    python benchmarks/model_speed.py --device cpu --threads 2 --variants mamba2-torch,unet
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from contextlib import nullcontext

import torch
from MambaDoseLib import mamba2 as mamba2_module
from MambaDoseLib.inference import use_fast_cuda_math
from MambaDoseLib.model import MambaUNetConfig, MambaUNetV2, count_parameters

BASE_VARIANTS = {
    "mamba2": dict(mixer="mamba2"),
    "mamba2-triton": dict(mixer="mamba2", backend="triton"),
    "mamba2-torch": dict(mixer="mamba2", backend="torch"),
    "attention": dict(mixer="attention"),
    "unet": dict(mixer="none"),
}


def parse_variant(spec: str, in_channels: int) -> tuple[str, MambaUNetConfig, str | None]:
    """``name[+compile|+cudagraphs|+autotune|+graph][:key=value;key=value]`` -> (label, config, mode).

    mode: None (eager), "default" / "reduce-overhead" / "max-autotune" (torch.compile modes; the
    last autotunes Inductor's kernels and uses CUDA graphs too) or "graph" (the whole
    training step, AdamW included, captured once in a CUDA graph and replayed).
    """
    name, _, overrides = spec.partition(":")
    name, _, compile_flag = name.partition("+")
    compile_mode = {
        "": None,
        "compile": "default",
        "cudagraphs": "reduce-overhead",
        "autotune": "max-autotune",
        "graph": "graph",
    }.get(compile_flag, "?")
    if compile_mode == "?":
        raise SystemExit(f"unknown suffix +{compile_flag}; use +compile, +cudagraphs, +autotune or +graph")
    if name not in BASE_VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; choose from {sorted(BASE_VARIANTS)}")
    kwargs = dict(BASE_VARIANTS[name])
    for item in filter(None, overrides.split(";")):
        key, _, value = item.partition("=")
        kwargs[key] = json.loads(value) if value[:1] in "0123456789[-tf" else value
    return spec, MambaUNetConfig(in_channels=in_channels, **kwargs), compile_mode


def split_variants(text: str) -> list[str]:
    """Comma-separated variants; commas inside brackets belong to a value (``:channels=[48,96,192,384]``)."""
    return [v for v in re.split(r",(?![^\[]*\])", text) if v]


def ssd_flops(batch: int, length: int, heads: int, headdim: int, d_state: int, chunk: int) -> int:
    """Multiply-adds x2 of one chunked SSD scan (one group), the algorithm both backends run.

    Per sequence, with L padded to a multiple of Q and c = L/Q chunks: C.B^T within chunks
    2*L*Q*n; the masked (Q, Q) product with x, 2*L*Q*h*p; chunk-end states 2*L*h*p*n; passing
    states between chunks 2*h*c^2*p*n; reading states out 2*L*h*p*n. Elementwise work (exp, the
    decay mask, ~6*L*Q*h) is left out, as FlopCounterMode leaves it out.
    """
    q = min(chunk, length)
    padded = -(-length // q) * q
    c = padded // q
    per_seq = (
        2 * padded * q * d_state + 2 * padded * q * heads * headdim + 4 * padded * heads * headdim * d_state
    )
    per_seq += 2 * heads * c * c * headdim * d_state
    return batch * per_seq


def count_flops(cfg: MambaUNetConfig, size: int) -> dict:
    """Forward FLOPs per slice: FlopCounterMode total (torch scan) and the analytic scan part, over
    one slab of ``cfg.slab`` slices divided by the slab (one slice when the slab is 1)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = MambaUNetV2(MambaUNetConfig.from_dict({**cfg.to_dict(), "backend": "torch"})).eval()
    scan_total = [0]
    original = mamba2_module.Mamba2.scan

    def counting_scan(self, x, dt, B, C):
        b, length, h, p = x.shape
        scan_total[0] += ssd_flops(b, length, h, p, B.shape[-1], self.chunk_size)
        return original(self, x, dt, B, C)

    mamba2_module.Mamba2.scan = counting_scan
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.randn(cfg.slab, cfg.in_channels, size, size))
    finally:
        mamba2_module.Mamba2.scan = original
    return {
        "forward_gflop": counter.get_total_flops() / 1e9 / cfg.slab,
        "scan_gflop_analytic": scan_total[0] / 1e9 / cfg.slab,
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def time_training(
    model: torch.nn.Module,
    device: torch.device,
    batch: int,
    size: int,
    steps: int,
    warmup: int,
    bf16: bool,
    in_channels: int,
    graph: bool = False,
    compiled: bool = False,
) -> dict:
    """Training slices/s (forward + backward + AdamW step) and peak memory at one batch size.

    ``graph``: warm up on a side stream, capture one whole step in a CUDA graph, time replays.
    """
    model.train()
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda, capturable=graph)
    x = torch.randn(batch, in_channels, size, size, device=device).to(memory_format=torch.channels_last)
    target = torch.randn(batch, 1, size, size, device=device)

    def step() -> None:
        if compiled:
            torch.compiler.cudagraph_mark_step_begin()  # a new training step (reduce-overhead mode)
        with autocast(device, bf16):
            pred = model(x)
        loss = torch.nn.functional.smooth_l1_loss(pred.float(), target, beta=0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    side = torch.cuda.Stream() if graph else None
    if graph:
        side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side) if graph else nullcontext():
        for _ in range(warmup):
            step()
    if graph:
        torch.cuda.current_stream().wait_stream(side)
        captured = torch.cuda.CUDAGraph()
        with torch.cuda.graph(captured):
            with autocast(device, bf16):
                pred = model(x)
            torch.nn.functional.smooth_l1_loss(pred.float(), target, beta=0.1).backward()
            opt.step()
        step = captured.replay  # noqa: F811 (the timed loop replays the captured step)
    synchronize(device)
    warm_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"batch": batch, "slices_per_s": batch * steps / elapsed, "peak_gib": peak, "warmup_s": warm_s}


def time_volume(
    model: torch.nn.Module,
    device: torch.device,
    slices: int,
    chunk: int,
    size: int,
    repeats: int,
    bf16: bool,
    in_channels: int,
) -> dict:
    """Seconds to predict one volume of ``slices`` slices in batches of ``chunk`` (median of repeats)."""
    model.eval()
    vol = torch.randn(slices, in_channels, size, size).to(memory_format=torch.channels_last)
    vol = vol.to(device)
    times = []
    with torch.inference_mode(), autocast(device, bf16):
        for i in range(repeats + 1):
            synchronize(device)
            t0 = time.perf_counter()
            for start in range(0, slices, chunk):
                model(vol[start : start + chunk])
            synchronize(device)
            if i:  # the first pass is a warm-up (Triton compiles, allocator fills)
                times.append(time.perf_counter() - t0)
    return {"volume_s": statistics.median(times), "volume_s_all": times, "infer_batch": chunk}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", default="mamba2-triton,mamba2-torch,attention,unet")
    parser.add_argument("--batch", default="32,16", help="training batch sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed training steps first")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--in-channels", type=int, default=20)
    parser.add_argument("--volume-slices", type=int, default=128)
    parser.add_argument(
        "--infer-batch",
        type=int,
        default=None,
        help="slices per inference call (default: all on CUDA, 16 on CPU)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed volume predictions")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-train", action="store_true", help="inference only (default on CPU)")
    parser.add_argument("--no-volume", action="store_true", help="skip the volume inference timing")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast (default on CPU)")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile every variant (or suffix one: +compile)"
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=790.0, help="dense bf16 matmul rate for the FLOP floor"
    )
    parser.add_argument("--no-flops", action="store_true")
    parser.add_argument("--json", help="write all results to this JSON file")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = device.type == "cuda" and not args.fp32
    train = device.type == "cuda" and not args.no_train
    infer_batch = args.infer_batch or (args.volume_slices if device.type == "cuda" else 16)
    if device.type == "cuda":
        use_fast_cuda_math()  # as training does

    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "threads": torch.get_num_threads(), "torch": torch.__version__, "bf16": bf16,
               "triton_available": mamba2_module.triton_available(), "variants": []}  # fmt: skip
    for spec in split_variants(args.variants):
        label, cfg, compile_mode = parse_variant(spec, args.in_channels)
        compile_mode = compile_mode or ("default" if args.compile else None)
        if cfg.backend == "triton" and not (device.type == "cuda" and mamba2_module.triton_available()):
            print(f"{label}: skipped (needs CUDA and mamba-ssm)")
            continue
        row: dict = {"variant": label, "config": cfg.to_dict()}
        torch.manual_seed(0)
        model = MambaUNetV2(cfg)
        row["params"] = count_parameters(model)
        if not args.no_flops:
            row.update(count_flops(cfg, args.size))
            row["flop_floor_train_slices_per_s"] = args.peak_tflops * 1e3 / (3 * row["forward_gflop"])
        model = model.to(device)
        if cfg.conv_dims == 2:  # channels_last is a 4D layout; 3D weights stay as they are
            model = model.to(memory_format=torch.channels_last)
        use_graph = compile_mode == "graph"
        runner = torch.compile(model, mode=compile_mode) if compile_mode and not use_graph else model
        if train:
            row["train"] = []
            for batch in (int(b) for b in args.batch.split(",")):
                row["train"].append(
                    time_training(
                        runner,
                        device,
                        batch,
                        args.size,
                        args.steps,
                        args.warmup,
                        bf16,
                        cfg.in_channels,
                        graph=use_graph,
                        compiled=runner is not model,
                    )  # fmt: skip
                )
                print(f"{label} batch {batch}: {row['train'][-1]}", flush=True)
        if not args.no_volume:
            chunk = max(infer_batch // cfg.slab, 1) * cfg.slab  # whole slabs per call
            row.update(
                time_volume(
                    runner, device, args.volume_slices, chunk, args.size, args.repeats, bf16, cfg.in_channels
                )
            )
            print(f"{label}: volume {row['volume_s']:.3f} s", flush=True)
        results["variants"].append(row)
        del model, runner
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"\n{results['device']}, threads {results['threads']}, bf16 {bf16}, torch {results['torch']}")
    header = f"{'variant':40s} {'params':>9s} {'GFLOP/sl':>8s} {'scan':>6s} {'floor/s':>8s} {'train sl/s (batch, GiB)':>36s} {'volume s':>9s}"
    print(header)
    for r in results["variants"]:
        train_txt = "  ".join(
            f"{t['slices_per_s']:.0f} (b{t['batch']}, {t['peak_gib']:.2f})" for t in r.get("train", [])
        )
        print(
            f"{r['variant'][:40]:40s} {r['params']:9d} {r.get('forward_gflop', float('nan')):8.2f} "
            f"{r.get('scan_gflop_analytic', float('nan')):6.2f} {r.get('flop_floor_train_slices_per_s', float('nan')):8.0f} "
            f"{train_txt:>36s} {r.get('volume_s', float('nan')):9.3f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
