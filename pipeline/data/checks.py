"""Start-up checks of a split's shards before any loader starts: the manifest, every tar and
its DALI index (present, not stale), the class count and the batch size. Problems raise
``LoaderError`` with a message that names the file and the fix, never a reader traceback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shards.dali_index import read_index
from shards.errors import ShardsError
from shards.manifest import load_manifest


class LoaderError(ValueError):
    """A loader cannot start on these shards with these arguments."""


@dataclass(frozen=True)
class SplitShards:
    """What the loaders need from one split's manifest, checked against the files on disk."""

    tar_paths: list[str]      # in manifest order: the global sample order DALI shards
    index_paths: list[str]
    shard_samples: list[int]  # samples per tar, same order
    num_samples: int
    num_classes: int

    def listing(self) -> list[list]:
        """``[tar name, samples]`` per shard, in order: what a loader's saved state is checked against
        (names, not paths: the same shards moved to another folder keep their order)."""
        return [[path.rsplit("/", 1)[-1], count] for path, count in zip(self.tar_paths, self.shard_samples)]


def load_split_shards(shards_dir: str | Path, split: str, *, check_indexes: bool = True) -> SplitShards:
    """Read ``shards_dir/<split>.json`` and check that every listed tar and index exists and
    that each index matches its tar (entry count and extent) so that DALI never meets a stale one."""
    shards_dir = Path(shards_dir)
    try:
        manifest = load_manifest(shards_dir, split)  # its message names the file and the fix
    except ShardsError as error:
        raise LoaderError(str(error)) from None
    shards, num_classes = manifest["shards"], manifest["num_classes"]
    if not shards:
        raise LoaderError(f"{shards_dir / f'{split}.json'}: lists no shards")
    for shard in shards:
        _check_shard_files(shards_dir, shard, check_indexes=check_indexes)
    counts = [int(s["samples"]) for s in shards]
    return SplitShards(
        tar_paths=[str(shards_dir / s["name"]) for s in shards],
        index_paths=[str(shards_dir / s["index"]) for s in shards],
        shard_samples=counts,
        num_samples=sum(counts),
        num_classes=num_classes,
    )


def _check_shard_files(shards_dir: Path, shard: dict, *, check_indexes: bool) -> None:
    tar_path, index_path = shards_dir / shard["name"], shards_dir / shard["index"]
    for path, what in ((tar_path, "shard"), (index_path, "index")):
        if not path.exists():
            raise LoaderError(f"{path}: {what} file listed in the manifest is missing "
                              "(copy it again, or rebuild with `python -m shards build`)")
    tar_bytes = tar_path.stat().st_size
    if tar_bytes != shard["bytes"]:
        raise LoaderError(f"{tar_path}: {tar_bytes} bytes but the manifest says {shard['bytes']}: "
                          "the shard changed after the manifest was written; rebuild it")
    if not check_indexes:
        return
    try:
        entries = read_index(index_path)
    except (ValueError, IndexError, OSError) as error:
        raise LoaderError(f"{index_path}: unreadable DALI index ({error}); rebuild the shards") from None
    # Cheap staleness test (no tar scan): same sample count, and no entry past the tar's end.
    end = max((offset + size for sample in entries for _, offset, size, _ in sample), default=0)
    if len(entries) != shard["samples"] or end > tar_bytes:
        raise LoaderError(f"{index_path}: stale index: {len(entries)} samples ending at byte {end}, "
                          f"but {tar_path.name} has {shard['samples']} samples and {tar_bytes} bytes; "
                          "rebuild the shards (or `python -m shards verify` to see what changed)")


def check_num_classes(shards: SplitShards, *, num_classes: int | None, split: str) -> None:
    """The model's class count must equal the manifest's (None skips the check)."""
    if num_classes is not None and num_classes != shards.num_classes:
        raise LoaderError(f"split {split!r} has {shards.num_classes} classes but the model has "
                          f"{num_classes}: use shards built with the model's class list (python -m shards build "
                          "... --classes TRAIN_SHARDS/train.json)")


def check_batch_fits(*, smallest_rank_samples: int, batch_size: int, world_size: int, split: str) -> None:
    """Every rank must be able to fill at least one batch from its share of the data."""
    if batch_size < 1:
        raise LoaderError(f"batch_size must be >= 1, got {batch_size}")
    if batch_size > smallest_rank_samples:
        raise LoaderError(f"batch_size {batch_size} is larger than a rank's share of split {split!r} "
                          f"({smallest_rank_samples} samples with world_size {world_size}): "
                          "use a smaller batch or fewer ranks")
