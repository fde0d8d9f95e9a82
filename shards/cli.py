"""python -m shards (also installed as cutmix-shards): build, merge, verify and inspect shards."""
# The docstring is the --help description: plain text, as argparse prints it as it is.

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from .arguments import CommandParser, path
from .build import LABEL_FIELDS, SPLITS, BuildRequest, build_shards, check_build, default_workers
from .errors import ShardsError, Terminated
from .images import CHECKS
from .manifest import merge_parts, read_manifest
from .outdir import OutputLayout
from .report import empty_classes_warning, inspect_shards, print_build_summary
from .verify import verify_class_lists, verify_shards

# A raw string: its backslashes are the shell's line continuations, printed as they are.
_EXAMPLES = r"""examples:
  # ImageNet-1k train from the original tar of class tars (streamed, never extracted):
  python -m shards build ILSVRC2012_img_train.tar /data/inet --split train --workers 16
  # val from the flat tar, labels from the devkit, class map from the train build:
  python -m shards build ILSVRC2012_img_val.tar /data/inet --split val \
      --labels ILSVRC2012_devkit_t12.tar.gz --classes /data/inet/train.json
  # an ImageFolder tree, pre-resized like FFCV (shorter side 256, quality 90):
  python -m shards build /data/imagenet/train /data/inet256 --split train --resize-short 256
  # val with every ground-truth box in each sample's .json (the LOC csv's boxes, or the XML files):
  python -m shards build ILSVRC2012_img_val.tar /data/inet --split val --labels LOC_val_solution.csv \
      --classes /data/inet/train.json [--boxes ILSVRC2012_bbox_val_v3.tgz]
  # CUB-200-2011 as downloaded (images.txt, bounding_boxes.txt, train_test_split.txt inside):
  python -m shards build CUB_200_2011.tgz /data/cub --split train
  python -m shards build CUB_200_2011.tgz /data/cub --split test --classes /data/cub/train.json
  # CIFAR-100 as downloaded (binary or python version), fine labels; then its test batch:
  python -m shards build cifar-100-python.tar.gz /data/cifar100 --split train
  python -m shards build cifar-100-python.tar.gz /data/cifar100 --split test
  # one of 8 Slurm array tasks, then the combined manifest:
  python -m shards build SRC OUT --split train --num-parts 8 --part-id $SLURM_ARRAY_TASK_ID
  python -m shards merge OUT
  python -m shards verify OUT --decode
"""


