"""The host side of a mixing step (issue 11): from the sampler's draw to the kernel launch, old vs new.

A step as training makes it: ``sampler.sample`` then ``apply_mix(..., check_labels=False)``, batch 256
at 224 px, bf16 channels-last output. "old" is pipeline/mix (and pipeline/seeds.py) at BASELINE_COMMIT,
the code before this change, read with ``git show`` into a temporary package; "new" is this tree. They
run round-robin in one process, so load from other processes hits both alike.

CPU (default): the host part alone, in CPU time of the calling thread (a shared machine's other
processes do not count). apply_mix runs the Triton path (TRITON_INTERPRET=1, so CPU tensors pass
its check) with ``launch_mix_kernel`` replaced by a no-op. What a CPU cannot show as host work is
set aside in both versions: the two outputs (77 MB and 1 MB) come from a cache, as CUDA's caching
allocator hands back a cached block (a CPU malloc that size is an mmap, timed on its own line);
Cutout + Mixup's blend after the kernel, and the old code's soft targets there, are torch ops that
compute on the CPU and are left out (on a GPU they are launches, in the --device cuda figures).
The copy to the GPU (a memcpy into pinned memory, a copy launch, an event) cannot run here either.

    python bench/bench_mix_host.py                   # appends to bench/results/mix_host_cpu.txt
    python bench/bench_mix_host.py --device cuda     # appends to bench/results/mix_host_cuda.txt

CUDA: per mode and version, the whole call (--calls steps back to back, then one synchronize: the
time per step once the host keeps ahead) against the kernel alone (as many launches on prepared
device tensors), and the host's time to enqueue a step (the same steps before the synchronize).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from bench_mix import cpu_name, publish  # bench/ is on the path when run as a script
from cli_checks import at_least, device_present, listed, writable_out

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
# The commit before the host side was restructured (issue 11, item 2).
BASELINE_COMMIT = "6bfb1d689aa31bd2a3879fc31b07f3ff6fc04a24"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
NUM_CLASSES = 1000
SMOOTHING = 0.1
# Sampler options per benchmarked mode: every image-level mode, per batch and per element, the three
# partner layouts; "feature_cutmix" is the image part of a feature-level step (see feature_step).
MODES = {
    "cutmix": dict(mode="cutmix"),
    "mixup": dict(mode="mixup"),
    "cutmix_or_mixup": dict(mode="cutmix_or_mixup"),
    "cutout": dict(mode="cutout", cutout_size=112),
    "cutout+mixup": dict(mode="mixup", cutout_size=112),
    "cutmix_elem": dict(mode="cutmix", per="elem"),
    "cutmix_or_mixup_elem": dict(mode="cutmix_or_mixup", per="elem"),
    "cutout_elem": dict(mode="cutout", cutout_size=112, per="elem"),
    "cutmix_flip": dict(mode="cutmix", partner="flip"),
    "cutmix_roll": dict(mode="cutmix", partner="roll"),
    "feature_cutmix": dict(mode="feature_cutmix", layers=("input", "layer2"), layer_shapes={"layer2": (28, 28)}),
}
GOAL_US = 50


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=25, help="rounds of the round-robin (median reported)")
    parser.add_argument("--calls", type=int, default=None,
                        help="steps per method per round (CPU 64, CUDA 192: multiples of the sampler's LOOKAHEAD, "
                             "so that every round holds as many of its block draws)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    parser.add_argument("--baseline", default=BASELINE_COMMIT, help="commit of the old code ('none': new only)")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/mix_host_<device>.txt")
    args = parser.parse_args(argv)
    at_least(parser, args, 1, "batch_size", "size", "rounds")
    modes = listed(parser, "modes", args.modes, MODES, "mode")
    from pipeline.mix import MixSampler
    from pipeline.mix.sampler import LOOKAHEAD

    for mode in modes:  # the sampler's own batch rules (a partner for each image, an even batch for flip)
        try:
            MixSampler(seed=0, **MODES[mode]).sample(batch_size=args.batch_size, height=args.size, width=args.size)
        except ValueError as error:
            parser.error(f"--batch-size {args.batch_size} does not suit mode {mode}: "
                         f"{str(error).removeprefix('batch_size: ')}")
    args.calls = args.calls if args.calls is not None else (64 if args.device == "cpu" else 192)
    if args.calls < 1 or args.calls % LOOKAHEAD:
        # Fewer steps than a lookahead window per round hold its one expensive draw in fewer steps:
        # --calls 4 reported 165-227 us per step where 16 gave 52.
        parser.print_usage(sys.stderr)
        parser.exit(2, f"error: --calls {args.calls}: a positive multiple of the sampler's LOOKAHEAD "
                       f"({LOOKAHEAD}), so that each round holds whole windows of draws\n")
    device_present(parser, args.device)
    args.out = args.out or RESULTS / f"mix_host_{args.device}.txt"
    writable_out(parser, args.out)
    return args


def has_git_history() -> bool:
    """Whether this tree is a git work tree (``git rev-parse`` finds its repository)."""
    try:
        return subprocess.run(["git", "rev-parse", "--git-dir"], cwd=REPO, capture_output=True).returncode == 0
    except OSError:  # no git at all
        return False


def load_baseline(commit: str):
    """pipeline/mix at `commit` as the package `mix_baseline.mix` (its `..seeds` import included)."""
    root = Path(tempfile.mkdtemp(prefix="mix_baseline_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # the modules stay loaded; the files can go
    # Every module of pipeline/mix as it was then (a fixed list missed those added since: a newer
    # --baseline failed on its import of mix/color.py), and the one outside it that they import.
    listed = subprocess.run(["git", "ls-tree", "--name-only", f"{commit}:pipeline/mix"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.split()
    for name in ["seeds.py"] + [f"mix/{name}" for name in listed if name.endswith(".py")]:
        text = subprocess.run(["git", "show", f"{commit}:pipeline/{name}"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout
        path = root / "mix_baseline" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "mix_baseline" / "__init__.py").write_text("")
    sys.path.insert(0, str(root))
    import mix_baseline.mix.core
    import mix_baseline.mix.triton_kernel

    return mix_baseline.mix


def versions(args: argparse.Namespace) -> dict:
    """{"old": package, "new": package}: pipeline.mix then and now, with .core and .triton_kernel loaded."""
    import pipeline.mix
    import pipeline.mix.core
    import pipeline.mix.triton_kernel

    found = {"new": pipeline.mix}
    if args.baseline != "none":
        if has_git_history():
            try:
                found = {"old": load_baseline(args.baseline), **found}
            except subprocess.CalledProcessError as error:  # a mistyped --baseline
                why = (error.stderr or "").strip().splitlines()
                raise SystemExit(f"error: --baseline {args.baseline}: {why[-1] if why else error}") from None
        else:  # a copy of the tree without its .git (the GPU machine gets one): the new code alone
            print(f"note: no git history here to read the old code ({args.baseline[:12]}) from; "
                  "timing the new code alone, as --baseline none does", file=sys.stderr)
            args.baseline = "none"  # what the results header records: no old code was timed
    return found


def make_batch(*, batch_size: int, size: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator)
    return images.to(device), labels.to(device)


def training_step(package, mode: str, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], object]:
    """One step's mixing as pipeline/training.py calls it, for `package` (old or new)."""
    batch_size, height, width, _ = images.shape
    sampler = package.MixSampler(seed=0, **MODES[mode])
    # backend="triton": what "auto" picks on CUDA, forced so that the CPU times the same path.
    options = dict(mean=MEAN, std=STD, num_classes=NUM_CLASSES, label_smoothing=SMOOTHING,
                   out_dtype=torch.bfloat16, check_labels=False, backend="triton")
    if mode == "feature_cutmix":
        return feature_step(package, sampler, images, labels, options)

    def step():
        params = sampler.sample(batch_size=batch_size, height=height, width=width)
        return package.apply_mix(images, labels, params=params, **options)

    return step


