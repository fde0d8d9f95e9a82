"""Train-loader throughput on natural ImageNet-size JPEGs: DALI vs the torch backend, in one run,
on the same shards with the same augmentation (RandomResizedCrop 0.08-1, 3/4-4/3, flip), output
size, batch size and thread/worker count. A third row, "torch-pillow", is the torch backend with
Pillow decoding and torchvision's PIL transforms (timm's and the torchvision references' default
loader, and our torch backend before it moved to tensor transforms), for context.

    python bench/bench_loader.py [--images 2048] [--threads 2] | tee bench/results/loader_cpu.txt
    python bench/bench_loader.py --device cuda   # DALI device="mixed" decode+crop (GPU machines)

Images: bench_shards.make_photos (500x375 crops of scikit-learn's sample photos, quality 90).
Each backend first runs one warm-up epoch (page cache, the torch workers' start-up: they persist
across epochs); then --epochs timed epochs per backend, round-robin: images/s over whole epochs
and over each epoch's second half (steady state), medians over epochs. The DALI CPU backend decodes the crop window in
DALI and resizes in torch (pipeline/data/host_resize.py; bench/bench_augment.py says why).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_shards import make_photos  # noqa: E402
from cli_checks import at_least, device_present  # noqa: E402
from pipeline.data import Augmentation, LoaderOptions, create_loader, torch_backend  # noqa: E402
from shards.cli import main as shards_main  # noqa: E402


def build(root: Path, images: int) -> Path:
    make_photos(root / "src", images)
    code = shards_main(["build", str(root / "src"), str(root / "shards"), "--split", "train", "--quiet",
                        "--shard-size", "16MB"])
    if code:
        raise SystemExit(f"shard build failed ({code})")
    return root / "shards"


def pillow_transform(augmentation, *, training: bool):
    from torchvision import transforms

    assert training
    size = augmentation.image_size
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=augmentation.random_area, ratio=augmentation.random_aspect_ratio),
        transforms.RandomHorizontalFlip(augmentation.flip_probability), transforms.PILToTensor()])


def pillow_prepare(sample: dict, transform, *, num_classes: int, size_rule=None):
    """torch_backend._prepare's contract (HWC pixels, checked label, the sample's record) with
    PIL decoding (``size_rule``: the cifar kind's size check, which this ImageNet-style bench never needs)."""
    from PIL import Image

    image = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
    if size_rule is not None:
        torch_backend.check_train_size(size_rule, height=image.height, width=image.width,
                                       where=torch_backend.sample_place(sample))
    label = torch_backend.sample_label(sample, num_classes=num_classes)
    return transform(image).permute(1, 2, 0).contiguous(), label, {"source": sample["__key__"]}


def started_loader(shards: Path, *, backend: str, device: str, batch_size: int, threads: int):
    """A loader after one warm-up epoch (page cache, worker start-up: the torch workers persist)."""
    if backend == "torch-pillow":  # the workers fork in the warm-up, so they keep the swapped functions
        with mock.patch.object(torch_backend, "_transform", pillow_transform), \
                mock.patch.object(torch_backend, "_prepare", pillow_prepare):
            return started_loader(shards, backend="torch", device=device, batch_size=batch_size, threads=threads)
    loader, steps = create_loader(shards, "train", augmentation=Augmentation(image_size=224),
                                  options=LoaderOptions(batch_size=batch_size, backend=backend, num_threads=threads),
                                  rank=0, world_size=1, device=device, seed=0)
    time_epoch(loader, steps=steps, batch_size=batch_size, device=device)
    return loader, steps


def time_epoch(loader, *, steps: int, batch_size: int, device: str) -> tuple[float, float]:
    """(whole-epoch, second-half-of-epoch) images/s. The second is the steady state: it leaves
    out the epoch start (shuffle buffer fill, first batches) and by mid-epoch the queues are full."""
    started = time.perf_counter()
    middle = None
    for step, _ in enumerate(loader):
        if step == steps // 2:
            middle = time.perf_counter()
    if device.startswith("cuda"):
        torch.cuda.synchronize()  # the last batch's decode may still be running
    ended = time.perf_counter()
    return steps * batch_size / (ended - started), (steps - steps // 2 - 1) * batch_size / (ended - middle)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="DALI num_threads = torch num_workers")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per backend, after a warm-up one")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cpu: DALI CPU backend vs torch; cuda: DALI mixed (GPU) decode vs torch with pinned "
                             "memory")
    args = parser.parse_args(argv)
    at_least(parser, args, 1, "batch_size", "threads", "epochs")
    device_present(parser, args.device)
    if args.images < 3 * args.batch_size:
        parser.error(f"--images must be >= {3 * args.batch_size} (3 x --batch-size), got {args.images}: each epoch "
                     "is timed whole and over its second half, which needs at least 3 full batches")
    torch.set_num_threads(1)  # the main process only collates; workers/DALI threads do the work
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"cuda={'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}")
    print(f"images={args.images} (500x375 JPEG q90) batch={args.batch_size} output=224x224 "
          f"threads/workers={args.threads} timed epochs={args.epochs} (median)")
    with tempfile.TemporaryDirectory() as root:
        shards = build(Path(root), args.images)
        loaders = {backend: started_loader(shards, backend=backend, device=args.device, batch_size=args.batch_size,
                                           threads=args.threads) for backend in ("torch-pillow", "torch", "dali")}
        # Round-robin epochs: a slow spell of this noisy machine hits every backend alike.
        samples = {backend: [] for backend in loaders}
        for _ in range(args.epochs):
            for backend, (loader, steps) in loaders.items():
                samples[backend].append(time_epoch(loader, steps=steps, batch_size=args.batch_size,
                                                   device=args.device))
        rows = {}
        for backend, values in samples.items():
            rows[backend] = tuple(statistics.median(column) for column in zip(*values))
            print(f"{backend:>12} on {args.device}: {rows[backend][0]:8.1f} images/s per epoch, "
                  f"{rows[backend][1]:8.1f} images/s in the second half", flush=True)
        for label, column in (("per epoch", 0), ("second half of the epoch (steady state)", 1)):
            ratio = rows["dali"][column] / rows["torch"][column]
            print(f"DALI / torch, {label}: {ratio:.2f}x ({'meets' if ratio >= 1.5 else 'below'} the 1.5x goal); "
                  f"DALI / torch-pillow: {rows['dali'][column] / rows['torch-pillow'][column]:.2f}x")


if __name__ == "__main__":
    main()
