"""Benchmark the mixing step against the public pipelines, with the baselines measured in the same run.

CPU (default): our reference path (uint8 NHWC -> mixed, normalized fp32 channels-last + soft
targets) against timm (its prefetcher's float/sub/div normalization, then `Mixup` in cutmix batch
mode) and torchvision (`to_dtype` + `normalize`, then `v2.CutMix`), on a 128x3x224x224 batch.
Methods run round-robin and each reports its median, so load from other processes hits all alike.

    python bench/bench_mix.py                       # appends to bench/results/mix_cpu.txt
    python bench/bench_mix.py --device cuda         # appends to bench/results/mix_cuda.txt
    THP_MEM_ALLOC_ENABLE=1 python bench/bench_mix.py   # huge pages for large CPU allocations

CUDA: the Triton kernel's bytes moved per second against a device-to-device copy of as many
bytes (goal >= 0.85), and its time against the unfused torch path (normalize, then cutmix, then
cast; goal >= 3x), all with bf16 channels-last output.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from cli_checks import at_least, device_present, writable_out  # bench/ is on the path when run as a script
from pipeline.mix import MixSampler, apply_mix, normalization_affine, resolve_mix, soft_targets

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
NUM_CLASSES = 1000
SMOOTHING = 0.1
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per method (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/mix_<device>.txt")
    args = parser.parse_args(argv)
    at_least(parser, args, 1, "size", "repeats", "threads")
    if args.batch_size < 2:
        parser.error(f"--batch-size must be >= 2, got {args.batch_size}: cutmix mixes each image with a partner "
                     "from the same batch")
    if args.device == "cpu" and args.batch_size % 2:
        parser.error(f"--batch-size must be even on the CPU, got {args.batch_size}: timm's Mixup in batch mode "
                     "pairs each image with its mirror in the batch")
    device_present(parser, args.device)
    args.out = args.out or RESULTS / f"mix_{args.device}.txt"
    writable_out(parser, args.out)
    return args


def make_batch(*, batch_size: int, size: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator)
    return images.to(device), labels.to(device)


def cpu_methods(images: torch.Tensor, labels: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Each method goes from the loader's uint8 batch to mixed, normalized images and soft targets."""
    from timm.data.mixup import Mixup
    from torchvision.transforms import v2

    batch_size, height, width, _ = images.shape
    # timm's and torchvision's loaders collate to uint8 NCHW; converting ours is not timed.
    images_nchw = images.permute(0, 3, 1, 2).contiguous()
    timm_mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    timm_std = torch.tensor(STD).view(1, 3, 1, 1) * 255
    timm_mixup = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, mode="batch", label_smoothing=SMOOTHING,
                       num_classes=NUM_CLASSES)  # fmt: skip
    tv_cutmix = v2.CutMix(alpha=1.0, num_classes=NUM_CLASSES)
    sampler = MixSampler(mode="cutmix", cutmix_alpha=1.0, partner="permutation", seed=0)

    def ours(out_dtype=torch.float32):
        params = sampler.sample(batch_size=batch_size, height=height, width=width)
        return apply_mix(images, labels, params=params, mean=MEAN, std=STD, num_classes=NUM_CLASSES,
                         label_smoothing=SMOOTHING, out_dtype=out_dtype)  # fmt: skip

    def timm():
        # timm's PrefetchLoader normalization, then Mixup (which mixes in place).
        normalized = images_nchw.float().sub_(timm_mean).div_(timm_std)
        return timm_mixup(normalized, labels)

    def torchvision():
        floats = v2.functional.to_dtype(images_nchw, torch.float32, scale=True)
        normalized = v2.functional.normalize(floats, MEAN, STD)
        return tv_cutmix(normalized, labels)

    return {"ours_reference_fp32": ours, "timm_mixup_cutmix": timm, "torchvision_v2_cutmix": torchvision,
            "ours_reference_bf16": lambda: ours(torch.bfloat16)}  # fmt: skip


def time_round_robin(
    methods: dict[str, Callable[[], object]], *, repeats: int, sync: Callable[[], None]
) -> dict[str, tuple[float, float]]:
    """Median and min seconds per method; one warm-up call each, then `repeats` rounds in turn."""
    for method in methods.values():
        method()
    sync()
    seconds = {name: [] for name in methods}
    for _ in range(repeats):
        for name, method in methods.items():
            start = time.perf_counter()
            method()
            sync()
            seconds[name].append(time.perf_counter() - start)
    return {name: (statistics.median(values), min(values)) for name, values in seconds.items()}


def run_cpu(args: argparse.Namespace) -> list[str]:
    torch.set_num_threads(args.threads)
    images, labels = make_batch(batch_size=args.batch_size, size=args.size, device="cpu")
    timings = time_round_robin(cpu_methods(images, labels), repeats=args.repeats, sync=lambda: None)
    lines = [f"{name:<24} median {median * 1e3:8.1f} ms   min {low * 1e3:8.1f} ms"
             for name, (median, low) in timings.items()]  # fmt: skip
    ours = timings["ours_reference_fp32"][0]
    timm_ratio = timings["timm_mixup_cutmix"][0] / ours
    torchvision_ratio = timings["torchvision_v2_cutmix"][0] / ours
    lines.append(f"speedup of ours (fp32) vs timm Mixup, medians:        {timm_ratio:.2f}x  (goal >= 2x)")
    lines.append(f"speedup of ours (fp32) vs torchvision CutMix, medians: {torchvision_ratio:.2f}x")
    return lines


