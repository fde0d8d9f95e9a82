"""The CIFAR augmentation (``Augmentation(kind="cifar")``) on shards built from a generated CIFAR
archive (PNG members, so pixels are exact): every train image is exactly a 32x32 window of its
source image zero-padded by 4 pixels, at one of the 9 x 9 offsets, flipped or not, in both
backends, with the offsets spread evenly; the test split comes out exactly as stored. The
reference is the archive's own pixels, written by the test."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from loader_fixtures import make_cifar_shards, open_loader

BACKENDS = ["dali", "torch"]
PAD = 4


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return make_cifar_shards(tmp_path_factory.mktemp("cifar"))  # 60 train, 12 test images


def window_of(output: np.ndarray, source: np.ndarray) -> tuple[int, int, bool]:
    """(dy, dx, flipped) with output == the 32x32 window of ``source`` zero-padded by PAD whose
    corner is at (dy, dx) from the source's, flipped or not; exactly one must fit."""
    padded = np.zeros((32 + 2 * PAD, 32 + 2 * PAD, 3), dtype=np.uint8)
    padded[PAD:PAD + 32, PAD:PAD + 32] = source
    fits = [(dy - PAD, dx - PAD, flipped) for dy in range(2 * PAD + 1) for dx in range(2 * PAD + 1)
            for flipped in (False, True)
            if np.array_equal(output, (lambda w: w[:, ::-1] if flipped else w)(padded[dy:dy + 32, dx:dx + 32]))]
    assert len(fits) == 1, fits
    return fits[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_images_are_exact_padded_crops_with_even_offsets_and_flips(cifar, backend):
    shards, images = cifar
    loader = open_loader(shards, "train", batch_size=8, backend=backend, kind="cifar", padding=PAD,
                         sample_ids=True, seed=1)[0]
    windows, labels = [], Counter()
    for _ in range(6):
        for batch, targets, ids in loader:
            for output, label, sid in zip(batch.numpy(), targets.tolist(), ids):
                windows.append(window_of(output, images[sid].image))
                labels[label == images[sid].fine] += 1
    assert labels == Counter({True: len(windows)})
    offsets = Counter((dy, dx) for dy, dx, _ in windows)
    assert all(-PAD <= dy <= PAD and -PAD <= dx <= PAD for dy, dx in offsets)
    # Each axis' offset is uniform over its 9 values (torchvision's RandomCrop draws them so).
    for axis in (0, 1):
        counts = Counter(window[axis] for window in windows)
        observed = [counts.get(v, 0) for v in range(-PAD, PAD + 1)]
        assert stats.chisquare(observed).pvalue > 1e-3, observed
    flips = sum(flipped for _, _, flipped in windows)
    assert stats.binomtest(flips, len(windows), 0.5).pvalue > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_test_split_is_exactly_the_stored_images(cifar, backend):
    shards, images = cifar
    loader, steps = open_loader(shards, "test", batch_size=5, backend=backend, kind="cifar", sample_ids=True)
    seen = 0
    for batch, targets, ids in loader:
        for output, label, sid in zip(batch.numpy(), targets.tolist(), ids):
            if label < 0:
                continue  # padding of the last batch
            assert np.array_equal(output, images[sid].image) and label == images[sid].fine
            seen += 1
    assert seen == 12 and steps == 3


@pytest.mark.parametrize("kind, earlier", [("cifar", ["graph", "reads_sizes"]), ("cifar", ["graph"]),
                                           ("imagenet", ["graph"])])
def test_a_dali_state_of_an_earlier_graph_says_so(cifar, capfd, kind, earlier):
    # The graph gained operators: each CIFAR training image's size from its header (a state then had no
    # "graph" and no "reads_sizes"), then every image's header read before its decode (a state with
    # "reads_sizes" and no "graph"). DALI does not restore a state into a graph of other operators, so
    # it is not used, and the warning names the cause.
    shards, _ = cifar
    first = open_loader(shards, "train", batch_size=8, backend="dali", kind=kind, seed=1)[0]
    next(iter(first))
    state = json.loads(json.dumps(first.state_dict()))
    assert state["fingerprint"]["graph"] == 2 and state["fingerprint"].get("reads_sizes") is (kind == "cifar" or None)
    for key in earlier:
        state["fingerprint"].pop(key)
    capfd.readouterr()
    later = open_loader(shards, "train", batch_size=8, backend="dali", kind=kind, seed=1, restore=state)[0]
    assert len(list(later.iter_epoch(0))) == len(later)
    assert "made by an earlier version of the DALI loader" in capfd.readouterr().err
