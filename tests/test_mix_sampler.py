"""MixSampler's distributions over many draws, against scipy and a numpy copy of the official code."""

import numpy as np
import pytest
import torch
from scipy import stats

import dataclasses

from pipeline.mix import MixParams, MixSampler, apply_mix, resolve_mix
from pipeline.mix.sampler import LOOKAHEAD, PARTNER_CHOICES, draw_beta, draw_cutmix_boxes

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


def sampled_lambdas(sampler, *, per, samples, batches, height, width) -> np.ndarray:
    """float64 lambdas: of one batch of `samples` (per sample), or of `batches` batches of 2 (per batch)."""
    if per == "elem":
        return sampler.sample(batch_size=samples, height=height, width=width).lam.double().numpy()
    return np.array([float(sampler.sample(batch_size=2, height=height, width=width).lam[0]) for _ in range(batches)])


@pytest.mark.parametrize("alpha", [1.0, 0.5, 2.0, 0.2])
def test_beta_draws_follow_beta(alpha):
    draws = draw_beta(alpha, count=20000, generator=np.random.default_rng(0))
    assert stats.kstest(draws, "beta", args=(alpha, alpha)).pvalue > P_FLOOR


def test_beta_draws_with_a_tiny_alpha_are_finite_and_symmetric():
    """At alpha 0.001 about a fifth of the Gamma pairs underflow to 0 / 0: those rows are drawn
    again, so no NaN, and the draws still match numpy's own Beta sampler as the float32 lambdas
    the mixing uses (a single underflow gives exactly 0 or 1 where numpy's log-space Johnk gives
    values like 1e-58, equal in float32)."""
    alpha, count = 0.001, 20000
    draws = draw_beta(alpha, count=count, generator=np.random.default_rng(1))
    assert np.isfinite(draws).all() and ((draws >= 0) & (draws <= 1)).all()
    below = np.count_nonzero(draws < 0.5) / count
    assert abs(below - 0.5) < 4 * (0.25 / count) ** 0.5
    reference = np.random.default_rng(2).beta(alpha, alpha, count)
    assert stats.ks_2samp(draws.astype(np.float32), reference.astype(np.float32)).pvalue > P_FLOOR


@pytest.mark.parametrize("per", ["batch", "elem"])
def test_mixup_lambda_follows_beta(per):
    sampler = MixSampler(mode="mixup", mixup_alpha=0.4, per=per, seed=14)
    lam = sampled_lambdas(sampler, per=per, samples=5000, batches=3000, height=8, width=8)
    assert stats.kstest(lam, "beta", args=(0.4, 0.4)).pvalue > P_FLOOR


def test_cutmix_or_mixup_per_sample_draws_each_mode_from_its_own_alpha():
    """Mixup rows: lambda ~ Beta(mixup_alpha); CutMix rows: the official corrected lambda of
    Beta(cutmix_alpha) boxes; each row's box only where it is CutMix."""
    sampler = MixSampler(mode="cutmix_or_mixup", cutmix_alpha=1.0, mixup_alpha=0.3, per="elem", seed=15)
    params = sampler.sample(batch_size=12000, height=32, width=24)
    modes = np.array(params.mode)
    lam = params.lam.double().numpy()
    boxes = params.boxes.numpy()
    mixup, cutmix = modes == "mixup", modes == "cutmix"
    assert mixup.sum() > 5000 and cutmix.sum() > 5000
    assert not boxes[mixup].any()
    assert stats.kstest(lam[mixup], "beta", args=(0.3, 0.3)).pvalue > P_FLOOR
    official = official_cutmix_lambdas(alpha=1.0, height=32, width=24, count=10000, seed=16)
    assert stats.ks_2samp(lam[cutmix].astype(np.float32).astype(np.float64), official).pvalue > P_FLOOR


def test_mixup_lambda_mean_for_alpha_one():
    sampler = MixSampler(mode="mixup", mixup_alpha=1.0, per="elem", seed=1)
    lam = sampler.sample(batch_size=20000, height=8, width=8).lam.double()
    # Beta(1, 1) is uniform: mean 1/2, standard error sqrt(1/12 / N).
    assert abs(float(lam.mean()) - 0.5) < 4 * (1 / 12 / len(lam)) ** 0.5


