"""Generators for the shard builder's tests: small images with known content in every source
layout ImageNet comes in, and every kind of bad input seen in the wild."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from dataclasses import dataclass
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


def make_folder_tar(path: Path, files: dict[str, bytes]) -> Path:
    """A tar of ``wnid/`` folders (not of class tars): the streamed layout read folder by folder."""
    with tarfile.open(path, "w") as archive:
        for name, data in sorted(files.items()):
            _add(archive, name, data)
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


# The official CIFAR archives (https://www.cs.toronto.edu/~kriz/cifar.html): member names and
# formats as published, a few records per batch file instead of 10,000, and class names in an
# order that is not sorted (the official names happen to be), so that meta order can be told apart.
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


@dataclass(frozen=True)
class CifarRecord:
    """One image of a generated CIFAR archive: what the shards must hold for it."""

    member: str  # "<top>/<batch file>"
    index: int  # its position in that file
    image: np.ndarray  # 32 x 32 x 3 uint8 RGB
    fine: int  # CIFAR-10: its only label
    coarse: int | None  # CIFAR-100 only
    filename: str | None  # python versions only


@dataclass(frozen=True)
class CifarArchive:
    """A generated archive: its files (member order as published) and the truth about them."""

    top: str
    files: dict[str, bytes]  # "<top>/<file>" -> bytes
    classes: dict[str, list[str]]  # "fine" (CIFAR-10: its only label), "coarse" -> names in meta order
    records: dict[str, list[CifarRecord]]  # "train" / "test" -> records in archive order

    @property
    def binary(self) -> bool:
        return not self.top.endswith(("-py", "-python"))


def cifar_class_names(count: int, word: str = "class") -> list[str]:
    """``count`` (at most 100) distinct names in an order that is not sorted: steps of 37 mod 100."""
    return [f"{word}_{(i * 37) % 100:02d}" for i in range(count)]


def cifar_archive(top: str, *, records: int = 3) -> CifarArchive:
    """An archive in the layout of ``top``. The pixels and labels depend on the data set only, so
    the binary and python versions of one data set hold the same images under the same keys."""
    hundred = "100" in top
    classes = {"fine": cifar_class_names(100 if hundred else 10)}
    if hundred:
        classes["coarse"] = cifar_class_names(20, "super")
    batches = {"train": [f"data_batch_{n}" for n in range(1, 6)], "test": ["test_batch"]}
    if hundred:
        batches = {"train": ["train"], "test": ["test"]}
    rng = np.random.default_rng(100 if hundred else 10)
    truth: dict[str, list[CifarRecord]] = {}
    files: dict[str, bytes] = {}
    for split, names in batches.items():
        truth[split] = []
        for name in names:
            count = records * (5 if hundred and split == "train" else 1)
            batch = _cifar_batch(top, name, count, len(classes["fine"]), rng)
            files.update(_cifar_batch_file(top, name, batch, split))
            truth[split] += batch
    files.update(_cifar_meta_files(top, classes, records))
    ordered = {f"{top}/{name}": files.get(f"{top}/{name}", b"<html>CIFAR</html>\n") for name in _CIFAR_MEMBERS[top]}
    return CifarArchive(top, ordered, classes, truth)


def _cifar_batch(top: str, name: str, count: int, num_classes: int, rng) -> list[CifarRecord]:
    binary = not top.endswith(("-py", "-python"))
    member = f"{top}/{name}.bin" if binary else f"{top}/{name}"
    start = int(rng.integers(0, num_classes))
    records = []
    for index in range(count):
        fine = (start + 37 * index) % num_classes  # two-digit labels among the first few for CIFAR-100
        records.append(CifarRecord(
            member, index, rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8), fine,
            fine // 5 if num_classes == 100 else None, None if binary else f"{name}_s_{index:06d}.png",
        ))
    return records


def _cifar_batch_file(top: str, name: str, records: list[CifarRecord], split: str) -> dict[str, bytes]:
    # Pixels as published: the R plane, then G, then B, each 32 rows of 32.
    planes = np.stack([r.image.transpose(2, 0, 1).reshape(-1) for r in records])
    if records[0].filename is None:
        labels = [[r.coarse, r.fine] if r.coarse is not None else [r.fine] for r in records]
        data = np.concatenate([np.array(labels, dtype=np.uint8), planes], axis=1).tobytes()
        return {f"{top}/{name}.bin": data}
    entry = {b"batch_label": f"{split} batch {name}".encode(), b"data": planes,
             b"filenames": [r.filename.encode() for r in records]}
    if records[0].coarse is None:
        entry[b"labels"] = [r.fine for r in records]
    else:
        entry.update({b"fine_labels": [r.fine for r in records], b"coarse_labels": [r.coarse for r in records]})
    return {f"{top}/{name}": python2_pickle(entry)}


def _cifar_meta_files(top: str, classes: dict[str, list[str]], records: int) -> dict[str, bytes]:
    def text(names):  # one name a line, and a blank line at the end like the published files
        return ("\n".join(names) + "\n\n").encode()

    if top == "cifar-10-batches-bin":
        return {f"{top}/batches.meta.txt": text(classes["fine"])}
    if top == "cifar-100-binary":
        return {f"{top}/fine_label_names.txt": text(classes["fine"]),
                f"{top}/coarse_label_names.txt": text(classes["coarse"])}
    if top == "cifar-10-batches-py":
        return {f"{top}/batches.meta": python2_pickle({
            b"num_cases_per_batch": records, b"label_names": [n.encode() for n in classes["fine"]], b"num_vis": 3072})}
    return {f"{top}/meta": python2_pickle({b"fine_label_names": [n.encode() for n in classes["fine"]],
                                           b"coarse_label_names": [n.encode() for n in classes["coarse"]]})}


class _Python2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2's cPickle wrote the CIFAR files: byte strings (Python 2's str) as
    BINSTRING, where Python 3 writes a call of ``_codecs.encode``, and numpy's array rebuilder
    under its numpy 1 name. A file written by Python 2.7.18 + numpy 1.16.6 from the same dict
    names the same three globals (numpy.core.multiarray._reconstruct, numpy.ndarray, numpy.dtype)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_string(self, obj) -> None:
        data = obj.encode("ascii") if isinstance(obj, str) else obj
        short = len(data) < 256
        self.write((pickle.SHORT_BINSTRING + bytes([len(data)])) if short
                   else pickle.BINSTRING + struct.pack("<i", len(data)))
        self.write(data)
        self.memoize(obj)

    dispatch[bytes] = save_string
    dispatch[str] = save_string

    def save_global(self, obj, name=None) -> None:
        module = {"numpy._core.multiarray": "numpy.core.multiarray"}.get(obj.__module__, obj.__module__)
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def python2_pickle(obj) -> bytes:
    """``obj`` pickled as Python 2's ``cPickle.dump(obj, f, protocol=2)`` did."""
    out = io.BytesIO()
    _Python2Pickler(out, protocol=2).dump(obj)
    return out.getvalue()


