"""Out-of-distribution detection: the baseline detector's score, the noise image sets, and the
metrics of the Mahalanobis detector's ``calculate_log.py`` (the numbers the CutMix paper reports)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# The SeedSequence word of each noise set: changing a code changes every image of that set.
NOISE_KINDS = {"uniform": 0, "gaussian": 1}


def max_softmax(logits: torch.Tensor) -> torch.Tensor:
    """float32 [B]: the largest softmax probability of each row (Hendrycks & Gimpel's baseline,
    ODIN at temperature 1 without input perturbation); higher means in-distribution."""
    return torch.softmax(logits.float(), dim=1).amax(dim=1)


def ood_metrics(in_scores: np.ndarray, out_scores: np.ndarray) -> dict[str, float]:
    """Percent: tnr_at_tpr95, auroc, detection_accuracy, auin, auout, as ``get_curve`` + ``metric``
    of pokaxpoka/deep_Mahalanobis_detector's calculate_log.py compute them (in = positive class).

    Threshold rule: that code does not make one ROC point per distinct score, as
    sklearn's ``roc_curve`` does, but one per sample. Starting from "everything is in" (TPR = FPR = 1),
    it removes the samples one at a time in ascending score order, an in-distribution sample
    before an out-of-distribution one of the same score. A tie between an in and an out score is
    therefore split pessimistically: the curve goes through the corner below sklearn's diagonal
    segment, AUROC counts such a pair as 0 (sklearn counts it as 1/2), and DTACC and the
    precision areas see the same corner. TNR@TPR95 is taken at the first point (in removal order)
    whose TPR is nearest 0.95, i.e. the largest TPR on an exact tie of distances, and there the
    most out samples still accepted. AUROC is the trapezoid of (TPR, 1 - FPR) with the end points
    (1, 1) and (0, 0) added; DTACC = 0.5 * max(TPR + 1 - FPR) over the points.
    """
    known = _scores(in_scores, name="in_scores")
    novel = _scores(out_scores, name="out_scores")
    num_k, num_n = len(known), len(novel)
    # Stable order: by score, then in-distribution (0) before out (1) within a score.
    is_novel = np.concatenate([np.zeros(num_k, dtype=np.int64), np.ones(num_n, dtype=np.int64)])
    order = np.lexsort((is_novel, np.concatenate([known, novel])))
    removed_novel = np.concatenate([[0], np.cumsum(is_novel[order])])
    removed_known = np.arange(num_k + num_n + 1) - removed_novel
    tp = num_k - removed_known
    fp = num_n - removed_novel
    # From here on the same array formulas as calculate_log.py, so the floats agree bit for bit.
    tnr = 1.0 - fp[np.abs(tp / num_k - 0.95).argmin()] / num_n
    tpr = np.concatenate([[1.0], tp / tp[0], [0.0]])
    fpr = np.concatenate([[1.0], fp / fp[0], [0.0]])
    auroc = -np.trapezoid(1.0 - fpr, tpr)
    dtacc = 0.5 * (tp / tp[0] + 1.0 - fp / fp[0]).max()
    denom = np.where(tp + fp == 0, -1, tp + fp)
    pin_ind = np.concatenate([[True], denom > 0, [True]])
    pin = np.concatenate([[0.5], tp / denom, [0.0]])
    auin = -np.trapezoid(pin[pin_ind], tpr[pin_ind])
    denom = tp[0] - tp + fp[0] - fp
    denom = np.where(denom == 0, -1, denom)
    pout_ind = np.concatenate([[True], denom > 0, [True]])
    pout = np.concatenate([[0.0], (fp[0] - fp) / denom, [0.5]])
    auout = np.trapezoid(pout[pout_ind], 1.0 - fpr[pout_ind])
    values = {"tnr_at_tpr95": tnr, "auroc": auroc, "detection_accuracy": dtacc, "auin": auin, "auout": auout}
    # + 0.0: a zero area comes out of the negated trapezoid as -0.0, printed "-0.0" in the tables.
    return {name: 100.0 * float(value) + 0.0 for name, value in values.items()}


def noise_images(kind: str, positions: Sequence[int] | torch.Tensor | np.ndarray, *, size: int,
                 seed: int) -> torch.Tensor:
    """uint8 [B, size, size, 3] on the CPU (NHWC, like the loader's batches): ODIN's noise sets,
    each channel value U[0, 1] ("uniform") or N(0.5, 1) clipped to [0, 1] ("gaussian"), stored as
    round(v * 255) so they go through the same normalization as real images. Image i is drawn
    from its own generator seeded by (seed, kind, positions[i]), so the set does not depend on
    the batch size or the number of ranks."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"kind: expected one of {sorted(NOISE_KINDS)}, got {kind!r}")
    if size < 1:
        raise ValueError(f"size: must be >= 1, got {size}")
    if seed < 0:
        raise ValueError(f"seed: must be >= 0, got {seed}")
    indices = [int(p) for p in (positions.tolist() if hasattr(positions, "tolist") else positions)]
    if any(p < 0 for p in indices):
        raise ValueError(f"positions: must be >= 0, got {indices}")
    out = np.empty((len(indices), size, size, 3), dtype=np.uint8)
    for row, position in enumerate(indices):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, NOISE_KINDS[kind], position])))
        if kind == "uniform":
            values = rng.random((size, size, 3))
        else:
            values = np.clip(rng.normal(0.5, 1.0, (size, size, 3)), 0.0, 1.0)
        out[row] = np.rint(values * 255.0)
    return torch.from_numpy(out)


def _scores(scores, *, name: str) -> np.ndarray:
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError(f"{name}: need at least one score")
    if not np.isfinite(values).all():
        raise ValueError(f"{name}: scores must be finite (NaN or inf found)")
    return values
