"""``eval.json`` (every number) and ``eval.md`` (the tables people read) of one evaluation, and the
tables of ``compare`` (several evaluations side by side, in the paper's layout)."""

from __future__ import annotations

import json
from pathlib import Path

from shards.durable import write_text_atomic

REPORT_FILES = ("eval.json", "eval.md")


def write_reports(results: dict, *, out: Path) -> tuple[Path, Path]:
    """Write ``out/eval.json`` and ``out/eval.md``, each atomically (a kill leaves the previous
    version whole); returns their paths. ``settings.finished`` says whether every task is in."""
    json_path, md_path = (Path(out) / name for name in REPORT_FILES)
    write_text_atomic(json_path, json.dumps(results, indent=1))
    write_text_atomic(md_path, markdown(results))
    return json_path, md_path


def unfinished(results: dict) -> str | None:
    """``"done: classify; not run: fgsm, ood"`` for an evaluation that stopped before its end
    (None when finished, and for eval.json files of versions that did not say)."""
    settings = results["settings"]
    if settings.get("finished", True):
        return None
    done = [task for task in settings["tasks"] if task in results]
    missing = [task for task in settings["tasks"] if task not in results]
    return f"done: {', '.join(done) or 'none'}; not run: {', '.join(missing)}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    def cell(value):
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def _checkpoint_words(checkpoint: dict | None) -> str:
    """`` (the checkpoint after epoch 2)`` for a checkpoint's evaluation ('' otherwise)."""
    if not checkpoint:
        return ""
    if checkpoint["step_in_epoch"]:
        return f" (the checkpoint at step {checkpoint['step_in_epoch']} of epoch {checkpoint['epoch'] + 1})"
    return f" (the checkpoint after epoch {checkpoint['epoch']})"


def markdown(results: dict) -> str:
    """The tables of one evaluation (percentages; errors are lower-is-better, the rest higher)."""
    settings = results["settings"]
    checkpoint = _checkpoint_words(settings.get("checkpoint"))
    summary = (f"Weights `{settings['weights']}`{checkpoint}, shards `{settings['shards']}` "
               f"split `{settings['split']}`, "
               f"{settings['world_size']} process(es) on {settings['device']}, precision {settings['precision']}, "
               f"image size {settings['image_size']}.")
    lines = [f"# Evaluation of {settings['model']}", "", summary, ""]
    if unfinished(results):
        lines += [f"**Unfinished**: the evaluation stopped before its end ({unfinished(results)}).", ""]
    for task, section in (("classify", _classify), ("localize", _localize), ("occlusion", _occlusion),
                          ("in-between", _in_between), ("fgsm", _fgsm), ("ood", _ood)):
        if task in results:
            lines += section(results[task]) + [""]
    return "\n".join(lines)


def _classify(r: dict) -> list[str]:
    return ["## Classification", ""] + _table(["top-1 err", "top-5 err", "samples"],
                                              [[r["top1_err"], r["top5_err"], r["samples"]]])


def _localize(r: dict) -> list[str]:
    header = ["Top-1 Loc", "GT-known Loc", "MaxBoxAccV2", "IoU 0.3", "IoU 0.5", "IoU 0.7", "CAM threshold",
              "samples with a box"]
    row = [r["top1_loc"], r["gt_known_loc"], r["max_box_acc_v2"], r["max_box_acc_v2_iou30"],
           r["max_box_acc_v2_iou50"], r["max_box_acc_v2_iou70"], float(r["gt_known_threshold"]),
           r["samples_with_box"]]
    note = (f"{r['boxes_dropped_outside_crop']} box(es) fell outside the centre crop and were dropped; "
            f"{r['samples'] - r['samples_with_box']} sample(s) had no box left.")
    return ["## Localization (CAM, accuracies in %)", ""] + _table(header, [row]) + ["", note]


def _occlusion(r: dict) -> list[str]:
    rows = [[side, hole, keep] for side, hole, keep in zip(r["sides"], r["hole_top1_err"], r["keep_top1_err"])]
    return (["## Occlusion (top-1 err %)", ""]
            + _table(["side (px)", "centre hole (mean colour)", "only the centre kept"], rows))


def _in_between(r: dict) -> list[str]:
    # CutMix's own lambda beside it: its boxes are whole pixels, so at 32 px the 0.50 row's box
    # leaves A 0.483 of the image and is scored against B's label, which the row's name hid.
    rows = [[lam, a, b, f"{exact:.3f}", c, d] for lam, a, b, exact, c, d in zip(
        r["lambdas"], r["mixup_top1_err"], r["mixup_top2_both"], r["cutmix_mean_lambda"], r["cutmix_top1_err"],
        r["cutmix_top2_both"])]
    header = ["lambda", "Mixup top-1 err", "Mixup top-2 = both", "CutMix's exact lambda", "CutMix top-1 err",
              "CutMix top-2 = both"]
    return ([f"## In-between-class samples ({r['pairs']} pairs, %)", ""] + _table(header, rows)
            + ["", "Top-1 error against the label of the larger weight (A's where lambda >= 0.5). CutMix's boxes are "
                   "whole pixels: its exact lambda (the mean over batches) decides."])


def _fgsm(r: dict) -> list[str]:
    return ["## FGSM", ""] + _table(["epsilon", "clean top-1 err", "FGSM top-1 err", "samples"],
                                    [[f"{r['epsilon_255']:.3g}/255", r["clean_top1_err"], r["fgsm_top1_err"],
                                      r["samples"]]])


