"""`python -m pipeline.mix preview SHARDS_DIR --mode cutmix --out grid.png`: see what mixing does."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from shards.arguments import CommandParser, nonempty, path
from shards.errors import dependencies_required

# torch-free at the top (PEP 562 in the package, the choices and limits in modules of their own):
# --help and an argument mistake answer before torch is imported; run_preview imports the rest.
from .choices import FEATURE_MODES, PARTNER_CHOICES, PER_CHOICES, SAMPLER_MODES, unused_mode_option
from .preview_limits import DEFAULT_NAME, MAX_BATCH, MAX_SIZE


# What a feature-level mode draws as its input-level mode does (named when it is refused).
BOX_OR_LAMBDA = {"feature_cutmix": "box and lambda", "manifold_mixup": "lambda"}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m pipeline.mix`."""
    parser = CommandParser(prog="python -m pipeline.mix", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    preview = commands.add_parser("preview", help="draw a grid of one mixed batch with its label weights")
    preview.add_argument("shards_dir", type=path, metavar="SHARDS_DIR",
                         help="folder built by `python -m shards build`: <split>.json and its <split>-NNNNNN.tar")
    preview.add_argument("--out", type=nonempty, default=DEFAULT_NAME,
                         help=f"picture to write, in the format its suffix names (none: .png is added; a folder, or a "
                              f"path ending in /: {DEFAULT_NAME} in it); default ./{DEFAULT_NAME}, written over "
                              "by each run")
    preview.add_argument("--split", default="train", help="split of SHARDS_DIR to read (default train)")
    # Every sampler mode is a choice, so that a feature-level one gets check_arguments' reason, not
    # argparse's bare "invalid choice".
    preview.add_argument("--mode", choices=SAMPLER_MODES, default="cutmix",
                         help=f"default cutmix; {' and '.join(FEATURE_MODES)} mix a layer's feature maps, which a "
                              f"picture of images cannot show, and are refused")
    preview.add_argument("--batch-size", type=int, default=8, help=f"images in the grid, 1 to {MAX_BATCH} (default 8)")
    preview.add_argument("--size", type=int, default=160,
                         help=f"side of the centre-cropped square images, 1 to {MAX_SIZE} pixels (default 160)")
    # The sampler's options, as training's mix.* (same defaults, same checks).
    preview.add_argument("--cutmix-alpha", type=float, default=1.0,
                         help="lambda ~ Beta(a, a) for CutMix: cutmix, cutmix_or_mixup (default 1.0)")
    preview.add_argument("--mixup-alpha", type=float, default=1.0,
                         help="lambda ~ Beta(a, a) for Mixup: mixup, cutmix_or_mixup (default 1.0)")
    preview.add_argument("--cutout-size", type=int, default=None,
                         help="cutout box side in pixels, 1 to --size (as training's mix.cutout_size)")
    preview.add_argument("--prob", type=float, default=1.0,
                         help="probability that the batch (a sample, with --per elem) is mixed (default 1.0)")
    preview.add_argument("--switch-prob", type=float, default=0.5,
                         help="cutmix_or_mixup: probability of CutMix (default 0.5)")
    preview.add_argument("--per", choices=PER_CHOICES, default="batch",
                         help="batch: one lambda and box for the batch, the paper (default); elem: one per sample")
    preview.add_argument("--partner", choices=PARTNER_CHOICES, default="permutation",
                         help="who mixes with whom: permutation (the paper, default), flip (timm), roll (torchvision)")
    preview.add_argument("--label-smoothing", type=float, default=0.0,
                         help="applied to each one-hot before mixing (default 0.0)")
    preview.add_argument("--seed", type=int, default=0, help="the draw's seed (default 0)")
    preview.add_argument("--columns", type=int, default=4, help="images per row of the grid (>= 1, default 4)")
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """What makes no picture, checked before any reading (and before torch is imported): a
    ValueError names the argument."""
    if args.mode in FEATURE_MODES:
        # The sampler accepts them, but at a model layer: the box or blend lands on feature maps the
        # preview has no model to compute, and drawn on the images it would be captioned as the
        # input-level mode, passing that off as the feature-level one.
        shown, draw = FEATURE_MODES[args.mode], BOX_OR_LAMBDA[args.mode]
        raise ValueError(f"mode: {args.mode} mixes a layer's feature maps, which a picture of images cannot show; "
                         f"--mode {shown} shows the same {draw} draw on the images")
    for name in ("batch_size", "size", "columns"):
        if getattr(args, name) < 1:
            raise ValueError(f"{name}: must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.seed < 2**32:  # numpy's own refusal named no option
        raise ValueError(f"seed: must be in [0, 2**32), got {args.seed}")
    if args.batch_size > MAX_BATCH:
        raise ValueError(f"batch_size: at most {MAX_BATCH} images in one grid, got {args.batch_size}")
    if args.size > MAX_SIZE:
        # Memory grows with the square of the side: --size 100000 ran out of memory instead of drawing.
        raise ValueError(f"size: at most {MAX_SIZE} pixels (a grid tile is drawn 240 px wide), got {args.size}")
    # A hole wider than the image blanks every tile (the box is clipped to it); training refuses the
    # same (mix.cutout_size at most data.image_size), and a side below 1 cuts nothing.
    if args.cutout_size is not None and not 1 <= args.cutout_size <= args.size:
        raise ValueError(f"cutout_size: must be 1 to --size={args.size} pixels, got {args.cutout_size}")
    # --mixup-alpha with --mode cutmix drew CutMix boxes at alpha 1 and captioned nothing amiss.
    unused = unused_mode_option(args.mode, said=f"--mode {args.mode}", key=lambda name: f"--{name.replace('_', '-')}",
                                cutmix_alpha=args.cutmix_alpha, mixup_alpha=args.mixup_alpha,
                                switch_prob=args.switch_prob, prob=args.prob, per=args.per, partner=args.partner)
    if unused is not None:
        raise ValueError(f"{unused[0]}: {unused[1]}")


def run_preview(args: argparse.Namespace) -> Path:
    """Read a batch, mix it with the reference backend, draw the grid; return the file written."""
    check_arguments(args)
    from .core import apply_mix
    from .preview import IMAGENET_MEAN, IMAGENET_STD, draw_preview_grid, load_preview_batch, output_file
    from .sampler import MixSampler

    out_path = output_file(args.out)  # before the reading: a suffix matplotlib cannot write is refused now
    sampler = MixSampler(
        mode=args.mode, cutmix_alpha=args.cutmix_alpha, mixup_alpha=args.mixup_alpha,
        cutout_size=args.cutout_size, prob=args.prob, switch_prob=args.switch_prob,
        per=args.per, partner=args.partner, seed=args.seed,
    )  # fmt: skip
    images, labels = load_preview_batch(args.shards_dir, split=args.split, batch_size=args.batch_size, size=args.size)
    from shards.manifest import load_manifest

    classes = load_manifest(args.shards_dir, args.split)["classes"]  # read by load_preview_batch already
    params = sampler.sample(batch_size=args.batch_size, height=args.size, width=args.size)
    mixed, targets = apply_mix(
        images, labels, params=params, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        # Every class of the data set, as training has them: label smoothing spreads its share over
        # all of them (over the classes of the batch alone, 2 digits showed 0.95 for training's 0.91).
        num_classes=len(classes), label_smoothing=args.label_smoothing, backend="reference",
    )  # fmt: skip
    modes = [params.mode] * len(labels) if isinstance(params.mode, str) else list(params.mode)
    return draw_preview_grid(
        mixed, targets, modes=modes, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        out_path=out_path, columns=args.columns, class_names=classes,
    )  # fmt: skip


def as_option(message: str, args: argparse.Namespace) -> str:
    """``message`` with its leading argument name (``cutout_size: ...``, as the checks and the
    sampler, which training shares, name it) said as the user typed it: ``--cutout-size: ...``,
    ``SHARDS_DIR: ...``."""
    name, colon, rest = message.partition(": ")
    if not colon or name not in vars(args) or name == "command":
        return message
    return f"{'SHARDS_DIR' if name == 'shards_dir' else '--' + name.replace('_', '-')}: {rest}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; a bad argument or a damaged shard prints one `error:` line on stderr and returns 2
    (a LoaderError is a ValueError); argparse's own refusals (not an int) exit 2 with one line too (CommandParser)."""
    args = build_parser().parse_args(argv)
    try:
        with dependencies_required():  # torch and the rest, imported by run_preview
            out_path = run_preview(args)
    except ValueError as error:
        print(f"error: {as_option(str(error), args)}", file=sys.stderr)
        return 2
    print(f"wrote {out_path}")  # the exact file: output_file decided it
    return 0


if __name__ == "__main__":
    sys.exit(main())
