"""One input image to one RGB JPEG: keep the original bytes when they already are one,
re-encode only when needed (CMYK, greyscale, palette, PNG named .JPEG, EXIF rotation,
--resize-short), and reject what cannot be decoded, with the reason."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

CHECKS = ("header", "decode")
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageOptions:
    """How images are checked and (re-)encoded; part of the build plan."""

    resize_short: int | None = None  # shorter side to this many pixels (never upscales)
    quality: int = 90  # JPEG quality when re-encoding
    check: str = "header"  # "header": header + end marker; "decode": full decode of every image


@dataclass(frozen=True)
class PreparedImage:
    """An RGB JPEG ready to be written, with the source's size and why it was re-encoded."""

    jpeg: bytes
    width: int
    height: int
    reencoded: str | None  # None when the original bytes were kept


@dataclass(frozen=True)
class RejectedImage:
    """An input that cannot become a training image."""

    reason: str


def prepare_image(data: bytes, options: ImageOptions) -> PreparedImage | RejectedImage:
    """Check one encoded image and return it as an RGB JPEG, or the reason it is rejected."""
    if not data:
        return RejectedImage("empty file")
    try:
        image = Image.open(io.BytesIO(data))
        file_format, mode, (width, height) = image.format, image.mode, image.size
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1) if file_format == "JPEG" else 1
    except UnidentifiedImageError:
        return RejectedImage("not an image")
    except Exception as error:  # PIL raises many types for broken headers
        return RejectedImage(f"unreadable header: {error}")
    reason = _reencode_reason(data, file_format, mode, orientation, min(width, height), options)
    if reason is None and options.check == "header":
        return PreparedImage(data, width, height, None)
    try:
        if reason is None:
            image.load()  # --check decode: a full decode proves the kept bytes are sound
            return PreparedImage(data, width, height, None)
        jpeg = _reencode(image, options)
    except Exception as error:
        return RejectedImage(f"undecodable: {error}")
    return PreparedImage(jpeg, width, height, reason)


def _reencode_reason(
    data: bytes, file_format: str, mode: str, orientation: int, short_side: int, options: ImageOptions
) -> str | None:
    if file_format != "JPEG":
        return f"{file_format} data"
    if mode != "RGB":
        return f"{mode} JPEG"
    if orientation != 1:
        return "EXIF rotation"
    if options.resize_short and short_side > options.resize_short:
        return "resize"
    if not _has_end_marker(data):
        # A decodable file with bytes after its end marker is re-encoded; a truncated one
        # fails the full decode in _reencode and is rejected.
        return "no end-of-image marker"
    return None


def _has_end_marker(data: bytes) -> bool:
    # Entropy-coded JPEG data stuffs every 0xFF with 0x00, so FF D9 at the end is the real
    # EOI marker; trailing NUL padding is common and harmless.
    return data.rstrip(b"\x00").endswith(b"\xff\xd9")


def _reencode(image: Image.Image, options: ImageOptions) -> bytes:
    if options.resize_short and image.format == "JPEG":
        # DCT-domain downscaling while decoding: several times faster than a full decode.
        scale = options.resize_short / min(image.size)
        image.draft("RGB", (int(image.width * scale) + 1, int(image.height * scale) + 1))
    image.load()
    image = ImageOps.exif_transpose(image)
    image = _to_rgb(image)
    if options.resize_short and min(image.size) > options.resize_short:
        scale = options.resize_short / min(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=options.quality)
    return out.getvalue()


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda value: value / 256).convert("L")  # 16-bit greyscale PNGs
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if has_alpha:
        # Transparent pixels would turn black with a plain convert; paste onto white instead.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