def _ood(r: dict) -> list[str]:
    rows = [[name, m["tnr_at_tpr95"], m["auroc"], m["detection_accuracy"], m["auin"], m["auout"], m["samples"]]
            for name, m in r["sets"].items()]
    header = ["OOD set", "TNR at TPR 95%", "AUROC", "detection acc", "AUPR in", "AUPR out", "samples"]
    notes = [f"Note: {name}: {note}." for name, note in r.get("notes", {}).items()]
    return [f"## Out-of-distribution detection ({r['score']}, {r['in_distribution_samples']} in-distribution)", ""] \
        + _table(header, rows) + ([""] + notes if notes else [])


def same_weights(runs: dict) -> list[list[str]]:
    """The groups (two or more labels, in row order) of evaluations of one model: rows sharing the
    digest of their tensors (a checkpoint and the run's export of it are different files of one
    model) or of their weights file (an older eval.json recorded that alone), joined transitively."""
    labels = list(runs)
    group = {label: label for label in labels}

    def root(label: str) -> str:
        while group[label] != label:
            label = group[label]
        return label

    first: dict[tuple[str, str], str] = {}
    for label, r in runs.items():
        settings = r.get("settings", {})
        for key in ("tensors_sha256", "weights_sha256"):
            if settings.get(key):
                other = first.setdefault((key, settings[key]), label)
                group[root(label)] = root(other)
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(root(label), []).append(label)
    return [members for members in groups.values() if len(members) > 1]


def compare_markdown(runs: dict[str, dict], *, warnings: list[str] = ()) -> str:
    """One table per claim, a row per evaluation (``runs``: label -> eval.json contents), then the
    given ``warnings`` and those of the settings that differ."""
    lines = ["# Comparison", ""]
    rows = []
    for label, r in runs.items():
        row = [label]
        row += [r["classify"]["top1_err"], r["classify"]["top5_err"]] if "classify" in r else ["-", "-"]
        row += ([r["localize"]["top1_loc"], r["localize"]["gt_known_loc"], r["localize"]["max_box_acc_v2"]]
                if "localize" in r else ["-"] * 3)
        row += [r["fgsm"]["fgsm_top1_err"]] if "fgsm" in r else ["-"]
        if "ood" in r:
            sets = r["ood"]["sets"].values()
            row += [sum(m[k] for m in sets) / len(sets) for k in ("tnr_at_tpr95", "auroc", "detection_accuracy")]
        else:
            row += ["-"] * 3
        rows.append(row)
    header = ["run", "top-1 err", "top-5 err", "Top-1 Loc", "GT-known Loc", "MaxBoxAccV2", "FGSM top-1 err",
              "OOD TNR@TPR95 (mean)", "OOD AUROC (mean)", "OOD detection acc (mean)"]
    lines += _table(header, rows)
    legend = ("Errors: lower is better; Loc, MaxBoxAccV2 and the OOD metrics: higher is better. OOD columns "
              "average over the OOD sets of each run, as the paper's table averages over its seven.")
    lines += ["", legend, ""]
    lines += [line for warning in warnings for line in (f"**Warning**: {warning}.", "")]
    for labels in same_weights(runs):
        lines += [f"**Note**: {' and '.join(labels)} are evaluations of the same weights.", ""]
    for key, what in (("split", "splits"), ("shards", "shards"), ("image_size", "image sizes"),
                      ("precision", "precisions")):
        values = {label: r.get("settings", {}).get(key) for label, r in runs.items()}
        # Shards by the folder they name: an older eval.json recorded the path as typed (relative).
        named = {named_path(v) if key == "shards" and isinstance(v, str) else str(v) for v in values.values()}
        if len(named) > 1:
            lines += [f"**Warning**: the evaluations are of different {what} "
                      f"({', '.join(f'{label}: {value}' for label, value in values.items())}): their numbers do not "
                      "compare directly.", ""]
    # Settings of one task: its numbers (and curves) side by side only mean something at the same ones.
    for task, what, value_of in (
            ("fgsm", "FGSM epsilons", lambda r: f"{r['fgsm']['epsilon_255']:.3g}/255"),
            ("in-between", "in-between pairings (pairs are made inside each batch of each process: batch size x "
                           "processes)", lambda r: f"{r['settings'].get('batch_size')}x"
                                                   f"{r['settings'].get('world_size')}")):
        values = {label: value_of(r) for label, r in runs.items() if task in r}
        if len(set(values.values())) > 1:
            lines += [f"**Warning**: the evaluations have different {what} "
                      f"({', '.join(f'{label}: {value}' for label, value in values.items())}): their {task} numbers "
                      "do not compare directly.", ""]
    ood_sets = sorted({name for r in runs.values() for name in r.get("ood", {}).get("sets", {})})
    lacking = {label: [name for name in ood_sets if name not in r["ood"]["sets"]] for label, r in runs.items()
               if "ood" in r}
    lacking = {label: names for label, names in lacking.items() if names}
    if lacking:
        said = "; ".join(f"{label} lacks {', '.join(names)}" for label, names in lacking.items())
        lines += [f"**Warning**: not every evaluation has every OOD set ({said}): their OOD means average other "
                  "sets than the other runs'.", ""]
    if ood_sets:
        lines += ["## OOD detection per set (TNR at TPR 95% / AUROC / detection acc)", ""]
        table = [[label] + [_ood_cell(r, name) for name in ood_sets] for label, r in runs.items()]
        lines += _table(["run"] + ood_sets, table) + [""]
    return "\n".join(lines)


def named_path(path) -> str | None:
    """A recorded path as the absolute one it names from here (None stays None): eval.json records
    paths absolute; an older one recorded them as typed, read from the current folder."""
    return None if path is None else str(Path(path).resolve())


def _ood_cell(results: dict, name: str) -> str:
    metrics = results.get("ood", {}).get("sets", {}).get(name)
    if metrics is None:
        return "-"
    return f"{metrics['tnr_at_tpr95']:.1f} / {metrics['auroc']:.1f} / {metrics['detection_accuracy']:.1f}"
