"""Start-up checks: clear LoaderError messages instead of reader tracebacks."""

from __future__ import annotations

import json
import re
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from loader_fixtures import make_labelled_shards
from pipeline.data import Augmentation, LoaderError, LoaderOptions, create_loader


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_labelled_shards(tmp_path_factory.mktemp("errors"))


@pytest.fixture
def shards(pristine, tmp_path):
    return Path(shutil.copytree(pristine, tmp_path / "shards"))


def start(shards, backend="dali", *, batch_size=8, image_size=32, random_area=(0.08, 1.0), **overrides):
    """The public ``create_loader`` with every argument a test may want to get wrong."""
    arguments = dict(rank=0, world_size=2, device="cpu", seed=0)
    arguments.update(overrides)
    return create_loader(shards, "train", augmentation=Augmentation(image_size=image_size, random_area=random_area),
                         options=LoaderOptions(batch_size=batch_size, backend=backend), **arguments)


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_missing_manifest(shards, backend):
    (shards / "train.json").unlink()
    with pytest.raises(LoaderError, match=r"train\.json: no manifest.*python -m shards build"):
        start(shards, backend)


@pytest.mark.parametrize("suffix, what", [(".tar", "shard"), (".idx", "index")])
def test_missing_shard_or_index(shards, suffix, what):
    (shards / f"train-000001{suffix}").unlink()
    with pytest.raises(LoaderError, match=rf"train-000001\{suffix}: {what} file .* is missing"):
        start(shards)


def test_index_with_the_wrong_sample_count_is_stale(shards):
    index = shards / "train-000000.idx"
    lines = index.read_text().splitlines()
    index.write_text("\n".join([f"v1.2 {len(lines) - 2}", *lines[1:-1]]) + "\n")
    with pytest.raises(LoaderError, match=r"train-000000\.idx: stale index"):
        start(shards)


def test_index_pointing_past_the_tar_is_stale(shards):
    # The same number of samples but offsets from a bigger tar: DALI would fail mid-epoch.
    index = shards / "train-000000.idx"
    header, *lines = index.read_text().splitlines()
    shifted = [" ".join(str(int(f) + 10**7) if i % 4 == 1 else f for i, f in enumerate(line.split())) for line in lines]
    index.write_text("\n".join([header, *shifted]) + "\n")
    with pytest.raises(LoaderError, match="stale index"):
        start(shards)


def test_unreadable_index(shards):
    (shards / "train-000002.idx").write_text("garbage\n")
    with pytest.raises(LoaderError, match=r"train-000002\.idx: unreadable DALI index"):
        start(shards)


def test_tar_changed_after_the_manifest(shards):
    with open(shards / "train-000000.tar", "ab") as tar:
        tar.write(b"\0" * 512)
    with pytest.raises(LoaderError, match="the manifest says"):
        start(shards)


@pytest.mark.parametrize("backend", ["dali", "torch", "synthetic"])
def test_class_count_differs_from_the_model(shards, backend):
    with pytest.raises(LoaderError, match="has 13 classes but the model has 1000"):
        start(shards, backend, num_classes=1000)


@pytest.mark.parametrize("backend", ["dali", "torch", "synthetic"])
def test_batch_larger_than_a_rank_share(shards, backend):
    with pytest.raises(LoaderError, match=r"batch_size 59 is larger than a rank's share .*58 samples"):
        start(shards, backend, batch_size=59)
    loader, steps = start(shards, backend, batch_size=58)  # the largest batch that fits
    assert steps == 1


