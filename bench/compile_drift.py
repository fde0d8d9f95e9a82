"""How far a compiled Feature CutMix run's losses drift from an eager run's, against how far an
eager run drifts when every weight is scaled by 1 + 1e-6 noise: the yardstick for "the compiled
run departs from eager at step N" (a fourth user walkthrough's report).

Three runs of the same training steps from the same weights, batches and draws (resnet10t, SGD
with momentum, CutMix on the output of layer1, layer2, layer3 in turn, the box on each layer's
grid): eager, eager from the perturbed weights, and ``torch.compile`` (inductor). A step of the
compiled model from equal weights matches eager to rounding (tests/test_mix_feature.py); over many
steps small-batch training amplifies any rounding difference, so the compiled run's drift is a
finding only where it grows faster than the perturbed one's.

    python bench/compile_drift.py              # appends to bench/results/compile_drift_cpu.txt
    python bench/compile_drift.py --steps 12 --batch-size 16
    python bench/compile_drift.py --layers input  # image-level CutMix: the box pasted on the images
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import torch
from bench_mix import cpu_name, publish  # bench/ is on the path when run as a script
from cli_checks import timm_model, writable_out

import pipeline.models  # noqa: F401 - registers our models with timm
from pipeline.mix.feature import FeatureMixer, layer_shapes
from pipeline.mix.params import MixParams, resolve_mix

RUNS = ("eager", "perturbed", "compiled")
INPUT = "input"  # as mix.feature_layers: the image itself, mixed before the model (image-level CutMix)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet10t", help="a timm model with layer1..layer3 (default resnet10t)")
    parser.add_argument("--steps", type=int, default=8, help="training steps per run (default 8)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (default 8)")
    parser.add_argument("--image-size", type=int, default=32, help="square image side in pixels (default 32)")
    parser.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default 0.1)")
    parser.add_argument("--layers", default="layer1,layer2,layer3",
                        help="where CutMix pastes, one per step in turn: model layers, or input for the images "
                             "(default layer1,layer2,layer3)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "compile_drift_cpu.txt",
                        help="results file to append to (default bench/results/compile_drift_cpu.txt)")
    args = parser.parse_args()
    for name in ("steps", "batch_size", "image_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.batch_size < 2:
        parser.error("--batch-size must be at least 2 (CutMix needs a partner)")
    if not args.lr > 0:
        parser.error("--lr must be positive")
    timm_model(parser, args.model)
    writable_out(parser, args.out)
    args.layers = tuple(name.strip() for name in args.layers.split(",") if name.strip())
    if not args.layers:
        parser.error("--layers must name at least one layer (or input)")
    return args


def train(kind: str, *, initial: dict, steps: list, args: argparse.Namespace) -> list[float]:
    """The losses of one run: `kind` is eager, perturbed (eager from noisy weights) or compiled."""
    import timm

    model = timm.create_model(args.model, num_classes=10)
    model.load_state_dict(initial)
    if kind == "perturbed":
        noise = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(1 + 1e-6 * torch.randn(parameter.shape, generator=noise))
    model.train()
    hooked = [name for name in args.layers if name != INPUT]
    mixer = FeatureMixer(model, hooked) if hooked else None
    forward = torch.compile(model, dynamic=False) if kind == "compiled" else model
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    losses = []
    for images, labels, layer, resolved in steps:
        if layer == INPUT:  # the images were mixed when the steps were drawn
            logits = forward(images)
        else:
            with mixer.mixing(layer, resolved):
                logits = forward(images)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    if mixer is not None:
        mixer.remove()
    return losses


def main() -> None:
    args = parse_args()
    import timm

    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=10)
    hooked = [name for name in args.layers if name != INPUT]
    missing = [name for name in hooked if name not in dict(model.named_modules())]
    if missing:
        sys.exit(f"error: --model {args.model} has no {', '.join(missing)} (a ResNet-style timm model has)")
    shapes = {**layer_shapes(model, hooked, image_size=args.image_size), INPUT: (args.image_size,) * 2}
    draws = torch.Generator().manual_seed(1)
    steps = []
    for step in range(args.steps):
        layer = args.layers[step % len(args.layers)]
        height, width = shapes[layer]
        box = (0, max(1, height // 2), min(1, width - 1), width)
        partner = torch.randperm(args.batch_size, generator=draws)
        images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=draws)
        labels = torch.randint(0, 10, (args.batch_size,), generator=draws)
        if layer == INPUT:  # image-level CutMix: the partners' box pasted once, the same for every run
            images[:, :, box[0]:box[1], box[2]:box[3]] = images[partner][:, :, box[0]:box[1], box[2]:box[3]]
            steps.append((images, labels, layer, None))
            continue
        params = MixParams(mode="cutmix", partner=partner, layer=layer, boxes=box)
        steps.append((images, labels, layer, resolve_mix(params, batch_size=args.batch_size, height=height,
                                                         width=width)))
    initial = copy.deepcopy(model.state_dict())
    losses = {kind: train(kind, initial=initial, steps=steps, args=args) for kind in RUNS}
    lines = [f"# compile_drift: {cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}, {args.model} "
             f"{args.image_size} px, batch {args.batch_size}, SGD lr {args.lr}, CutMix on {'/'.join(args.layers)}"
             f"{' in turn' if len(args.layers) > 1 else ''}",
             f"{'step':>4}  {'eager loss':>12}  {'perturbed: rel. diff':>20}  {'compiled: rel. diff':>19}"]
    for step in range(args.steps):
        eager = losses["eager"][step]
        drift = {kind: abs(losses[kind][step] - eager) / abs(eager) for kind in ("perturbed", "compiled")}
        lines.append(f"{step + 1:>4}  {eager:>12.7f}  {drift['perturbed']:>20.1e}  {drift['compiled']:>19.1e}")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
