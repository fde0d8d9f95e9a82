"""CPU cost per image of the train augmentation (decode, RandomResizedCrop 0.08-1 / 3/4-4/3 to
224x224, flip), one thread, four ways, and of the resize step alone, three ways:

- pillow + PIL transforms: Pillow decode + torchvision's PIL RandomResizedCrop (timm's and the
  torchvision references' default; the baseline of the ratios)
- torchvision tensor (v2): ``decode_image`` + v2 transforms on uint8 tensors (our torch backend)
- DALI CPU graph: ``decoders.image_random_crop`` (ROI decode) + ``fn.resize`` + flip, all in DALI
- DALI ROI decode + torch resize: the same decode, then ``finish_on_host`` (our DALI CPU backend)

    python bench/bench_augment.py [--images 256] [--repeats 5] | tee -a bench/results/augment_cpu.txt

Images: bench_shards.make_photos (500x375 natural photos, JPEG q90) via bench_loader.build. The methods run
round-robin; each reports its median. DALI runs synchronously on one thread (no prefetching), so
its time is its CPU cost, comparable with the single-threaded Python rows.
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

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_loader import build, pillow_transform  # noqa: E402
from cli_checks import at_least  # noqa: E402
from pipeline.data.augment import Augmentation  # noqa: E402
from pipeline.data import torch_backend  # noqa: E402
from pipeline.data.dali import image_graph  # noqa: E402
from pipeline.data.host_resize import finish_on_host, resize_bilinear  # noqa: E402

SIZE = 224
BATCH = 32


def build_shards(root: Path, count: int) -> tuple[list[bytes], Path]:
    """The JPEGs, and shards of them (``bench_loader.build``) for DALI's reader."""
    shards = build(root, count)
    return [path.read_bytes() for path in sorted((root / "src").rglob("*.JPEG"))], shards


def random_crops(jpegs: list[bytes]) -> list[np.ndarray]:
    """Decoded RandomResizedCrop windows (torchvision's sampling): the inputs of the resize rows."""
    from torchvision.transforms import RandomResizedCrop

    crops = []
    for data in jpegs:
        photo = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        top, left, height, width = RandomResizedCrop.get_params(torch.empty(1, *photo.shape[:2]), (0.08, 1.0),
                                                                (3 / 4, 4 / 3))
        crops.append(photo[top:top + height, left:left + width].copy())
    return crops


def dali_runner(graph, *, count: int, shards: Path | None = None, arrays: list[np.ndarray] | None = None):
    """A function that runs ``graph`` over ``count`` inputs: the JPEGs of ``shards`` (DALI's
    webdataset reader with our .idx files, as the DALI backend reads them) or ``arrays``, in
    batches of 32 on one synchronous DALI thread, then ``finish`` (if any) on each batch."""
    from nvidia.dali import fn, pipeline_def

    graph_outputs, finish = graph

    @pipeline_def(batch_size=BATCH, num_threads=1, device_id=None, seed=0, prefetch_queue_depth=1,
                  exec_async=False, exec_pipelined=False)
    def pipeline():
        if shards is not None:
            tars = sorted(str(p) for p in shards.glob("*.tar"))
            inputs = fn.readers.webdataset(paths=tars, index_paths=[t[:-3] + "idx" for t in tars], ext=["jpg"],
                                           pad_last_batch=True)
        else:
            batches = [arrays[i:i + BATCH] for i in range(0, len(arrays), BATCH)]
            position = iter(range(1 << 30))
            inputs = fn.external_source(source=lambda: batches[next(position) % len(batches)], batch=True,
                                        layout="HWC")
        return graph_outputs(inputs)

    built = pipeline()
    built.build()
    built.run()  # allocations

    def run():
        for _ in range(count // BATCH):
            outputs = built.run()
            if finish is not None:
                finish(outputs)
    return run


def dali_graph():
    from nvidia.dali import fn, types

    def outputs(jpegs):
        crops = fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB, num_attempts=100)
        resized = fn.resize(crops, resize_x=SIZE, resize_y=SIZE)
        return fn.crop_mirror_normalize(resized, crop=(SIZE, SIZE), mirror=fn.random.coin_flip(), dtype=types.UINT8,
                                        output_layout="HWC")
    return outputs, None


