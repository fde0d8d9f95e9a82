"""MixSampler's distributions over many draws, against scipy and a numpy copy of the official code."""

import numpy as np
import pytest
import torch
from scipy import stats

from pipeline.mix import MixSampler, apply_mix
from pipeline.mix.sampler import draw_beta, draw_cutmix_boxes

# p-value below which a distribution test fails; every draw is seeded, so a pass is deterministic.
P_FLOOR = 1e-3


def official_cutmix_lambdas(*, alpha, height, width, count, seed):
    """The official rand_bbox + area correction (clovaai/CutMix-PyTorch train.py), in numpy."""
    rng = np.random.default_rng(seed)
    lambdas = []
    for _ in range(count):
        lam = rng.beta(alpha, alpha)
        cut_rat = np.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut_rat), int(width * cut_rat)
        cy, cx = rng.integers(height), rng.integers(width)
        y1, y2 = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
        x1, x2 = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
        lambdas.append(1 - (y2 - y1) * (x2 - x1) / (height * width))
    # Rounded like ours (float32): lambda takes discrete values, and KS compares atoms exactly.
    return np.array(lambdas, dtype=np.float32).astype(np.float64)


@pytest.mark.parametrize("alpha", [1.0, 0.5, 2.0])
def test_beta_draws_follow_beta(alpha):
    draws = draw_beta(alpha, count=20000, generator=torch.Generator().manual_seed(0)).numpy()
    assert stats.kstest(draws, "beta", args=(alpha, alpha)).pvalue > P_FLOOR


def test_mixup_lambda_mean_for_alpha_one():
    sampler = MixSampler(mode="mixup", mixup_alpha=1.0, per="elem", seed=1)
    lam = sampler.sample(batch_size=20000, height=8, width=8).lam.double()
    # Beta(1, 1) is uniform: mean 1/2, standard error sqrt(1/12 / N).
    assert abs(float(lam.mean()) - 0.5) < 4 * (1 / 12 / len(lam)) ** 0.5


@pytest.mark.parametrize("per", ["batch", "elem"])
def test_cutmix_lambda_matches_official_distribution(per):
    sampler = MixSampler(mode="cutmix", cutmix_alpha=1.0, per=per, seed=2)
    if per == "elem":
        ours = sampler.sample(batch_size=10000, height=32, width=24).lam.double().numpy()
    else:
        ours = np.array([float(sampler.sample(batch_size=2, height=32, width=24).lam[0]) for _ in range(4000)])
    ours = ours.astype(np.float32).astype(np.float64)
    official = official_cutmix_lambdas(alpha=1.0, height=32, width=24, count=10000, seed=3)
    assert stats.ks_2samp(ours, official).pvalue > P_FLOOR
    # Clipping only shrinks boxes, so the corrected mean sits above Beta(1, 1)'s 1/2.
    assert ours.mean() > 0.5


def test_box_centres_are_uniform():
    height, width, count = 13, 6, 13000
    # lam = 1 gives empty boxes (cut side 0) sitting exactly on their centre.
    boxes = draw_cutmix_boxes(torch.ones(count), height=height, width=width, generator=torch.Generator().manual_seed(4))
    assert torch.equal(boxes[:, 0], boxes[:, 1]) and torch.equal(boxes[:, 2], boxes[:, 3])
    for column, side in ((0, height), (2, width)):
        counts = torch.bincount(boxes[:, column], minlength=side).numpy()
        assert len(counts) == side
        assert stats.chisquare(counts).pvalue > P_FLOOR


