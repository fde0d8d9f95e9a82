"""The colour augmentation of the paper's ImageNet recipe, as its official code does it
(clovaai/CutMix-PyTorch, ``utils.py``, from fb.resnet.torch): after the random crop and flip, on
images in [0, 1], ``ColorJitter(0.4, 0.4, 0.4)``: brightness, contrast and saturation, each a lerp
``x + a * (target - x)`` with ``a ~ U(-var, var)`` towards black, the image's mean grey and each
pixel's grey; then AlexNet's PCA lighting noise, ``x += V @ (alpha * eigval)`` with
``alpha ~ N(0, std)`` per image. Nothing is clamped (theirs is not).

Their ColorJitter applies the three in a random order per image. The order does not change the
result: the three are linear maps that commute (brightness is a multiple of the identity; the
grey weights sum to 1, so the grey of the mean-grey image is that image, and the mean grey of a
saturation-lerped image is the image's mean grey). Composed, an image's jitter and lighting are
one affine map, ``c1 * x + c2 * grey(x) + c3 * mean_grey(x) + lighting``, equal to their
sequential lerps in every order up to float rounding (tests/test_data_color.py checks all six
against a transcription of their classes).

Training hands each batch's maps (``ColorAugment.maps``: one reduction over the uint8 batch for
the mean greys, and a few [B]-sized ops) to ``apply_mix``, which applies them in its one pass over
the batch (``pipeline/mix/color.py``): the colour costs no float copy of the batch. Every loader
delivers uint8 NHWC crops (DALI on the GPU, DALI's CPU decoder with the host resize, the torch
loader), so this serves them all. Colour before mixing is the official order (the colour is per
image, in the data loader; CutMix in the loop): a pixel pasted from a partner carries the
partner's colour change. ``apply_color`` (and ``ColorAugment.__call__``) is the same change as a
separate step, float NCHW out (about six unfused passes over the batch): the tests' and the
GPU benchmark's comparison.

The draws come from a torch Generator on the batch's device seeded per (epoch seed, rank): no
host-device copy and no sync per step; a resumed epoch draws and drops the steps done before."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..mix.color import GAIN, GREY, GREY_GAIN, OFFSET, apply_maps, identity_maps
from ..seeds import COLOR_STREAM, stream_seed

# fb.resnet.torch's ImageNet PCA (the official code's values): eigenvalues and eigenvectors (columns).
EIGVAL = (0.2175, 0.0188, 0.0045)
EIGVEC = ((-0.5675, 0.7192, 0.4009),
          (-0.5808, -0.0045, -0.8140),
          (-0.5836, -0.6948, 0.4203))


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

    def maps(self, images: Tensor, draw: ColorDraw) -> Tensor:
        """The batch's colour maps for ``apply_mix(..., color=...)`` (``pipeline/mix/color.py``)."""
        return color_maps(images, draw, jitter=self.jitter > 0, lighting=self.lighting_std > 0,
                          constants=self.constants)

    def __call__(self, images: Tensor, draw: ColorDraw) -> Tensor:
        """The change as a step of its own: float NCHW in [0, 1] units out (see ``apply_color``)."""
        return apply_color(images, draw, jitter=self.jitter > 0, lighting=self.lighting_std > 0,
                           constants=self.constants)


def color_constants(device: torch.device | str) -> tuple[Tensor, Tensor, Tensor]:
    """The grey weights [3], the PCA eigenvectors [3, 3] and eigenvalues [3] on ``device``."""
    return (torch.tensor(GREY, device=device), torch.tensor(EIGVEC, device=device),
            torch.tensor(EIGVAL, device=device))


def color_maps(images: Tensor, draw: ColorDraw, *, jitter: bool = True, lighting: bool = True,
               constants: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """Each image's jitter and lighting as one map (``pipeline/mix/color.py``): float32 [B, 5] on
    the images' device. images: uint8 NHWC (0..255), read once for their mean greys when jitter is
    on; ``constants``: ``color_constants`` of the images' device (made here if not given)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: uint8 [B, H, W, 3] expected, got {images.dtype} {tuple(images.shape)}")
    grey_weights, vectors, values = constants or color_constants(images.device)
    batch = images.shape[0]
    maps = identity_maps(batch, device=images.device)
    if lighting:
        maps[:, OFFSET] = (draw.lighting * values) @ vectors.T  # rgb_i = sum_j V_ij alpha_j lambda_j
    if not jitter:
        return maps
    # B(a) C(b) S(c) x = (1-a) [(1-b)(1-c) x + c(1-b) grey(x) + b mean_grey(x)], in any order.
    a, b, c = draw.weights.unbind(1)
    # float32 channel sums: exact while 255 * H * W < 2**24 (images up to 256 x 256), about 1e-7 off beyond.
    pixels = images.shape[1] * images.shape[2]
    channel_means = images.reshape(batch, pixels, 3).sum(1, dtype=torch.float32) / (255.0 * pixels)
    mean_grey = channel_means @ grey_weights
    maps[:, GAIN] = (1 - a) * (1 - b) * (1 - c)
    maps[:, GREY_GAIN] = (1 - a) * c * (1 - b)
    maps[:, OFFSET] += ((1 - a) * b * mean_grey).unsqueeze(1)
    return maps


def apply_color(images: Tensor, draw: ColorDraw, *, jitter: bool = True, lighting: bool = True,
                constants: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """uint8 NHWC (0..255) -> float32 NCHW in [0, 1] units (channels-last strides), jittered and
    lit as ``draw`` says: ``color_maps`` applied as a step of its own."""
    maps = color_maps(images, draw, jitter=jitter, lighting=lighting, constants=constants)
    return apply_maps(images.permute(0, 3, 1, 2).float().div_(255.0), maps)
