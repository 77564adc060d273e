"""Forward+backward throughput of MultiHeadDeepLab vs this machine's fp32 matmul peak (the targets in docs/decisions.md).

Modes: fp32 NCHW (the baseline), fp32 channels_last, bf16 autocast + channels_last. Images of all domains go
through `forward_domains` (one trunk pass). FLOPs are counted for forward+backward directly with
FlopCounterMode on the meta device. Times are medians of the timed iterations; the fp32 matmul peak is
measured right before each mode (the machine may be shared). The last line's fp32_frac_of_peak is the fp32
NCHW baseline's; the line above it gives the best fp32 layout's.

    python benchmarks/bench_model.py                      # 3 domains x 2 images, 512x512, resnet50 OS16
    python benchmarks/bench_model.py --size 256 --iters 3 # quicker
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from raymh.model import MultiHeadDeepLab, count_parameters

MODES: dict[str, tuple[torch.memory_format, torch.dtype | None]] = {
    "fp32_nchw": (torch.contiguous_format, None),
    "fp32_cl": (torch.channels_last, None),
    "bf16_cl": (torch.channels_last, torch.bfloat16),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--size", type=int, default=512, help="square image side (multiple of 8)")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--output-stride", type=int, default=16, choices=[8, 16])
    p.add_argument("--domains", type=int, default=3, help="number of domains (one 19-class head each)")
    p.add_argument("--batch", type=int, default=2, help="images per domain")
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--head-depth", type=int, default=2)
    p.add_argument("--iters", type=int, default=2, help="timed iterations per mode (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: leave torch's default)")
    p.add_argument("--peak-size", type=int, default=4096, help="side of the square fp32 matmul for the peak")
    p.add_argument("--peak-repeats", type=int, default=5)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {list(MODES)}")
    p.add_argument(
        "--tf32", action="store_true", help="on CUDA, let fp32 convs/matmuls use TF32 (off: strict fp32)"
    )
    p.add_argument("--profile", action="store_true", help="print the top ops of one fp32 NCHW iteration")
    return p.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], *, repeats: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median wall-clock and process-CPU seconds of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"wall": statistics.median(wall), "cpu": statistics.median(cpu)}


def matmul_peak_gflops(n: int, *, repeats: int, device: torch.device) -> dict[str, float]:
    """fp32 GFLOP of an n x n x n matmul per wall second and per process-CPU second (medians)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)
    t = timed(lambda: torch.mm(a, b, out=out), repeats=repeats, warmup=1, device=device)
    return {"wall": 2 * n**3 / t["wall"] / 1e9, "cpu": 2 * n**3 / t["cpu"] / 1e9}


def build(args: argparse.Namespace, device: torch.device | str) -> MultiHeadDeepLab:
    classes = {f"domain{i}": args.classes for i in range(args.domains)}
    return MultiHeadDeepLab(
        classes, backbone=args.backbone, output_stride=args.output_stride, head_depth=args.head_depth
    ).to(device)


def make_images(args: argparse.Namespace, device: torch.device | str) -> dict[str, torch.Tensor]:
    return {
        f"domain{i}": torch.randn(args.batch, 3, args.size, args.size, device=device)
        for i in range(args.domains)
    }


def train_step_fn(
    model: MultiHeadDeepLab, images: dict[str, torch.Tensor], autocast_dtype: torch.dtype | None
):
    """One forward_domains + backward of a scalar touching every output (no optimizer step)."""
    device_type = next(iter(images.values())).device.type

    def step() -> None:
        model.zero_grad(set_to_none=True)
        amp = (
            contextlib.nullcontext()
            if autocast_dtype is None
            else torch.autocast(device_type, dtype=autocast_dtype)
        )
        with amp:
            out = model.forward_domains(images)
        loss = sum(o["logits"].float().mean() + o["proj"].float().mean() for o in out.values())
        loss.backward()

    return step


