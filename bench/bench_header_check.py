"""What the DALI graph's header check costs: the loader reads every image's header
(``fn.peek_image_shape``) and feeds the decoder through a reshape that depends on it, so that a
damaged header stops the pipeline with an error instead of crashing DALI 2.4's CPU decoder
(``pipeline/data/dali.py``). This times the training decode (``decoders.image_random_crop``, as the
loader's ImageNet graph) with and without that check, in one run, on the same shards, round-robin.

    python bench/bench_header_check.py [--images 2048] [--threads 2] | tee bench/results/header_check_cpu.txt
    python bench/bench_header_check.py --device cuda   # the "mixed" decoder (the check stays on the CPU)

Images: bench_shards.make_photos (500x375 crops of scikit-learn's sample photos, quality 90), as
bench_loader.py. Prints images/s of each (median over --rounds) and their ratio.
"""

from __future__ import annotations

import argparse
import glob
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_loader import build  # noqa: E402
from cli_checks import at_least, device_present  # noqa: E402


def pipeline(shards: Path, *, checked: bool, batch_size: int, threads: int, decoder: str):
    from nvidia.dali import fn, pipeline_def, types

    tars = sorted(glob.glob(str(shards / "train-*.tar")))

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=0 if decoder == "mixed" else None, seed=0)
    def graph():
        encoded, labels = fn.readers.webdataset(paths=tars, index_paths=[t[:-4] + ".idx" for t in tars],
                                                ext=["jpg", "cls"], pad_last_batch=True, random_shuffle=True,
                                                initial_fill=1024, name="reader")
        if checked:  # as define_dali_pipeline
            shapes = fn.peek_image_shape(encoded)
            encoded = fn.reshape(encoded, rel_shape=fn.cast(shapes[0:1] * 0 - 1, dtype=types.FLOAT))
        images = fn.decoders.image_random_crop(encoded, device=decoder, output_type=types.RGB, num_attempts=100,
                                               random_area=[0.08, 1.0], random_aspect_ratio=[0.75, 4 / 3])
        return images, labels

    built = graph()
    built.build()
    return built


def time_pass(built, *, batches: int) -> float:
    """Seconds for ``batches`` runs (outputs fetched, as the loader does)."""
    start = time.perf_counter()
    for _ in range(batches):
        built.run()
    return time.perf_counter() - start


def compare(shards: Path, *, batch_size: int, threads: int, decoder: str, rounds: int, batches: int) -> dict:
    """{"plain": images/s, "checked": images/s}: medians of ``rounds`` passes of ``batches`` each,
    the two graphs in turns after a warm-up pass of each (page cache, DALI's buffers)."""
    graphs = {name: pipeline(shards, checked=name == "checked", batch_size=batch_size, threads=threads,
                             decoder=decoder) for name in ("plain", "checked")}
    for built in graphs.values():
        time_pass(built, batches=batches)
    rates = {name: [] for name in graphs}
    for _ in range(rounds):
        for name, built in graphs.items():
            rates[name].append(batches * batch_size / time_pass(built, batches=batches))
    return {name: statistics.median(values) for name, values in rates.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2048, help="photos in the shards (default 2048)")
    parser.add_argument("--batch-size", type=int, default=64, help="default 64")
    parser.add_argument("--threads", type=int, default=2, help="DALI threads (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes per graph, alternating (default 5)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cpu: DALI's CPU decoder; "
                        "cuda: its mixed (nvJPEG) decoder on GPU 0")
    args = parser.parse_args(argv)
    at_least(parser, args, 1, "images", "batch_size", "threads", "rounds")
    device_present(parser, args.device)
    if args.images < args.batch_size:
        parser.error(f"--images must be >= --batch-size ({args.batch_size}), got {args.images}: a pass times whole "
                     "batches")
    decoder = "mixed" if args.device == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        shards = build(Path(tmp), args.images)
        median = compare(shards, batch_size=args.batch_size, threads=args.threads, decoder=decoder,
                         rounds=args.rounds, batches=args.images // args.batch_size)
    print(f"# {platform.processor() or platform.machine()}, {args.device}, decoder {decoder}, {args.images} photos, "
          f"batch {args.batch_size}, {args.threads} DALI threads, median of {args.rounds} passes")
    print(f"{'graph':<34} {'images/s':>9}")
    print(f"{'decode + crop (no header check)':<34} {median['plain']:>9.0f}")
    print(f"{'header check + decode + crop':<34} {median['checked']:>9.0f}")
    print(f"ratio checked / plain: {median['checked'] / median['plain']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
