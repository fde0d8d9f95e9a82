"""Curves of a run: ``python -m pipeline.plot RUN_DIR`` writes ``RUN_DIR/plots/*.png`` (train loss,
val top-1/top-5 error, lr, img/s) from ``RUN_DIR/metrics.jsonl``."""

from __future__ import annotations

import sys
from pathlib import Path

from shards.arguments import CommandParser

from .logs import read_metrics

# file name -> (title, y label, metrics drawn)
PANELS = {
    "loss.png": ("Training loss (soft-target CE)", "loss", ("train_loss",)),
    "error.png": ("Validation error", "error (%)", ("top1_err", "top5_err")),
    "lr.png": ("Learning rate at the end of each epoch", "lr", ("lr",)),
    "throughput.png": ("Training throughput (all ranks)", "images / s", ("img_per_s",)),
}


def plot_run(run_dir: Path) -> list[Path]:
    """Write one PNG per panel; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    if not records:
        raise FileNotFoundError(f"{Path(run_dir) / 'metrics.jsonl'}: no metrics to plot")
    out = Path(run_dir) / "plots"
    out.mkdir(exist_ok=True)
    written = []
    for name, (title, ylabel, keys) in PANELS.items():
        figure, axes = plt.subplots(figsize=(6, 4))
        for key in keys:
            points = [(r["epoch"], r[key]) for r in records if key in r]
            if points:
                axes.plot(*zip(*points), marker="o", markersize=3, label=key)
        axes.set(title=title, xlabel="epoch", ylabel=ylabel)
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        figure.savefig(out / name, dpi=100)
        plt.close(figure)
        written.append(out / name)
    return written


def main(argv: list[str] | None = None) -> int:
    """CLI entry: plot a run folder."""
    parser = CommandParser(prog="python -m pipeline.plot", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        for path in plot_run(args.run_dir):
            print(path)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
