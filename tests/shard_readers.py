"""Independent readers of built shards for the tests: the webdataset library, DALI's reader
(CPU backend) with our index files, and DALI's own wds2idx as the reference index writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def manifest(out: Path, split: str = "train") -> dict:
    return json.loads((Path(out) / f"{split}.json").read_text())


def read_with_webdataset(out: Path, split: str = "train") -> list[dict]:
    """Every sample as {key, cls, jpg, png, json, shard} (the image member absent is None), in
    stored order, via webdataset."""
    import webdataset as wds

    samples = []
    for shard in manifest(out, split)["shards"]:
        for sample in wds.WebDataset(str(Path(out) / shard["name"]), shardshuffle=False, empty_check=False):
            samples.append({
                "key": sample["__key__"], "cls": int(sample["cls"]), "jpg": sample.get("jpg"),
                "png": sample.get("png"), "json": json.loads(sample["json"]), "shard": shard["name"],
            })
    return samples


def read_labels_with_dali(out: Path, split: str = "train") -> list[int]:
    """All labels through DALI's fn.readers.webdataset with our .idx files (one epoch)."""
    from nvidia.dali import fn, pipeline_def

    shards = manifest(out, split)["shards"]
    paths = [str(Path(out) / s["name"]) for s in shards]
    indexes = [str(Path(out) / s["index"]) for s in shards]

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipeline():
        jpg, cls = fn.readers.webdataset(paths=paths, index_paths=indexes, ext=["jpg", "cls"],
                                         missing_component_behavior="error", name="reader")
        return fn.decoders.image(jpg, device="cpu"), cls

    pipe = pipeline()
    pipe.build()
    size = pipe.epoch_size("reader")
    labels = []
    for _ in range(size):
        _, cls = pipe.run()
        labels.append(int(bytes(np.asarray(cls[0])).decode()))
    return labels


def read_images_with_dali(out: Path, split: str = "train", image: str = "png") -> list[tuple[np.ndarray, int, dict]]:
    """Every sample as (RGB pixels as DALI's CPU decoder gives them, label, .json), one epoch in
    stored order, through fn.readers.webdataset with our .idx files; ``image``: the extension(s)
    of the image member, as DALI's ``ext`` takes them ("png", "jpg;png")."""
    from nvidia.dali import fn, pipeline_def, types

    shards = manifest(out, split)["shards"]
    paths = [str(Path(out) / s["name"]) for s in shards]
    indexes = [str(Path(out) / s["index"]) for s in shards]

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipeline():
        encoded, cls, meta = fn.readers.webdataset(paths=paths, index_paths=indexes, ext=[image, "cls", "json"],
                                                   missing_component_behavior="error", name="reader")
        return fn.decoders.image(encoded, device="cpu", output_type=types.RGB), cls, meta

    pipe = pipeline()
    pipe.build()
    samples = []
    for _ in range(pipe.epoch_size("reader")):
        pixels, cls, meta = pipe.run()
        samples.append((np.array(pixels[0]), int(bytes(np.asarray(cls[0])).decode()),
                        json.loads(bytes(np.asarray(meta[0])).decode())))
    return samples


def reference_index(tar_path: Path, index_path: Path) -> str:
    """The index DALI's own wds2idx writes for a tar."""
    from wds2idx import IndexCreator

    with IndexCreator(str(tar_path), str(index_path), verbose=False) as creator:
        creator.create_index()
    return Path(index_path).read_text()