def count_train_flops(args: argparse.Namespace) -> tuple[int, int]:
    """(forward FLOPs, forward+backward FLOPs) of one step, counted on the meta device."""
    with torch.device("meta"):
        model = build(args, "meta").train()
        images = make_images(args, "meta")
    fwd = FlopCounterMode(display=False)
    with fwd:
        model.forward_domains(images)
    both = FlopCounterMode(display=False)
    with both:
        train_step_fn(model, images, None)()
    return fwd.get_total_flops(), both.get_total_flops()


def profile_once(step: Callable[[], None], device: torch.device) -> None:
    """Print the ops that took the most time in one step (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        sync(device)
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_by, row_limit=20))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or "fp32_nchw" not in modes:
        raise SystemExit(
            f"--modes must be a subset of {list(MODES)} including the fp32_nchw baseline, got {modes}"
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        # PyTorch lets cuDNN convs use TF32 by default; keep them strict fp32 unless asked, to match the fp32 peak.
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)

    fwd_flops, step_flops = count_train_flops(args)
    model = build(args, device).train()
    images = make_images(args, device)
    n_images = args.domains * args.batch
    params = count_parameters(model)
    print(
        f"config: device={args.device} threads={torch.get_num_threads()} backbone={args.backbone} "
        f"os={args.output_stride} domains={args.domains}x{args.batch} size={args.size} classes={args.classes} "
        f"head_depth={args.head_depth} iters={args.iters} warmup={args.warmup}"
        + (f" gpu={torch.cuda.get_device_name(device)} tf32={args.tf32}" if device.type == "cuda" else "")
    )
    print(
        f"params={params} fwd_GFLOP={fwd_flops / 1e9:.1f} fwd+bwd_GFLOP={step_flops / 1e9:.1f} "
        f"(bwd/fwd={step_flops / fwd_flops - 1:.2f})"
    )
    # On CPU the fraction of peak is also given per process-CPU second (model and matmul alike), which a
    # shared, oversubscribed machine distorts much less than wall-clock ratios.
    on_cpu = device.type == "cpu"
    results: dict[str, dict[str, float]] = {}
    for mode in modes:
        # The peak is measured right before each mode: on a shared machine the load changes during the run.
        peak = matmul_peak_gflops(args.peak_size, repeats=args.peak_repeats, device=device)
        fmt, dtype = MODES[mode]
        model = model.to(memory_format=fmt)
        inputs = {d: x.contiguous(memory_format=fmt) for d, x in images.items()}
        step = train_step_fn(model, inputs, dtype)
        t = timed(step, repeats=args.iters, warmup=args.warmup, device=device)
        if args.profile and mode == "fp32_nchw":
            profile_once(step, device)  # after the warm-up, so one-off setup does not show
        frac = step_flops / t["wall"] / 1e9 / peak["wall"]
        frac_cpu = step_flops / t["cpu"] / 1e9 / peak["cpu"]
        results[mode] = {"seconds": t["wall"], "frac": frac, "frac_cpu": frac_cpu}
        print(
            f"mode={mode:<9} s/iter={t['wall']:.3f} img/s={n_images / t['wall']:.2f} "
            f"GFLOP/s={step_flops / t['wall'] / 1e9:.1f} fp32_peak={peak['wall']:.1f} frac_of_fp32_peak={frac:.3f} "
            + (f"frac_cpu_time={frac_cpu:.3f} " if on_cpu else "")
            + f"vs_fp32_nchw={results['fp32_nchw']['seconds'] / t['wall']:.2f}x"
        )

    fp32_modes = [m for m in results if MODES[m][1] is None]
    best = min(fp32_modes, key=lambda m: results[m]["seconds"])
    print(
        f"fp32 best layout: {best} frac_of_fp32_peak={results[best]['frac']:.3f}"
        + (f" frac_cpu_time={results[best]['frac_cpu']:.3f}" if on_cpu else "")
    )
    base = results["fp32_nchw"]["seconds"]
    bf16_ratio = base / results["bf16_cl"]["seconds"] if "bf16_cl" in results else float("nan")
    frac = results["fp32_nchw"]["frac"]
    print(f"model: bf16_cl_vs_fp32={bf16_ratio:.2f} fp32_frac_of_peak={frac:.3f} params={params}")


if __name__ == "__main__":
    main()
