"""OOD detection against independent references: sklearn's ROC tools, numbers worked out by hand,
a per-sample transcription of calculate_log.py's merge loop, and the noise sets' distributions."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import roc_auc_score, roc_curve

from pipeline.evaluate.ood import max_softmax, noise_images, ood_metrics

NAMES = ("tnr_at_tpr95", "auroc", "detection_accuracy", "auin", "auout")


def transcribed_calculate_log(known, novel):
    """pokaxpoka/deep_Mahalanobis_detector calculate_log.py, get_curve + metric for one score type,
    its loops kept as loops (the file reading and printing left out); fractions, not percent."""
    known, novel = np.sort(np.asarray(known, dtype=np.float64)), np.sort(np.asarray(novel, dtype=np.float64))
    num_k, num_n = len(known), len(novel)
    tp = -np.ones(num_k + num_n + 1, dtype=int)
    fp = -np.ones(num_k + num_n + 1, dtype=int)
    tp[0], fp[0] = num_k, num_n
    k = n = 0
    for step in range(num_k + num_n):
        if k == num_k:
            tp[step + 1:] = tp[step]
            fp[step + 1:] = np.arange(fp[step] - 1, -1, -1)
            break
        if n == num_n:
            tp[step + 1:] = np.arange(tp[step] - 1, -1, -1)
            fp[step + 1:] = fp[step]
            break
        if novel[n] < known[k]:
            n += 1
            tp[step + 1], fp[step + 1] = tp[step], fp[step] - 1
        else:
            k += 1
            tp[step + 1], fp[step + 1] = tp[step] - 1, fp[step]
    tnr = 1.0 - fp[np.abs(tp / num_k - 0.95).argmin()] / num_n
    tpr = np.concatenate([[1.0], tp / tp[0], [0.0]])
    fpr = np.concatenate([[1.0], fp / fp[0], [0.0]])
    auroc = -np.trapezoid(1.0 - fpr, tpr)  # np.trapz in the original (removed from NumPy 2.4)
    dtacc = 0.5 * (tp / tp[0] + 1.0 - fp / fp[0]).max()
    denom = tp + fp
    denom[denom == 0] = -1
    pin_ind = np.concatenate([[True], denom > 0, [True]])
    pin = np.concatenate([[0.5], tp / denom, [0.0]])
    auin = -np.trapezoid(pin[pin_ind], tpr[pin_ind])
    denom = tp[0] - tp + fp[0] - fp
    denom[denom == 0] = -1
    pout_ind = np.concatenate([[True], denom > 0, [True]])
    pout = np.concatenate([[0.0], (fp[0] - fp) / denom, [0.5]])
    auout = np.trapezoid(pout[pout_ind], 1.0 - fpr[pout_ind])
    return dict(zip(NAMES, (tnr, auroc, dtacc, auin, auout)))


def labelled(in_scores, out_scores):
    """sklearn's form: in-distribution is the positive class."""
    return np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))], np.r_[in_scores, out_scores]


def test_max_softmax_is_the_largest_probability():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-3.0, 5.0, 4.0]], dtype=torch.bfloat16)
    expected = []
    for row in logits.double().tolist():
        exps = [math.exp(v) for v in row]
        expected.append(max(exps) / sum(exps))
    scores = max_softmax(logits)
    assert scores.dtype == torch.float32 and scores.shape == (3,)
    assert scores.double().tolist() == pytest.approx(expected, rel=1e-6)


def test_perfectly_separated_scores():
    rng = np.random.default_rng(0)
    in_scores, out_scores = rng.uniform(1.0, 2.0, 1000), rng.uniform(0.0, 0.9, 800)
    metrics = ood_metrics(in_scores, out_scores)
    assert metrics["tnr_at_tpr95"] == metrics["auroc"] == metrics["detection_accuracy"] == 100.0
    # The added end points (precision 0 at TPR 0, 0.5 at FPR 1) cost half a sample's width.
    assert metrics["auin"] == pytest.approx(100.0 * (1 - 0.5 / 1000), abs=1e-9)
    assert metrics["auout"] == pytest.approx(100.0 * (1 - 0.5 / 800), abs=1e-9)


def test_reversed_scores_are_zero_not_minus_zero():
    """OOD samples all scoring above the in-distribution ones: every metric at its floor, and the
    zeros print as 0.0 (the negated trapezoid gave -0.0)."""
    metrics = ood_metrics(np.array([0.1, 0.2, 0.3]), np.array([0.6, 0.7]))
    assert metrics["auroc"] == metrics["tnr_at_tpr95"] == 0.0
    assert f"{metrics['auroc']:.1f} {metrics['tnr_at_tpr95']:.1f}" == "0.0 0.0"


def test_identical_distributions_are_chance():
    rng = np.random.default_rng(1)
    in_scores, out_scores = rng.normal(size=20000), rng.normal(size=20000)
    metrics = ood_metrics(in_scores, out_scores)
    assert metrics["auroc"] == pytest.approx(50.0, abs=1.0)
    assert metrics["tnr_at_tpr95"] == pytest.approx(5.0, abs=1.0)
    assert metrics["detection_accuracy"] == pytest.approx(50.0, abs=1.0)


