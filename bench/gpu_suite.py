"""Every GPU check in one command (issue 11, item 5): one process, one table, under 6 minutes on one H100/H200.

    python bench/gpu_suite.py                          # all sections, writes bench/results/gpu_<device>.txt
    python bench/gpu_suite.py --quick --sections kernel,host
    python bench/gpu_suite.py --dali-threads 2,4,8     # + ours compiled with DALI at 2, 4 and 8 threads
    python bench/gpu_suite.py --cpu-smoke --out /tmp/gpu.txt   # every section's plumbing on the CPU, tiny sizes

On the lent H200 (../shared/gpu/README.md: DALI and webdataset come from the kit; without them the
DALI rows and tests say why they are skipped): `source .dx/install.sh && python3 bench/gpu_suite.py`.
Where torch sees no CUDA device it stops at once with torch's reason (exit 2); the table is written
after each section to OUT's `.partial` twin, replaced by OUT when the run ends.

Sections, each a function returning table rows (a section that cannot run gives a "skipped: why" row):
  kernel  the Triton kernel against a float64 reference written here (a per-sample loop: normalize,
          then mix), outputs filled with NaN first, on random shapes, modes (cutmix / mixup / cutout /
          none, per batch and per sample), input kinds (uint8 NHWC, float NCHW), output dtypes (fp32,
          bf16) and memory formats; max error in units of the output dtype's epsilon. Then its bandwidth
          against a device-to-device copy of as many bytes (batch 256x224x224x3 uint8 -> bf16
          channels-last with CutMix per batch and per sample), rotating over 4 input sets so that L2
          cannot hold them (goal >= 0.85 of the copy); the same with the ImageNet recipe's colour maps
          fused, and against the colour as a separate step before the kernel.
  host    the host side of a step (the sampler's draw to the kernel launch, batch 256): the time to
          enqueue a step (goal <= 50 us), and the whole apply_mix call back to back against the kernel alone.
  loader  DALI mixed (GPU) decode against the torch loader, same shards and augmentation (goal >= 1.5x);
          the DALI graph's header check against the same decode without it (bench_header_check.py).
  train   ResNet-50, bf16, batch 256, channels-last, CutMix: the bare step (the same model, optimizer and
          compiled graph on a batch already mixed on the GPU) eager and compiled, then ours (loader ->
          sampler -> apply_mix -> train_step) on synthetic and DALI batches, eager and compiled; goal for
          ours compiled on DALI: >= 0.95 of the bare compiled step and >= 6,300 img/s; also ours compiled
          on DALI with the paper recipe's colour augmentation (pipeline/data/color.py). Compile time and
          peak GPU memory reported; --dali-threads adds the thread sweep.
  tests   the CUDA-gated pytest tests (found by their skip markers) in a subprocess; its summary line.

Shards for loader and train are built on the fly from scikit-learn's two sample photos (random 4:3
crops resized to 500x375, flips, some portrait; bench_shards.make_photos) by the real shard builder.
A global time budget (--time-budget, default 330 s) bounds the optional parts; training always
measures a fixed number of steps after its warm-up.
"""

from __future__ import annotations

import argparse
import ast
import collections
import functools
import gc
import importlib
import importlib.util
import itertools
import math
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))
from bench_loader import started_loader, time_epoch  # noqa: E402
from bench_mix_host import time_back_to_back  # noqa: E402
from bench_shards import make_photos  # noqa: E402
from cli_checks import out_problem  # noqa: E402
from pipeline.data import Augmentation, LoaderOptions, create_loader  # noqa: E402
from pipeline.mix import (MixParams, MixSampler, apply_mix, normalization_affine, resolve_mix,  # noqa: E402
                          soft_target_cross_entropy)
from pipeline.mix.color import maps_in_units  # noqa: E402
from shards.cli import main as shards_main  # noqa: E402
from shards.durable import write_text_atomic  # noqa: E402

RESULTS = REPO / "bench" / "results"
SECTIONS = ("kernel", "host", "loader", "train", "tests")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NUM_CLASSES = 1000  # ImageNet's width for the soft targets and the classifier (the shards' 20 labels fit in it)
SMOOTHING = 0.1
MIX_MODES = ("cutmix", "mixup", "cutout", "none")
# Error limits in units of the output dtype's epsilon, relative above 1 and absolute below (|reference| < 1).
# fp32: the affine map's float32 constants, products and sums (a few roundings of terms up to 4.4 in
# size). bf16: one rounding of the fp32 result, to nearest on a GPU (<= 0.5 eps, plus the fp32
# arithmetic); Triton's interpreter truncates instead (< 1 eps: seen here, where torch rounds to nearest).
ERROR_GOALS = {torch.float32: 8.0, torch.bfloat16: 0.51}
INTERPRETER_ERROR_GOALS = {torch.float32: 8.0, torch.bfloat16: 1.0}
TARGET_ERROR_GOAL = 4.0  # soft targets are fp32: lambda rounded to float32, one multiply-add
# Seconds each section may take before its optional parts stop (the tests get what is left).
SHARES = {"kernel": 40, "host": 15, "loader": 35, "train": 130, "tests": 110}
GIB = 2**30


@dataclass(frozen=True)
class Plan:
    """Sizes of every measurement; `for_args` picks the full, --quick or --cpu-smoke set."""

    device: str  # "cuda", or "cpu" for --cpu-smoke
    batch_size: int  # kernel, host, loader and train batch
    image_size: int  # kernel, host and train side (the loader section is always 224 px, bench_loader's)
    random_cases: int  # kernel correctness: random small cases (each shape compiles the kernel once)
    full_size_cases: bool  # ... plus the benchmark's own shape, per batch and per sample
    input_sets: int  # kernel bandwidth: rotated inputs/outputs (4 x 38.5 MB uint8 > any L2)
    launches: int  # ... back-to-back launches per timed round
    rounds: int  # timed rounds (median reported) for kernel, copy and host timings
    photos: int  # JPEGs in the shards: one epoch covers a training row's warm-up + timed steps
    loader_threads: int  # DALI threads = torch loader workers
    loader_epochs: int  # timed epochs per loader backend (after a warm-up epoch)
    model: str
    warmup_steps: int  # training steps before timing (allocator, cudnn, loader start-up)
    timed_steps: int  # training steps timed per row
    compile_backend: str  # torch.compile backend: inductor, or aot_eager for the CPU smoke run
    precision: str  # Accelerate mixed precision
    smoke: bool  # figures are plumbing only: performance goals are not judged

    @classmethod
    def for_args(cls, args: argparse.Namespace) -> "Plan":
        if args.cpu_smoke:
            return cls(device="cpu", batch_size=8, image_size=32, random_cases=5, full_size_cases=False,
                       input_sets=2, launches=2, rounds=2, photos=48, loader_threads=2, loader_epochs=1,
                       model="resnet10t", warmup_steps=1, timed_steps=2, compile_backend="aot_eager",
                       precision="no", smoke=True)
        plan = cls(device="cuda", batch_size=256, image_size=224, random_cases=24, full_size_cases=True,
                   input_sets=4, launches=40, rounds=10, photos=256 * 36, loader_threads=args.threads,
                   loader_epochs=2, model="resnet50", warmup_steps=6, timed_steps=30,
                   compile_backend="inductor", precision="bf16", smoke=False)
        if args.quick:
            plan = replace(plan, random_cases=8, full_size_cases=False, rounds=5, photos=256 * 16, loader_epochs=1,
                           warmup_steps=4, timed_steps=12)
        return plan


