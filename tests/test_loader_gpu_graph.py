"""The GPU (``device="mixed"``) DALI graphs. Without a GPU they are defined but not built: DALI
checks every operator's arguments against its schema, and each input's device against the
operator's, when the graph is defined, so those mistakes fail here on CPU. With a GPU they run."""

from __future__ import annotations

import pytest
import torch

from loader_fixtures import make_labelled_shards
from pipeline.data import create_loader
from pipeline.data.augment import Augmentation
from pipeline.data.checks import load_split_shards
from pipeline.data.dali import define_dali_pipeline, image_graph


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_labelled_shards(tmp_path_factory.mktemp("gpu_graph"))


def define(shards, split, **overrides):
    options = dict(training=split == "train", batch_size=8, rank=0, world_size=1, device_id=0, seed=0,
                   num_threads=2, augmentation=Augmentation(image_size=32), normalize=False, shuffle_buffer=64,
                   hw_decoder_load=0.65, preallocate_hint=(0, 0), with_sample_ids=False)
    options.update(overrides)
    return define_dali_pipeline(load_split_shards(shards, split), **options)


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("hint", [(0, 0), (640, 480)])
def test_mixed_decode_graph_is_valid_dali(shards, split, normalize, hint):
    from nvidia.dali import Pipeline

    # Defining raises on any argument DALI's schema rejects; building needs the GPU (next test).
    assert isinstance(define(shards, split, normalize=normalize, preallocate_hint=hint, with_sample_ids=True),
                      Pipeline)


def test_defining_checks_where_each_operator_runs():
    # The control for the test above: definition does check the graph without a GPU. A "gpu"
    # decoder fed by CPU bytes is rejected, as an operator of the mixed graph on the wrong device would be.
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=2, num_threads=1, device_id=0)
    def wrong_device():
        jpegs = fn.external_source(name="jpegs")
        return image_graph(jpegs, training=True, augmentation=Augmentation(image_size=32), decoder_device="gpu",
                           normalize=False, hw_decoder_load=0.65, preallocate_hint=(0, 0))[0]

    with pytest.raises(RuntimeError, match="stored on"):
        wrong_device()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the graphs are checked above)")
@pytest.mark.parametrize("split", ["train", "val"])
def test_mixed_decode_runs_on_the_gpu(shards, split):
    loader, steps = create_loader(shards, split, batch_size=8, image_size=32, rank=0, world_size=1,
                                  device="cuda", seed=0, backend="dali")
    batches = list(loader)
    assert len(batches) == steps
    images, labels = batches[0]
    assert images.is_cuda and images.shape == (8, 32, 32, 3) and images.dtype == torch.uint8
    assert labels.is_cuda and labels.dtype == torch.int64 and int(labels.max()) >= 10