@pytest.mark.parametrize("shift", [0.5, 1.5, 3.0])
def test_continuous_scores_agree_with_sklearn(shift):
    """Without ties each sample is one sklearn threshold: the same curve."""
    rng = np.random.default_rng(2)
    in_scores, out_scores = rng.normal(shift, 1.0, 3000), rng.normal(0.0, 1.0, 2000)
    metrics = ood_metrics(in_scores, out_scores)
    labels, scores = labelled(in_scores, out_scores)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    assert metrics["auroc"] == pytest.approx(100.0 * roc_auc_score(labels, scores), abs=1e-9)
    assert metrics["detection_accuracy"] == pytest.approx(100.0 * 0.5 * np.max(tpr + 1 - fpr), abs=1e-9)
    # Nearest TPR to 0.95 (3000 in-samples: 0.95 itself), and there the largest FPR.
    nearest = tpr[np.argmin(np.abs(tpr - 0.95))]
    assert metrics["tnr_at_tpr95"] == pytest.approx(100.0 * (1 - fpr[tpr == nearest].max()), abs=1e-9)


def test_tied_scores_count_zero_in_auroc_where_sklearn_counts_half():
    rng = np.random.default_rng(3)
    in_scores, out_scores = rng.integers(3, 12, 700).astype(float), rng.integers(0, 8, 500).astype(float)
    labels, scores = labelled(in_scores, out_scores)
    ties = sum(int(np.sum(out_scores == value)) for value in in_scores)
    metrics = ood_metrics(in_scores, out_scores)
    expected = roc_auc_score(labels, scores) - 0.5 * ties / (len(in_scores) * len(out_scores))
    assert metrics["auroc"] == pytest.approx(100.0 * expected, abs=1e-9)
    # The pessimistic corner never beats the ends of sklearn's diagonal: same DTACC.
    fpr, tpr, _ = roc_curve(labels, scores)
    assert metrics["detection_accuracy"] == pytest.approx(100.0 * 0.5 * np.max(tpr + 1 - fpr), abs=1e-9)


def test_small_tied_set_by_hand():
    # Removal order (in before out on a tie): 0.1o 0.2i 0.5i 0.5i 0.5o 0.6o 0.9i, giving
    # (tp, fp) = (4,3) (4,2) (3,2) (2,2) (1,2) (1,1) (1,0) (0,0).
    in_scores, out_scores = [0.2, 0.5, 0.5, 0.9], [0.1, 0.5, 0.6]
    metrics = ood_metrics(np.array(in_scores), np.array(out_scores))
    # TPR levels 1, .75, ...: 1 is nearest 0.95, first reached at (4, 3), where nothing is rejected.
    assert metrics["tnr_at_tpr95"] == 0.0
    # In-out pairs with in > out: 0.2>0.1, 0.5>0.1 twice, 0.9>all three = 6 of 12; the two 0.5-0.5 ties count 0.
    assert metrics["auroc"] == pytest.approx(50.0, abs=1e-12)
    # max(tpr + 1 - fpr) = 1 + 1/3 at (4, 2).
    assert metrics["detection_accuracy"] == pytest.approx(100.0 * 2 / 3, abs=1e-12)
    # sklearn counts the ties as half: 7 of 12.
    assert roc_auc_score(*labelled(in_scores, out_scores)) == pytest.approx(7 / 12)


def test_tnr_at_tpr95_takes_the_corner_of_a_tie_by_hand():
    # 20 in-samples: TPR 0.95 = 19 of 20 is reached when the lowest in-score (0.5) is removed,
    # before the two out-scores of 0.5, so 4 of 6 out-samples are still accepted: TNR 1/3.
    # sklearn's threshold 0.5 accepts both ties together; its point at TPR 0.95 has FPR 2/6.
    in_scores = np.array([0.5] + [0.55 + 0.02 * i for i in range(19)])
    out_scores = np.array([0.1, 0.2, 0.5, 0.5, 0.7, 0.9])
    assert ood_metrics(in_scores, out_scores)["tnr_at_tpr95"] == pytest.approx(100.0 / 3, abs=1e-12)
    fpr, tpr, _ = roc_curve(*labelled(in_scores, out_scores), drop_intermediate=False)
    assert 1 - fpr[np.isclose(tpr, 0.95)].max() == pytest.approx(2 / 3)


@pytest.mark.parametrize("sizes, high, seed", [((1, 1), 3, 0), ((5, 3), 4, 1), ((20, 7), 5, 2), ((300, 200), 40, 3),
                                                ((1000, 1500), 10**6, 4), ((37, 1), 6, 5), ((1, 29), 6, 6)])
