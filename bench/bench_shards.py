"""Shard-build throughput on natural ImageNet-size JPEGs, against baselines in the same run.

    python bench/bench_shards.py [--images 4000] [--repeats 3] | tee bench/results/shards_cpu.txt   (results: --images 10000)

Images: random 4:3 crops (about 500x375, quality 90) of the two real photos scikit-learn ships,
written as an ImageFolder of 20 classes. Everything below reads the same files from the page
cache (each is warmed first) and writes to the same disk; times are medians of --repeats.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_checks import at_least, listed  # noqa: E402
from shards.images import ImageOptions, prepare_image  # noqa: E402
from shards.tarwriter import ShardTarWriter  # noqa: E402


STARTUP_IMAGES = 20  # the build timed as the fixed start-up


def make_photos(root: Path, count: int, classes: int = 20, seed: int = 0) -> list[Path]:
    """Natural-image JPEGs of ImageNet's typical size from scikit-learn's sample photos."""
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(p) for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    paths = []
    for n in range(count):
        photo = photos[n % len(photos)]
        scale = rng.uniform(0.45, 1.0)
        width, height = int(photo.width * scale), int(photo.width * scale * 0.75)
        height = min(height, photo.height)
        left, top = rng.integers(0, photo.width - width + 1), rng.integers(0, photo.height - height + 1)
        image = photo.crop((left, top, left + width, top + height)).resize((500, 375), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.3:
            image = image.rotate(90, expand=True)  # some portrait images, as in ImageNet
        folder = root / f"n{n % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"n{n % classes:08d}_{n}.JPEG"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def make_tar_of_class_tars(src: Path, path: Path) -> Path:
    """The ILSVRC2012_img_train.tar layout of the same images: one uncompressed tar per class."""
    for folder in sorted(src.iterdir()):
        run(["tar", "cf", str(path.parent / f"{folder.name}.tar"), "-C", str(folder), "."])
    run(["tar", "cf", str(path), "-C", str(path.parent), *sorted(p.name for p in path.parent.glob("n*.tar"))])
    return path


def timed(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run(command: list[str]) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def shards_build(src: Path, out: Path, *flags: str) -> None:
    shutil.rmtree(out, ignore_errors=True)
    run([sys.executable, "-m", "shards", "build", str(src), str(out), "--split", "train", "--quiet",
         "--shard-size", "64MB", *flags])


def shards_build_parts(src: Path, out: Path, parts: int) -> None:
    """``parts`` part builds running at once on this machine, then merge: shard-level process
    parallelism, with no image copied between processes."""
    shutil.rmtree(out, ignore_errors=True)
    common = ["--split", "train", "--quiet", "--shard-size", "64MB", "--workers", "1", "--num-parts", str(parts)]
    running = [subprocess.Popen([sys.executable, "-m", "shards", "build", str(src), str(out), *common,
                                 "--part-id", str(i)], stdout=subprocess.DEVNULL) for i in range(parts)]
    if any(process.wait() for process in running):
        raise RuntimeError("a part build failed")
    run([sys.executable, "-m", "shards", "merge", str(out)])


def fsync_files(folder: Path) -> None:
    """fsync what one row wrote, and only that: os.sync() would also wait for other processes'
    writes on a shared machine."""
    for path in folder.iterdir():
        with open(path, "rb") as file:
            os.fsync(file.fileno())


def tar_copy(src: Path, out: Path, durable: bool) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    run(["tar", "cf", str(out / "all.tar"), "-C", str(src), "."])
    if durable:
        fsync_files(out)  # our build fsyncs each shard


def webdataset_loop(paths: list[Path], out: Path) -> None:
    """The plain webdataset ShardWriter loop people write by hand (no checks, no index)."""
    import webdataset as wds

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    with wds.ShardWriter(str(out / "train-%06d.tar"), maxsize=64e6, verbose=0) as sink:
        for n, path in enumerate(paths):
            sink.write({"__key__": path.stem, "jpg": path.read_bytes(), "cls": str(n % 20).encode()})
    fsync_files(out)


def writer_only(blobs: list[bytes], out: Path, which: str) -> None:
    """Tar writing alone, bytes already in memory: our writer (with index + sha256) vs webdataset's."""
    import webdataset as wds

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    if which == "ours":
        with ShardTarWriter(out / "a.tar", out / "a.idx") as writer:
            for n, blob in enumerate(blobs):
                writer.add_sample(f"k{n}", [("cls", b"7"), ("jpg", blob)])
    else:
        with wds.TarWriter(str(out / "a.tar"), encoder=False) as writer:
            for n, blob in enumerate(blobs):
                writer.write({"__key__": f"k{n}", "cls": b"7", "jpg": blob})


def check_cost(blobs: list[bytes], check: str) -> None:
    for blob in blobs:
        prepare_image(blob, ImageOptions(check=check))