def test_boxes_are_clipped_with_official_sides():
    lam = torch.rand(5000, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    boxes = draw_cutmix_boxes(lam, height=20, width=14, generator=torch.Generator().manual_seed(6))
    cut_h = (20 * torch.sqrt(1 - lam)).long()
    assert bool((boxes[:, 0] >= 0).all() and (boxes[:, 1] <= 20).all() and (boxes[:, 3] <= 14).all())
    assert bool((boxes[:, 1] - boxes[:, 0] <= 2 * (cut_h // 2)).all())
    # Boxes away from the borders keep the full official side 2 * (cut // 2).
    inner = (boxes[:, 0] > 0) & (boxes[:, 1] < 20)
    assert bool(inner.any()) and torch.equal((boxes[:, 1] - boxes[:, 0])[inner], 2 * (cut_h // 2)[inner])


@pytest.mark.parametrize("per", ["batch", "elem"])
def test_lambda_equals_the_really_pasted_area(per):
    """Each sample is one flat colour, so the partner's pixels can be counted after mixing."""
    batch, height, width = 6, 15, 11
    sampler = MixSampler(mode="cutmix", per=per, seed=7)
    colours = torch.arange(batch, dtype=torch.uint8) * 40 + 5
    images = colours.view(-1, 1, 1, 1).expand(batch, height, width, 3).contiguous()
    checked = 0
    for _ in range(20):
        params = sampler.sample(batch_size=batch, height=height, width=width)
        out, _ = apply_mix(images, torch.zeros(batch, dtype=torch.int64), params=params, mean=(0, 0, 0),
                           std=(1, 1, 1), num_classes=1)  # fmt: skip
        for n in range(batch):
            partner = int(params.partner[n])
            if partner == n:
                continue
            from_partner = (out[n] * 255).round() == float(colours[partner])
            assert torch.equal(from_partner[0], from_partner[1])
            pasted = float(from_partner.double().mean())
            assert abs((1 - pasted) - float(params.lam[n])) < 1e-6
            checked += 1
    assert checked > 50


@pytest.mark.parametrize("per, batches, batch_size", [("batch", 4000, 2), ("elem", 1, 10000)])
def test_prob_gate_frequency(per, batches, batch_size):
    sampler = MixSampler(mode="cutmix", prob=0.3, per=per, seed=8)
    mixed = total = 0
    for _ in range(batches):
        modes = sampler.sample(batch_size=batch_size, height=8, width=8).mode
        modes = [modes] if isinstance(modes, str) else list(modes)
        mixed += sum(mode == "cutmix" for mode in modes)
        total += len(modes)
    assert abs(mixed / total - 0.3) < 4 * (0.3 * 0.7 / total) ** 0.5


def test_switch_prob_chooses_cutmix_that_often():
    sampler = MixSampler(mode="cutmix_or_mixup", switch_prob=0.25, per="elem", seed=9)
    modes = sampler.sample(batch_size=10000, height=8, width=8).mode
    assert set(modes) == {"cutmix", "mixup"}
    assert abs(modes.count("cutmix") / len(modes) - 0.25) < 4 * (0.25 * 0.75 / len(modes)) ** 0.5


def test_every_rank_draws_differently_and_repeats():
    def draws(rank):
        sampler = MixSampler(mode="cutmix", seed=11, rank=rank)
        return [sampler.sample(batch_size=8, height=16, width=16) for _ in range(5)]

    def key(params):
        return (params.boxes.tolist(), params.partner.tolist(), params.lam.tolist())

    rank0, rank0_again, rank1 = draws(0), draws(0), draws(1)
    assert [key(p) for p in rank0] == [key(p) for p in rank0_again]
    assert [key(p) for p in rank0] != [key(p) for p in rank1]
    assert all(key(a) != key(b) for a, b in zip(rank0, rank1))


def test_partner_choices():
    def partner(kind):
        return MixSampler(mode="cutmix", partner=kind, seed=0).sample(batch_size=6, height=4, width=4).partner

    assert partner("flip").tolist() == [5, 4, 3, 2, 1, 0]
    images = torch.arange(6)
    assert torch.equal(images[partner("roll")], images.roll(1, 0))
    assert sorted(partner("permutation").tolist()) == list(range(6))


def test_cutmix_minmax_boxes():
    sampler = MixSampler(mode="cutmix", cutmix_minmax=(0.25, 0.75), per="elem", seed=12)
    params = sampler.sample(batch_size=2000, height=20, width=16)
    sides_h = params.boxes[:, 1] - params.boxes[:, 0]
    sides_w = params.boxes[:, 3] - params.boxes[:, 2]
    assert int(sides_h.min()) == 5 and int(sides_h.max()) == 14
    assert int(sides_w.min()) == 4 and int(sides_w.max()) == 11
    assert bool((params.boxes[:, 1] <= 20).all() and (params.boxes[:, 3] <= 16).all())
    torch.testing.assert_close(params.lam.double(), 1 - (sides_h * sides_w).double() / 320, atol=1e-6, rtol=0)


def test_cutout_fixed_box_and_unchanged_labels():
    sampler = MixSampler(mode="cutout", cutout_size=6, per="elem", seed=13)
    params = sampler.sample(batch_size=3000, height=10, width=10)
    sides = params.boxes[:, 1] - params.boxes[:, 0]
    assert int(sides.max()) == 6 and int(sides.min()) == 3  # a centre on the border clips half the box
    assert torch.equal(params.lam, torch.ones(3000))
    labels = torch.arange(3000) % 10
    _, targets = apply_mix(torch.zeros(3000, 10, 10, 3, dtype=torch.uint8), labels, params=params,
                           mean=(0, 0, 0), std=(1, 1, 1), num_classes=10)  # fmt: skip
    assert torch.equal(targets, torch.nn.functional.one_hot(labels, 10).float())
