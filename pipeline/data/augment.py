"""The augmentation settings every backend shares, so that DALI and the torch baseline apply
the same train crop/flip and the same validation resize/centre crop.

Two kinds: ``imagenet`` (RandomResizedCrop + flip; val: resize + centre crop) and ``cifar``
(the CIFAR recipe of the ResNet/PyramidNet papers: zero-pad ``padding`` pixels on each side, a
random ``image_size`` crop, flip; val: the image as it is, centre-cropped to ``image_size``)."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

from .checks import LoaderError

KINDS = ("imagenet", "cifar")
# Crop aspect ratios (width / height) a train crop may be drawn with. Past them, where no crop of
# the drawn area fits, torchvision's fallback crop (the whole side at the nearest allowed ratio)
# has round(32 / 500) = 0 rows on a 32 px image: a traceback from a worker, where DALI trained on.
# The paper's range is [3/4, 4/3]; Inception's 1/10..10 outer bound still leaves small images rows.
ASPECT_BOUNDS = (0.1, 10.0)


@dataclass(frozen=True)
class Augmentation:
    """imagenet: train RandomResizedCrop(image_size, random_area, random_aspect_ratio) + horizontal
    flip with ``flip_probability``; val shorter side to ``image_size / crop_pct``, centre crop.
    cifar: train zero padding of ``padding`` pixels, a random ``image_size`` crop (each of the
    (2 * padding + 1)^2 offsets equally likely, as torchvision's RandomCrop) + flip, of images that
    are ``image_size`` square (no resize: another size is a LoaderError at its batch); val centre
    crop (zero-padded where the image is smaller)."""

    image_size: int
    random_area: tuple[float, float] = (0.08, 1.0)
    random_aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_probability: float = 0.5
    crop_pct: float = 0.875
    kind: str = "imagenet"
    padding: int = 4

    def __post_init__(self) -> None:
        _check_types(self)
        if self.kind not in KINDS:
            raise LoaderError(f"augmentation kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.padding < 0:
            raise LoaderError(f"padding must be >= 0, got {self.padding}")
        if self.image_size < 1:
            raise LoaderError(f"image_size must be >= 1, got {self.image_size}")
        low, high = self.random_area
        if not 0 < low <= high <= 1:
            raise LoaderError(f"random_area must satisfy 0 < low <= high <= 1, got {self.random_area}")
        low, high = self.random_aspect_ratio
        if not ASPECT_BOUNDS[0] <= low <= high <= ASPECT_BOUNDS[1]:
            raise LoaderError(f"random_aspect_ratio must satisfy {ASPECT_BOUNDS[0]} <= low <= high <= "
                              f"{ASPECT_BOUNDS[1]} (a crop's width over its height), got {self.random_aspect_ratio}")
        if not 0 <= self.flip_probability <= 1:
            raise LoaderError(f"flip_probability must be in [0, 1], got {self.flip_probability}")
        if not 0 < self.crop_pct <= 1:
            raise LoaderError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    @property
    def checks_train_sizes(self) -> bool:
        """Whether training needs every image at ``image_size`` (the cifar kind: no resize, and its
        crop offsets assume an image of the crop's size); see ``check_train_size``."""
        return self.kind == "cifar"

    @property
    def val_resize(self) -> int:
        """Shorter side before the validation centre crop (224 / 0.875 = 256)."""
        return int(round(self.image_size / self.crop_pct))


def _check_types(augmentation: Augmentation) -> None:
    """Pixel counts are integers and fractions real numbers: a float ``image_size`` or ``padding``
    failed only at the first batch, inside torchvision or DALI, and differently in each."""
    for name in ("image_size", "padding"):
        value = getattr(augmentation, name)
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise LoaderError(f"{name} must be an integer number of pixels, got {value!r}")
    for name in ("flip_probability", "crop_pct"):
        value = getattr(augmentation, name)
        if isinstance(value, bool) or not isinstance(value, Real):
            raise LoaderError(f"{name} must be a number, got {value!r}")
    for name in ("random_area", "random_aspect_ratio"):
        value = getattr(augmentation, name)
        if not (isinstance(value, (tuple, list)) and len(value) == 2
                and all(isinstance(v, Real) and not isinstance(v, bool) for v in value)):
            raise LoaderError(f"{name} must be a (low, high) pair of numbers, got {value!r}")
    # As Python numbers (numpy's pass the checks, and the loaders' saved states are JSON).
    for name, kind in (("image_size", int), ("padding", int), ("flip_probability", float), ("crop_pct", float)):
        object.__setattr__(augmentation, name, kind(getattr(augmentation, name)))
    for name in ("random_area", "random_aspect_ratio"):
        object.__setattr__(augmentation, name, tuple(float(v) for v in getattr(augmentation, name)))


def check_train_size(augmentation: Augmentation, *, height: int, width: int, where: str) -> None:
    """Raise LoaderError for a training image the cifar kind cannot take: one not ``image_size``
    square. The two backends differed there: torchvision's crop failed in a worker on a smaller
    image and cropped a larger one anywhere; DALI's stayed near the top-left corner, silently."""
    size = augmentation.image_size
    if augmentation.checks_train_sizes and (height, width) != (size, size):
        raise LoaderError(f"{where} is {width}x{height}, but the cifar augmentation trains on images as they are "
                          f"(pads and crops {size}x{size}, no resize): use kind='imagenet' (resize and crop) or "
                          f"shards of {size}x{size} images")