@pytest.mark.parametrize("per", ["batch", "elem"])
def test_cutmix_lambda_matches_official_distribution(per):
    sampler = MixSampler(mode="cutmix", cutmix_alpha=1.0, per=per, seed=2)
    ours = sampled_lambdas(sampler, per=per, samples=10000, batches=4000, height=32, width=24)
    ours = ours.astype(np.float32).astype(np.float64)
    official = official_cutmix_lambdas(alpha=1.0, height=32, width=24, count=10000, seed=3)
    assert stats.ks_2samp(ours, official).pvalue > P_FLOOR
    # Clipping only shrinks boxes, so the corrected mean sits above Beta(1, 1)'s 1/2.
    assert ours.mean() > 0.5


def test_box_centres_are_uniform():
    height, width, count = 13, 6, 13000
    # lam = 1 gives empty boxes (cut side 0) sitting exactly on their centre.
    boxes = draw_cutmix_boxes(np.ones(count), height=height, width=width, generator=np.random.default_rng(4))
    assert np.array_equal(boxes[:, 0], boxes[:, 1]) and np.array_equal(boxes[:, 2], boxes[:, 3])
    for column, side in ((0, height), (2, width)):
        counts = np.bincount(boxes[:, column], minlength=side)
        assert len(counts) == side
        assert stats.chisquare(counts).pvalue > P_FLOOR


