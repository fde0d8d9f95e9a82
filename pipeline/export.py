"""Final weights as safetensors that timm loads:

    timm.create_model(name, pretrained=True, num_classes=K,
                      pretrained_cfg_overlay=dict(file=PATH, num_classes=K, input_size=..., crop_pct=..., ...))

``num_classes`` must be inside the overlay too: without it timm takes the file for a 1000-class
checkpoint and silently re-initializes the classifier. The rest of the overlay is the evaluation's
preprocessing, for timm's own ``resolve_data_config`` (``load_line``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from shards.durable import fsync_file, give_umask_mode, write_text_atomic


def export_weights(model: torch.nn.Module, path: Path, *, model_name: str, num_classes: int,
                   model_options: dict | None = None, classes: list[str] | None = None,
                   preprocessing: dict | None = None) -> Path:
    """Write the (unwrapped, uncompiled) model's state_dict to ``path`` with the timm name, class
    count and the options its structure depends on (``shakedrop``) in the safetensors metadata,
    and a ``.json`` beside it saying how to load it. ``classes`` (the train manifest's class
    list, index order) and ``preprocessing`` (image size, crop, mean/std: ``data`` section values)
    go into both, so that ``python -m pipeline.evaluate MODEL.safetensors`` needs nothing else."""
    options = dict(model_options or {})
    state = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    described = {"classes": classes, "preprocessing": preprocessing}
    # Under a temporary name, renamed when whole (the .json last): a kill mid-export leaves no
    # cut-short model.safetensors that a rerun of the finished run would keep as its export.
    temporary = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    try:
        save_file(state, str(temporary), metadata={"model_name": model_name, "num_classes": str(num_classes),
                                                   "model_options": json.dumps(options),
                                                   **{key: json.dumps(value) for key, value in described.items()
                                                      if value}})
        _sort_metadata(temporary)
        give_umask_mode(temporary)  # save_file writes 0600
        fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    # Our architectures (PyramidNet) are registered with timm when pipeline.models is imported.
    how = load_line(model_name, num_classes, options, path, ours=type(model).__module__.startswith("pipeline."),
                    preprocessing=preprocessing)
    write_text_atomic(path.with_suffix(".json"), json.dumps({"model_name": model_name, "num_classes": num_classes,
                                                            "model_options": options, "load": how,
                                                            **{k: v for k, v in described.items() if v}}, indent=1))
    return path


_OURS = "import pipeline.models; "  # the load line's start for our architectures (PyramidNet)


def load_line(model_name: str, num_classes: int, options: dict, path: Path, *, ours: bool,
              preprocessing: dict | None = None) -> str:
    """The Python line that loads the weights at ``path``, named by their absolute path: it runs from
    any folder (relative, it was the training's folder's). With ``preprocessing`` (``export_weights``'),
    the overlay also carries the evaluation's input size, crop, mean and std: without them timm's
    own tools (``timm.data.resolve_data_config`` + ``create_transform``) prepare images as for the
    architecture's ImageNet weights (resnet10t: 176 px, bicubic): 89% error for a demo model of 1.7%."""
    extra = "".join(f"{key}={value!r}, " for key, value in options.items())
    overlay = f"file={str(Path(path).absolute())!r}, num_classes={num_classes}"
    given = dict(preprocessing or {})
    if given.get("augmentation") == "cifar":  # its val images are centre-cropped as they are: no resize
        given["crop_pct"] = 1.0
    if "image_size" in given:
        size = given["image_size"]
        # Bilinear: what the loaders' val resize does (with antialias, which PIL's resize has too).
        # timm resizes to floor(size / crop_pct), the loaders to the nearest: the same for whole
        # quotients (224 / 0.875 = 256), one pixel apart for some others (224 / 0.9).
        overlay += f", input_size=(3, {size}, {size}), crop_mode='center', interpolation='bilinear'"
    if "crop_pct" in given:
        overlay += f", crop_pct={given['crop_pct']!r}"
    overlay += "".join(f", {key}={tuple(given[key])!r}" for key in ("mean", "std") if key in given)
    return (f"{_OURS if ours else ''}timm.create_model({model_name!r}, pretrained=True, num_classes={num_classes}, "
            f"{extra}pretrained_cfg_overlay=dict({overlay}))")


def point_record_at(weights: Path) -> None:
    """Make the load line of ``weights``' .json name ``weights`` where they are now: a run folder
    moved (a finished run run again keeps its export), an export set aside as model.before-*
    (its line named model.safetensors, which the new export then replaced)."""
    record = Path(weights).with_suffix(".json")
    try:
        data = json.loads(record.read_text())
        line = load_line(data["model_name"], data["num_classes"], data.get("model_options") or {}, weights,
                         ours=data["load"].startswith(_OURS), preprocessing=data.get("preprocessing"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # none, or not ours to mend
        return
    if line != data["load"]:
        write_text_atomic(record, json.dumps({**data, "load": line}, indent=1))


def _sort_metadata(path: Path) -> None:
    """Rewrite the header of the safetensors file at ``path`` with its metadata keys sorted, in
    place. safetensors keeps the metadata in a Rust HashMap, whose order changes from one call to
    the next: the same weights exported twice gave different bytes (and checksums). The header is
    8 bytes of length, then JSON padded with spaces to that length; the same keys and values
    written again in another order take no more room, so the tensors' offsets do not move."""
    with open(path, "r+b") as file:
        size = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(size))
        header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) <= size:  # always, as serde_json escapes no less than this; else the file stays as written
            file.seek(8)
            file.write(text.ljust(size, b" "))


def model_keys(keys) -> dict[str, str]:
    """Each saved key -> the model's own: a checkpoint saved under DDP holds the wrapper's keys
    (Accelerate's save_state saves the prepared model), ``module.`` before each of the model's."""
    keys = list(keys)
    ddp = bool(keys) and all(key.startswith("module.") for key in keys)
    return {key: key.removeprefix("module.") if ddp else key for key in keys}


def tensors_sha256(path: Path) -> str:
    """A digest of the tensors a safetensors file holds: each one's name (the model's own, see
    ``model_keys``), dtype, shape and bytes, in name order, and nothing of the metadata or of the
    order the writer laid them out. A checkpoint's model.safetensors (Accelerate's, no metadata,
    ``module.`` keys under DDP) and the run's export of the same weights differ as files (their
    sha256 too) but not here, so ``compare`` can say they are one model. Read from the header's
    offsets, a tensor at a time. OSError, or ValueError for a file that is no safetensors."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as file:
        size = int.from_bytes(file.read(8), "little")
        if not 2 <= size <= 100_000_000:  # safetensors' own limit on the header
            raise ValueError(f"{path}: not a safetensors file (a header of {size} bytes)")
        try:
            header = json.loads(file.read(size))
            entries = {key: (value["dtype"], value["shape"], value["data_offsets"])
                       for key, value in header.items() if key != "__metadata__"}
        except (ValueError, TypeError, KeyError, AttributeError):
            raise ValueError(f"{path}: not a safetensors file (its header)") from None
        start = 8 + size
        names = model_keys(entries)
        for key in sorted(entries, key=names.get):
            dtype, shape, (begin, end) = entries[key]
            digest.update(json.dumps([names[key], dtype, shape, end - begin]).encode())
            file.seek(start + begin)
            left = end - begin
            while left:
                block = file.read(min(left, 1 << 20))
                if not block:  # cut short: its file sha256 differs, and so does this
                    digest.update(b"\0cut short")
                    break
                digest.update(block)
                left -= len(block)
    return digest.hexdigest()