def dali_decode_torch_resize_graph():
    augmentation = Augmentation(image_size=SIZE)

    def outputs(jpegs):  # the shipped CPU graph: ROI decode + the coin flip
        return image_graph(jpegs, training=True, augmentation=augmentation, decoder="cpu",
                           hw_decoder_load=0.0, preallocate_hint=(0, 0))

    def finish(batch):
        finish_on_host(batch[0], np.asarray(batch[1].as_tensor()), training=True, augmentation=augmentation)
    return outputs, finish


def dali_resize_graph():
    from nvidia.dali import fn

    return (lambda crops: fn.resize(crops, resize_x=SIZE, resize_y=SIZE)), None


def pillow_augment(jpegs):
    transform = pillow_transform(Augmentation(image_size=SIZE), training=True)

    def run():
        for data in jpegs:
            transform(Image.open(io.BytesIO(data)).convert("RGB"))
    return run


def tensor_augment(jpegs):
    # The torch backend's own per-sample work (decode, transforms, HWC copy), as its workers run it.
    transform = torch_backend._transform(Augmentation(image_size=SIZE), training=True)
    samples = [{"jpg": data, "cls": b"0", "__key__": str(n)} for n, data in enumerate(jpegs)]

    def run():
        for sample in samples:
            torch_backend._prepare(sample, transform, num_classes=1)  # every sample's class is 0
    return run


def pillow_resize(crops):
    images = [Image.fromarray(c) for c in crops]

    def run():
        for image in images:
            image.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return run


def torch_resize(crops):
    tensors = [torch.from_numpy(c) for c in crops]

    def run():
        for tensor in tensors:
            resize_bilinear(tensor, height=SIZE, width=SIZE)
    return run


def measure(methods: dict, *, count: int, repeats: int) -> dict[str, float]:
    times = {name: [] for name in methods}
    for _ in range(repeats):
        for name, run in methods.items():
            started = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - started) / count * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def report(title: str, medians: dict[str, float]) -> None:
    print(title)
    baseline = next(iter(medians.values()))
    for name, median in medians.items():
        print(f"  {name:>34}: {median:6.3f} ms/image  {baseline / median:5.2f}x the first row's speed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="a multiple of 32 (DALI's batch)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    at_least(parser, args, 1, "repeats")
    if args.images < BATCH or args.images % BATCH:
        parser.error(f"--images must be a positive multiple of {BATCH}")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        jpegs, shards = build_shards(Path(root), args.images)
        crops = random_crops(jpegs)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {len(jpegs)} JPEGs "
              f"500x375 q90 -> {SIZE}x{SIZE}, 1 thread, median of {args.repeats}")
        report("train augmentation (decode + RandomResizedCrop + flip):", measure({
            "pillow + PIL transforms": pillow_augment(jpegs),
            "torchvision tensor (v2)": tensor_augment(jpegs),
            "DALI CPU graph": dali_runner(dali_graph(), count=len(jpegs), shards=shards),
            "DALI ROI decode + torch resize": dali_runner(dali_decode_torch_resize_graph(), count=len(jpegs),
                                                          shards=shards),
        }, count=len(jpegs), repeats=args.repeats))
        mean_pixels = np.mean([c.shape[0] * c.shape[1] for c in crops])
        report(f"resize only (decoded crops, mean {mean_pixels / 1000:.0f} kpx):", measure({
            "DALI fn.resize": dali_runner(dali_resize_graph(), count=len(crops), arrays=crops),
            "pillow": pillow_resize(crops), "torch interpolate uint8": torch_resize(crops),
        }, count=len(crops), repeats=args.repeats))

if __name__ == "__main__":
    main()
