"""The evaluation's figures: occlusion and in-between curves, localization accuracy against the
CAM threshold, a grid of CAM overlays with true and predicted boxes, OOD score histograms; and
the same curves of several evaluations on one figure (``compare``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


# The figures of one evaluation (a new evaluation into the same folder removes them first).
PLOT_FILES = ("occlusion.png", "in_between.png", "localization.png", "cam_grid.png", "ood_scores.png")


def write_plots(results: dict, examples: dict, *, out: Path, classes: list[str] | None) -> list[Path]:
    """Every figure the results allow, as PNGs in ``out`` (names from ``PLOT_FILES``); returns their paths."""
    occlusion, in_between, localization, cam_grid, ood_scores = (out / name for name in PLOT_FILES)
    plt = _pyplot()
    written = []
    single = {"": results}
    if "occlusion" in results:
        written.append(_curves(plt, single, occlusion))
    if "in-between" in results:
        written.append(_in_between(plt, single, in_between))
    if "localize" in results:
        written.append(_localization_curves(plt, results["localize"], localization))
        if examples.get("localize"):
            written.append(_cam_grid(plt, examples["localize"], results["localize"], cam_grid, classes))
    if "ood" in results:
        written.append(_ood_histograms(plt, results["ood"], ood_scores))
    return written


COMPARE_PLOTS = ("compare_occlusion.png", "compare_in_between.png")


def write_compare_plots(runs: dict[str, dict], *, out: Path, remove_others: bool = True) -> list[Path]:
    """Occlusion and in-between curves of several evaluations (label -> eval.json) on shared axes.
    ``remove_others`` (``out`` holds an earlier comparison): its plot that this one does not draw is
    removed, whose curves of other runs sat beside the new table."""
    plt = _pyplot()
    written = []
    if any("occlusion" in r for r in runs.values()):
        written.append(_curves(plt, runs, out / COMPARE_PLOTS[0]))
    if any("in-between" in r for r in runs.values()):
        written.append(_in_between(plt, runs, out / COMPARE_PLOTS[1]))
    for name in COMPARE_PLOTS if remove_others else ():
        if out / name not in written:
            (out / name).unlink(missing_ok=True)
    return written


def _save(plt, figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _curves(plt, runs: dict[str, dict], path: Path) -> Path:
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    titles = {"hole_top1_err": "Centre hole (mean colour)", "keep_top1_err": "Only the centre kept"}
    for ax, (key, title) in zip(axes, titles.items()):
        for label, r in runs.items():
            if "occlusion" in r:
                ax.plot(r["occlusion"]["sides"], r["occlusion"][key], marker="o", markersize=3, label=label or None)
        ax.set(title=title, xlabel="square side (pixels)", ylabel="top-1 error (%)")
        ax.grid(alpha=0.3)
        if any(runs):
            ax.legend()
    return _save(plt, figure, path)


def _in_between(plt, runs: dict[str, dict], path: Path) -> Path:
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, r in runs.items():
        if "in-between" not in r:
            continue
        data = r["in-between"]
        for mix, style in (("mixup", "-"), ("cutmix", "--")):
            name = f"{label} {mix}".strip()
            axes[0].plot(data["lambdas"], data[f"{mix}_top1_err"], style, marker="o", markersize=3, label=name)
            axes[1].plot(data["lambdas"], data[f"{mix}_top2_both"], style, marker="o", markersize=3, label=name)
    axes[0].set(title="Top-1 error vs the larger-weight label", xlabel="lambda (weight of image A)",
                ylabel="error (%)")
    axes[1].set(title="Top-2 predictions are exactly the two classes", xlabel="lambda (weight of image A)",
                ylabel="share of pairs (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_ylim(-2, 102)  # percentages: all zero drew an axis down to -0.04
        # Below the axes: with several runs, a legend inside covered the curves.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=8, frameon=False)
    return _save(plt, figure, path)


def _localization_curves(plt, r: dict, path: Path) -> Path:
    figure, ax = plt.subplots(figsize=(7, 5))
    thresholds = r["curve_thresholds"]
    curves = (("box_acc_iou30_curve", "all contours, IoU 0.3"), ("box_acc_iou50_curve", "all contours, IoU 0.5"),
              ("box_acc_iou70_curve", "all contours, IoU 0.7"),
              ("gt_known_loc_curve", "largest contour, IoU 0.5 (GT-known Loc)"),
              ("top1_loc_curve", "largest contour, IoU 0.5, correct class (Top-1 Loc)"))
    # Curves often coincide (one contour per CAM: IoU 0.5 of all contours is GT-known Loc): a style
    # and width each, widest first, so that none hides another.
    for index, (key, label) in enumerate(curves):
        ax.plot(thresholds, r[key], label=label, linestyle=["-", "--", "-.", "-", ":"][index],
                linewidth=[1.5, 3.5, 1.5, 1.5, 2.0][index])
    ax.set_ylim(-2, 102)
    ax.set(title="Box accuracy vs CAM threshold", xlabel="CAM threshold", ylabel="box accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize=8, frameon=False)  # off the curves
    return _save(plt, figure, path)


def _cam_grid(plt, examples: list[dict], r: dict, path: Path, classes: list[str] | None) -> Path:
    from .wsol import best_boxes

    columns = min(4, len(examples))
    rows = -(-len(examples) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    threshold = r["gt_known_threshold"]
    for ax, example in zip(axes.flat, examples):
        ax.imshow(example["image"])
        ax.imshow(example["scoremap"], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        for box in example["boxes"]:
            _rectangle(ax, box, "lime")
        for box in best_boxes(example["scoremap"], threshold):
            _rectangle(ax, box, "red")
        name = (lambda i: classes[i] if classes else str(i))
        ax.set_title(f"true {name(example['label'])}\npred {name(example['predicted'])}", fontsize=8)
    figure.suptitle(f"CAM (threshold {threshold:.2f}): true boxes green, CAM box red", fontsize=10)
    return _save(plt, figure, path)


def _rectangle(ax, box, colour: str) -> None:
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = (float(v) for v in box)
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, edgecolor=colour, linewidth=1.5))


def _ood_histograms(plt, r: dict, path: Path) -> Path:
    histograms = r["score_histograms"]
    edges = np.asarray(histograms["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    figure, ax = plt.subplots(figsize=(6, 4))
    curves = {"in-distribution": histograms["in_distribution"], **histograms["sets"]}
    styles = ["-", "--", "-.", ":"]
    for index, (name, counts) in enumerate(curves.items()):
        counts = np.asarray(counts, dtype=float)
        # Steps, a style each and the in-distribution line widest: sets that score alike stay visible.
        ax.step(centres, counts / max(counts.sum(), 1), where="mid", label=name, linestyle=styles[index % 4],
                linewidth=2.5 if index == 0 else 1.3)
    ax.set(title="Maximum softmax probability", xlabel="score", ylabel="share of the set", yscale="log")
    ax.set_ylim(top=1.2)  # a share is at most 1
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(plt, figure, path)
