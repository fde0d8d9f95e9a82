"""ShakeDrop, stochastic depth and DropBlock in our PyramidNet against independent references: naive
per-sample loops with the draws injected or replayed, the moments of the multipliers in closed
form, the papers' linear rules over depth written out, and DropBlock's exact per-position drop
probability from the paper's seed rate."""

from __future__ import annotations

import math

import pytest
import torch
from timm.layers import DropPath

from pipeline.models.dropblock import DropBlock, drop_block
from pipeline.models.pyramidnet import PyramidNet
from pipeline.models.shakedrop import ShakeDrop, shake_drop


def naive_shake_drop(x, upstream, keep, alpha, beta):
    """Per sample: forward x*1 if kept else x*alpha; backward upstream*1 if kept else upstream*beta."""
    out, grad = torch.empty_like(x).fill_(math.nan), torch.empty_like(x).fill_(math.nan)
    for i in range(x.shape[0]):
        kept = bool(keep[i])
        out[i] = x[i] * (1.0 if kept else float(alpha[i]))
        grad[i] = upstream[i] * (1.0 if kept else float(beta[i]))
    return out, grad


def test_shake_drop_forward_and_backward_equal_a_per_sample_loop():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 4, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    upstream = torch.randn(6, 3, 4, 5, dtype=torch.float64, generator=generator)
    keep = torch.tensor([True, False, True, False, False, True])
    alpha = torch.rand(6, dtype=torch.float64, generator=generator) * 2 - 1
    beta = torch.rand(6, dtype=torch.float64, generator=generator)
    out = shake_drop(x, keep=keep, alpha=alpha, beta=beta)
    out.backward(upstream)
    expected_out, expected_grad = naive_shake_drop(x.detach(), upstream, keep, alpha, beta)
    torch.testing.assert_close(out.detach(), expected_out, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, expected_grad, rtol=0, atol=0)


def test_shake_drop_module_replays_its_documented_draws():
    # ShakeDrop draws torch.rand((3, N)) on the input's device: rows b (kept when < 1 - p), alpha
    # (2u - 1) and beta (u).
    x = torch.randn(8, 2, 3, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    upstream = torch.randn(8, 2, 3, 3, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(5)
    out = ShakeDrop(0.4).train()(x)
    out.backward(upstream)
    torch.manual_seed(5)
    u = torch.rand((3, 8))
    expected_out, expected_grad = naive_shake_drop(x.detach(), upstream, u[0] < 0.6, u[1] * 2 - 1, u[2])
    torch.testing.assert_close(out.detach(), expected_out)
    torch.testing.assert_close(x.grad, expected_grad)
    assert 0 < int((u[0] < 0.6).sum()) < 8  # both kinds of sample were seen


@pytest.mark.parametrize("drop_prob", [0.5, 0.2])
def test_shake_drop_multipliers_have_the_papers_moments(drop_prob):
    # Forward multiplier b + alpha - b*alpha: 1 with probability 1-p, else alpha ~ U[-1, 1];
    # backward b + beta - b*beta: 1, else beta ~ U[0, 1]. Closed-form means and variances.
    count, keep = 400_000, 1 - drop_prob
    x = torch.ones(count, 1, 1, 1, requires_grad=True)
    torch.manual_seed(11)
    forward = ShakeDrop(drop_prob).train()(x)
    forward.sum().backward()
    forward, backward = forward.detach().flatten().double(), x.grad.flatten().double()
    cases = [(forward, keep, keep + drop_prob / 3), (backward, keep + drop_prob / 2, keep + drop_prob / 3)]
    for values, mean, second_moment in cases:
        variance = second_moment - mean**2
        tolerance = 5 * math.sqrt(variance / count)  # five standard errors of the mean
        assert abs(values.mean().item() - mean) < tolerance
        assert abs(values.var().item() - variance) < 5 * math.sqrt(2 / count)  # generous for the variance
    kept = (forward == 1).double().mean().item()
    assert abs(kept - keep) < 5 * math.sqrt(keep * (1 - keep) / count)
    assert bool(torch.equal(forward == 1, backward == 1))  # one b per sample, for both passes
    assert forward.min() >= -1 and forward.max() <= 1 and backward.min() >= 0 and backward.max() <= 1


def test_shake_drop_evaluation_is_the_deterministic_expectation():
    module = ShakeDrop(0.3).eval()
    x = torch.randn(5, 4, 2, 2, requires_grad=True)
    first, second = module(x), module(x)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, x * 0.7)
    first.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 0.7))


def units(model):
    return [unit for stage in (model.layer1, model.layer2, model.layer3) for unit in stage]


def test_shake_drop_follows_the_linear_rule_over_depth():
    model = PyramidNet(depth=20, alpha=48, num_classes=10, shakedrop=True)
    probabilities = [float(unit.residual_drop.drop_prob) for unit in units(model)]
    expected = [0.5 * l / 9 for l in range(1, 10)]  # p_l = l/L * 0.5: the last unit drops half the time
    assert probabilities == pytest.approx(expected, abs=1e-7) and probabilities[-1] == 0.5
    assert not any(isinstance(m, ShakeDrop) for m in PyramidNet(depth=20, alpha=48).modules())
    with pytest.raises(ValueError, match="ShakeDrop already drops residual branches"):
        PyramidNet(depth=20, alpha=48, shakedrop=True, drop_path_rate=0.1)


