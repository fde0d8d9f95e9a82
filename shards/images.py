"""One input image to one RGB JPEG: keep the original bytes when they already are one,
re-encode only when needed (CMYK, greyscale, palette, PNG named .JPEG, EXIF rotation,
--resize-short), and reject what cannot be decoded, with the reason. Raw pixel records (the
CIFAR archives) become lossless PNGs instead."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

CHECKS = ("header", "decode")
_EXIF_ORIENTATION = 0x0112
# Pillow's own limits: it warns above Image.MAX_IMAGE_PIXELS (89.5 Mpx) and refuses to decode
# above twice that, as a decompression bomb. An image past the refusal was written by the default
# header check but rejected as "undecodable" by --check decode or --resize-short, and `verify
# --decode` failed the shard (walkthrough: a 182 Mpx JPEG): it is refused in every mode, saying
# why. Between the two its warning, a raw two-line Python warning in the build's output, says
# nothing the build does not handle.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@dataclass(frozen=True)
class ImageOptions:
    """How images are checked and (re-)encoded; part of the build plan."""

    resize_short: int | None = None  # shorter side to this many pixels (never upscales)
    quality: int = 90  # JPEG quality when re-encoding
    check: str = "header"  # "header": header + end marker; "decode": full decode of every image
    # Set when every input is raw pixels, the R, G and B planes of a square image of this side
    # (a CIFAR record): stored as a PNG, so the pixels stay exactly the source's.
    raw_rgb_side: int | None = None


@dataclass(frozen=True)
class PreparedImage:
    """An RGB image ready to be written, with the source's size and why it was re-encoded."""

    data: bytes
    width: int
    height: int
    reencoded: str | None  # None when the original bytes were kept
    extension: str = "jpg"  # of its tar member: "jpg" (RGB JPEG) or "png" (from raw pixels)
    stored: tuple[int, int] | None = None  # (width, height) of the stored pixels when not the source's
    orientation: int = 1  # the EXIF orientation turned into the stored pixels (1: none)

    @property
    def stored_size(self) -> tuple[int, int]:
        """(width, height) of the image as stored: the source's unless re-encoded rotated or resized."""
        return self.stored or (self.width, self.height)


@dataclass(frozen=True)
class RejectedImage:
    """An input that cannot become a training image."""

    reason: str


def prepare_image(data: bytes, options: ImageOptions) -> PreparedImage | RejectedImage:
    """Check one encoded image and return it as an RGB JPEG (raw pixels: as a PNG), or the
    reason it is rejected."""
    if options.raw_rgb_side:
        return encode_raw_rgb(data, options.raw_rgb_side)
    if not data:
        return RejectedImage("empty file")
    header = scan_jpeg_header(data)
    image = None
    try:
        if header is None:  # not a plain 8-bit JPEG: let Pillow identify it
            image = Image.open(io.BytesIO(data))
            file_format, mode, (width, height) = image.format, image.mode, image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1) if file_format == "JPEG" else 1
        else:
            file_format, mode, width, height, orientation = "JPEG", *header
    except UnidentifiedImageError:
        return RejectedImage("not an image")
    except Image.DecompressionBombError as error:  # found by Pillow's open (formats other than JPEG)
        return RejectedImage(f"too large: {error}")
    except Exception as error:  # Pillow raises many types for broken headers
        return RejectedImage(f"unreadable header: {error}")
    if Image.MAX_IMAGE_PIXELS and width * height > 2 * Image.MAX_IMAGE_PIXELS:
        return RejectedImage(f"too large: {width}x{height} is {width * height:,} pixels, over the "
                             f"{2 * Image.MAX_IMAGE_PIXELS:,} Pillow decodes (its decompression-bomb guard)")
    reason = _reencode_reason(data, file_format, mode, orientation, min(width, height), options)
    if reason is None and options.check == "header":
        return PreparedImage(data, width, height, None)
    try:
        image = image or Image.open(io.BytesIO(data))
        if reason is None:
            image.load()  # --check decode: a full decode proves the kept bytes are sound
            return PreparedImage(data, width, height, None)
        jpeg, orientation, stored = _reencode(image, options)
    except Exception as error:
        return RejectedImage(f"undecodable: {error}")
    return PreparedImage(jpeg, width, height, reason, stored=stored, orientation=orientation)


