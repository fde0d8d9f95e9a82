"""The training's shards, checked before any work (``--check`` runs the same checks): the train
split and the split the run evaluates on are built, hold the same class list, and a checkpoint
to resume was trained on that list with this model; the CIFAR transform gets CIFAR's own image
size; each split fills a batch per rank (``check_batches``: the loaders' own count, from the shard
indexes). No model is built.

The loaders check only the class *count* against the model; a val split built from another
class list of the same size (class folders of other names, or another order) would be read with
every label meaning another class, and every error the run reports would be meaningless."""

from __future__ import annotations

from pathlib import Path

from shards.errors import ShardsError
from shards.manifest import class_list_difference, load_manifest

from .checkpoint import check_compatible, read_state
from .config import TrainConfig
from .errors import TrainError
from .models.factory import read_classes
from .paths import in_the_way


def demo_to_build(config: TrainConfig) -> bool:
    """Whether the start builds the demo shards (``data.demo=true`` and a split is missing)."""
    shards = Path(config.data.shards)
    return config.data.demo and not all((shards / f"{split}.json").is_file() for split in ("val", "test"))


def check_demo_folder(config: TrainConfig) -> None:
    """``data.demo=true`` builds the digits only into a missing or empty folder or an earlier
    demo build: never over a user's own data."""
    from shards.demo import not_a_demo_folder

    shards = Path(config.data.shards)
    blocked = in_the_way("data.shards", shards)
    if blocked and not shards.is_file():  # the folder itself a file: not_a_demo_folder says so, with advice
        raise TrainError(f"{blocked}: data.demo=true builds the demo digits into a folder there")
    why = not_a_demo_folder(shards)
    if why:
        raise TrainError(f"data.shards={shards}: {why}; data.demo=true builds the demo digits only into a "
                         "missing or empty folder or an earlier demo build: set data.demo=false to train on it")


def check_shards(config: TrainConfig, checkpoint: Path | None) -> list[str]:
    """The checks above on built shards (call after the demo is built); returns the class list."""
    shards = Path(config.data.shards)
    classes = read_classes(shards)
    split = config.data.eval_split
    try:
        eval_manifest = load_manifest(shards, split)
    except ShardsError as error:  # names the manifest and how to build it
        # A data set without an official split to evaluate on (ImageNet-21k): what to build.
        only_train = not any((shards / f"{name}.json").is_file() or any(shards.glob(f"{name}-*.tar"))
                             for name in ("val", "test"))
        hint = (f"; a data set without one (ImageNet-21k): hold images out of SRC and build them with "
                f"`python -m shards build HELD_OUT {shards} --split {split} --classes {shards / 'train.json'}`"
                if only_train and (shards / "train.json").is_file() else "")
        raise TrainError(f"data.eval_split={split}: {error}{hint}") from None
    eval_classes = list(eval_manifest["classes"])
    if eval_classes != classes:
        differ = class_list_difference(classes, eval_classes, first_where="in train", second_where="there")
        # The split's own build record names its source and annotation files: the command to run,
        # not one that fails again ("give --labels" for ImageNet's flat val; walkthrough).
        build = eval_manifest.get("build", {})
        source = build["source"] if build.get("source") and Path(build["source"]).exists() else "SRC"  # not moved
        options = "".join(f" --{key} {build[key]}" for key in ("labels", "boxes") if build.get(key))
        raise TrainError(f"data.shards={shards}: the {split} split has another class list than train "
                         f"({differ}): its labels would mean other classes; "
                         f"build it again with the train split's list: python -m shards build {source} {shards} "
                         f"--split {split}{options} --classes {shards / 'train.json'} --overwrite")
    if checkpoint is not None:
        check_compatible(read_state(checkpoint), checkpoint=checkpoint, model_name=config.model.name,
                         num_classes=len(classes), shakedrop=config.model.shakedrop, classes=classes, shards=shards)
    check_cifar_image_size(config, load_manifest(shards, "train"))
    if split != "train":
        check_cifar_image_size(config, eval_manifest)
    return classes