SECTIONS = ("passthrough", "reencode", "check", "writer")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="comma-separated subset of " + ",".join(SECTIONS))
    args = parser.parse_args(argv)
    at_least(parser, args, 1, "images", "repeats")
    sections = listed(parser, "sections", args.sections, SECTIONS, "section")
    work = Path(tempfile.mkdtemp(prefix="bench_shards_", dir=os.environ.get("BENCH_DIR")))
    try:
        report(work, args.images, args.repeats, set(sections))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(work: Path, count: int, repeats: int, sections: set[str]) -> None:
    import webdataset  # noqa: F401  (imports torch: keep that second out of the timings)

    src = work / "src"
    paths = make_photos(src, count)
    blobs = [p.read_bytes() for p in paths]  # also warms the page cache
    total_mb = sum(map(len, blobs)) / 1e6
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"data: {count} JPEGs, {total_mb:.1f} MB, mean {total_mb * 1e3 / count:.0f} kB, about 500x375 q90")
    if "passthrough" in sections:
        passthrough(work, src, paths, total_mb, repeats)
    if "reencode" in sections:
        reencode(work, src, count, repeats)
    if "check" in sections:
        check(blobs, count, repeats)
    if "writer" in sections:
        writer(work, blobs, total_mb, repeats)


def passthrough(work: Path, src: Path, paths: list[Path], total_mb: float, repeats: int) -> None:
    class_tars = make_tar_of_class_tars(src, work / "train.tar")
    rows = {}
    rows["tar cf (baseline, page cache only)"] = timed(lambda: tar_copy(src, work / "tar", False), repeats)
    rows["tar cf + fsync (durable, as our shards)"] = timed(lambda: tar_copy(src, work / "tar", True), repeats)
    rows["shards build, pass-through, 1 worker"] = timed(lambda: shards_build(src, work / "o", "--workers", "1"), repeats)
    rows["shards build, pass-through, 2 workers"] = timed(lambda: shards_build(src, work / "o", "--workers", "2"), repeats)
    rows["shards build, pass-through, 2 parts at once"] = timed(lambda: shards_build_parts(src, work / "o", 2), repeats)
    rows["shards build from a tar of class tars (streamed)"] = timed(
        lambda: shards_build(class_tars, work / "o", "--workers", "2"), repeats)
    rows["webdataset ShardWriter loop (no checks)"] = timed(lambda: webdataset_loop(paths, work / "w"), repeats)
    tiny = src.parent / "tiny"
    for path in paths[:STARTUP_IMAGES]:
        (tiny / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tiny / path.parent.name / path.name)
    startup = timed(lambda: shards_build(tiny, work / "o", "--workers", "2"), repeats)
    base, durable = rows["tar cf (baseline, page cache only)"], rows["tar cf + fsync (durable, as our shards)"]
    print("\npass-through (MB/s of input; ratios = throughput / tar's, without and with fsync):")
    for name, seconds in rows.items():
        print(f"  {name:48s} {seconds:6.2f} s {total_mb / seconds:7.1f} MB/s  "
              f"ratio {base / seconds:5.2f}  durable ratio {durable / seconds:5.2f}")
    print(startup_line(startup, rows["shards build, pass-through, 2 workers"], total_mb=total_mb, base=base,
                       durable=durable, images=min(STARTUP_IMAGES, len(paths))))


def startup_line(startup: float, build: float, *, total_mb: float, base: float, durable: float,
                 images: int = STARTUP_IMAGES) -> str:
    """The 2-worker build's rate without its fixed start-up (``build`` - ``startup`` seconds), and
    its ratios to tar's ``base`` and ``durable`` seconds; n/a when the build took no longer than
    the start-up alone (a small run), where the difference would give negative figures. ``images``:
    how many the start-up build had (every image of a run of fewer than STARTUP_IMAGES)."""
    steady = build - startup
    line = (f"  fixed start-up (a build of {images} images, 2 workers) {startup:6.2f} s; "
            "without it the 2-worker build runs at ")
    if steady <= 0:
        return line + "n/a (the run is shorter than the start-up; use more --images)"
    return line + f"{total_mb / steady:.0f} MB/s: ratio {base / steady:.2f}, durable ratio {durable / steady:.2f}"



def reencode(work: Path, src: Path, count: int, repeats: int) -> None:
    print("\nre-encode with --resize-short 256 --quality 90 (images/s; ratio = vs 1 worker):")
    one = timed(lambda: shards_build(src, work / "o", "--workers", "1", "--resize-short", "256"), repeats)
    two = timed(lambda: shards_build(src, work / "o", "--workers", "2", "--resize-short", "256"), repeats)
    for name, seconds in (("1 worker", one), ("2 workers", two)):
        print(f"  {name:44s} {seconds:7.2f} s {count / seconds:8.1f} img/s  ratio {one / seconds:5.2f}")



def check(blobs: list[bytes], count: int, repeats: int) -> None:
    print("\nchecking one image (ms per image, one process; ratio = vs header):")
    header = timed(lambda: check_cost(blobs, "header"), repeats) / count * 1e3
    decode = timed(lambda: check_cost(blobs, "decode"), repeats) / count * 1e3
    print(f"  {'--check header (default)':44s} {header:7.3f} ms")
    print(f"  {'--check decode':44s} {decode:7.3f} ms  ratio {decode / header:5.1f}x slower")



def writer(work: Path, blobs: list[bytes], total_mb: float, repeats: int) -> None:
    print("\ntar writer alone, bytes in memory (ratio = webdataset time / ours):")
    ours = timed(lambda: writer_only(blobs, work / "x", "ours"), repeats)
    theirs = timed(lambda: writer_only(blobs, work / "x", "webdataset"), repeats)
    print(f"  {'ours (tar + DALI index + sha256, fsync)':44s} {ours:7.3f} s {total_mb / ours:8.1f} MB/s  ratio {theirs / ours:5.2f}")
    print(f"  {'webdataset TarWriter (tar only)':44s} {theirs:7.3f} s {total_mb / theirs:8.1f} MB/s")


if __name__ == "__main__":
    main()
