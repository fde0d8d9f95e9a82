"""Generators for the shard builder's tests: small images with known content in every source
layout ImageNet comes in, and every kind of bad input seen in the wild."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def wnid(index: int) -> str:
    """A WordNet-style class id; ids are not in sorted order of index for index >= 10."""
    return f"n{(index * 7919) % 100000:08d}"


def jpeg_bytes(seed: int, size: tuple[int, int] = (40, 30), mode: str = "RGB", quality: int = 90, **save) -> bytes:
    """A small JPEG with smooth random content (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    width, height = size
    base = rng.integers(0, 256, size=(2, 2, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.convert(mode).save(out, format="JPEG", quality=quality, **save)
    return out.getvalue()


def png_bytes(seed: int, mode: str = "RGB", size: tuple[int, int] = (24, 20)) -> bytes:
    """A PNG (to be misnamed .JPEG) in the given mode."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    if mode == "P":
        image = image.quantize(colors=16)
    elif mode == "RGBA":
        image = image.convert("RGBA")
        image.putalpha(128)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    """A 40x20 JPEG whose left half is red and right half blue, tagged with an EXIF orientation."""
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


def bad_inputs() -> dict[str, tuple[bytes, str]]:
    """File name -> (bytes, expected outcome): 'keep', 'reencode' or 'reject'."""
    good = jpeg_bytes(1000)
    return {
        "cmyk.JPEG": (jpeg_bytes(1001, mode="CMYK"), "reencode"),
        "png_named.JPEG": (png_bytes(1002), "reencode"),
        "grey.JPEG": (jpeg_bytes(1003, mode="L"), "reencode"),
        "palette.JPEG": (png_bytes(1004, mode="P"), "reencode"),
        "alpha.JPEG": (png_bytes(1005, mode="RGBA"), "reencode"),
        "rotated.JPEG": (exif_rotated_jpeg(6), "reencode"),
        "trailing.JPEG": (good + b"some bytes after the end marker", "reencode"),
        "truncated.JPEG": (_truncated_jpeg(), "reject"),
        "empty.JPEG": (b"", "reject"),
        "text.JPEG": (b"this is not an image at all\n" * 10, "reject"),
        "good.JPEG": (good, "keep"),
    }


def _truncated_jpeg() -> bytes:
    # Large enough that the cut falls in the entropy-coded data, past a complete header.
    data = jpeg_bytes(1006, size=(320, 240))
    return data[: len(data) * 3 // 4]


def make_imagefolder(root: Path, num_classes: int, per_class: int, *, seed: int = 0) -> dict[str, bytes]:
    """``root/<wnid>/<wnid>_<n>.JPEG``; returns relative path -> bytes."""
    files = {}
    for c in range(num_classes):
        folder = Path(root) / wnid(c)
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            data = jpeg_bytes(seed * 100_000 + c * 1000 + n)
            name = f"{wnid(c)}_{n}.JPEG"
            (folder / name).write_bytes(data)
            files[f"{wnid(c)}/{name}"] = data
    return files


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def make_tar_of_tars(path: Path, files: dict[str, bytes], *, gzip: bool = False) -> Path:
    """The ILSVRC2012_img_train.tar layout (and 21k's): one inner tar per class, class-sorted."""
    by_class: dict[str, dict[str, bytes]] = {}
    for relative, data in sorted(files.items()):
        cls, name = relative.split("/", 1)
        by_class.setdefault(cls, {})[name] = data
    with tarfile.open(path, "w:gz" if gzip else "w") as outer:
        for cls, members in by_class.items():
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as inner_tar:
                for name, data in members.items():
                    _add(inner_tar, name, data)
            _add(outer, f"{cls}.tar", inner.getvalue())
    return Path(path)


def make_flat_tar(path: Path, files: dict[str, bytes]) -> Path:
    """The ILSVRC2012_img_val.tar layout: images without folders."""
    with tarfile.open(path, "w") as archive:
        for name, data in sorted(files.items()):
            _add(archive, name, data)
    return Path(path)


def write_loc_csv(path: Path, labels: dict[str, str]) -> Path:
    """LOC_val_solution.csv: ImageId,PredictionString (wnid then a box, possibly repeated)."""
    lines = ["ImageId,PredictionString"]
    lines += [f"{stem},{w} 10 20 30 40 {w} 1 2 3 4" for stem, w in labels.items()]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def write_devkit(folder: Path, wnids: list[str], ground_truth_wnids: list[str]) -> Path:
    """ILSVRC2012_devkit_t12/data with meta.mat and the ground truth. ILSVRC2012_IDs are given
    in REVERSE sorted-wnid order (plus a non-leaf synset) so that id != sorted position."""
    import scipy.io

    data = Path(folder) / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True, exist_ok=True)
    ordered = sorted(wnids, reverse=True)
    ids = {w: i + 1 for i, w in enumerate(ordered)}
    records = [(ids[w], w, f"words {w}", 0) for w in ordered] + [(len(ordered) + 1, "n99999999", "entity", 3)]
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    synsets = np.array(records, dtype=dtype)
    scipy.io.savemat(data / "meta.mat", {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[w]}\n" for w in ground_truth_wnids))
    return data.parent


# The official CIFAR archives (https://www.cs.toronto.edu/~kriz/cifar.html): member names as
# published, contents a few records of each file's real format (not 10,000).
_CIFAR_MEMBERS = {
    "cifar-10-batches-bin": ["data_batch_1.bin", "batches.meta.txt", "data_batch_3.bin", "data_batch_4.bin",
                             "test_batch.bin", "readme.html", "data_batch_5.bin", "data_batch_2.bin"],
    "cifar-100-binary": ["coarse_label_names.txt", "fine_label_names.txt", "test.bin", "train.bin"],
    "cifar-10-batches-py": ["data_batch_4", "readme.html", "test_batch", "data_batch_3", "batches.meta",
                            "data_batch_2", "data_batch_5", "data_batch_1"],
    "cifar-100-python": ["file.txt~", "train", "test", "meta"],
}
CIFAR_ARCHIVES = {  # official file name -> its top folder
    "cifar-10-binary.tar.gz": "cifar-10-batches-bin",
    "cifar-100-binary.tar.gz": "cifar-100-binary",
    "cifar-10-python.tar.gz": "cifar-10-batches-py",
    "cifar-100-python.tar.gz": "cifar-100-python",
}


def _cifar_file(top: str, name: str, records: int, rng: np.random.Generator) -> bytes:
    """One file of a CIFAR archive: fixed-size records (label bytes + 3072 pixel bytes) for the
    binary versions, pickled dicts (protocol 2, as the originals) for the python versions."""
    import pickle

    pixels = rng.integers(0, 256, size=(records, 3072), dtype=np.uint8)
    if name.endswith((".txt", ".html", "~")):
        return b"airplane\nautomobile\nbird\n" if name.endswith(".txt") else b"<html>CIFAR</html>\n"
    if name.endswith(".bin"):
        label_bytes = 1 if top == "cifar-10-batches-bin" else 2  # CIFAR-100: coarse then fine label
        labels = rng.integers(0, 10, size=(records, label_bytes), dtype=np.uint8)
        return np.concatenate([labels, pixels], axis=1).tobytes()
    if "meta" in name:
        entry = {b"label_names": [b"airplane", b"bird"], b"num_cases_per_batch": records, b"num_vis": 3072}
        if top == "cifar-100-python":
            entry = {b"fine_label_names": [b"apple", b"bed"], b"coarse_label_names": [b"fruit", b"furniture"]}
    else:
        labels = rng.integers(0, 10, size=records).tolist()
        entry = {b"batch_label": f"{name} batch".encode(), b"data": pixels,
                 b"filenames": [f"image_{i}.png".encode() for i in range(records)]}
        entry.update({b"fine_labels": labels, b"coarse_labels": labels} if top == "cifar-100-python"
                     else {b"labels": labels})
    return pickle.dumps(entry, protocol=2)


def cifar_files(top: str, *, records: int = 3) -> dict[str, bytes]:
    """``<top folder>/<file>`` -> bytes of one official CIFAR archive, in its member order."""
    rng = np.random.default_rng(len(top))
    return {f"{top}/{name}": _cifar_file(top, name, records, rng) for name in _CIFAR_MEMBERS[top]}


def make_cifar_archive(path: Path, top: str, *, records: int = 3) -> Path:
    """A CIFAR ``.tar.gz`` laid out as the official one: the top folder, then its files."""
    with tarfile.open(path, "w:gz") as archive:
        folder = tarfile.TarInfo(top)
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        for name, data in cifar_files(top, records=records).items():
            _add(archive, name, data)
    return Path(path)


def make_foldered_tar(path: Path, files: dict[str, bytes], *, gzip: bool = False) -> Path:
    """A tar of ``<folder>/<file>`` members, in the order given."""
    with tarfile.open(path, "w:gz" if gzip else "w") as archive:
        for name, data in files.items():
            _add(archive, name, data)
    return Path(path)