def write_cifar_tar(path: Path, archive: CifarArchive, files: dict[str, bytes] | None = None) -> Path:
    """A ``.tar.gz`` laid out as the official one: the top folder, then its files (``files``
    instead of the archive's own, to spoil them)."""
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo(archive.top)
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in (archive.files if files is None else files).items():
            _add(tar, name, data)
    return Path(path)


def write_cifar_folder(root: Path, archive: CifarArchive, files: dict[str, bytes] | None = None) -> Path:
    """The archive extracted into ``root``; returns the top folder."""
    for name, data in (archive.files if files is None else files).items():
        (Path(root) / name).parent.mkdir(parents=True, exist_ok=True)
        (Path(root) / name).write_bytes(data)
    return Path(root) / archive.top


def make_foldered_tar(path: Path, files: dict[str, bytes], *, gzip: bool = False) -> Path:
    """A tar of ``<folder>/<file>`` members, in the order given."""
    with tarfile.open(path, "w:gz" if gzip else "w") as archive:
        for name, data in files.items():
            _add(archive, name, data)
    return Path(path)


# Ground-truth boxes (shards/boxes.py): ImageNet's PASCAL VOC XML files and CUB-200-2011 --------

def voc_xml(stem: str, size: tuple[int, int], objects: list[tuple[str, list[float]]]) -> bytes:
    """One ILSVRC2012_bbox_val_v3 file, laid out as the published ones (tabs, one tag a line):
    the image's (width, height) and each object's wnid and ``[xmin, ymin, xmax, ymax]``."""
    lines = ["<annotation>", "\t<folder>val</folder>", f"\t<filename>{stem}</filename>",
             "\t<source>", "\t\t<database>ILSVRC_2012</database>", "\t</source>",
             "\t<size>", f"\t\t<width>{size[0]}</width>", f"\t\t<height>{size[1]}</height>", "\t\t<depth>3</depth>",
             "\t</size>", "\t<segmented>0</segmented>"]
    for name, (x0, y0, x1, y1) in objects:
        lines += ["\t<object>", f"\t\t<name>{name}</name>", "\t\t<pose>Unspecified</pose>",
                  "\t\t<truncated>0</truncated>", "\t\t<difficult>0</difficult>", "\t\t<bndbox>",
                  f"\t\t\t<xmin>{x0:g}</xmin>", f"\t\t\t<ymin>{y0:g}</ymin>", f"\t\t\t<xmax>{x1:g}</xmax>",
                  f"\t\t\t<ymax>{y1:g}</ymax>", "\t\t</bndbox>", "\t</object>"]
    return ("\n".join([*lines, "</annotation>"]) + "\n").encode()


