"""The ImageNet recipe's colour augmentation against the official code's classes (clovaai/CutMix-
PyTorch utils.py), transcribed below with their random draws replaced by given values and run one
image at a time in float64; and the draws' distributions and seeding."""

import itertools

import numpy as np
import pytest
import torch

from pipeline.data.color import ColorAugment, ColorDraw, apply_color, color_maps

# The official values (train.py): Lighting(alphastd=0.1, eigval=..., eigvec=...).
OFFICIAL_EIGVAL = [0.2175, 0.0188, 0.0045]
OFFICIAL_EIGVEC = [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]


# utils.py, transcribed: alpha given instead of random.uniform / normal_, the order instead of random.shuffle.
def _grayscale(img):
    gs = img.clone()
    gs[0].mul_(0.299).add_(gs[1], alpha=0.587).add_(gs[2], alpha=0.114)
    gs[1].copy_(gs[0])
    gs[2].copy_(gs[0])
    return gs


def _saturation(img, alpha):
    return img.lerp(_grayscale(img), alpha)


def _brightness(img, alpha):
    gs = img.new().resize_as_(img).zero_()
    return img.lerp(gs, alpha)


def _contrast(img, alpha):
    gs = _grayscale(img)
    gs.fill_(gs.mean())
    return img.lerp(gs, alpha)


def _lighting(img, alpha):
    eigval, eigvec = torch.tensor(OFFICIAL_EIGVAL, dtype=img.dtype), torch.tensor(OFFICIAL_EIGVEC, dtype=img.dtype)
    rgb = eigvec.clone().mul(alpha.view(1, 3).expand(3, 3)).mul(eigval.view(1, 3).expand(3, 3)).sum(1).squeeze()
    return img.add(rgb.view(3, 1, 1).expand_as(img))


def official(image_hwc: np.ndarray, weights, order, lighting) -> np.ndarray:
    """ToTensor, ColorJitter (the operations in ``order``), Lighting: one image, float64."""
    img = torch.from_numpy(image_hwc).permute(2, 0, 1).double() / 255
    operations = {0: _brightness, 1: _contrast, 2: _saturation}  # their list, before the shuffle
    for op in order:
        img = operations[int(op)](img, float(weights[int(op)]))
    return _lighting(img, torch.tensor(lighting, dtype=torch.float64)).numpy()


def _batch(seed, batch=6, height=9, width=7):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8))


def test_the_batch_equals_the_official_code_image_by_image():
    """Each image against their classes, in an order drawn as their random.shuffle would."""
    images = _batch(0)
    augment = ColorAugment(jitter=0.4, lighting_std=0.1, seed=3, rank=0, device="cpu")
    draw = augment.draw(len(images))
    out = augment(images, draw)
    assert out.dtype == torch.float32 and out.shape == (6, 3, 9, 7)
    assert out.is_contiguous(memory_format=torch.channels_last)
    orders = np.random.default_rng(4).permuted(np.tile(np.arange(3), (len(images), 1)), axis=1)
    for i in range(len(images)):
        expected = official(images[i].numpy(), draw.weights[i].tolist(), orders[i], draw.lighting[i].tolist())
        np.testing.assert_allclose(out[i].numpy(), expected, atol=2e-6)


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_their_random_order_does_not_change_the_result(order):
    """Their ColorJitter applies the three lerps in a random order; they commute (see
    pipeline/data/color.py), so one composed map equals every order, with weights at the ends of
    the range and a saturated, high-contrast image."""
    images = _batch(1, batch=2)
    images[1, :, :4] = 255
    images[1, :, 4:] = torch.tensor([255, 0, 0], dtype=torch.uint8)
    weights = torch.tensor([[0.4, -0.4, 0.3], [-0.25, 0.4, -0.4]])
    lighting = torch.tensor([[0.1, -0.2, 0.05], [0.0, 0.0, 0.0]])
    out = apply_color(images, ColorDraw(weights=weights, lighting=lighting))
    for i in range(2):
        np.testing.assert_allclose(out[i].numpy(), official(images[i].numpy(), weights[i].tolist(), order,
                                                             lighting[i].tolist()), atol=2e-6)


