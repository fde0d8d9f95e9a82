"""Train-loader throughput on natural ImageNet-size JPEGs: DALI vs the torch backend, in one run,
on the same shards with the same augmentation (RandomResizedCrop 0.08-1, 3/4-4/3, flip), output
size, batch size and thread/worker count.

    python bench/bench_loader.py [--images 2048] [--threads 2] | tee bench/results/loader_cpu.txt
    python bench/bench_loader.py --device cuda   # DALI device="mixed" decode+crop (GPU machines)

Images: bench_shards.make_photos (500x375 crops of scikit-learn's sample photos, quality 90).
Each backend first runs one warm-up epoch (page cache, worker start-up excluded only there);
then --epochs timed epochs: images/s over whole epochs (torch pays worker start-up every epoch)
and over each epoch's second half (steady state), medians over epochs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_shards import make_photos  # noqa: E402
from pipeline.data import create_loader  # noqa: E402
from shards.cli import main as shards_main  # noqa: E402


def build(root: Path, images: int) -> Path:
    make_photos(root / "src", images)
    code = shards_main(["build", str(root / "src"), str(root / "shards"), "--split", "train", "--quiet",
                        "--shard-size", "16MB"])
    if code:
        raise SystemExit(f"shard build failed ({code})")
    return root / "shards"


def images_per_second(shards: Path, *, backend: str, device: str, batch_size: int, threads: int,
                      epochs: int) -> tuple[float, float]:
    """Median (whole-epoch, second-half-of-epoch) images/s. The second is the steady state: it
    leaves out worker start-up, and by mid-epoch the prefetch queues are full at both ends."""
    loader, steps = create_loader(shards, "train", batch_size=batch_size, image_size=224, rank=0, world_size=1,
                                  device=device, seed=0, backend=backend, num_threads=threads)
    whole, steady = [], []
    for epoch in range(epochs + 1):
        started = time.perf_counter()
        middle = None
        for step, (images, labels) in enumerate(loader):
            if step == steps // 2:
                middle = time.perf_counter()
        if device.startswith("cuda"):
            torch.cuda.synchronize()  # the last batch's decode may still be running
        ended = time.perf_counter()
        if epoch:  # epoch 0 warms the page cache and the pipeline
            whole.append(steps * batch_size / (ended - started))
            steady.append((steps - steps // 2 - 1) * batch_size / (ended - middle))
    return statistics.median(whole), statistics.median(steady)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="DALI num_threads = torch num_workers")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up epoch")
    parser.add_argument("--device", default="cpu", help="cpu: DALI CPU backend vs torch; cuda: also DALI mixed")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the main process only collates; workers/DALI threads do the work
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"cuda={'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}")
    print(f"images={args.images} (500x375 JPEG q90) batch={args.batch_size} output=224x224 "
          f"threads/workers={args.threads} timed epochs={args.epochs} (median)")
    with tempfile.TemporaryDirectory() as root:
        shards = build(Path(root), args.images)
        rows = {}
        for backend in ("torch", "dali"):
            rows[backend] = images_per_second(shards, backend=backend, device=args.device, batch_size=args.batch_size,
                                              threads=args.threads, epochs=args.epochs)
            print(f"{backend:>6} on {args.device}: {rows[backend][0]:8.1f} images/s per epoch, "
                  f"{rows[backend][1]:8.1f} images/s in the second half", flush=True)
        for label, column in (("per epoch", 0), ("second half of the epoch (steady state)", 1)):
            ratio = rows["dali"][column] / rows["torch"][column]
            print(f"DALI / torch, {label}: {ratio:.2f}x ({'meets' if ratio >= 1.5 else 'below'} the 1.5x goal)")


if __name__ == "__main__":
    main()
