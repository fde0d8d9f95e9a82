"""The colour augmentation of the paper's ImageNet recipe, as its official code does it
(clovaai/CutMix-PyTorch, ``utils.py``, from fb.resnet.torch): after the random crop and flip, on
images in [0, 1], ``ColorJitter(0.4, 0.4, 0.4)``: brightness, contrast and saturation, each a lerp
``x + a * (target - x)`` with ``a ~ U(-var, var)`` towards black, the image's mean grey and each
pixel's grey; then AlexNet's PCA lighting noise, ``x += V @ (alpha * eigval)`` with
``alpha ~ N(0, std)`` per image. Nothing is clamped (theirs is not).

Their ColorJitter applies the three in a random order per image. The order does not change the
result: the three are linear maps that commute (brightness is a multiple of the identity; the
grey weights sum to 1, so the grey of the mean-grey image is that image, and the mean grey of a
saturation-lerped image is the image's mean grey). Composed, an image's jitter is one affine map,
``c1 * x + c2 * grey(x) + c3 * mean_grey(x)``, which is how it is computed here (about six
unfused elementwise passes over the batch, the uint8-to-float conversion included; the GPU cost
is not measured yet), equal to their sequential lerps in every order up to float rounding
(tests/test_data_color.py checks all six against a transcription of their classes).

It runs on the device, on the whole batch at once, between the loader and ``apply_mix``: every
loader delivers uint8 NHWC crops (DALI on the GPU, DALI's CPU decoder with the host resize, the
torch loader), so one implementation serves them all, and the result (float NCHW in [0, 1]
units, channels-last strides) is what ``apply_mix`` normalizes and mixes. Mixing after the colour
change is the official order (the colour is per image, in the data loader; CutMix in the loop).

The draws come from a torch Generator on the batch's device seeded per (epoch seed, rank): no
host-device copy and no sync per step; a resumed epoch draws and drops the steps done before."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..seeds import COLOR_STREAM, stream_seed

# fb.resnet.torch's ImageNet PCA (the official code's values): eigenvalues and eigenvectors (columns).
EIGVAL = (0.2175, 0.0188, 0.0045)
EIGVEC = ((-0.5675, 0.7192, 0.4009),
          (-0.5808, -0.0045, -0.8140),
          (-0.5836, -0.6948, 0.4203))
GREY = (0.299, 0.587, 0.114)  # their Grayscale


@dataclass(frozen=True)
class ColorDraw:
    """One batch's colour randomness, on the batch's device."""

    weights: Tensor  # [B, 3] float32: the lerp weights of brightness, contrast, saturation, U(-var, var)
    lighting: Tensor  # [B, 3] float32: PCA weights, N(0, std)


class ColorAugment:
    """ColorJitter (``jitter``: brightness = contrast = saturation variance, 0 = off) and lighting
    noise (``lighting_std``, 0 = off), drawn per image from ``seed`` and ``rank``."""

    def __init__(self, *, jitter: float, lighting_std: float, seed: int, rank: int, device: torch.device | str):
        if not (0 <= jitter <= 1 and 0 <= lighting_std <= 1):
            raise ValueError(f"jitter and lighting_std must be in [0, 1], got {jitter} and {lighting_std}")
        self.jitter, self.lighting_std = float(jitter), float(lighting_std)
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(stream_seed(seed=seed, rank=rank, stream=COLOR_STREAM))
        self.constants = color_constants(self.device)  # once: a host-to-device copy per step would sync

    def draw(self, batch_size: int) -> ColorDraw:
        """The next batch's draws (both kinds, always, so that a draw's place in the sequence does
        not depend on which are on)."""
        options = dict(generator=self.generator, device=self.device)
        weights = (torch.rand(batch_size, 3, **options) * 2 - 1) * self.jitter
        lighting = torch.randn(batch_size, 3, **options) * self.lighting_std
        return ColorDraw(weights=weights, lighting=lighting)

    def __call__(self, images: Tensor, draw: ColorDraw) -> Tensor:
        return apply_color(images, draw, jitter=self.jitter > 0, lighting=self.lighting_std > 0,
                           constants=self.constants)


def color_constants(device: torch.device | str) -> tuple[Tensor, Tensor, Tensor]:
    """The grey weights [1, 3, 1, 1], the PCA eigenvectors [3, 3] and eigenvalues [3] on ``device``."""
    return (torch.tensor(GREY, device=device).view(1, 3, 1, 1), torch.tensor(EIGVEC, device=device),
            torch.tensor(EIGVAL, device=device))


def apply_color(images: Tensor, draw: ColorDraw, *, jitter: bool = True, lighting: bool = True,
                constants: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """uint8 NHWC (0..255) -> float32 NCHW in [0, 1] units (channels-last strides), jittered and
    lit as ``draw`` says; ``constants``: ``color_constants`` of the images' device (made here if not given)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: uint8 [B, H, W, 3] expected, got {images.dtype} {tuple(images.shape)}")
    grey_weights, vectors, values = constants or color_constants(images.device)
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    batch = x.shape[0]
    offset = torch.zeros(batch, 3, device=x.device)
    if lighting:
        offset = offset + (draw.lighting * values) @ vectors.T  # rgb_i = sum_j V_ij alpha_j lambda_j
    if not jitter:
        return x + offset.view(batch, 3, 1, 1)
    # B(a) C(b) S(c) x = (1-a) [(1-b)(1-c) x + c(1-b) grey(x) + b mean_grey(x)], in any order.
    a, b, c = (draw.weights[:, k].view(batch, 1, 1, 1) for k in range(3))
    grey = (x * grey_weights).sum(dim=1, keepdim=True)  # [B, 1, H, W]
    mean_grey = grey.mean(dim=(2, 3), keepdim=True)  # [B, 1, 1, 1]
    shift = ((1 - a) * b * mean_grey).view(batch, 1) + offset  # [B, 3]: per image and channel
    return (1 - a) * (1 - b) * (1 - c) * x + (1 - a) * c * (1 - b) * grey + shift.view(batch, 3, 1, 1)