def boxed_jpeg(size: tuple[int, int], box: list[int], *, orientation: int = 1) -> bytes:
    """A black ``size`` (width, height) JPEG whose pixels inside ``box`` (inclusive ends, in the
    pixels as stored, i.e. before any EXIF orientation) are white: the box can be read back from
    the pixels of whatever the builder makes of it. ``orientation`` != 1 adds that EXIF tag."""
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1 + 1, x0:x1 + 1] = 255
    save = {}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        save["exif"] = exif.tobytes()
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=95, **save)
    return out.getvalue()


def white_box(pixels: np.ndarray, threshold: int = 128) -> list[int]:
    """[x0, y0, x1, y1] (inclusive) of the pixels brighter than ``threshold`` in an H x W (x C) array."""
    grey = pixels.mean(axis=2) if pixels.ndim == 3 else pixels
    rows, columns = np.nonzero(grey > threshold)
    return [int(columns.min()), int(rows.min()), int(columns.max()), int(rows.max())]


CUB_TOP = "CUB_200_2011"
CUB_METADATA = ("images.txt", "image_class_labels.txt", "bounding_boxes.txt", "train_test_split.txt", "classes.txt")


@dataclass(frozen=True)
class CubSample:
    """One image of a generated CUB-200-2011: what the shards must hold for it."""

    image_id: int
    path: str  # under images/
    class_name: str
    box: list[float]  # [x, y, x + w, y + h], computed here from the x y w h written
    is_training: bool
    data: bytes
    size: tuple[int, int]  # (width, height)


def cub_dataset(*, class_names: list[str] | None = None, per_class: int = 4,
                extra_files: dict[str, bytes] | None = None) -> tuple[dict[str, bytes], list[CubSample]]:
    """A small CUB-200-2011: its files (``CUB_200_2011/...``, metadata and images) and the truth.
    Class names default to the official pattern (``001.Black_footed_Albatross``) but are listed in
    ``classes.txt`` in the order given; images alternate train/test in a pattern that is not
    simply the id's parity, and sizes and boxes (floats, some fractional) differ per image."""
    names = class_names or [f"{i + 1:03d}.Bird_{word}" for i, word in enumerate(["Albatross", "Gull", "Wren"])]
    images: list[CubSample] = []
    for name in names:
        for n in range(per_class):
            image_id = len(images) + 1
            size = (40 + 4 * (image_id % 3), 30 + 6 * (image_id % 2))
            x, y, w, h = 2.5 + image_id % 5, 3.0 + image_id % 4, 10.0 + image_id % 7, 8.25 + image_id % 3
            path = f"{name}/{name.split('.')[-1]}_{image_id:04d}_{n}.jpg"
            images.append(CubSample(image_id, path, name, [x, y, x + w, y + h], image_id % 3 != 1,
                                   jpeg_bytes(4000 + image_id, size=size), size))
    boxes = {image.image_id: _cub_xywh(image) for image in images}
    top = CUB_TOP
    files = {
        f"{top}/images.txt": "".join(f"{i.image_id} {i.path}\n" for i in images),
        f"{top}/image_class_labels.txt": "".join(f"{i.image_id} {names.index(i.class_name) + 1}\n" for i in images),
        f"{top}/classes.txt": "".join(f"{k} {name}\n" for k, name in enumerate(names, start=1)),
        f"{top}/bounding_boxes.txt": "".join(f"{i.image_id} {boxes[i.image_id]}\n" for i in images),
        f"{top}/train_test_split.txt": "".join(f"{i.image_id} {int(i.is_training)}\n" for i in images),
    }
    files = {name: text.encode() for name, text in files.items()}
    files.update({f"{top}/images/{i.path}": i.data for i in images})
    files.update({f"{top}/README": b"CUB-200-2011\n", f"{top}/parts/parts.txt": b"1 back\n"})
    files.update(extra_files or {})
    return files, images


def _cub_xywh(image: CubSample) -> str:
    x0, y0, x1, y1 = image.box
    return f"{x0} {y0} {x1 - x0} {y1 - y0}"


def write_cub_tar(path: Path, files: dict[str, bytes], *, metadata_first: bool = True) -> Path:
    """CUB_200_2011.tgz: ``attributes.txt`` beside the top folder, then the metadata files before
    (or after) the images."""
    ordered = sorted(files, key=lambda name: (name.rsplit("/", 1)[-1] in CUB_METADATA) != metadata_first)
    with tarfile.open(path, "w:gz") as archive:
        _add(archive, "attributes.txt", b"1 has_bill_shape::curved\n")
        folder = tarfile.TarInfo(CUB_TOP)
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        for name in ordered:
            _add(archive, name, files[name])
    return Path(path)


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    """``files`` (relative path -> bytes) written under ``root``; returns ``root``."""
    for name, data in files.items():
        (Path(root) / name).parent.mkdir(parents=True, exist_ok=True)
        (Path(root) / name).write_bytes(data)
    return Path(root)


def run_shards_main(capsys, *args) -> tuple[int, str, str]:
    """``python -m shards`` in-process: (exit status, stdout, stderr); argparse's SystemExit counts
    as the exit status."""
    from shards.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err
