"""Curves of a run: python -m pipeline.plot RUN_DIR (or RUN_DIR/metrics.jsonl) writes
RUN_DIR/plots/*.png (train loss, val top-1/top-5 error, lr, img/s) from RUN_DIR/metrics.jsonl;
--out DIR writes them into DIR instead (created if missing)."""

from __future__ import annotations

import sys
from pathlib import Path

from shards.arguments import CommandParser, path
from shards.errors import dependencies_required

from .errors import TrainError
from .logs import METRICS_FILE, read_metrics

PLOTS_FOLDER = "plots"  # RUN/plots, where the curves go without --out
# file name -> (title, y label, metrics drawn)
PANELS = {
    "loss.png": ("Training loss (soft-target CE)", "loss", ("train_loss",)),
    "error.png": ("{split} error", "error (%)", ("top1_err", "top5_err")),  # the split the run evaluated
    "lr.png": ("Learning rate of each epoch's last update", "lr", ("lr",)),
    "throughput.png": ("Training throughput (all ranks)", "images / s", ("img_per_s",)),
}


def find_run_dir(path: Path) -> Path:
    """The run folder that ``path`` names: the folder itself or the folder of its metrics file; a
    ValueError naming ``path`` otherwise."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    if path.is_dir():
        return path
    # read_metrics reads the run folder's file by its name: another name is not a run's metrics.
    if path.name != METRICS_FILE:
        raise ValueError(f"{path}: not a run folder or its {METRICS_FILE}")
    return path.parent


def load_records(run_dir: Path) -> list[dict]:
    """Every epoch's record of the run; a ValueError naming the file when there is none to plot (a
    line that is not a record is read_metrics' TrainError)."""
    metrics = Path(run_dir) / METRICS_FILE
    if not metrics.is_file():
        raise ValueError(f"{run_dir}: no {METRICS_FILE} (not a run folder, or no epoch has finished yet)")
    try:
        records = read_metrics(run_dir, remedy="mend or remove that line, and the others are plotted")
    except UnicodeDecodeError:  # read as text before any line is looked at
        raise ValueError(f"{metrics}: not a text file (one JSON record per line is expected)") from None
    if not records:
        raise ValueError(f"{metrics}: no metrics to plot")
    return records


def panel_points(records: list[dict], key: str, *, metrics: Path) -> list[tuple[int, float]]:
    """(epoch, value) of ``key`` in the records that have it (an epoch without evaluation has no
    error keys); a value that is not a number is a ValueError naming the file (matplotlib drew a
    string as a category axis without a word)."""
    points = []
    for record in records:
        if key in record:
            value = record[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{metrics}: epoch {record['epoch']}'s {key} is {value!r}, not a number; mend or "
                                 "remove that line, and the others are plotted")
            points.append((record["epoch"], value))
    return points


def eval_split_of(run_dir: Path) -> str:
    """How the error panel names what the run evaluated on: "Validation", or "Test" for a run of
    data.eval_split=test (the CIFAR recipes), from the run's config.yaml."""
    import yaml

    try:
        split = (yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {})["data"]["eval_split"]
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        split = "val"  # a metrics file alone, or a config without it: the default split
    return {"val": "Validation", "test": "Test", "train": "Training-set"}.get(str(split), str(split))


def plot_run(run_dir: Path, *, out_dir: Path | None = None) -> list[Path]:
    """Write one PNG per panel into ``out_dir`` (default ``run_dir/plots``, created if missing);
    returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    records = load_records(run_dir)
    split = eval_split_of(run_dir)
    out = Path(run_dir) / PLOTS_FOLDER if out_dir is None else Path(out_dir)
    # A shards folder (as the evaluation refuses): PNGs among the tars, where a build's
    # --overwrite removes what it finds.
    if out.is_dir() and (any(out.glob("*-000000.tar")) or any(out.glob(".build"))):
        raise ValueError(f"--out {out}: a shards folder; the plots need a folder of their own (default "
                         f"{Path(run_dir) / PLOTS_FOLDER})")
    from .checkpoint import is_run_folder

    # Another run's folder (or its plots/): its PNGs, which name no run, then showed this run's
    # curves without a word (walkthrough); the nearest run folder owns --out, as for evaluate. A
    # metrics file makes one too: RUN/replaced-N keeps its metrics and plots without checkpoints
    # where the run it set aside had none (its own default --out was refused; review).
    target = out.resolve()
    owner = next((place for place in (target, *target.parents)
                  if is_run_folder(place) or (place / METRICS_FILE).is_file()), None)
    if owner is not None and owner != Path(run_dir).resolve():
        raise ValueError(f"--out {out}: {'' if owner == target else 'inside '}another run's folder, {owner} (its "
                         f"plots would then show this run's curves); the plots need a folder of their own (default "
                         f"{Path(run_dir) / PLOTS_FOLDER})")
    metrics = Path(run_dir) / METRICS_FILE
    drawn = {name: {key: panel_points(records, key, metrics=metrics) for key in keys}
             for name, (_, _, keys) in PANELS.items()}
    empty = [name for name, curves in drawn.items() if not any(curves.values())]
    if len(empty) == len(PANELS):
        raise ValueError(f"{metrics}: no metrics to plot (no record has any of "
                         f"{', '.join(key for _, _, keys in PANELS.values() for key in keys)})")
    written = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, (title, ylabel, keys) in PANELS.items():
            if name in empty:  # an empty frame with an empty legend (matplotlib warned) said nothing
                why = (" (no epoch was evaluated: run.eval_every, or loader.backend=synthetic)"
                       if "top1_err" in keys else "")
                # An earlier drawing of it there would pass for this one's.
                stale = (out / name).is_file()
                (out / name).unlink(missing_ok=True)
                print(f"note: {name} not drawn: no record of {metrics} has {' or '.join(keys)}{why}"
                      + (f"; the earlier {out / name} is removed" if stale else ""), file=sys.stderr)
                continue
            figure, axes = plt.subplots(figsize=(6, 4))
            for key, points in drawn[name].items():
                if points:
                    axes.plot(*zip(*points), marker="o", markersize=3, label=key)
            axes.set(title=title.format(split=split), xlabel="epoch", ylabel=ylabel)
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs: no 1.25
            axes.grid(alpha=0.3)
            axes.legend()
            figure.tight_layout()
            figure.savefig(out / name, dpi=100)
            plt.close(figure)
            written.append(out / name)
    except OSError as error:  # --out is a file or under one, no permission, a full disk
        raise ValueError(f"--out: cannot write into {out} ({' '.join(str(error).split())})") from None
    return written


def main(argv: list[str] | None = None) -> int:
    """CLI entry: plot a run folder (or its metrics file)."""
    parser = CommandParser(prog="python -m pipeline.plot", description=__doc__)
    parser.add_argument("run", type=path, metavar=f"RUN_DIR|{METRICS_FILE}",
                        help=f"a run folder of pipeline/train.py, or its {METRICS_FILE}")
    parser.add_argument("--out", type=path, default=None, metavar="DIR",
                        help="folder for the PNGs, created if missing (default: RUN_DIR/plots)")
    args = parser.parse_args(argv)
    try:
        with dependencies_required():  # yaml and matplotlib, imported where they are used
            for written in plot_run(find_run_dir(args.run), out_dir=args.out):
                print(written)
    except (ValueError, TrainError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