def feature_step(package, sampler, images, labels, options) -> Callable[[], object]:
    """train_step's feature branch without the model: the image only normalized (mode none), the
    draw resolved on its layer's grid (the targets and the hooks' mixing are device work)."""
    batch_size, height, width, _ = images.shape

    def step():
        params = sampler.sample(batch_size=batch_size, height=height, width=width)
        inputs = package.apply_mix(images, labels, params=package.MixParams(mode="none"), **options)
        layer_height, layer_width = MODES["feature_cutmix"]["layer_shapes"].get(params.layer, (height, width))
        package.resolve_mix(params, batch_size=batch_size, height=layer_height, width=layer_width)
        return inputs

    return step


def worst_step_micros(step: Callable[[], object], *, windows: int, window: int) -> float:
    """CPU microseconds of this thread of the dearest step in each of `windows` runs of `window`
    consecutive steps, median over the runs. With `window` the sampler's LOOKAHEAD, each run holds
    exactly one step that draws a block: what that step costs, the others being cheaper."""
    worst = []
    for _ in range(windows):
        times = []
        for _ in range(window):
            start = time.thread_time()
            step()
            times.append(time.thread_time() - start)
        worst.append(max(times) * 1e6)
    return statistics.median(worst)


def time_round_robin(steps: dict[str, Callable[[], object]], *, rounds: int, calls: int) -> dict[str, list[float]]:
    """CPU microseconds of this thread per call of each step, one figure per round; steps take
    turns within a round. Thread time, not wall time: the host work of a step, without the time
    other processes on a shared machine hold the core."""
    for step in steps.values():
        for _ in range(10):
            step()
    micros = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.thread_time()
            for _ in range(calls):
                step()
            micros[name].append((time.thread_time() - start) / calls * 1e6)
    return micros