def check_cifar_image_size(config: TrainConfig, manifest: dict) -> None:
    """The CIFAR transform pads and crops the images as they are (no resize): at another
    data.image_size than the stored 32 px, training saw each image in a corner of a black canvas
    (its crop anchored at the padding) and evaluation centred it, without a word."""
    from shards.cifar import LAYOUTS, SIDE

    kind = manifest.get("build", {}).get("source_kind")
    if config.data.augmentation != "cifar":
        return
    if kind in LAYOUTS:
        if config.data.image_size != SIDE:
            raise TrainError(f"data.image_size={config.data.image_size}: data.augmentation=cifar pads and crops the "
                             f"images as they are, and {config.data.shards} holds CIFAR's {SIDE} px images: set "
                             f"data.image_size={SIDE}")
        return
    # Other shards (TinyImageNet, STL-10, an ImageFolder): the transform does not resize either, and
    # DALI's crop of a larger image stays near its top-left corner (80x60 images trained on their
    # top-left quarter, rc 0). Their first samples' recorded sizes tell it without decoding.
    size = config.data.image_size
    other = next(((key, width, height) for key, width, height in first_sample_sizes(config.data.shards, manifest)
                  if (width, height) != (size, size)), None)
    if other is not None:
        key, width, height = other
        raise TrainError(f"data.augmentation=cifar takes images as they are (pads and crops {size}x{size}, no "
                         f"resize), but {config.data.shards}'s {manifest.get('split', '')} images are not "
                         f"{size}x{size} ({key}: {width}x{height}): use data.augmentation=imagenet (resize and "
                         f"crop), or build shards of {size}x{size} images")


def first_sample_sizes(shards: str | Path, manifest: dict, count: int = 32) -> list[tuple[str, int, int]]:
    """(key, width, height) of the first ``count`` samples of a split's first shard, from their
    ``.json`` (read from the tar's start; nothing is decoded); samples without sizes are left out."""
    import json
    import tarfile

    if not manifest.get("shards"):
        return []
    found = []
    try:
        with tarfile.open(Path(shards) / manifest["shards"][0]["name"], "r|") as archive:
            for member in archive:
                if member.isfile() and member.name.endswith(".json"):
                    record = json.loads(archive.extractfile(member).read())
                    if isinstance(record, dict) and isinstance(record.get("width"), int):
                        found.append((member.name[:-len(".json")], record["width"], record.get("height")))
                    if len(found) == count:
                        break
    except (OSError, tarfile.TarError, ValueError):
        return found  # a damaged shard: the loader names it with what is wrong
    return found


def check_batches(config: TrainConfig, *, world_size: int, num_classes: int) -> None:
    """A batch larger than a rank's share of the train split, or of the split the run evaluates
    on (loader.val_batch_size, else loader.batch_size): the loaders refuse it when built, after
    the model; here it is one error naming the key, before any work (and by --check)."""
    from .data import LoaderError, steps_per_epoch

    loader = config.loader
    updates = 0
    for split, key, batch, training in (
            ("train", "loader.batch_size", loader.batch_size, True),
            (config.data.eval_split, "loader.val_batch_size" if loader.val_batch_size else "loader.batch_size",
             loader.val_batch_size or loader.batch_size, False)):
        try:
            steps = steps_per_epoch(config.data.shards, split, batch_size=batch, world_size=world_size,
                                    num_classes=num_classes, training=training, backend=loader.backend)
        except LoaderError as error:
            # The eval split refusing the training batch: its own batch is the usual fix.
            own = "; or give the evaluation a batch of its own: loader.val_batch_size" \
                if not training and not loader.val_batch_size else ""
            raise TrainError(f"{key}={batch}: {error}{own}") from None
        if training:
            updates = steps if config.run.max_train_steps is None else min(steps, config.run.max_train_steps)
    warmup = config.schedule.warmup_epochs
    if warmup and round(warmup * updates) == 0:
        # The scheduler counts the warm-up in whole updates: none ran, its start factor with it, unsaid.
        raise TrainError(f"schedule.warmup_epochs={warmup} is {warmup * updates:.2g} of the {updates} updates per "
                         f"epoch: no warm-up update would run; give 0, or at least {1 / updates:.3g} (one update)")