def test_each_part_alone_by_hand():
    """One red and one grey pixel, one operation at a time, against values worked out by hand."""
    image = torch.tensor([[[[255, 0, 0], [51, 51, 51]]]], dtype=torch.uint8)  # red; grey 0.2
    red_grey = 0.299  # grey of pure red
    mean = (red_grey + 0.2) / 2  # the image's mean grey
    zero = torch.zeros(1, 3)

    def run(weights, lighting=zero, **parts):
        return apply_color(image, ColorDraw(weights=torch.tensor([weights]), lighting=lighting), **parts)[0, :, 0]

    red = torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(run([0.25, 0, 0])[:, 0], 0.75 * red)  # brightness: towards black
    torch.testing.assert_close(run([0, 0.5, 0])[:, 0], 0.5 * red + 0.5 * mean)  # contrast: towards the mean grey
    torch.testing.assert_close(run([0, 0, 0.5])[:, 0], 0.5 * red + 0.5 * red_grey)  # saturation: its own grey
    torch.testing.assert_close(run([0, 0, 0.5])[:, 1], torch.full((3,), 0.2))  # a grey pixel stays
    alpha = torch.tensor([[1.0, 0.0, 0.0]])  # the first component alone: eigenvalue x eigenvector
    shift = 0.2175 * torch.tensor([-0.5675, -0.5808, -0.5836])
    torch.testing.assert_close(run([0.3, 0.3, 0.3], alpha, jitter=False)[:, 0], red + shift)


def test_nothing_is_clamped_and_off_means_the_plain_conversion():
    """A white image brightened goes above 1, as theirs does; with both off the result is x / 255."""
    white = torch.full((1, 2, 2, 3), 255, dtype=torch.uint8)
    draw = ColorDraw(weights=torch.tensor([[-0.4, 0.0, 0.0]]), lighting=torch.zeros(1, 3))
    assert torch.allclose(apply_color(white, draw), torch.full((1, 3, 2, 2), 1.4))
    images = _batch(2)
    off = ColorAugment(jitter=0.0, lighting_std=0.0, seed=0, rank=0, device="cpu")
    assert torch.equal(off(images, off.draw(len(images))), images.permute(0, 3, 1, 2).float() / 255)


def test_draws_have_the_official_distributions():
    augment = ColorAugment(jitter=0.4, lighting_std=0.1, seed=5, rank=1, device="cpu")
    draw = augment.draw(60_000)
    weights, lighting = draw.weights.numpy(), draw.lighting.numpy()
    assert weights.min() >= -0.4 and weights.max() < 0.4
    assert abs(weights.mean()) < 0.005 and weights.std() == pytest.approx(0.8 / np.sqrt(12), rel=0.02)  # U(-.4, .4)
    assert abs(lighting.mean()) < 0.002 and lighting.std() == pytest.approx(0.1, rel=0.02)


def test_draws_repeat_per_seed_and_rank_and_differ_between_ranks():
    def first(seed, rank):
        return ColorAugment(jitter=0.4, lighting_std=0.1, seed=seed, rank=rank, device="cpu").draw(4).weights

    assert torch.equal(first(7, 0), first(7, 0))
    assert not torch.equal(first(7, 0), first(7, 1)) and not torch.equal(first(7, 0), first(8, 0))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        apply_color(torch.zeros(1, 3, 4, 4), ColorAugment(jitter=0.4, lighting_std=0.1, seed=0, rank=0,
                                                          device="cpu").draw(1))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ColorAugment(jitter=1.5, lighting_std=0.1, seed=0, rank=0, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU tests above stand in)")
def test_on_cuda_the_same_values_and_no_host_sync():
    """On the GPU: the draws, the maps and the separate colour step enqueue without a host sync,
    and the results equal the CPU's for the same draws."""
    images = _batch(6, batch=8, height=64, width=48)
    augment = ColorAugment(jitter=0.4, lighting_std=0.1, seed=1, rank=0, device="cuda")
    on_device = images.cuda()
    torch.cuda.set_sync_debug_mode("error")
    try:
        draw = augment.draw(len(images))
        maps = augment.maps(on_device, draw)
        out = augment(on_device, draw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu_draw = ColorDraw(weights=draw.weights.cpu(), lighting=draw.lighting.cpu())
    torch.testing.assert_close(maps.cpu(), color_maps(images, cpu_draw), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.cpu(), apply_color(images, cpu_draw), atol=1e-6, rtol=1e-6)