def parse_size(text: str) -> int:
    """'512MB', '1.5GB', '64MiB', '1000000' -> bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]?)(i?)[bB]?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 512MB)")
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    try:
        size = float(number) * base ** "_KMGT".index(unit.upper() or "_")
        return int(size)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 512MB)") from None


def _build_parser(sub) -> None:
    build = sub.add_parser(
        "build", help="build shards of one split from SRC into OUT",
        # Broken by hand: the raw formatter, which keeps the examples' lines, does not wrap.
        description="Build class-shuffled WebDataset shards (<split>-NNNNNN.tar), one DALI index per tar (.idx)\n"
        "and the manifest <split>.json from raw ImageNet, CUB-200-2011 or the CIFAR archives.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument("src", type=path, metavar="SRC", help="an ImageFolder tree SRC/<wnid>/<file>; a flat "
                       "folder or tar of val images (with --labels); ILSVRC2012_img_train.tar (a tar of "
                       "class tars); the ImageNet-21k tar or tar.gz of synset tars; an official CIFAR archive "
                       "(cifar-10-binary.tar.gz, cifar-100-python.tar.gz, ...), CUB_200_2011.tgz, or the folder either "
                       "extracts to")
    build.add_argument("out", type=path, metavar="OUT", help="output folder (created if missing)")
    build.add_argument("--split", required=True, choices=SPLITS, help="names the shards and manifest; a CIFAR "
                       "archive's training batches are 'train', its test batch 'test'; CUB-200-2011's images "
                       "marked 1 in train_test_split.txt are 'train', the others 'test'")
    build.add_argument("--label-field", choices=LABEL_FIELDS, help="CIFAR-100: the label that is the class, "
                       "fine (100 classes, the default) or coarse (20); each sample's .json keeps both")
    build.add_argument("--labels", type=path, help="val labels: LOC_val_solution.csv, the devkit folder or "
                       "ILSVRC2012_devkit_t12.tar.gz (ids mapped to wnids through meta.mat)")
    build.add_argument("--boxes", type=path, metavar="XML", help="ImageNet val boxes: the ILSVRC2012_bbox_val_v3 "
                       "folder of PASCAL VOC XML files or its .tgz; each sample's .json gets all boxes of its "
                       "image (default: a LOC_val_solution.csv given as --labels gives its boxes)")
    build.add_argument("--classes", type=path, metavar="TRAIN_MANIFEST", help="use this manifest's class "
                       "map (e.g. OUT/train.json for val); a class of SRC missing from it is an error")
    build.add_argument("--shard-size", type=parse_size, default="512MB",
                       help="target shard size, at least 64kB: bytes, or with kB/MB/GB (or KiB/MiB/GiB) "
                       "(default 512MB)")
    build.add_argument("--workers", type=int, default=default_workers(),
                       help="processes that read and check images (default: the cores available, %(default)s here)")
    build.add_argument("--resize-short", type=int, metavar="PX", help="shrink images whose shorter side is over "
                       "PX pixels to PX (re-encoded at --quality); others keep their bytes when they are an "
                       "upright RGB JPEG (default: no resizing)")
    build.add_argument("--quality", type=int, default=90, metavar="Q",
                       help="JPEG quality of re-encoded images (default 90)")
    build.add_argument("--check", choices=CHECKS, default="header", help="'header' (default): read the header "
                       "and end-of-image marker of each kept JPEG; 'decode': decode every image fully (slower)")
    build.add_argument("--seed", type=int, default=0, help="shuffle seed; the same seed gives byte-identical shards")
    build.add_argument("--num-parts", type=int, default=1, metavar="P", help="split the build into P independent parts")
    build.add_argument("--part-id", type=int, metavar="I", help="which part this process builds (0..P-1); "
                       "needed with --num-parts")
    again = build.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="finish an interrupted build with the same arguments")
    again.add_argument("--overwrite", action="store_true",
                       help="remove a previous build of this split in OUT, then build (the old shards are gone "
                            "even if this build then fails, e.g. on a --strict rejection; to keep them until the "
                            "new build is complete, build into another OUT)")
    build.add_argument("--strict", action="store_true", help="stop with an error at the first rejected input")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.add_argument("--dry-run", action="store_true",
                       help="check the options, SRC's kind, the --labels/--classes/--boxes files and OUT (a previous "
                            "build there needs --resume or --overwrite), print one line and exit without writing: "
                            "0 if a build would start, 2 with one error line if not (slurm/build_shards.sh runs this "
                            "before submitting)")


def make_parser(prog: str = "python -m shards") -> argparse.ArgumentParser:
    """The argument parser of all subcommands."""
    parser = CommandParser(
        prog=prog, description=__doc__, epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _build_parser(sub)
    merge = sub.add_parser("merge", help="combine the part manifests of a split build (--num-parts)")
    merge.add_argument("out", type=path, metavar="OUT")
    merge.add_argument("--split", choices=SPLITS, help="default: every split with part manifests")
    verify = sub.add_parser("verify", help="check sha256, tar structure and index files; exit 1 naming bad shards")
    verify.add_argument("out", type=path, metavar="OUT")
    verify.add_argument("--split", choices=SPLITS, help="default: every split with a manifest")
    verify.add_argument("--decode", action="store_true", help="also decode every image (slow)")
    verify.add_argument("--quiet", action="store_true", help="no progress bars")
    inspect = sub.add_parser("inspect", help="counts, class histogram, sizes and shuffle quality")
    inspect.add_argument("out", type=path, metavar="OUT")
    inspect.add_argument("--split", choices=SPLITS)
    return parser


def _splits(out: Path, split: str | None, pattern: str) -> list[str]:
    """``--split``, or every split with a file of ``pattern`` in OUT (a manifest, or part manifests)."""
    if not out.exists():
        raise ShardsError(f"{out}: no such folder")
    if not out.is_dir():
        hint = " (give the folder holding it)" if out.suffix == ".json" else ""
        raise ShardsError(f"{out}: a file, not a shards folder{hint}")
    if split:
        return [split]
    found = [s for s in SPLITS if list(out.glob(pattern.format(split=s)))]
    if not found:
        wanted = ", ".join(pattern.format(split=s) for s in SPLITS)
        if "part" in pattern:
            merged = [s for s in SPLITS if (out / f"{s}.json").is_file()]
            if merged:  # merge run again after it succeeded (it moves the part manifests aside): said complete
                return merged
            raise ShardsError(f"{out}: no part manifest ({wanted}): merge joins the parts of a build run with "
                              "--num-parts")
        parts = [s for s in SPLITS if list(out.glob(f"{s}.part-*.json"))]
        if parts:  # a build run with --num-parts, not merged yet
            raise ShardsError(f"{out}: no manifest ({wanted}), but part manifests of {', '.join(parts)}: join "
                              f"them first with python -m shards merge {out}")
        unfinished = [s for s in SPLITS if (out / ".build" / s / "plan.json").exists()]
        if unfinished:  # a build that stopped before its manifest (killed, or still running)
            raise ShardsError(f"{out}: no manifest ({wanted}): the build of {', '.join(unfinished)} there has not "
                              "finished (stopped, or still running); the same build command with --resume goes on "
                              "from its finished shards")
        raise ShardsError(f"{out}: no manifest ({wanted}): not a folder `python -m shards build` wrote")
    return found


def _run(args: argparse.Namespace) -> int:
    if args.command == "build":
        if args.part_id is None and args.num_parts > 1:  # every task of an array would build part 0
            raise ShardsError(f"--num-parts {args.num_parts} needs --part-id I (0..{args.num_parts - 1}): the part "
                              "this command builds (in a Slurm array: --part-id $SLURM_ARRAY_TASK_ID)")
        request = BuildRequest(
            src=args.src, out=args.out, split=args.split, labels=args.labels, boxes=args.boxes, classes=args.classes,
            label_field=args.label_field,
            shard_size=args.shard_size, workers=args.workers, resize_short=args.resize_short,
            quality=args.quality, check=args.check, seed=args.seed, num_parts=args.num_parts,
            part_id=args.part_id or 0, resume=args.resume, overwrite=args.overwrite, strict=args.strict,
            progress=not args.quiet,
        )
        if args.dry_run:
            kind = check_build(request)
            part = f" part {request.part_id} of {request.num_parts}" if request.num_parts > 1 else ""
            print(f"ok: SRC {request.src} ({kind}), OUT {request.out}: the {request.split} build{part} can go ahead")
            return 0
        print_build_summary(build_shards(request))
        return 0
    if args.command == "merge":
        for split in _splits(args.out, args.split, "{split}.part-*.json"):
            layout = OutputLayout(args.out, split)
            if layout.manifest.is_file() and not layout.part_manifests():
                # Merged already (a Slurm array submitted again with --resume ends in a merge job too):
                # nothing to do, which is no failure.
                done = read_manifest(layout.manifest)
                print(f"{split}: complete already ({len(done['shards'])} shards, {done['totals']['samples']} "
                      f"samples in {layout.manifest}); no part manifest left to merge")
                continue
            manifest = merge_parts(layout)
            print(f"{split}: merged {len(manifest['shards'])} shards, {manifest['totals']['samples']} samples "
                  f"-> {args.out / f'{split}.json'}")
            if empty_classes_warning(manifest):  # the parts' summaries could not tell
                print(empty_classes_warning(manifest))
        return 0
    if args.command == "verify":
        problems = 0
        splits = _splits(args.out, args.split, "{split}.json")
        for split in splits:
            problems += verify_shards(args.out, split, decode=args.decode, progress=not args.quiet)
        problems += verify_class_lists(args.out, splits)  # against train's, where OUT has a train split
        return 1 if problems else 0
    for split in _splits(args.out, args.split, "{split}.json"):
        inspect_shards(args.out, split)
    return 0


def _prog(argv: list[str] | None) -> str:
    """The command as it was called: the console script's name (cutmix-shards), else the module's.
    Called with ``argv`` (the demo, tests) or as ``python -m shards`` (argv[0] is __main__.py), the
    module's name, which works wherever the package is importable."""
    called = Path(sys.argv[0]).name if sys.argv else ""
    if argv is not None or not called or called.endswith(".py") or called.startswith("-"):
        return "python -m shards"
    return called


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises Terminated while the command runs. By default it killed the build at once,
    without the resume hint Ctrl-C gives, and its workers' semaphores were reported leaked; a
    scheduler sends it (Slurm's time limit, scancel), so it is the common way a build stops.
    Only where SIGTERM has its default action: a caller's own handler (the trainer's, which builds
    the demo's shards through this) stays in charge."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def terminated(signum, frame):
        # A second one (Slurm repeats it) would interrupt the ending of the workers, after which
        # the pool's exit would wait for every queued shard.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user mistakes print one line on stderr and exit 2, never a traceback."""
    args = make_parser(_prog(argv)).parse_args(argv)
    try:
        with _sigterm_interrupts():
            return _run(args)
    except ShardsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        again = "; run the same command with --resume to finish" if args.command == "build" else ""
        print(f"interrupted{again}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
    except BrokenPipeError:
        if args.command not in ("inspect", "verify"):  # the reports people pipe; elsewhere it is a fault
            raise
        # The reader is gone (`inspect OUT | head`): no traceback, and nothing more for stdout,
        # whose flush at exit would fail again (Python's documented way, signal(7)'s exit status).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