@pytest.mark.parametrize("overrides, message", [
    (dict(backend="jax"), "unknown backend 'jax'"),
    (dict(rank=2), r"need integers 0 <= rank < world_size, got rank=2, world_size=2"),
    (dict(rank=True), r"need integers 0 <= rank < world_size, got rank=True"),
    (dict(world_size=2.0), r"need integers 0 <= rank < world_size, got rank=0, world_size=2\.0"),
    (dict(image_size=0), "image_size must be >= 1"),
    (dict(random_area=(0.5, 0.1)), "random_area must satisfy"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    # Each of these was accepted and failed at the first batch inside numpy, DALI or a worker (seed),
    # was silently ignored (a restore that is not a state), or said "4 classes but the model has 4".
    (dict(seed=None), r"seed must be an integer >= 0, got None"),
    (dict(seed=-1), r"seed must be an integer >= 0, got -1"),
    (dict(seed="abc"), r"seed must be an integer >= 0, got 'abc'"),
    (dict(seed=1.5), r"seed must be an integer >= 0, got 1\.5"),
    (dict(num_classes="13"), r"num_classes must be a positive integer .* got '13'"),
    (dict(restore="state.json"), r"restore must be a loader's state_dict\(\) .* got str"),
    (dict(restore={"epoch": 3, "step": 9}), r"restore must be .* got a dict with keys \['epoch', 'step'\]"),
    (dict(device="tpu"), r"device: "),
    (dict(image_size=32.5), r"image_size must be an integer number of pixels, got 32\.5"),
    (dict(image_size="32"), r"image_size must be an integer number of pixels, got '32'"),
    (dict(random_area=0.5), r"random_area must be a \(low, high\) pair of numbers, got 0\.5"),
])
def test_bad_arguments(shards, overrides, message):
    with pytest.raises(LoaderError, match=message):
        start(shards, **overrides)


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_labels_outside_the_manifest_classes_stop_the_loader_naming_the_first_sample(shards, backend):
    # The manifest claims 11 classes; the .cls members hold 0..12 (two-digit 10-12 included).
    manifest = json.loads((shards / "train.json").read_text())
    manifest["num_classes"], manifest["classes"] = 11, manifest["classes"][:11]
    (shards / "train.json").write_text(json.dumps(manifest))
    loader, _ = start(shards, backend, world_size=1)
    with pytest.raises(LoaderError, match=r"labels \[(11|12)(, 12)?\] outside \[0, 11\) in the shards' .cls members "
                                          r"\(the first: " + re.escape(str(shards)) + r"/train-\d+\.tar: sample \S+\)"):
        for _ in loader:
            pass


def damage_a_label(shards: Path, text: bytes) -> tuple[Path, str]:
    """The fourth .cls of ``text``'s length in the first train shard overwritten in place (same
    size: the start-up checks pass); returns the shard and the sample's key."""
    shard = shards / "train-000000.tar"
    with tarfile.open(shard) as archive:
        member = [m for m in archive.getmembers() if m.name.endswith(".cls") and m.size == len(text)][3]
    with open(shard, "r+b") as file:
        file.seek(member.offset_data)
        file.write(text)
    return shard, member.name.rsplit(".", 1)[0]


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_a_damaged_label_is_an_error_naming_its_shard_and_sample(shards, backend):
    """A .cls that is not decimal text (a byte flipped after the build): was a bare ValueError
    showing the batch's first labels (DALI), or a worker's traceback (torch)."""
    shard, key = damage_a_label(shards, b"x")
    loader, _ = start(shards, backend, world_size=1)
    message = (f"{shard}: sample {key}: label b'x' is not an ASCII decimal number: the shard is damaged "
               f"(python -m shards verify {shards} finds every such shard)")
    with pytest.raises(LoaderError) as error:
        for _ in loader.iter_epoch(0):
            pass
    assert str(error.value) == message


@pytest.mark.parametrize("backend, damage", [("torch", "header"), ("dali", "image"), ("torch", "image")])
def test_a_shard_damaged_inside_is_an_error_naming_it_not_fewer_samples(shards, backend, damage):
    # Same size (the start-up check passes). A member header overwritten: Python's tarfile (under
    # webdataset) ended the shard there without a word, so the torch backend read fewer samples (an
    # evaluation counted fewer images); DALI reads by the index, past headers. An image's bytes
    # overwritten: both decoders failed with a traceback.
    shard = shards / "train-000000.tar"
    with tarfile.open(shard) as archive:
        member = [m for m in archive.getmembers() if m.name.endswith(".jpg")][3]
    with open(shard, "r+b") as file:
        file.seek(member.offset if damage == "header" else member.offset_data)
        file.write(b"\xff" * 512)
    loader, steps = start(shards, backend, world_size=1)
    expected = {("torch", "header"): r"train-000000\.tar: ended after \d+ of the 18 samples the manifest lists: "
                                     r"the shard is damaged",
                ("torch", "image"): r"train-000000\.tar: sample \S+ does not decode .*: the shard is damaged",
                ("dali", "image"): r"DALI could not read the shards in \S+: .*; a shard may be damaged"}
    with pytest.raises(LoaderError, match=expected[backend, damage]):
        for _ in loader.iter_epoch(0):
            pass


@pytest.mark.parametrize("damage", ["image", "labels"])
def test_the_torch_backends_workers_end_with_its_error(shards, damage):
    """A worker's error (an image that does not decode) or the host's (labels outside the classes)
    ends the DataLoader's workers before it is raised. Left to the garbage collector, the iterator's
    stop never reached them: 5 s of waiting for each, then a kill, in a process that goes on."""
    import multiprocessing

    if damage == "image":
        with tarfile.open(shards / "train-000000.tar") as archive:
            member = [m for m in archive.getmembers() if m.name.endswith(".jpg")][3]
        with open(shards / "train-000000.tar", "r+b") as file:
            file.seek(member.offset_data)
            file.write(b"\xff" * 512)
    else:
        manifest = json.loads((shards / "train.json").read_text())
        manifest["num_classes"], manifest["classes"] = 11, manifest["classes"][:11]
        (shards / "train.json").write_text(json.dumps(manifest))
    before = set(multiprocessing.active_children())
    loader, _ = start(shards, "torch", world_size=1)
    started = set()
    with pytest.raises(LoaderError):
        for _ in loader.iter_epoch(0):
            started = set(multiprocessing.active_children()) - before
    if damage == "image":  # the damaged sample is not in the first batch: the workers ran before it
        assert len(started) == 2
    assert set(multiprocessing.active_children()) - before == set()


def test_dali_reads_what_the_index_lists(shards):
    """The shards' `.idx` files reach DALI's reader (without them every rank would parse every tar
    at start-up): a val shard's index with its entries in reverse order (a valid index of the same
    tar) makes DALI read that shard's samples in reverse, where the tar's own order is the reference."""
    from loader_fixtures import open_loader

    def read_order():
        loader, _ = open_loader(shards, "val", backend="dali", batch_size=8, sample_ids=True)
        return [sid for _, labels, ids in loader.iter_epoch(0) for label, sid in zip(labels.tolist(), ids)
                if label >= 0]  # the padding of the last batch left out

    with tarfile.open(shards / "val-000000.tar") as tar:  # the first shard's samples, in the tar's order
        first_keys = list(dict.fromkeys(member.name.split(".")[0] for member in tar.getmembers()))
    before = read_order()
    index = shards / "val-000000.idx"
    header, *lines = index.read_text().splitlines()
    index.write_text("\n".join([header, *reversed(lines)]) + "\n")
    after = read_order()
    count = len(first_keys)
    assert count > 2 and len(after) == len(before)
    assert after[:count] == before[:count][::-1] and after[count:] == before[count:]


def test_a_cuda_device_without_a_gpu_is_refused_before_any_read(shards, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU, wherever it runs
    with pytest.raises(LoaderError, match="device cuda: torch sees no CUDA GPU here; use device='cpu'"):
        start(shards, device="cuda")


@pytest.mark.parametrize("backend", ["dali", "torch"])
@pytest.mark.parametrize("split, kind, error", [("train", "cifar", True), ("val", "cifar", False),
                                                ("train", "imagenet", False)])
def test_the_cifar_kind_trains_only_on_images_of_its_size_in_both_backends(shards, backend, split, kind, error):
    # The fixture's images are 40x30. torchvision's crop had cropped them anywhere, DALI's near the top-left
    # corner, silently; at 64 px torchvision failed in a worker and DALI returned 64x64 images a third zeros.
    for size in (32, 64):
        loader, steps = create_loader(shards, split, augmentation=Augmentation(image_size=size, kind=kind),
                                      options=LoaderOptions(batch_size=8, backend=backend, num_threads=1), rank=0,
                                      world_size=1, device="cpu", seed=0)
        if error:
            message = (rf": sample n\d+_\d+ is 40x30, but the cifar augmentation trains on images as they are "
                       rf"\(pads and crops {size}x{size}, no resize\)")
            with pytest.raises(LoaderError, match=message):
                next(iter(loader))
        else:
            images, labels = next(iter(loader))
            assert images.shape == (8, size, size, 3)


def test_augmentation_padding_must_be_whole_pixels():
    with pytest.raises(LoaderError, match=r"padding must be an integer number of pixels, got 4\.5"):
        Augmentation(image_size=32, kind="cifar", padding=4.5)


@pytest.mark.parametrize("arguments, message", [
    # Of the wrong kind: a TypeError from the comparison that checked them (walkthrough).
    (dict(hw_decoder_load="0.5"), r"hw_decoder_load must be a number in \[0, 1\], got '0\.5'"),
    (dict(hw_decoder_load=True), r"hw_decoder_load must be a number in \[0, 1\], got True"),
    (dict(preallocate_hint=None), r"preallocate_hint must be \(width, height\), whole numbers >= 0, got None"),
    (dict(preallocate_hint=(1.5, 2)), r"preallocate_hint must be .* got \(1\.5, 2\)"),
    (dict(preallocate_hint=(64, -1)), r"preallocate_hint must be .* got \(64, -1\)"),
])
def test_loader_options_of_the_wrong_kind_are_named(arguments, message):
    with pytest.raises(LoaderError, match=message):
        LoaderOptions(batch_size=8, **arguments)
    assert LoaderOptions(batch_size=8, hw_decoder_load=1, preallocate_hint=[640, 480]).hw_decoder_load == 1


@pytest.mark.parametrize("ratio", [(500.0, 1000.0), (0.001, 0.001), (0.05, 1.0), (2.0, 11.0)])
def test_a_crop_aspect_ratio_past_one_tenth_to_ten_is_refused(ratio):
    with pytest.raises(LoaderError, match=re.escape(f"random_aspect_ratio must satisfy 0.1 <= low <= high <= 10.0 "
                                                    f"(a crop's width over its height), got {ratio}")):
        Augmentation(image_size=32, random_aspect_ratio=ratio)


@pytest.mark.parametrize("backend", ["dali", "torch"])
@pytest.mark.parametrize("ratio", [(10.0, 10.0), (0.1, 0.1)])
def test_both_backends_crop_at_the_aspect_bounds(shards, backend, ratio):
    """The whole area at ratio 10 fits no image: both fall back to a crop of the image's side. At
    [500, 1000] torchvision's fallback had round(32 / 500) = 0 rows: a worker's traceback, while
    DALI trained on (walkthrough); within the bounds both give whole batches."""
    loader, _ = create_loader(shards, "train", augmentation=Augmentation(image_size=32, random_area=(1.0, 1.0),
                                                                          random_aspect_ratio=ratio),
                              options=LoaderOptions(batch_size=8, backend=backend, num_threads=1), rank=0,
                              world_size=1, device="cpu", seed=0)
    images, labels = next(iter(loader))
    assert images.shape == (8, 32, 32, 3) and labels.shape == (8,)


@pytest.mark.parametrize("backend", ["dali", "torch", "synthetic"])
def test_numpy_numbers_are_taken_and_the_state_stays_json(shards, backend):
    # They passed the checks and then failed in json.dumps of the saved state (the first checkpoint).
    import numpy as np

    loader, steps = create_loader(shards, "train", augmentation=Augmentation(image_size=np.int64(32),
                                                                             flip_probability=np.float32(0.5)),
                                  options=LoaderOptions(batch_size=8, backend=backend, num_threads=1),
                                  rank=np.int64(1), world_size=np.int32(2), device="cpu", seed=np.int64(3),
                                  num_classes=np.int64(13))
    next(loader.iter_epoch(np.int64(0)))
    state = json.loads(json.dumps(loader.state_dict()))
    assert state["cursor"]["open_epoch"] == 0 and state["fingerprint"]["seed"] == 3
    assert state["fingerprint"]["rank"] == 1 and state["fingerprint"].get("world_size", 2) == 2  # synthetic: none


def test_a_state_of_before_formats_is_still_taken(shards):
    loader, _ = start(shards, "torch", restore={"cursor": {"started": True, "next_epoch": 1, "open_epoch": None,
                                                           "consumed": 0}})
    assert len(list(loader.iter_epoch(0))) == len(loader)  # not used: the loader starts as a fresh one


@pytest.mark.parametrize("overrides, message", [
    (dict(options={"batch_size": 8}), r"options must be a pipeline.data.LoaderOptions, got dict"),
    (dict(augmentation=224), r"augmentation must be a pipeline.data.Augmentation, got int"),
    (dict(split=None), r"split must be a split name such as 'train' or 'val', got None"),
])
def test_arguments_of_the_wrong_type_are_named(shards, overrides, message):
    # Each was an AttributeError or TypeError from inside the loader (with DALI, at the first batch).
    arguments = dict(split="train", augmentation=Augmentation(image_size=32),
                     options=LoaderOptions(batch_size=8, backend="dali"), rank=0, world_size=1, device="cpu", seed=0)
    arguments.update(overrides)
    with pytest.raises(LoaderError, match=message):
        create_loader(shards, arguments.pop("split"), **arguments)


_READ_DAMAGED = """
import sys
from pipeline.data import Augmentation, LoaderError, LoaderOptions, create_loader
for attempt in range(3):
    for training in (True, False):
        loader, _ = create_loader(sys.argv[1], "train", augmentation=Augmentation(image_size=32), training=training,
                                  options=LoaderOptions(batch_size=8, backend="dali", num_threads=1), rank=0,
                                  world_size=1, device="cpu", seed=attempt)
        try:
            for _ in loader:
                pass
            print("no error")
        except LoaderError as error:
            print(error)
"""


def test_a_jpeg_header_damaged_in_place_is_an_error_not_a_crash(shards):
    """A JPEG's markers overwritten (same size, found by a user): DALI 2.4's CPU decoder died with
    SIGSEGV in about a third of the runs, training and evaluation alike, with no error line. The
    header is now read (and refused) before the decoder sees it, in either graph; a subprocess, so
    that a crash fails the test instead of ending pytest."""
    from processes import run_process

    with tarfile.open(shards / "train-000000.tar") as archive:
        member = [m for m in archive.getmembers() if m.name.endswith(".jpg")][3]
    with open(shards / "train-000000.tar", "r+b") as file:
        file.seek(member.offset_data + 2)  # past the start-of-image marker, inside this member
        file.write(bytes(min(400, member.size - 2)))
    done = run_process([sys.executable, "-c", _READ_DAMAGED, str(shards)], timeout=300, capture_output=True,
                       text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    # DALI's own words inside the parentheses ("nvImageCodec failure: '#3'" in 2.4) may change with its version.
    expected = (re.escape(f"DALI could not read the shards in {shards}: an image's header does not parse (") + ".+"
                + re.escape(f"); a shard may be damaged (python -m shards verify {shards} --decode finds it)"))
    lines = done.stdout.splitlines()
    assert len(lines) == 6 and all(re.fullmatch(expected, line) for line in lines), lines


def test_more_torch_workers_than_cores_read_without_torchs_warning(shards):
    """The worker count is the user's (and part of the data order): torch's multi-line UserWarning
    that it exceeds the cores was noise on every evaluation with the default 4 on a 2-core machine."""
    import os
    import warnings

    workers = len(os.sched_getaffinity(0)) + 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader, steps = create_loader(shards, "train", augmentation=Augmentation(image_size=32),
                                      options=LoaderOptions(batch_size=8, backend="torch", num_threads=workers),
                                      rank=0, world_size=1, device="cpu", seed=0)
        assert sum(1 for _ in loader) == steps
    assert [str(w.message) for w in caught if "worker processes" in str(w.message)] == []


def _jpeg_with_comments(image: np.ndarray, size: int) -> bytes:
    """A valid JPEG of ``image`` made ``size`` bytes long by comment (COM) segments after its
    start marker, which decoders skip: what a camera's large metadata makes of a small picture."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=95)
    plain = buffer.getvalue()
    extra = max(0, size - len(plain))
    count = -(-extra // 65537)  # segments of at most 4 + 65533 bytes, all as even as they come
    bodies = [(extra - 4 * count) // count + (n < (extra - 4 * count) % count) for n in range(count)]
    segments = [b"\xff\xfe" + (body + 2).to_bytes(2, "big") + bytes(body) for body in bodies]
    data = plain[:2] + b"".join(segments) + plain[2:]
    assert len(data) == max(size, len(plain)), (len(data), size)
    return data


def test_an_image_over_16_mib_of_odd_size_decodes(tmp_path):
    """The header check's reshape first took a float factor of the byte count, which float32 does
    not hold exactly above 2**24: such a file (a photo with large metadata) stopped the loader with
    "a shard may be damaged" (found by a review; it decoded before the check existed)."""
    from loader_fixtures import build_shards, open_loader

    rng = np.random.default_rng(0)
    for index, size in enumerate((2**24 + 3, None)):
        image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        folder = tmp_path / "src" / f"n{index:08d}"
        folder.mkdir(parents=True)
        data = _jpeg_with_comments(image, size) if size else _jpeg_with_comments(image, 0)
        (folder / f"photo_{index}.JPEG").write_bytes(data)
    shards = build_shards(tmp_path / "src", tmp_path / "shards", "val")
    assert max(tar.stat().st_size for tar in shards.glob("val-*.tar")) > 2**24  # stored as it is, not re-encoded
    loader, _ = open_loader(shards, "val", backend="dali", batch_size=2, training=False, sample_ids=True,
                            num_threads=1)
    batches = list(loader)
    assert len(batches) == 1 and sorted(Path(i).name for i in batches[0][2]) == ["photo_0.JPEG", "photo_1.JPEG"]