def encode_raw_rgb(data: bytes, side: int) -> PreparedImage | RejectedImage:
    """The R, G and B planes of a ``side`` x ``side`` image (rows in order) as a PNG holding
    only its pixels (no metadata chunks; zlib's default level)."""
    if len(data) != 3 * side * side:
        return RejectedImage(f"{len(data)} pixel bytes, not 3 planes of {side}x{side}")
    pixels = np.frombuffer(data, np.uint8).reshape(3, side, side).transpose(1, 2, 0)
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(out, format="PNG")
    return PreparedImage(out.getvalue(), side, side, None, extension="png")


_MODES = {1: "L", 3: "RGB", 4: "CMYK"}  # what Pillow reports for 8-bit JPEGs of 1, 3, 4 components
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def scan_jpeg_header(data: bytes) -> tuple[str, int, int, int] | None:
    """(mode, width, height, EXIF orientation) of an 8-bit JPEG from its markers, or None when
    the file is anything else or anything unusual (the caller then asks Pillow).

    Reading the markers up to the start of scan directly costs a few microseconds; Pillow's
    ``Image.open`` took a third of a pass-through build (bench/bench_shards.py). The tests check
    it against Pillow on every kind of JPEG they make.
    """
    if data[:2] != b"\xff\xd8":
        return None
    position, size, orientation, frame = 2, len(data), 1, None
    while position + 4 <= size:
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        segment = data[position + 4:position + 2 + length]
        if length < 2 or len(segment) != length - 2:
            return None
        if marker in _SOF:
            frame = segment
        elif marker == 0xE1 and segment.startswith(b"Exif\0\0"):
            orientation = _exif_orientation(segment[6:])
        elif marker == 0xDA:  # start of scan: the header is complete
            return _frame_header(frame, orientation)
        position += 2 + length
    return None


def _frame_header(frame: bytes | None, orientation: int | None) -> tuple[str, int, int, int] | None:
    if frame is None or len(frame) < 6 or frame[0] != 8 or frame[5] not in _MODES or orientation is None:
        return None
    height, width = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big")
    return (_MODES[frame[5]], width, height, orientation) if width and height else None


def _exif_orientation(tiff: bytes) -> int | None:
    """The Orientation tag of IFD0 (1 when absent), or None when the EXIF block is malformed."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return None
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return None
    for entry in range(int.from_bytes(tiff[ifd:ifd + 2], order)):
        start = ifd + 2 + 12 * entry
        if start + 12 > len(tiff):
            return None
        if int.from_bytes(tiff[start:start + 2], order) == _EXIF_ORIENTATION:
            return int.from_bytes(tiff[start + 8:start + 10], order)
    return 1


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
        return "data after its end-of-image marker"
    return None


def _has_end_marker(data: bytes) -> bool:
    # Entropy-coded JPEG data stuffs every 0xFF with 0x00, so FF D9 at the end is the real
    # EOI marker; trailing NUL padding is common and harmless.
    return data.rstrip(b"\x00").endswith(b"\xff\xd9")


def _reencode(image: Image.Image, options: ImageOptions) -> tuple[bytes, int, tuple[int, int]]:
    """The image as an upright RGB JPEG, the EXIF orientation applied, and its (width, height)."""
    if options.resize_short and image.format == "JPEG":
        # DCT-domain downscaling while decoding: several times faster than a full decode.
        scale = options.resize_short / min(image.size)
        image.draft("RGB", (int(image.width * scale) + 1, int(image.height * scale) + 1))
    image.load()
    # What exif_transpose reads and acts on (2..8; other values leave the pixels as they are),
    # so that ground-truth boxes can be turned the same way (shards/boxes.py).
    orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    image = ImageOps.exif_transpose(image)
    image = _to_rgb(image)
    if options.resize_short and min(image.size) > options.resize_short:
        scale = options.resize_short / min(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=options.quality)
    return out.getvalue(), orientation if orientation in range(2, 9) else 1, image.size


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