def cuda_methods(images: torch.Tensor, labels: torch.Tensor) -> tuple[dict[str, Callable[[], object]], int]:
    """The fused launch, a copy of as many bytes, and the unfused torch path; plus the bytes moved."""
    from pipeline.mix.triton_kernel import launch_mix_kernel, pack_rows

    batch_size, height, width, channels = images.shape
    params = MixSampler(mode="cutmix", seed=0).sample(batch_size=batch_size, height=height, width=width)
    resolved = resolve_mix(params, batch_size=batch_size, height=height, width=width)
    packed = pack_rows(resolved).to(images.device)
    scale, shift = (t.to(images.device) for t in normalization_affine(mean=MEAN, std=STD, from_uint8=True))
    source = images.permute(0, 3, 1, 2)
    out = torch.empty(source.shape, dtype=torch.bfloat16, device=images.device, memory_format=torch.channels_last)
    targets = torch.empty(batch_size, NUM_CLASSES, device=images.device)
    # With a permutation partner each input byte is read once: 1 byte in, 2 bytes out, plus targets.
    moved = images.numel() * (1 + 2) + targets.numel() * 4
    copy_source = torch.empty(moved // 2, dtype=torch.uint8, device=images.device)
    copy_target = torch.empty_like(copy_source)
    y1, y2, x1, x2 = resolved.boxes[0].tolist()
    partner = resolved.partner.to(images.device)
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)

    def fused():
        launch_mix_kernel(source, labels, packed=packed, scale=scale, shift=shift, label_smoothing=SMOOTHING,
                          out_images=out, out_targets=targets)  # fmt: skip

    def unfused():
        normalized = (source.float() / 255 - mean) / std
        normalized[:, :, y1:y2, x1:x2] = normalized[partner, :, y1:y2, x1:x2]
        mixed = normalized.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        return mixed, soft_targets(labels, partner=partner, lam=resolved.lam, num_classes=NUM_CLASSES,
                                   label_smoothing=SMOOTHING)  # fmt: skip

    def full_apply_mix():
        return apply_mix(images, labels, params=params, mean=MEAN, std=STD, num_classes=NUM_CLASSES,
                         label_smoothing=SMOOTHING, out_dtype=torch.bfloat16, check_labels=False)  # fmt: skip

    methods = {"fused_kernel": fused, "copy_same_bytes": lambda: copy_target.copy_(copy_source),
               "unfused_torch": unfused, "apply_mix_with_host_side": full_apply_mix}  # fmt: skip
    return methods, moved


def run_cuda(args: argparse.Namespace) -> list[str]:
    import triton.testing

    images, labels = make_batch(batch_size=args.batch_size, size=args.size, device="cuda")
    methods, moved = cuda_methods(images, labels)
    # do_bench flushes the L2 cache between calls, so every method pays for DRAM traffic.
    milliseconds = {name: triton.testing.do_bench(method, warmup=25, rep=200, return_mode="median")
                    for name, method in methods.items()}  # fmt: skip
    lines = [f"{name:<26} median {ms * 1e3:9.1f} us   {moved / (ms * 1e-3) / 1e9:8.1f} GB/s (kernel's bytes)"
             for name, ms in milliseconds.items()]  # fmt: skip
    fused = milliseconds["fused_kernel"]
    lines.append(f"bytes moved by the kernel: {moved}")
    lines.append(f"fused vs copy of the same bytes: {milliseconds['copy_same_bytes'] / fused:.2f} (goal >= 0.85)")
    lines.append(f"fused vs unfused torch path: {milliseconds['unfused_torch'] / fused:.2f}x (goal >= 3x)")
    return lines


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, where there is one."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def main(argv=None) -> None:
    args = parse_args(argv)
    lines = run_cuda(args) if args.device == "cuda" else run_cpu(args)
    if args.device == "cuda":
        device = torch.cuda.get_device_name()
    else:
        device = f"{cpu_name()} ({os.cpu_count()} cores, no GPU), torch threads {args.threads}"
    # PyTorch's switch for huge pages on large CPU allocations: it changes every method's
    # page-fault cost on fresh outputs, so the results record it.
    huge_pages = os.environ.get("THP_MEM_ALLOC_ENABLE", "unset")
    header = [
        f"# python bench/bench_mix.py --device {args.device} --batch-size {args.batch_size} --size {args.size} "
        f"--repeats {args.repeats} --threads {args.threads}",
        f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  device: {device}  torch {torch.__version__}  "
        f"THP_MEM_ALLOC_ENABLE={huge_pages}",
        f"# batch: {args.batch_size}x3x{args.size}x{args.size} uint8 -> cutmix (alpha 1, batch mode), "
        f"smoothing {SMOOTHING}, {NUM_CLASSES} classes",
    ]
    publish(header + lines, args.out)


def publish(lines: list[str], out: Path) -> None:
    """Print a run's header and table, and append them to the results file `out` (a blank line after)."""
    text = "\n".join(lines) + "\n"
    print(text, end="")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as results:
        results.write(text + "\n")


if __name__ == "__main__":
    main()