def test_boxes_are_clipped_with_official_sides():
    lam = np.random.default_rng(5).random(5000)
    boxes = draw_cutmix_boxes(lam, height=20, width=14, generator=np.random.default_rng(6))
    cut_h = np.array([int(20 * np.sqrt(1 - value)) for value in lam])  # the official int(H * sqrt(1 - lam))
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] <= 20).all() and (boxes[:, 3] <= 14).all()
    assert (boxes[:, 1] - boxes[:, 0] <= 2 * (cut_h // 2)).all()
    # Boxes away from the borders keep the full official side 2 * (cut // 2).
    inner = (boxes[:, 0] > 0) & (boxes[:, 1] < 20)
    assert inner.any() and np.array_equal((boxes[:, 1] - boxes[:, 0])[inner], 2 * (cut_h // 2)[inner])


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
    # timm's rand_bbox_minmax: top-left corner in [0, H - side), so the box never reaches the last
    # row or column, and reaches every row before it.
    assert int(params.boxes[:, 0].min()) == 0 and int(params.boxes[:, 2].min()) == 0
    assert int(params.boxes[:, 1].max()) == 19 and int(params.boxes[:, 3].max()) == 15
    torch.testing.assert_close(params.lam.double(), 1 - (sides_h * sides_w).double() / 320, atol=1e-6, rtol=0)


@pytest.mark.parametrize("per", ["batch", "elem"])
def test_an_empty_batch_draws_empty_params(per):
    params = MixSampler(mode="cutout", cutout_size=3, per=per, seed=21).sample(batch_size=0, height=8, width=8)
    assert params.boxes.shape == (0, 4) and params.partner.shape == (0,) and params.lam.shape == (0,)
    images, targets = apply_mix(torch.zeros(0, 8, 8, 3, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64),
                                params=params, mean=(0, 0, 0), std=(1, 1, 1), num_classes=3)
    assert images.shape == (0, 3, 8, 8) and targets.shape == (0, 3)


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


def draw_key(params):
    return (tuple(params.boxes.flatten().tolist()), tuple(params.partner.tolist()), tuple(params.lam.tolist()))


@pytest.mark.parametrize("partner", PARTNER_CHOICES)
def test_a_per_batch_draw_gives_every_sample_one_lambda_and_box_across_blocks(partner):
    sampler = MixSampler(mode="cutmix_or_mixup", partner=partner, prob=0.8, seed=17)
    modes, partners = set(), []
    for _ in range(2 * LOOKAHEAD + 3):  # across the boundaries of the blocks drawn at once
        params = sampler.sample(batch_size=6, height=12, width=10)
        modes.add(params.mode)
        assert isinstance(params.mode, str)
        assert bool((params.lam == params.lam[0]).all()) and bool((params.boxes == params.boxes[0]).all())
        assert sorted(params.partner.tolist()) == list(range(6)) and params.partner.is_contiguous()
        partners.append(tuple(params.partner.tolist()))
    assert modes == {"cutmix", "mixup", "none"}
    if partner == "permutation":  # a fresh permutation each step: 35 draws of 720 hardly ever repeat
        assert len(set(partners)) >= len(partners) - 3
    else:
        assert len(set(partners)) == 1


def test_per_batch_permutations_are_uniform_over_the_steps_of_blocks():
    sampler = MixSampler(mode="cutmix", seed=22)
    firsts = [int(sampler.sample(batch_size=4, height=8, width=8).partner[0]) for _ in range(4000)]
    # Sample 0's partner is uniform on 0..3 across steps (a block repeating one permutation fails this).
    assert stats.chisquare(np.bincount(firsts, minlength=4)).pvalue > P_FLOOR
    pairs = [(int(a), int(b)) for a, b in zip(firsts[:-1], firsts[1:])]
    # Consecutive steps independent: each (previous, next) pair of values 1/16 of the time.
    assert stats.chisquare(np.bincount([4 * a + b for a, b in pairs], minlength=16)).pvalue > P_FLOOR


def test_another_batch_shape_draws_anew_and_the_same_shapes_draw_the_same():
    """Draws come LOOKAHEAD steps at a time; a call with another shape drops the rest of the block.
    Each draw fits its own shape (its rows pass resolve_mix's checks, which recompute lambda from
    the box), no two draws repeat, and the same sequence of shapes draws the same again."""
    shapes = [(8, 16, 16)] * 3 + [(6, 16, 16)] * 2 + [(8, 16, 16)] * (LOOKAHEAD + 2) + [(8, 12, 20)] * 2

    def draws():
        sampler = MixSampler(mode="cutmix_or_mixup", per="elem", seed=18)
        return [sampler.sample(batch_size=b, height=h, width=w) for b, h, w in shapes]

    first, again = draws(), draws()
    for params, (batch_size, height, width) in zip(first, shapes):
        assert params.partner.shape == (batch_size,) and params.boxes.shape == (batch_size, 4)
        checked = resolve_mix(dataclasses.replace(params), batch_size=batch_size, height=height, width=width)
        drawn = resolve_mix(params, batch_size=batch_size, height=height, width=width)
        assert checked is not drawn and np.array_equal(checked.rows, drawn.rows)
    assert [draw_key(p) for p in first] == [draw_key(p) for p in again]
    assert len({draw_key(p) for p in first}) == len(shapes)


def test_a_drawn_cutout_then_mixup_mixes_as_its_fields_say():
    """The draw's holes come packed with the mixing's partner and lambda; the same fields written
    by hand (checked and packed by apply_mix) give the same images and targets."""
    sampler = MixSampler(mode="mixup", cutout_size=5, prob=0.7, seed=19)
    images = torch.randint(0, 256, (6, 12, 10, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(20))
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    options = dict(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), num_classes=5)
    for _ in range(LOOKAHEAD + 2):
        params = sampler.sample(batch_size=6, height=12, width=10)
        by_hand = MixParams(mode=params.mode, lam=float(params.lam[0]), partner=params.partner.clone(),
                            cutout_boxes=params.cutout_boxes.clone())
        for got, expected in zip(apply_mix(images, labels, params=params, **options),
                                 apply_mix(images, labels, params=by_hand, **options)):
            assert torch.equal(got, expected)


@pytest.mark.parametrize("out_dtype, mantissa", [(torch.bfloat16, 7), (torch.float16, 10)])
def test_cutout_then_mixup_is_rounded_once_as_every_other_mode(out_dtype, mantissa):
    """Against a float64 reference written from the definitions (normalize, zero the holes, blend
    with the partner): every value within half a unit in the last place of the output type (and
    float32's error), as a correctly rounded result is. In bf16 the blend rounded the holed pixels,
    both products and their sum: 36% of values were off (walkthrough)."""
    sampler = MixSampler(mode="mixup", cutout_size=4, seed=7)
    images = torch.randint(0, 256, (8, 12, 10, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(8))
    labels = torch.arange(8) % 5
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    for _ in range(3):
        params = sampler.sample(batch_size=8, height=12, width=10)
        out, _ = apply_mix(images, labels, params=params, mean=mean, std=std, num_classes=5, out_dtype=out_dtype)
        x = (images.double().permute(0, 3, 1, 2) / 255 - torch.tensor(mean).view(1, 3, 1, 1)) \
            / torch.tensor(std).view(1, 3, 1, 1)
        for i, (y1, y2, x1, x2) in enumerate(params.cutout_boxes.tolist()):
            x[i, :, y1:y2, x1:x2] = 0.0
        lam = params.lam.double().view(-1, 1, 1, 1)
        expected = lam * x + (1 - lam) * x[params.partner]
        tiny = torch.finfo(out_dtype).tiny
        ulp = torch.exp2(torch.floor(torch.log2(expected.abs().clamp_min(tiny))) - mantissa)
        # Plus float32's own error (the kernel's arithmetic), which matters only where the blend cancels.
        assert ((out.double() - expected).abs() <= ulp / 2 + 1e-6).all()