def test_stochastic_depth_follows_the_linear_rule_and_drops_whole_branches():
    model = PyramidNet(depth=20, alpha=48, num_classes=10, drop_path_rate=0.3)
    rates = [unit.residual_drop.drop_prob for unit in units(model)]
    assert all(isinstance(unit.residual_drop, DropPath) for unit in units(model))
    assert rates == pytest.approx([0.3 * l / 9 for l in range(1, 10)])
    # The last unit (rate 0.3) in training, its BatchNorms in evaluation so that the branch of a
    # sample does not depend on the rest of the batch: each sample's output is the shortcut alone
    # (branch dropped) or shortcut + branch / 0.7 (kept, scaled so that the mean is unchanged).
    unit = units(model)[-1].train()
    for module in unit.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    x = torch.randn(4000, unit.bn1.num_features, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(3)
    with torch.no_grad():
        out, branch = unit(x), unit.branch(x)
    shortcut = torch.cat([x, torch.zeros(x.shape[0], branch.shape[1] - x.shape[1], 4, 4)], dim=1)
    dropped = (out - shortcut).flatten(1).abs().amax(dim=1) == 0
    kept_expected = shortcut[~dropped] + branch[~dropped] / 0.7
    torch.testing.assert_close(out[~dropped], kept_expected, rtol=1e-5, atol=1e-5)
    fraction = dropped.double().mean().item()
    assert abs(fraction - 0.3) < 5 * math.sqrt(0.3 * 0.7 / x.shape[0])
    unit.eval()
    with torch.no_grad():
        torch.testing.assert_close(unit(x), shortcut + unit.branch(x))


def test_drop_block_sits_in_the_last_two_stages_with_block_size_7():
    model = PyramidNet(depth=20, alpha=48, num_classes=10, drop_block_rate=0.1)
    placed = [(stage, isinstance(unit.drop_block, DropBlock)) for stage, layer in enumerate(
        (model.layer1, model.layer2, model.layer3), start=1) for unit in layer]
    assert placed == [(1, False)] * 3 + [(2, True)] * 3 + [(3, True)] * 3
    assert {(unit.drop_block.drop_rate, unit.drop_block.block_size) for unit in units(model)[3:]} == {(0.1, 7)}


def test_drop_block_core_equals_a_naive_loop():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 5, generator=generator, dtype=torch.float64)
    seeds = torch.zeros(2, 1, 4, 3)  # block 3: seeds over the 4 x 3 positions where a block fits
    seeds[0, 0, 0, 0] = seeds[0, 0, 3, 2] = seeds[1, 0, 1, 1] = 1
    out = drop_block(x, seeds=seeds, block_size=3)
    keep = torch.ones(2, 6, 5, dtype=torch.float64)
    for n, a, b in ((0, 0, 0), (0, 3, 2), (1, 1, 1)):
        for i in range(a, a + 3):
            for j in range(b, b + 3):
                keep[n, i, j] = 0
    scale = keep.numel() / keep.sum()
    expected = torch.stack([x[n] * keep[n] * scale for n in range(2)])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [8, 16])
def test_drop_block_drops_each_position_with_the_papers_probability(size):
    # Seeds only where a 7x7 block fits: (size-6)^2 positions, each with the paper's gamma; a
    # position (i, j) is dropped unless none of the m_ij seeds covering it fires:
    # P = 1 - (1 - gamma)^(m_i * m_j), m_i = number of block rows a in [0, size-7] with a <= i <= a+6.
    rate, block, count = 0.1, 7, 6000
    gamma = rate / block**2 * size**2 / (size - block + 1) ** 2
    cover = [sum(1 for a in range(size - block + 1) if a <= i <= a + block - 1) for i in range(size)]
    expected = torch.tensor([[1 - (1 - gamma) ** (ci * cj) for cj in cover] for ci in cover], dtype=torch.float64)
    torch.manual_seed(7)
    out = DropBlock(rate, block_size=block).train()(torch.ones(count, 2, size, size))
    assert torch.equal(out[:, 0], out[:, 1])  # one mask for all channels of a sample
    dropped = (out[:, 0] == 0).double()
    frequency = dropped.mean(dim=0)
    tolerance = 5 * torch.sqrt(expected * (1 - expected) / count)
    assert bool(((frequency - expected).abs() <= tolerance).all())
    assert abs(dropped.mean().item() - expected.mean().item()) < 0.01
    assert 0.07 < expected.mean().item() <= rate  # about the rate, less where blocks overlap
    # Kept positions are scaled by all / kept positions of the batch: the mean stays exactly 1.
    kept_values = out[out != 0]
    torch.testing.assert_close(kept_values, torch.full_like(kept_values, out.numel() / kept_values.numel()))
    assert out.mean().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("size", [4, 7])
def test_drop_block_clips_the_block_to_a_small_map(size):
    # PyramidNet's last stage on small inputs has maps of 7x7 or less: the 7x7 block is clipped
    # to the map, so one seed position per sample with gamma = rate / size^2 * size^2 / 1 = rate,
    # and a seed drops the whole map of that sample (all channels). The rest is scaled by
    # all / kept positions of the batch, i.e. count / kept samples.
    rate, count = 0.1, 4000
    torch.manual_seed(3)
    x = torch.rand(count, 2, size, size, dtype=torch.float64) + 0.5  # no zeros of its own
    out = DropBlock(rate, block_size=7).train()(x)
    assert out.shape == x.shape
    dropped = (out == 0).flatten(1).all(dim=1)
    kept = (out != 0).flatten(1).all(dim=1)
    assert bool((dropped | kept).all())  # each sample wholly dropped or wholly kept
    assert abs(dropped.double().mean().item() - rate) < 5 * math.sqrt(rate * (1 - rate) / count)
    scale = count / kept.sum().item()
    torch.testing.assert_close(out[kept], x[kept] * scale, rtol=1e-12, atol=0)


def test_drop_block_is_the_identity_in_evaluation():
    x = torch.randn(3, 2, 8, 8)
    assert torch.equal(DropBlock(0.3).eval()(x), x)