@dataclass
class Row:
    """One line of the table. `goal` is judged on `ratio` or `value` and gives `status`."""

    section: str
    name: str
    value: object
    unit: str = ""
    baseline: Optional[float] = None
    ratio: Optional[float] = None
    goal: str = ""
    status: str = "-"


def measured(section: str, name: str, value, unit: str = "", *, baseline: float = None, ratio: float = None,
             goal: tuple = None, judge: bool = True) -> Row:
    """A row with `goal` = (on, op, threshold), on "value" or "ratio", op ">=", "<=" or "=="; `judge`
    False (CPU smoke timings) records the goal without a verdict."""
    if ratio is None and baseline and isinstance(value, (int, float)):
        ratio = value / baseline
    row = Row(section, name, value, unit, baseline, ratio)
    if goal is not None:
        on, op, threshold = goal
        row.goal = f"{on} {op} {threshold:g}"
        subject = row.ratio if on == "ratio" else value
        if not judge:
            row.status = "smoke"
        elif isinstance(subject, (int, float)) and not math.isnan(subject):
            passed = {">=": subject >= threshold, "<=": subject <= threshold, "==": subject == threshold}[op]
            row.status = "pass" if passed else "fail"
        else:
            row.status = "fail"
    return row


def skipped(section: str, name: str, why: str) -> Row:
    return Row(section, name, f"skipped: {why}", status="skipped")


def note(section: str, name: str, text: str) -> Row:
    """Context for the table (printed above it): what was run, on what."""
    return Row(section, name, text, status="note")


def failed(section: str, error: BaseException) -> Row:
    """A section (or part) that raised: the rest of the run goes on."""
    return Row(section, "error", f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}",
               status="fail")


class Budget:
    """The run's deadline, and a section's own: `section(name)` starts one, `over` says its share is used."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.section_end = self.deadline

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def section(self, name: str) -> None:
        self.section_end = min(self.deadline, time.monotonic() + SHARES[name])

    def over(self) -> bool:
        return time.monotonic() > self.section_end


@dataclass
class Suite:
    """What the sections share: the plan, the budget, the device and, built on first use, the shards."""

    plan: Plan
    budget: Budget
    args: argparse.Namespace
    workdir: Path
    test_output: str = ""  # the pytest run's output, kept for the results file when a test fails
    _shards: Optional[Path] = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return torch.device(self.plan.device)

    def shards(self) -> Path:
        if self._shards is None:
            self._shards = build_photo_shards(self.workdir, self.plan.photos)
        return self._shards


# ---------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(call: Callable[[], object], *, calls: int, rounds: int, device: torch.device) -> float:
    """Device seconds per call when `calls` calls run back to back, median over `rounds`. On CUDA
    the calls are queued behind a sleeping kernel, so the GPU runs them without gaps whatever the
    host's launch cost, and CUDA events time them. On the CPU: wall time."""
    call()
    synchronize(device)
    per_call, sleep = [], 0.02
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda._sleep(_sleep_cycles(seconds=sleep))
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        enqueue_start = time.perf_counter()
        for _ in range(calls):
            call()
        enqueued = time.perf_counter() - enqueue_start
        if device.type != "cuda":
            per_call.append(enqueued / calls)
            continue
        end.record()
        end.synchronize()
        per_call.append(start.elapsed_time(end) / 1e3 / calls)
        sleep = max(sleep, 2 * enqueued)  # the queue must outlast the host's enqueueing, or gaps get timed
    return statistics.median(per_call)


_CYCLES_PER_SECOND: list[float] = []


def _sleep_cycles(*, seconds: float) -> int:
    """GPU clock cycles of `torch.cuda._sleep` lasting about `seconds` (measured once)."""
    if not _CYCLES_PER_SECOND:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(10**7)
        end.record()
        end.synchronize()
        _CYCLES_PER_SECOND.append(10**7 / (start.elapsed_time(end) / 1e3))
    return int(_CYCLES_PER_SECOND[0] * seconds)


def triton_kernel():
    """pipeline.mix.triton_kernel, imported once the interpreter choice (TRITON_INTERPRET) is made."""
    return importlib.import_module("pipeline.mix.triton_kernel")


# ---------------------------------------------------------------- kernel: correctness


@dataclass
class MixCase:
    """One batch, its mix drawn here (not by the sampler) and written out per sample for the reference."""

    images: torch.Tensor  # uint8 NHWC, or float NCHW with values in [0, 1]
    labels: torch.Tensor
    params: MixParams
    modes: list  # per sample: one of MIX_MODES
    lam: list  # per sample: the label weight (mixup: also the pixel weight), float32-exact
    boxes: list  # per sample: (y1, y2, x1, x2)
    partner: list
    num_classes: int
    label_smoothing: float
    out_dtype: torch.dtype
    memory_format: torch.memory_format
    color: Optional[torch.Tensor] = None  # per-image colour maps [B, 5] in [0, 1] units (pipeline/mix/color.py)

    def describe(self) -> str:
        batch = self.images.shape[0]
        kind = "uint8 NHWC" if self.images.dtype == torch.uint8 else f"{str(self.images.dtype)[6:]} NCHW"
        side = self.images.shape[1:3] if self.images.dtype == torch.uint8 else self.images.shape[2:]
        layout = "channels_last" if self.memory_format == torch.channels_last else "contiguous"
        return (f"{batch}x{side[0]}x{side[1]} {kind} -> {str(self.out_dtype)[6:]} {layout}, "
                f"{'/'.join(sorted(set(self.modes)))}, {self.num_classes} classes"
                f"{', colour maps' if self.color is not None else ''}")


def random_box(rng: random.Random, height: int, width: int) -> tuple[int, int, int, int]:
    y1, y2 = sorted(rng.randint(0, height) for _ in range(2))
    x1, x2 = sorted(rng.randint(0, width) for _ in range(2))
    return (y1, y2, x1, x2)