class CachedLargeOutputs:
    """While active, torch.empty hands back one tensor per distinct call, as CUDA's caching
    allocator hands back a cached block (the outputs' contents are never read here)."""

    def __init__(self) -> None:
        self.original = torch.empty
        self.cache: dict = {}

    def empty(self, *args, **kwargs):
        key = (args, tuple(kwargs.items()))
        if key not in self.cache:
            self.cache[key] = self.original(*args, **kwargs)
        return self.cache[key]

    def __enter__(self):
        torch.empty = self.empty
        return self

    def __exit__(self, *exc):
        torch.empty = self.original


def host_only(package) -> None:
    """No kernel launch, no post-kernel torch compute (see the module docstring) in `package`."""
    package.triton_kernel.launch_mix_kernel = lambda *args, **kwargs: None
    package.core.mix_features = lambda features, resolved, **kwargs: features
    if hasattr(package.core, "soft_targets"):  # the old code's Cutout + Mixup targets, torch ops on the host
        package.core.soft_targets = lambda labels, *, num_classes, **kwargs: labels


def run_cpu(args: argparse.Namespace) -> list[str]:
    torch.set_num_threads(1)  # the host side is one thread
    found = versions(args)
    for package in found.values():
        host_only(package)
    images, labels = make_batch(batch_size=args.batch_size, size=args.size, device="cpu")
    lookahead = found["new"].sampler.LOOKAHEAD
    lines = [f"{'mode':<22} " + "  ".join(f"{name + ' median':>12} {name + ' min':>9}" for name in found)
             + f" {'new worst':>10}" + ("   old/new (medians)" if len(found) == 2 else "")]
    news = {}
    for mode in args.modes.split(","):
        steps = {name: training_step(package, mode, images, labels) for name, package in found.items()}
        with CachedLargeOutputs():
            micros = time_round_robin(steps, rounds=args.rounds, calls=args.calls)
            worst = worst_step_micros(steps["new"], windows=args.rounds, window=lookahead)
        medians = {name: statistics.median(values) for name, values in micros.items()}
        line = f"{mode:<22} " + "  ".join(f"{medians[name]:9.1f} us {min(micros[name]):6.1f} us" for name in found)
        line += f" {worst:7.1f} us"
        if len(found) == 2:
            line += f"   {medians['old'] / medians['new']:6.1f}x"
        lines.append(line)
        news[mode] = medians["new"]
    met = [mode for mode, median in news.items() if median <= GOAL_US]
    lines.append(f"new: {len(met)} of {len(news)} modes within the goal of <= {GOAL_US} us per step"
                 f" ({', '.join(met) or 'none'}); slowest {max(news.values()):.1f} us")
    lines.append(f"new worst: the dearest of {lookahead} consecutive steps (median of {args.rounds}): the step in "
                 f"which the sampler draws the next {lookahead} steps at once; the medians above average over those "
                 "blocks")
    allocation = time_round_robin({"outputs": lambda: output_tensors(images)}, rounds=args.rounds, calls=args.calls)
    lines.append(f"not in the figures above: allocating the two outputs on the CPU, "
                 f"{statistics.median(allocation['outputs']):.1f} us (an mmap; cached on CUDA)")
    loop = time_round_robin({"loop": lambda: sum(range(1000))}, rounds=args.rounds, calls=args.calls)
    lines.append(f"for scale, this machine's Python: sum(range(1000)) in {statistics.median(loop['loop']):.1f} us"
                 " of CPU time")
    return lines