def test_agrees_with_the_transcribed_loop(sizes, high, seed):
    """Integer scores from a small range: many ties, within and across the two sets."""
    rng = np.random.default_rng(seed)
    in_scores = rng.integers(high // 3, high + 1, sizes[0]).astype(float)
    out_scores = rng.integers(0, high - high // 3 + 1, sizes[1]).astype(float)
    expected = transcribed_calculate_log(in_scores, out_scores)
    metrics = ood_metrics(in_scores, out_scores)
    assert set(metrics) == set(NAMES)
    for name in NAMES:
        assert metrics[name] == pytest.approx(100.0 * expected[name], abs=1e-10), name



@pytest.mark.parametrize("known", [1, 5, 9])
def test_a_perfect_detector_of_under_ten_in_samples_gets_no_tnr_as_calculate_log_gives(known):
    # The README says so: no curve point has TPR within 0.025 of 0.95 below 10 in-distribution samples,
    # and the nearest one there is the corner (TPR 1, FPR 1). sklearn's roc_curve gives TNR 1.
    in_scores, out_scores = np.linspace(0.6, 0.9, known), np.linspace(0.1, 0.4, 20)
    metrics = ood_metrics(in_scores, out_scores)
    assert metrics["tnr_at_tpr95"] == 0.0 and metrics["auroc"] == pytest.approx(100.0, abs=1e-9)
    assert metrics["tnr_at_tpr95"] == 100.0 * transcribed_calculate_log(in_scores, out_scores)["tnr_at_tpr95"]
    fpr, tpr, _ = roc_curve([1] * known + [0] * 20, np.concatenate([in_scores, out_scores]))
    assert 1 - fpr[np.argmax(tpr >= 0.95)] == 1.0

def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="in_scores"):
        ood_metrics(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError, match="out_scores"):
        ood_metrics(np.array([1.0]), np.array([np.nan]))


def noise_pmf(kind):
    """Probability of each uint8 value of round(255 * v), from the continuous distribution."""
    edges = (np.arange(257) - 0.5) / 255.0
    edges[0], edges[-1] = -np.inf, np.inf  # clipping puts both tails on 0 and 255
    if kind == "uniform":
        cdf = np.clip(edges, 0.0, 1.0)
    else:
        cdf = norm.cdf(edges, loc=0.5, scale=1.0)
    return np.diff(cdf)


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
def test_noise_statistics(kind):
    images = noise_images(kind, range(64), size=32, seed=0)
    assert images.dtype == torch.uint8 and images.shape == (64, 32, 32, 3)
    values = images.numpy().astype(np.float64).reshape(-1)
    pmf = noise_pmf(kind)
    levels = np.arange(256)
    mean = float(np.sum(pmf * levels))
    std = float(np.sqrt(np.sum(pmf * (levels - mean) ** 2)))
    assert values.mean() == pytest.approx(mean, abs=1.5)
    assert values.std() == pytest.approx(std, abs=1.0)
    assert values.min() == 0 and values.max() == 255
    # The ends: half a level for uniform; each clipped tail (30.9 %) for gaussian.
    for level in (0, 255):
        assert np.mean(values == level) == pytest.approx(pmf[level], abs=0.01 * max(pmf[level], 0.02))
    # Channels are drawn independently, not one grey value per pixel.
    assert not torch.equal(images[..., 0], images[..., 1])


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
def test_noise_does_not_depend_on_the_batch_split(kind):
    whole = noise_images(kind, list(range(10)), size=16, seed=7)
    halves = torch.cat([noise_images(kind, torch.arange(5), size=16, seed=7),
                        noise_images(kind, np.arange(5, 10), size=16, seed=7)])
    assert torch.equal(whole, halves)
    assert torch.equal(noise_images(kind, [8, 2], size=16, seed=7), whole[[8, 2]])
    assert not torch.equal(whole[0], whole[1])
    assert not torch.equal(noise_images(kind, [0], size=16, seed=8)[0], whole[0])


def test_noise_kinds_differ_and_are_checked():
    assert not torch.equal(noise_images("uniform", [0], size=8, seed=0), noise_images("gaussian", [0], size=8, seed=0))
    with pytest.raises(ValueError, match="kind"):
        noise_images("salt", [0], size=8, seed=0)


def test_score_histograms_span_the_scores_range():
    """A weak 100-class model's maximum softmax scores lie near 0.01: on fixed [0, 1] bins they all
    fell into the first one and ood_scores.png showed one point per set."""
    from pipeline.evaluate.runner import _histograms

    rng = np.random.default_rng(0)
    inside, noise = rng.uniform(0.010, 0.030, 500), rng.uniform(0.011, 0.020, 300)
    histograms = _histograms(inside, {"uniform": noise})
    edges = np.asarray(histograms["edges"])
    assert edges[0] == min(inside.min(), noise.min()) and edges[-1] == max(inside.max(), noise.max())
    assert sum(histograms["in_distribution"]) == 500 and sum(histograms["sets"]["uniform"]) == 300
    # By hand: noise in [0.011, 0.020] covers about (0.009 / 0.02) of the 50 bins.
    assert 15 <= np.count_nonzero(histograms["sets"]["uniform"]) <= 25
    assert np.count_nonzero(histograms["in_distribution"]) >= 45
    same = _histograms(np.full(3, 0.5), {})  # one value: a bin of positive width holds it
    assert sum(same["in_distribution"]) == 3 and same["edges"][-1] > same["edges"][0]