def make_case(rng: random.Random, *, device, batch: int, height: int, width: int, mode: str, per: str,
              source: str, out_dtype, memory_format, num_classes: int, label_smoothing: float,
              color: bool = False) -> MixCase:
    """A case with its randomness injected: mode "mixed" draws a mode per sample; source "uint8" or a
    float dtype; ``color``: random per-image colour maps (gains, grey gains, offsets drawn here)."""
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    if source == "uint8":
        images = torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, generator=generator)
    else:
        images = torch.rand(batch, 3, height, width, generator=generator).to(getattr(torch, source))
        if rng.random() < 0.5:
            images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, num_classes, (batch,), generator=generator)
    # A permutation (the paper's), or partners drawn with repeats (timm's flip, torchvision's roll are special cases).
    partner = torch.randperm(batch, generator=generator) if rng.random() < 0.5 else \
        torch.randint(0, batch, (batch,), generator=generator)
    per = "elem" if mode == "mixed" else per
    draws = 1 if per == "batch" else batch
    boxes = [random_box(rng, height, width) for _ in range(draws)] * (batch // draws)
    lam = [float(torch.tensor(rng.random(), dtype=torch.float32)) for _ in range(draws)] * (batch // draws)
    modes = [rng.choice(MIX_MODES) for _ in range(batch)] if mode == "mixed" else [mode] * batch
    for n, name in enumerate(modes):
        if name == "cutmix":
            lam[n] = 1 - (boxes[n][1] - boxes[n][0]) * (boxes[n][3] - boxes[n][2]) / (height * width)
        elif name in ("cutout", "none"):
            lam[n] = 1.0
    if per == "batch":
        params = MixParams(mode=mode, lam=lam[0] if mode == "mixup" else None,
                           boxes=boxes[0] if mode in ("cutmix", "cutout") else None,
                           partner=partner if mode in ("cutmix", "mixup") else None)
    else:
        params = MixParams(mode=modes, lam=torch.tensor(lam), boxes=torch.tensor(boxes, dtype=torch.int32),
                           partner=partner)
    maps = None
    if color:  # gain, grey gain, offset r, g, b: the jitter's range and beyond, float32-exact draws
        rows = [[rng.uniform(0.4, 1.6), rng.uniform(-0.5, 0.5), *(rng.uniform(-0.3, 0.3) for _ in range(3))]
                for _ in range(batch)]
        maps = torch.tensor(rows, dtype=torch.float32).to(device)
    return MixCase(images.to(device), labels.to(device), params, modes, lam, boxes, partner.tolist(), num_classes,
                   label_smoothing, out_dtype, memory_format, maps)


# What the random cases vary besides their shape; every value of every axis comes up in any 5 cases in a row.
CASE_AXES = {
    "mode": MIX_MODES + ("mixed",),  # mixed: a mode per sample (timm's elem mode with switch_prob)
    "per": ("batch", "elem"),
    "source": ("uint8", "float32", "bfloat16"),
    "out_dtype": (torch.float32, torch.bfloat16),
    "memory_format": (torch.channels_last, torch.contiguous_format),
    "num_classes": (2, 7, 1000, 1500),  # 1500: more than the kernel's block of classes
    "label_smoothing": (0.0, 0.1),
    "color": (False, True),  # per-image colour maps (the ImageNet recipe's jitter and lighting), fused
}


def random_cases(rng: random.Random, count: int, *, device) -> list[MixCase]:
    """`count` cases of random shapes; each axis of CASE_AXES runs through fresh shuffles of its values."""
    columns = {}
    for axis, values in CASE_AXES.items():
        column = []
        while len(column) < count:
            column += rng.sample(values, len(values))
        columns[axis] = column[:count]
    return [make_case(rng, device=device, batch=rng.randint(1, 9), height=rng.randint(1, 48), width=rng.randint(1, 48),
                      **{axis: column[i] for axis, column in columns.items()}) for i in range(count)]


def coverage(cases: list[MixCase]) -> str:
    """How many cases had each mode, per, input kind, output dtype and memory format."""
    def kinds(case):
        yield from set(case.modes)
        yield "per batch" if isinstance(case.params.mode, str) else "per sample"
        yield "uint8 in" if case.images.dtype == torch.uint8 else "float in"
        yield f"{str(case.out_dtype)[6:]} out"
        yield "channels_last" if case.memory_format == torch.channels_last else "contiguous"
        yield "colour maps" if case.color is not None else "no colour"

    counts = collections.Counter(kind for case in cases for kind in kinds(case))
    return ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items()))


def full_size_cases(rng: random.Random, *, device) -> list[MixCase]:
    """The benchmark's shape: 256x224x224 uint8 -> bf16 channels-last, CutMix per batch and per
    sample, and per batch with colour maps."""
    return [make_case(rng, device=device, batch=256, height=224, width=224, mode="cutmix", per=per, source="uint8",
                      out_dtype=torch.bfloat16, memory_format=torch.channels_last, num_classes=NUM_CLASSES,
                      label_smoothing=SMOOTHING, color=color)
            for per, color in (("batch", False), ("elem", False), ("batch", True))]