def output_tensors(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch_size, height, width, channels = images.shape
    return (torch.empty((batch_size, channels, height, width), dtype=torch.bfloat16, device=images.device,
                        memory_format=torch.channels_last),
            torch.empty(batch_size, NUM_CLASSES, device=images.device))


def kernel_alone(package, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], object]:
    """The bare launch on prepared device tensors (a cutmix batch: every mode's kernel is the same)."""
    batch_size, height, width, _ = images.shape
    params = package.MixSampler(mode="cutmix", seed=0).sample(batch_size=batch_size, height=height, width=width)
    resolved = package.resolve_mix(params, batch_size=batch_size, height=height, width=width)
    packed = package.triton_kernel.pack_rows(resolved).to(images.device)
    scale, shift = (t.to(images.device) for t in package.normalization_affine(mean=MEAN, std=STD, from_uint8=True))
    source = images.permute(0, 3, 1, 2)
    out_images, out_targets = output_tensors(images)

    def launch():
        package.triton_kernel.launch_mix_kernel(source, labels, packed=packed, scale=scale, shift=shift,
                                                label_smoothing=SMOOTHING, out_images=out_images,
                                                out_targets=out_targets)

    return launch


def time_back_to_back(step: Callable[[], object], *, calls: int, rounds: int, sync: Callable[[], None]
                      ) -> tuple[float, float]:
    """(host seconds to enqueue a step, seconds per step through to the device's end), medians over
    rounds of `calls` steps followed by one `sync`; one round first as a warm-up (kernel compiles,
    the pinned ring reaching its working size). gpu_suite's host section times with it too."""
    for _ in range(calls):
        step()
    sync()
    enqueue, whole = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            step()
        enqueued = time.perf_counter()
        sync()
        done = time.perf_counter()
        enqueue.append((enqueued - start) / calls)
        whole.append((done - start) / calls)
    return statistics.median(enqueue), statistics.median(whole)


def run_cuda(args: argparse.Namespace, *, device: str = "cuda", sync: Callable[[], None] = torch.cuda.synchronize
             ) -> list[str]:
    found = versions(args)
    images, labels = make_batch(batch_size=args.batch_size, size=args.size, device=device)
    _, kernel_s = time_back_to_back(kernel_alone(found["new"], images, labels), calls=args.calls,
                                    rounds=args.rounds, sync=sync)
    kernel_us = kernel_s * 1e6
    lines = [f"kernel alone ({args.calls} launches back to back): {kernel_us:.1f} us per launch",
             f"{'mode':<22} {'version':<7} {'host enqueue':>12} {'whole call':>12} {'whole / kernel':>15}"]
    for mode in args.modes.split(","):
        for name, package in found.items():
            enqueue_s, whole_s = time_back_to_back(training_step(package, mode, images, labels),
                                                   calls=args.calls, rounds=args.rounds, sync=sync)
            enqueue_us, whole_us = enqueue_s * 1e6, whole_s * 1e6
            lines.append(f"{mode:<22} {name:<7} {enqueue_us:9.1f} us {whole_us:9.1f} us {whole_us / kernel_us:14.2f}x")
    if device == "cuda":
        stats = torch.cuda.host_memory_stats()
        lines.append(f"pinned host blocks handed out in this run: {stats.get('active_requests.allocated', '?')}"
                     f" (the old code pins once per step, the new one once per ring slot)")
    return lines


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.device == "cpu":
        # Before triton_kernel is imported (old or new): triton.jit picks the interpreter then.
        os.environ["TRITON_INTERPRET"] = "1"
        lines = run_cpu(args)
        device = f"{cpu_name()} ({os.cpu_count()} cores, no GPU), 1 torch thread"
    else:
        lines = run_cuda(args)
        device = f"{torch.cuda.get_device_name()}, host {cpu_name()}"
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    # The command that gives this table again: --modes where a subset was timed.
    modes = f" --modes {args.modes}" if args.modes != ",".join(MODES) else ""
    header = [
        f"# python bench/bench_mix_host.py --device {args.device} --batch-size {args.batch_size} --size {args.size} "
        f"--rounds {args.rounds} --calls {args.calls}{modes} --baseline {args.baseline[:12]}",
        f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  device: {device}  torch {torch.__version__}  load average {load}",
        f"# a step: sampler.sample + apply_mix(check_labels=False), {args.batch_size}x{args.size}x{args.size}x3 uint8 "
        f"-> bf16 channels-last, {NUM_CLASSES} classes; microseconds per step",
    ]
    publish(header + lines, args.out)


if __name__ == "__main__":
    main()
