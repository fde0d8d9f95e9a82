"""Training steps/s with the real data path (shards -> loader -> apply_mix) against the synthetic
backend (random batches already in memory), same model, batch and mixing: what the data path costs.

    python bench/bench_train.py | tee bench/results/train_cpu.txt           # CPU defaults below
    python bench/bench_train.py --device cuda --model resnet50 --image-size 224 --batch-size 256 \\
        --precision bf16 --threads 8                                            # GPU machines

Images: bench_shards.make_photos (500x375 crops of scikit-learn's sample photos, quality 90),
built into shards by the real ``python -m shards build``. Each backend runs --warmup steps first
(loader start-up, page cache, allocator), then --steps timed steps across epochs as needed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_loader import build  # noqa: E402
from cli_checks import at_least, device_present, listed, timm_model  # noqa: E402
from pipeline.data import Augmentation, LoaderOptions, create_loader  # noqa: E402
from pipeline.data.options import BACKENDS  # noqa: E402
from pipeline.mix import MixSampler  # noqa: E402
from pipeline.models import create_model  # noqa: E402
from pipeline.optim import create_optimizer  # noqa: E402
from pipeline.training import MixOptions, train_step  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def steps_per_second(shards: Path, *, backend: str, args, accelerator, model, optimizer) -> float:
    """Timed update rate of one backend (CutMix on, as in training)."""
    loader, steps = create_loader(shards, "train", augmentation=Augmentation(image_size=args.image_size),
                                  options=LoaderOptions(batch_size=args.batch_size, backend=backend,
                                                        num_threads=args.threads),
                                  rank=0, world_size=1, device=accelerator.device, seed=0, num_classes=args.num_classes)
    sampler = MixSampler(mode="cutmix", seed=0, rank=0)
    mix = MixOptions(mean=MEAN, std=STD, num_classes=args.num_classes, label_smoothing=0.0,
                     out_dtype=torch.bfloat16 if args.precision == "bf16" else torch.float32,
                     memory_format=torch.channels_last)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    done, started = 0, None
    while done < args.warmup + args.steps:
        for images, labels in loader:
            if done == args.warmup:
                _sync(accelerator.device)
                started = time.perf_counter()
            params = sampler.sample(batch_size=images.shape[0], height=images.shape[1], width=images.shape[2])
            train_step(model=model, optimizer=optimizer, scheduler=scheduler, images=images, labels=labels,
                       params=params, accelerator=accelerator, mix=mix)
            done += 1
            if done == args.warmup + args.steps:
                break
    _sync(accelerator.device)
    return args.steps / (time.perf_counter() - started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", choices=["no", "bf16"], default="no")
    parser.add_argument("--threads", type=int, default=2, help="DALI threads / torch workers")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--backends", default="synthetic,dali,torch")
    args = parser.parse_args(argv)
    args.num_classes = 20  # make_photos writes 20 class folders
    at_least(parser, args, 1, "image_size", "threads", "steps")
    at_least(parser, args, 2, "batch_size")  # CutMix mixes each image with a partner from its batch
    device_present(parser, args.device)
    timm_model(parser, args.model)
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.images < max(args.num_classes, args.batch_size):
        parser.error(f"--images must be >= {max(args.num_classes, args.batch_size)}, got {args.images}: the model "
                     f"has {args.num_classes} classes (one folder each) and an epoch needs one full batch "
                     f"(--batch-size {args.batch_size})")
    listed(parser, "backends", args.backends, BACKENDS, "backend")
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision=args.precision)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, device={accelerator.device}")
    print(f"model={args.model} image_size={args.image_size} batch={args.batch_size} precision={args.precision} "
          f"channels_last threads/workers={args.threads} CutMix on; {args.steps} timed steps after {args.warmup}")
    with tempfile.TemporaryDirectory() as tmp:
        shards = build(Path(tmp), args.images)
        rates = {}
        for backend in args.backends.split(","):
            torch.manual_seed(0)
            model = create_model(name=args.model, num_classes=args.num_classes, pretrained=False,
                                 channels_last=True, drop_path_rate=0.0)
            optimizer = create_optimizer(model, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4,
                                         decay_norm_and_bias=True)
            model, optimizer = accelerator.prepare(model, optimizer)
            rates[backend] = steps_per_second(shards, backend=backend, args=args, accelerator=accelerator,
                                              model=model, optimizer=optimizer)
            print(f"{backend:>10}: {rates[backend]:6.2f} steps/s  {rates[backend] * args.batch_size:7.1f} img/s")
            accelerator.free_memory()
    for backend, rate in rates.items():
        if backend != "synthetic" and "synthetic" in rates:
            print(f"{backend} / synthetic: {rate / rates['synthetic']:.2f} (1.00 = the data path is free)")


if __name__ == "__main__":
    main()