def reference_mix(case: MixCase) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 images [B, C, H, W] and soft targets [B, K]: per sample, colour (if the case has
    maps), normalize, then mix."""
    uint8 = case.images.dtype == torch.uint8
    source = (case.images.permute(0, 3, 1, 2) if uint8 else case.images).to(torch.float64) / (255.0 if uint8 else 1.0)
    batch, channels, height, width = source.shape
    if case.color is not None:  # y_c = gain x_c + grey gain (.299 r + .587 g + .114 b) + offset_c, per image
        maps = case.color.to(torch.float64)
        grey = 0.299 * source[:, 0] + 0.587 * source[:, 1] + 0.114 * source[:, 2]
        source = torch.stack([maps[:, 0, None, None] * source[:, c] + maps[:, 1, None, None] * grey
                              + maps[:, 2 + c, None, None] for c in range(channels)], dim=1)
    mean = torch.tensor(MEAN, dtype=torch.float64, device=source.device).view(1, channels, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64, device=source.device).view(1, channels, 1, 1)
    normalized = (source - mean) / std
    out = torch.empty_like(normalized)
    targets = torch.empty(batch, case.num_classes, dtype=torch.float64, device=source.device)
    off = case.label_smoothing / case.num_classes
    on = 1.0 - case.label_smoothing + off
    labels = case.labels.tolist()
    for n in range(batch):
        mode, (y1, y2, x1, x2), partner, lam = case.modes[n], case.boxes[n], case.partner[n], case.lam[n]
        own, other = normalized[n], normalized[partner]
        mixed, label_lam = own.clone(), 1.0
        if mode == "cutmix":
            mixed[:, y1:y2, x1:x2] = other[:, y1:y2, x1:x2]
            label_lam = 1.0 - (y2 - y1) * (x2 - x1) / (height * width)
        elif mode == "mixup":
            mixed, label_lam = lam * own + (1.0 - lam) * other, lam
        elif mode == "cutout":
            mixed[:, y1:y2, x1:x2] = 0.0
        out[n] = mixed
        targets[n] = off
        targets[n, labels[n]] += label_lam * (on - off)
        targets[n, labels[partner]] += (1.0 - label_lam) * (on - off)
    return out, targets


def run_poisoned(mix_backend, case: MixCase) -> tuple[torch.Tensor, torch.Tensor]:
    """`mix_backend` (mix_triton's contract) into outputs filled with NaN: an element it does not write stays NaN."""
    uint8 = case.images.dtype == torch.uint8
    source = case.images.permute(0, 3, 1, 2) if uint8 else case.images
    batch, _, height, width = source.shape
    resolved = resolve_mix(case.params, batch_size=batch, height=height, width=width)
    scale, shift = (t.to(source.device) for t in normalization_affine(mean=MEAN, std=STD, from_uint8=uint8))
    out = torch.full(source.shape, math.nan, dtype=case.out_dtype, device=source.device)
    out = out.contiguous(memory_format=case.memory_format)
    targets = torch.full((batch, case.num_classes), math.nan, device=source.device)
    color = None if case.color is None else maps_in_units(case.color, value_range=255.0 if uint8 else 1.0)
    mix_backend(source, case.labels, resolved=resolved, scale=scale, shift=shift,
                label_smoothing=case.label_smoothing, out_images=out, out_targets=targets, color=color)
    return out, targets


def error_in_eps(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> tuple[float, int]:
    """(max |actual - expected| / max(|expected|, 1) in epsilons of `dtype`, elements left NaN)."""
    if actual.numel() == 0:
        return 0.0, 0
    left = int(torch.isnan(actual).sum())
    error = (actual.to(torch.float64) - expected).abs() / expected.abs().clamp(min=1.0)
    return float(error.nan_to_num(nan=math.inf).max()) / torch.finfo(dtype).eps, left


def check_correctness(mix_backend, cases: list[MixCase], *, goals: dict = ERROR_GOALS,
                      budget: Optional[Budget] = None) -> list[Row]:
    """Rows: max error per output dtype (`goals`: limits in eps) and for the targets, elements left NaN,
    and what was covered. Stops early (after at least 4 cases) when the section's time share is used."""
    worst = {dtype: 0.0 for dtype in goals}
    worst_case = {dtype: "" for dtype in goals}
    target_error, left_nan, done = 0.0, 0, []
    for case in cases:
        if budget is not None and budget.over() and len(done) >= 4:
            break
        out, targets = run_poisoned(mix_backend, case)
        expected_out, expected_targets = reference_mix(case)
        error, left = error_in_eps(out, expected_out, case.out_dtype)
        t_error, t_left = error_in_eps(targets, expected_targets, torch.float32)
        if error >= worst[case.out_dtype]:
            worst[case.out_dtype], worst_case[case.out_dtype] = error, case.describe()
        target_error, left_nan = max(target_error, t_error), left_nan + left + t_left
        done.append(case)
    rows = [measured("kernel", f"max error vs float64, {str(dtype)[6:]} out", worst[dtype], "eps",
                     goal=("value", "<=", goals[dtype])) for dtype in goals]
    rows.append(measured("kernel", "max error vs float64, soft targets", target_error, "eps",
                         goal=("value", "<=", TARGET_ERROR_GOAL)))
    rows.append(measured("kernel", "output elements left NaN", left_nan, "", goal=("value", "==", 0)))
    rows.append(Row("kernel", "cases checked", len(done), "cases"))
    if done:
        largest = max(done, key=lambda case: case.images.numel())
        rows.append(note("kernel", "cases by kind", coverage(done)))
        rows.append(note("kernel", "largest case", largest.describe()))
    rows += [note("kernel", f"worst {str(dtype)[6:]} case", worst_case[dtype]) for dtype in goals if worst_case[dtype]]
    return rows


# ---------------------------------------------------------------- kernel: bandwidth


def bandwidth_rows(suite: Suite) -> list[Row]:
    """The kernel's bytes per second against a device-to-device copy of as many bytes."""
    plan, device = suite.plan, suite.device
    kernel = triton_kernel()
    size, batch = plan.image_size, plan.batch_size
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=generator).to(device)
              for _ in range(plan.input_sets)]
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=generator).to(device)
    outputs = [torch.empty((batch, 3, size, size), dtype=torch.bfloat16, device=device,
                           memory_format=torch.channels_last) for _ in range(plan.input_sets)]
    targets = [torch.empty(batch, NUM_CLASSES, device=device) for _ in range(plan.input_sets)]
    # Each output value reads one input byte (its own or its partner's): 1 byte in, 2 out, plus targets.
    moved = inputs[0].numel() * 3 + targets[0].numel() * 4
    copy_from = [torch.empty(moved // 2, dtype=torch.uint8, device=device) for _ in range(plan.input_sets)]
    copy_to = [torch.empty_like(copy_from[0]) for _ in range(plan.input_sets)]
    turn = itertools.cycle(range(plan.input_sets))

    def copy():
        i = next(turn)
        copy_to[i].copy_(copy_from[i])

    copy_s = seconds_per_call(copy, calls=plan.launches, rounds=plan.rounds, device=device)
    scale, shift = (t.to(device) for t in normalization_affine(mean=MEAN, std=STD, from_uint8=True))
    rows = []
    # The kernel as it is (whole-tile 128-bit loads), then the earlier per-value masked loads for comparison.
    variants = (("", dict(tile_loads=True)),
                (" (per-value masked loads, block 1024)", dict(tile_loads=False, block=1024)))
    for per, label in (("batch", "per batch"), ("elem", "per sample")):
        params = MixSampler(mode="cutmix", per=per, seed=0).sample(batch_size=batch, height=size, width=size)
        packed = kernel.pack_rows(resolve_mix(params, batch_size=batch, height=size, width=size)).to(device)
        for suffix, options in variants:

            def launch(options=options):
                i = next(turn)
                kernel.launch_mix_kernel(inputs[i].permute(0, 3, 1, 2), labels, packed=packed, scale=scale,
                                         shift=shift, label_smoothing=SMOOTHING, out_images=outputs[i],
                                         out_targets=targets[i], **options)

            kernel_s = seconds_per_call(launch, calls=plan.launches, rounds=plan.rounds, device=device)
            rows.append(measured("kernel", f"kernel bandwidth, CutMix {label}{suffix}", moved / kernel_s / 1e9,
                                 "GB/s", baseline=moved / copy_s / 1e9,
                                 goal=("ratio", ">=", 0.85) if not suffix else None, judge=not plan.smoke))
            rows.append(Row("kernel", f"kernel time, CutMix {label}{suffix}", kernel_s * 1e6, "us"))
    rows += color_rows(suite, inputs=inputs, labels=labels, outputs=outputs, targets=targets, turn=turn,
                       moved=moved, copy_s=copy_s)
    rows.append(Row("kernel", "copy of the same bytes (baseline)", copy_s * 1e6, "us"))
    rows.append(Row("kernel", "bytes moved per launch", moved / 1e6, "MB"))
    rows.append(note("kernel", "bandwidth batch", f"{batch}x{size}x{size}x3 uint8 -> bf16 channels_last, "
                     f"{NUM_CLASSES} classes, {plan.input_sets} input/output sets rotated, "
                     f"{plan.launches} launches back to back per round, median of {plan.rounds} rounds"))
    return rows


def color_rows(suite: Suite, *, inputs, labels, outputs, targets, turn, moved: int, copy_s: float) -> list[Row]:
    """The ImageNet recipe's colour (jitter 0.4, lighting 0.1) on the bandwidth batch, CutMix per
    batch: the kernel with the maps fused (each value reads its pixel's three channels: byte loads
    instead of 128-bit ones, the same bytes from memory), the maps' own cost (draws, the mean-grey
    reduction), and the colour as a separate step (float32 out, what training did before) followed
    by the kernel on its float input, against maps + fused kernel."""
    from pipeline.data.color import ColorAugment

    plan, device, kernel = suite.plan, suite.device, triton_kernel()
    batch, size = plan.batch_size, plan.image_size
    augment = ColorAugment(jitter=0.4, lighting_std=0.1, seed=0, rank=0, device=device)
    draws = [augment.draw(batch) for _ in inputs]
    maps = [maps_in_units(augment.maps(images, draw), value_range=255.0) for images, draw in zip(inputs, draws)]
    params = MixSampler(mode="cutmix", per="batch", seed=0).sample(batch_size=batch, height=size, width=size)
    packed = kernel.pack_rows(resolve_mix(params, batch_size=batch, height=size, width=size)).to(device)
    scale, shift = (t.to(device) for t in normalization_affine(mean=MEAN, std=STD, from_uint8=True))
    float_scale, float_shift = (t.to(device) for t in normalization_affine(mean=MEAN, std=STD, from_uint8=False))

    def fused():
        i = next(turn)
        kernel.launch_mix_kernel(inputs[i].permute(0, 3, 1, 2), labels, packed=packed, scale=scale, shift=shift,
                                 label_smoothing=SMOOTHING, out_images=outputs[i], out_targets=targets[i],
                                 color=maps[i])

    def maps_only():
        i = next(turn)
        augment.maps(inputs[i], draws[i])

    def separate():
        i = next(turn)
        kernel.launch_mix_kernel(augment(inputs[i], draws[i]), labels, packed=packed, scale=float_scale,
                                 shift=float_shift, label_smoothing=SMOOTHING, out_images=outputs[i],
                                 out_targets=targets[i])

    timing = dict(calls=plan.launches, rounds=plan.rounds, device=device)
    fused_s, maps_s, separate_s = (seconds_per_call(call, **timing) for call in (fused, maps_only, separate))
    return [measured("kernel", "kernel bandwidth, CutMix per batch, colour maps fused", moved / fused_s / 1e9,
                     "GB/s", baseline=moved / copy_s / 1e9),
            Row("kernel", "kernel time, CutMix per batch, colour maps fused", fused_s * 1e6, "us"),
            Row("kernel", "colour maps of a batch (draws' map, mean greys)", maps_s * 1e6, "us"),
            measured("kernel", "colour step (unfused, float32) + kernel, vs maps + fused kernel", separate_s * 1e6,
                     "us", baseline=(fused_s + maps_s) * 1e6)]


def kernel_section(suite: Suite) -> list[Row]:
    rng = random.Random(0)
    cases = random_cases(rng, suite.plan.random_cases, device=suite.device)
    if suite.plan.full_size_cases:
        cases = full_size_cases(rng, device=suite.device) + cases
    kernel = triton_kernel()
    goals = INTERPRETER_ERROR_GOALS if kernel._is_interpreted() else ERROR_GOALS
    rows = check_correctness(kernel.mix_triton, cases, goals=goals, budget=suite.budget)
    return rows + bandwidth_rows(suite)


# ---------------------------------------------------------------- host


def host_section(suite: Suite) -> list[Row]:
    """The whole step's host side (draw, resolve, pack, copy, launch) against the kernel alone."""
    plan, device = suite.plan, suite.device
    kernel = triton_kernel()
    size, batch = plan.image_size, plan.batch_size
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=generator).to(device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=generator).to(device)
    params = MixSampler(mode="cutmix", seed=0).sample(batch_size=batch, height=size, width=size)
    packed = kernel.pack_rows(resolve_mix(params, batch_size=batch, height=size, width=size)).to(device)
    scale, shift = (t.to(device) for t in normalization_affine(mean=MEAN, std=STD, from_uint8=True))
    out = torch.empty((batch, 3, size, size), dtype=torch.bfloat16, device=device, memory_format=torch.channels_last)
    targets = torch.empty(batch, NUM_CLASSES, device=device)

    def kernel_alone():
        kernel.launch_mix_kernel(images.permute(0, 3, 1, 2), labels, packed=packed, scale=scale, shift=shift,
                                 label_smoothing=SMOOTHING, out_images=out, out_targets=targets)

    # Steps per round: ~3 queue entries each, well inside CUDA's launch queue; 80 in a full run, a
    # multiple of the sampler's LOOKAHEAD, so every round holds as many block draws.
    calls = plan.launches * 2
    sync = functools.partial(synchronize, device)
    _, kernel_s = time_back_to_back(kernel_alone, calls=calls, rounds=plan.rounds, sync=sync)
    rows = [Row("host", "kernel alone, back to back", kernel_s * 1e6, "us"),
            note("host", "host batch", f"{batch}x{size}x{size}x3 uint8 -> bf16 channels_last, sampler.sample + "
                 f"apply_mix(check_labels=False); {calls} steps back to back, median of {plan.rounds} rounds")]
    for label, options in (("CutMix per batch", dict(mode="cutmix")), ("CutMix per sample", dict(mode="cutmix",
                                                                                                 per="elem"))):
        sampler = MixSampler(seed=0, **options)

        def step():
            drawn = sampler.sample(batch_size=batch, height=size, width=size)
            # backend="triton": what "auto" picks on CUDA, forced so that the CPU smoke run takes the same path.
            return apply_mix(images, labels, params=drawn, mean=MEAN, std=STD, num_classes=NUM_CLASSES,
                             label_smoothing=SMOOTHING, out_dtype=torch.bfloat16, check_labels=False,
                             backend="triton")

        enqueue_s, whole_s = time_back_to_back(step, calls=calls, rounds=plan.rounds, sync=sync)
        rows.append(measured("host", f"host side of a step, {label}", enqueue_s * 1e6, "us",
                             goal=("value", "<=", 50), judge=not plan.smoke))
        rows.append(measured("host", f"whole apply_mix step, {label}", whole_s * 1e6, "us", baseline=kernel_s * 1e6))
    return rows


# ---------------------------------------------------------------- shards, loader


def build_photo_shards(root: Path, count: int, *, workers: int = 0) -> Path:
    """Shards of `count` natural 500x375-ish JPEGs (bench_shards.make_photos, in parallel parts)."""
    workers = workers or min(16, os.cpu_count() or 1)
    parts = [count // workers + (i < count % workers) for i in range(workers)]
    with ThreadPoolExecutor(workers) as pool:  # PIL's resize and JPEG encoder release the GIL
        list(pool.map(lambda i: make_photos(root / "parts" / str(i), parts[i], seed=i), range(workers)))
    for path in sorted((root / "parts").glob("*/*/*")):  # parts/<i>/<class>/<file> -> src/<class>/<i>_<file>
        target = root / "src" / path.parent.name / f"{path.parent.parent.name}_{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
    shutil.rmtree(root / "parts")
    code = shards_main(["build", str(root / "src"), str(root / "shards"), "--split", "train", "--quiet",
                        "--shard-size", "64MB", "--workers", str(min(4, workers))])
    if code:
        raise RuntimeError(f"shard build failed ({code})")
    return root / "shards"


def missing_loaders() -> dict[str, str]:
    """{backend: why it cannot run here} for dali and torch."""
    missing = {}
    if importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.dali") is None:
        missing["dali"] = "DALI not installed (../shared/gpu/README.md: source .dx/install.sh)"
    if importlib.util.find_spec("webdataset") is None:
        missing["torch"] = "webdataset not installed (the torch backend reads shards with it)"
    return missing


def loader_section(suite: Suite) -> list[Row]:
    """DALI (mixed decode on CUDA, its CPU backend in the smoke run) against the torch loader, 224 px."""
    plan, device = suite.plan, suite.device
    missing = missing_loaders()
    if missing:
        return [skipped("loader", "DALI mixed vs torch loader", "; ".join(missing.values()))]
    shards = suite.shards()
    # The torch loader first: its workers fork before DALI's threads exist.
    loaders = {backend: started_loader(shards, backend=backend, device=str(device), batch_size=plan.batch_size,
                                       threads=plan.loader_threads) for backend in ("torch", "dali")}
    samples = {backend: [] for backend in loaders}
    for _ in range(plan.loader_epochs):  # round-robin: a slow spell hits both alike
        for backend, (loader, steps) in loaders.items():
            samples[backend].append(time_epoch(loader, steps=steps, batch_size=plan.batch_size, device=str(device)))
    del loaders
    gc.collect()
    rates = {backend: [statistics.median(column) for column in zip(*values)] for backend, values in samples.items()}
    name = "DALI mixed" if device.type == "cuda" else "DALI CPU"
    return [
        note("loader", "loader setup", f"{plan.photos} JPEGs ~500x375, batch {plan.batch_size}, 224 px "
             f"RandomResizedCrop + flip, {plan.loader_threads} DALI threads = torch workers, "
             f"median of {plan.loader_epochs} epochs after a warm-up one"),
        measured("loader", f"{name}, whole epochs", rates["dali"][0], "img/s", baseline=rates["torch"][0],
                 goal=("ratio", ">=", 1.5), judge=not plan.smoke),
        measured("loader", f"{name}, second half of epochs", rates["dali"][1], "img/s", baseline=rates["torch"][1],
                 goal=("ratio", ">=", 1.5), judge=not plan.smoke),
        Row("loader", "torch loader, whole epochs (baseline)", rates["torch"][0], "img/s"),
        header_check_row(suite, shards, decoder="mixed" if device.type == "cuda" else "cpu"),
    ]


def header_check_row(suite: Suite, shards: Path, *, decoder: str) -> Row:
    """What the loader's header check (pipeline/data/dali.py) costs the training decode: the graphs
    of bench_header_check.py with and without it, round-robin passes over the shards."""
    from bench_header_check import compare

    plan = suite.plan
    rate = compare(shards, batch_size=plan.batch_size, threads=plan.loader_threads, decoder=decoder,
                   rounds=plan.loader_epochs, batches=max(1, plan.photos // plan.batch_size))
    gc.collect()  # the two pipelines' threads and buffers
    return measured("loader", f"DALI {decoder} decode + crop with the header check (vs without)", rate["checked"],
                    "img/s", baseline=rate["plain"])


# ---------------------------------------------------------------- train


class TrainingRates:
    """One model, optimizer and compiled graph for every training row, built as pipeline/run.py builds
    them; `measure` times a row and keeps (images/s, peak GiB) under its name."""

    def __init__(self, suite: Suite) -> None:
        from accelerate import Accelerator

        from pipeline.models import create_model
        from pipeline.optim import create_optimizer, fused_sgd_available
        from pipeline.training import MixOptions

        self.suite, self.plan, self.device = suite, suite.plan, suite.device
        self.accelerator = Accelerator(cpu=self.plan.device == "cpu", mixed_precision=self.plan.precision)
        torch.manual_seed(0)
        model = create_model(name=self.plan.model, num_classes=NUM_CLASSES, pretrained=False, channels_last=True,
                             drop_path_rate=0.0)
        optimizer = create_optimizer(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
                                     decay_norm_and_bias=True, fused=fused_sgd_available(self.accelerator.device))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        self.eager, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.compiled = torch.compile(self.eager, dynamic=False, backend=self.plan.compile_backend)
        self.mix = MixOptions(mean=MEAN, std=STD, num_classes=NUM_CLASSES, label_smoothing=SMOOTHING,
                              out_dtype=torch.bfloat16 if self.plan.precision == "bf16" else torch.float32,
                              memory_format=torch.channels_last)
        # The bare step's batch: an apply_mix output (bf16 channels-last), so bare and ours share one compiled graph.
        generator = torch.Generator().manual_seed(2)
        size = self.plan.image_size
        images = torch.randint(0, 256, (self.plan.batch_size, size, size, 3), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 20, (self.plan.batch_size,), generator=generator)
        self.mixed_batch = apply_mix(images.to(self.device), labels.to(self.device), params=MixParams(mode="none"),
                                     mean=MEAN, std=STD, num_classes=NUM_CLASSES, label_smoothing=SMOOTHING,
                                     out_dtype=self.mix.out_dtype)
        self.rates: dict[str, tuple[float, float]] = {}

    def bare_step(self, model: torch.nn.Module) -> Callable:
        """The model's update alone on a batch already mixed on the device: ours minus loader, draw and apply_mix."""

        def step(inputs, targets):
            with self.accelerator.autocast():
                logits = model(inputs)
            loss = soft_target_cross_entropy(logits, targets)
            self.optimizer.zero_grad(set_to_none=True)
            self.accelerator.backward(loss)
            self.optimizer.step()

        return step

    def our_step(self, model: torch.nn.Module, *, color: bool = False) -> Callable:
        """What train_one_epoch does per batch: the sampler's draw, with ``color`` the ImageNet
        recipe's colour augmentation (jitter 0.4, lighting 0.1), then pipeline.training.train_step."""
        from pipeline.data.color import ColorAugment
        from pipeline.training import train_step

        sampler = MixSampler(mode="cutmix", seed=0)
        augment = ColorAugment(jitter=0.4, lighting_std=0.1, seed=0, rank=0, device=self.device) if color else None

        def step(images, labels):
            params = sampler.sample(batch_size=images.shape[0], height=images.shape[1], width=images.shape[2])
            maps = None if augment is None else augment.maps(images, augment.draw(images.shape[0]))
            train_step(model=model, optimizer=self.optimizer, scheduler=self.scheduler, images=images, labels=labels,
                       params=params, accelerator=self.accelerator, mix=self.mix, color=maps)

        return step

    def loader_batches(self, backend: str, *, threads: int):
        """Batches of one backend's train loader, epoch after epoch."""
        loader, _ = create_loader(self.suite.shards(), "train",
                                  augmentation=Augmentation(image_size=self.plan.image_size),
                                  options=LoaderOptions(batch_size=self.plan.batch_size, backend=backend,
                                                        num_threads=threads),
                                  rank=0, world_size=1, device=self.device, seed=0)
        while True:
            yield from loader

    def measure(self, name: str, step: Callable, batches) -> float:
        """Images/s over plan.timed_steps after plan.warmup_steps, and the torch allocator's peak meanwhile."""
        for _ in range(self.plan.warmup_steps):
            step(*next(batches))
        synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        for _ in range(self.plan.timed_steps):
            step(*next(batches))
        synchronize(self.device)
        rate = self.plan.timed_steps * self.plan.batch_size / (time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated(self.device) / GIB if self.device.type == "cuda" else math.nan
        self.rates[name] = (rate, peak)
        if hasattr(batches, "close"):
            batches.close()  # ends this row's loader (DALI pipeline, torch workers) once collected
        gc.collect()
        return rate

    def compile_seconds(self) -> float:
        """The first compiled step: dynamo's trace and the backend's code generation."""
        torch._dynamo.utils.counters.clear()
        start = time.perf_counter()
        self.bare_step(self.compiled)(*self.mixed_batch)
        synchronize(self.device)
        return time.perf_counter() - start


def train_section(suite: Suite) -> list[Row]:
    plan, device = suite.plan, suite.device
    bench = TrainingRates(suite)
    missing = missing_loaders()
    precision = "fp32" if plan.precision == "no" else plan.precision
    rows = [note("train", "training setup", f"{plan.model} {precision} batch {plan.batch_size} {plan.image_size} px "
                 f"channels_last, CutMix, {NUM_CLASSES} classes, fused SGD; {plan.warmup_steps} warm-up + "
                 f"{plan.timed_steps} timed steps per row; DALI {plan.loader_threads} threads")]
    for mode in ("eager", "compiled"):
        try:
            rows += mode_rows(bench, mode, missing=missing)
        except Exception as error:  # a compile that fails still leaves the eager rows
            rows.append(failed("train", error))
    if "ours compiled, dali" in bench.rates:
        rows.append(measured("train", "ours compiled, dali: absolute", bench.rates["ours compiled, dali"][0],
                             "img/s", goal=("value", ">=", 6300), judge=not plan.smoke))
    rows += thread_sweep_rows(bench, missing=missing)
    rows += [Row("train", f"peak memory, {name}", bench.rates[name][1], "GiB") for name in
             ("bare compiled", "ours compiled, dali") if name in bench.rates]
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        rows.append(Row("train", "device memory in use at the end (DALI too)", (total - free) / GIB, "GiB"))
    return rows


def mode_rows(bench: TrainingRates, mode: str, *, missing: dict) -> list[Row]:
    """Bare, then ours on synthetic and DALI batches, eager or compiled; ours as a ratio of bare."""
    plan = bench.plan
    model = bench.eager if mode == "eager" else bench.compiled
    rows = []
    if mode == "compiled":
        rows.append(Row("train", "compile (first compiled step)", bench.compile_seconds(), "s"))
    bare = bench.measure(f"bare {mode}", bench.bare_step(model), itertools.repeat(bench.mixed_batch))
    rows.append(measured("train", f"bare {mode}", bare, "img/s",
                         baseline=bench.rates["bare eager"][0] if mode == "compiled" else None))
    for backend in ("synthetic", "dali"):
        name = f"ours {mode}, {backend}"
        if backend in missing:
            rows.append(skipped("train", name, missing[backend]))
            continue
        rate = bench.measure(name, bench.our_step(model), bench.loader_batches(backend, threads=plan.loader_threads))
        rows.append(measured("train", name, rate, "img/s", baseline=bare,
                             goal=("ratio", ">=", 0.95) if mode == "compiled" else None, judge=not plan.smoke))
    if mode == "compiled":
        # The paper's ImageNet recipe also jitters colours (pipeline/data/color.py: per-image maps
        # applied by the mix kernel): what that costs at the compiled rate.
        name = "ours compiled, dali, paper colour"
        if "dali" in missing:
            rows.append(skipped("train", name, missing["dali"]))
        else:
            rate = bench.measure(name, bench.our_step(model, color=True),
                                 bench.loader_batches("dali", threads=plan.loader_threads))
            rows.append(measured("train", name, rate, "img/s", baseline=bare))
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        rows.append(measured("train", "compiled graphs (bare and ours)", graphs, "graphs", goal=("value", "==", 1)))
    return rows


def thread_sweep_rows(bench: TrainingRates, *, missing: dict) -> list[Row]:
    """--dali-threads: ours compiled on DALI at each thread count, as a ratio of the bare compiled step."""
    rows = []
    for threads in bench.suite.args.dali_threads:
        name = f"ours compiled, dali, {threads} threads"
        why = missing.get("dali") or ("" if "bare compiled" in bench.rates else "no compiled rate")
        if not why and bench.suite.budget.left() < SHARES["tests"] + 20:
            why = f"time budget ({bench.suite.budget.left():.0f} s left, {SHARES['tests']} s kept for the tests)"
        if why:
            rows.append(skipped("train", name, why))
            continue
        rate = bench.measure(name, bench.our_step(bench.compiled), bench.loader_batches("dali", threads=threads))
        rows.append(measured("train", name, rate, "img/s", baseline=bench.rates["bare compiled"][0],
                             goal=("ratio", ">=", 0.95), judge=not bench.plan.smoke))
    return rows


# ---------------------------------------------------------------- tests


def cuda_test_ids(tests: Path) -> list[str]:
    """Node ids of the tests skipped without CUDA: functions decorated with a skipif naming
    `cuda.is_available`, directly or through a module-level marker (needs_cuda = pytest.mark.skipif(...))."""
    ids = []
    for path in sorted(tests.glob("test_*.py")):
        text = path.read_text()
        if "cuda.is_available" not in text:
            continue
        tree = ast.parse(text)
        markers = {target.id for node in tree.body if isinstance(node, ast.Assign)
                   and "cuda.is_available" in ast.get_source_segment(text, node.value)
                   for target in node.targets if isinstance(target, ast.Name)}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and any(
                    "cuda.is_available" in ast.get_source_segment(text, decorator)
                    or (isinstance(decorator, ast.Name) and decorator.id in markers)
                    for decorator in node.decorator_list):
                ids.append(f"tests/{path.name}::{node.name}")
    return ids


# Run whole on a GPU: their CPU tests check the same graphs and counts the CUDA tests then run for real.
WHOLE_TEST_FILES = ("tests/test_loader_gpu_graph.py", "tests/test_train_no_sync.py")
DALI_TEST_FILES = ("tests/test_loader_gpu_graph.py", "tests/test_train_no_sync.py", "tests/test_train_compile.py")


def tests_section(suite: Suite) -> list[Row]:
    from processes import run_process  # tests/processes.py: a timeout kills the whole tree

    plan = suite.plan
    ids = cuda_test_ids(REPO / "tests")
    rows = []
    if not plan.smoke:  # the smoke run collects only the CUDA tests, which all skip on the CPU
        ids = list(WHOLE_TEST_FILES) + [i for i in ids if i.split("::")[0] not in WHOLE_TEST_FILES]
    if "dali" in missing_loaders():
        left_out = [i for i in ids if i.split("::")[0] in DALI_TEST_FILES]
        ids = [i for i in ids if i not in left_out]
        rows.append(skipped("tests", f"{len(left_out)} tests needing DALI", "DALI not installed"))
    timeout = suite.budget.left()
    if timeout < 20:
        return rows + [skipped("tests", "CUDA-gated tests", f"time budget ({timeout:.0f} s left)")]
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    # -v: a line per test as it ends, so a run the time budget cuts short still tells what it did.
    command = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *ids]
    try:
        done = run_process(command, timeout=timeout, cwd=REPO, env=env, capture_output=True, text=True)
        output, timed_out, code = done.stdout + done.stderr, False, done.returncode
    except subprocess.TimeoutExpired as expired:  # run_process killed the whole tree
        output, timed_out, code = _text(expired.stdout) + _text(expired.stderr), True, -1
    suite.test_output = output
    summary = pytest_summary(output, timed_out=timed_out, timeout=timeout)
    status = "pass" if code == 0 and not re.search(r"\d+ (failed|errors?)", summary) else "fail"
    return rows + [Row("tests", "CUDA-gated tests", summary, f"{len(ids)} ids", goal="exit 0, none failed",
                       status=status)]


def pytest_summary(output: str, *, timed_out: bool, timeout: float) -> str:
    """pytest's own last line ("3 passed, 1 skipped in 12.3s"); for a run the time budget ended, the
    outcomes of the tests that finished (pytest -v's lines) and the test it was in."""
    if not timed_out:
        found = re.findall(r"^[= ]*((?:\d+ \w+(?:, )?)+) in ([\d.]+)s", output, flags=re.MULTILINE)
        return f"{found[-1][0]} in {found[-1][1]} s" if found else (output.strip().splitlines() or [""])[-1][:120]
    kinds = re.findall(r"^\S+::\S+ (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b", output, flags=re.MULTILINE)
    counts = ", ".join(f"{kinds.count(kind)} {kind.lower()}" for kind in dict.fromkeys(kinds)) or "none finished"
    started = re.findall(r"^(\S+::\S+) *$", output, flags=re.MULTILINE)  # begun, no outcome yet
    return f"timed out after {timeout:.0f} s (time budget): {counts}" + (f"; cut in {started[-1]}" if started else "")


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


# ---------------------------------------------------------------- table and main


def formatted(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


def table(rows: list[Row]) -> str:
    """The rows (notes left out) as aligned text columns."""
    columns = ["section", "name", "value", "unit", "baseline", "ratio", "goal", "result"]
    cells = [[row.section, row.name, formatted(row.value), row.unit, formatted(row.baseline),
              formatted(row.ratio), row.goal, row.status] for row in rows if row.status != "note"]
    widths = [max(len(line[i]) for line in [columns] + cells) for i in range(len(columns))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in [columns] + cells]
    return "\n".join([lines[0], "-" * len(lines[0])] + lines[1:])


def device_name(plan: Plan) -> str:
    return "cpu smoke" if plan.smoke else torch.cuda.get_device_name()


def versions() -> str:
    import triton

    dali = "not installed"
    if "nvidia.dali" in sys.modules or (importlib.util.find_spec("nvidia") and importlib.util.find_spec("nvidia.dali")):
        import nvidia.dali

        dali = nvidia.dali.__version__
    cuda = torch.version.cuda or "none"
    return (f"python {platform.python_version()}, torch {torch.__version__} (CUDA {cuda}), "
            f"triton {triton.__version__}, DALI {dali}, cudnn.benchmark={torch.backends.cudnn.benchmark}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer cases, steps and images (about half the time)")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/gpu_<device name>.txt")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--time-budget", type=float, default=330.0, help="seconds for the whole run (default 330)")
    parser.add_argument("--threads", type=int, default=8, help="DALI threads / torch loader workers (default 8)")
    parser.add_argument("--dali-threads", default="", help="thread counts for the DALI sweep at the compiled rate, "
                                                           "e.g. 2,4,8 (default: no sweep)")
    parser.add_argument("--cpu-smoke", action="store_true", help="every section's plumbing on the CPU at tiny sizes "
                                                                 "(Triton interpreter, resnet10t at 32 px, aot_eager)")
    args = parser.parse_args(argv)
    args.sections = [name for name in args.sections.split(",") if name]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; choose from {','.join(SECTIONS)}")
    if not args.sections:
        parser.error(f"--sections: none given; choose from {','.join(SECTIONS)}")
    try:
        args.dali_threads = [int(n) for n in args.dali_threads.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--dali-threads: expected whole numbers separated by commas (e.g. 2,4,8), "
                     f"got {args.dali_threads!r}")
    # Checked before the shards are built: a 0 failed only in the loader, minutes into a GPU run.
    for name, values in (("--threads", [args.threads]), ("--dali-threads", args.dali_threads)):
        if any(value < 1 for value in values):
            parser.error(f"{name}: must be at least 1, got {','.join(map(str, values))}")
    if not (args.time_budget > 0 and math.isfinite(args.time_budget)):
        parser.error(f"--time-budget: must be a positive number of seconds, got {args.time_budget}")
    return args


def run_sections(suite: Suite, after: Callable[[list[Row], dict[str, float]], None] = lambda rows, seconds: None
                 ) -> tuple[list[Row], dict[str, float]]:
    """Each chosen section in turn; one that raises gives an error row, and the next one runs;
    ``after(rows, seconds)`` is called with what is done so far after each."""
    functions = {"kernel": kernel_section, "host": host_section, "loader": loader_section, "train": train_section,
                 "tests": tests_section}
    rows, seconds = [], {}
    for name in suite.args.sections:
        started = time.monotonic()
        suite.budget.section(name)
        print(f"== {name} ({suite.budget.left():.0f} s of the budget left)", flush=True)
        try:
            rows += functions[name](suite)
        except Exception as error:
            traceback.print_exc()
            rows.append(failed(name, error))
        seconds[name] = time.monotonic() - started
        after(rows, seconds)
    return rows, seconds


def cuda_missing() -> str | None:
    """Why torch sees no CUDA device (its own error, e.g. a driver older than the wheel's CUDA), or None."""
    if torch.cuda.is_available():
        return None
    try:
        torch.cuda.init()
    except Exception as error:  # torch's reason: no driver, a driver too old, CUDA_VISIBLE_DEVICES=""
        return " ".join(str(error).split())[:300]
    return "torch.cuda.is_available() is False"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cpu_smoke:
        # Before pipeline.mix.triton_kernel is imported: triton.jit picks the interpreter when it decorates.
        os.environ["TRITON_INTERPRET"] = "1"
    sys.path.insert(0, str(REPO / "tests"))  # tests/processes.py runs the CUDA-gated tests
    plan = Plan.for_args(args)
    missing = None if plan.smoke else cuda_missing()
    if missing:
        # A table of "skipped" rows and exit 0 would pass for a GPU run that measured nothing.
        print(f"error: torch sees no CUDA device ({missing}): nothing would be measured; --cpu-smoke runs every "
              "section's plumbing on the CPU", file=sys.stderr)
        return 2
    started = time.monotonic()
    name = device_name(plan)
    command = " ".join(sys.argv[1:] if argv is None else argv)
    out = args.out or RESULTS / f"gpu_{re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')}.txt"
    partial = out.with_name(f"{out.stem}.partial{out.suffix}")
    problem = out_problem(out) or out_problem(partial)
    if problem:  # now, not when the first section's table is written
        print(f"error: --out {out}: {problem}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)

    def results(rows: list[Row], seconds: dict[str, float], test_output: str, *, done: bool) -> str:
        header = [f"# python bench/gpu_suite.py {command}".rstrip(),
                  f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  device: {name}  host: {os.cpu_count()} cores",
                  f"# {versions()}",
                  "# seconds per section: " + ", ".join(f"{key} {value:.0f}" for key, value in seconds.items())
                  + f"; total {time.monotonic() - started:.0f} (budget {args.time_budget:.0f})"]
        if not done:
            left = [section for section in args.sections if section not in seconds]
            header.append(f"# UNFINISHED: written after each section; still to run: {', '.join(left)}")
        if plan.smoke:
            header.append("# CPU SMOKE RUN: tiny sizes, plumbing only; no figure here is a GPU measurement")
        header += [f"# {row.section}, {row.name}: {row.value}" for row in rows if row.status == "note"]
        text = "\n".join(header) + "\n" + table(rows) + "\n"
        tests_failed = any(row.section == "tests" and row.status == "fail" for row in rows)
        tail = "\n".join(test_output.splitlines()[-80:])
        # Unfinished, beside the results file: a run cut short does not replace a complete one;
        # atomic, so that a kill during the write cuts neither short.
        write_text_atomic(out if done else partial,
                          text + (f"\n# pytest output (last 80 lines):\n{tail}\n" if tests_failed else ""))
        if done:
            partial.unlink(missing_ok=True)
        return text

    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as workdir:
        suite = Suite(plan, Budget(args.time_budget), args, Path(workdir))
        # OUT's .partial twin is rewritten after each section: a run cut short (its time on a lent
        # GPU spent) keeps the sections it finished.
        rows, seconds = run_sections(suite, lambda rows, seconds: results(rows, seconds, suite.test_output,
                                                                           done=False))
    text = results(rows, seconds, suite.test_output, done=True)
    print(f"# written to {out}", flush=True)
    print(text, end="", flush=True)
    return 1 if any(row.status == "fail" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
