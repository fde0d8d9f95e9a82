"""The GPU (``device="mixed"``) DALI graphs. Without a GPU they are defined but not built: DALI
checks every operator's arguments against its schema, and each input's device against the
operator's, when the graph is defined, so those mistakes fail here on CPU. With a GPU they run."""

from __future__ import annotations

import pytest
import torch

from loader_fixtures import make_labelled_shards, open_loader
from pipeline.data.augment import Augmentation
from pipeline.data.checks import load_split_shards
from pipeline.data.dali import decoder_for, define_dali_pipeline, image_graph, output_names


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_labelled_shards(tmp_path_factory.mktemp("gpu_graph"))


def define(shards, split, **overrides):
    options = dict(training=split == "train", batch_size=8, rank=0, world_size=1, decoder="mixed", device_id=0,
                   seed=0, part=0, num_threads=2, augmentation=Augmentation(image_size=32), shuffle_buffer=64,
                   hw_decoder_load=0.65, preallocate_hint=(0, 0), sample_ids=False)
    options.update(overrides)
    return define_dali_pipeline(load_split_shards(shards, split), **options)


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("sample_ids", [False, True])
@pytest.mark.parametrize("hint", [(0, 0), (640, 480)])
def test_mixed_decode_graph_is_valid_dali(shards, split, sample_ids, hint):
    from nvidia.dali import Pipeline

    # Defining raises on any argument DALI's schema rejects; building needs the GPU (next test).
    assert isinstance(define(shards, split, sample_ids=sample_ids, preallocate_hint=hint), Pipeline)


@pytest.mark.parametrize("split", ["train", "val"])
def test_the_cpu_and_gpu_graphs_have_the_same_outputs(shards, split):
    # One output schema whatever the decoder: the loader reads outputs by name.
    for sample_ids in (False, True):
        names = output_names(training=split == "train", sample_ids=sample_ids)
        for decoder, device_id in (("mixed", 0), ("cpu", None)):
            pipeline = define(shards, split, decoder=decoder, device_id=device_id, sample_ids=sample_ids)
            # The defined outputs: DALI's public num_outputs builds the pipeline, which needs a GPU.
            assert len(pipeline._graph_out) == len(names), (decoder, names)
    assert output_names(training=True, sample_ids=True) == ("images", "mirror", "labels", "ids")
    assert output_names(training=False, sample_ids=False) == ("images", "labels")


def test_one_place_decides_where_dali_decodes():
    assert decoder_for(torch.device("cuda", 0)) == "mixed" and decoder_for(torch.device("cpu")) == "cpu"


def test_defining_checks_where_each_operator_runs():
    # The control for the test above: definition does check the graph without a GPU. A "gpu"
    # decoder fed by CPU bytes is rejected, as an operator of the mixed graph on the wrong device would be.
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=2, num_threads=1, device_id=0)
    def wrong_device():
        jpegs = fn.external_source(name="jpegs")
        return image_graph(jpegs, training=True, augmentation=Augmentation(image_size=32), decoder="gpu",
                           hw_decoder_load=0.65, preallocate_hint=(0, 0))[0]

    with pytest.raises(RuntimeError, match="stored on"):
        wrong_device()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the graphs are checked above)")
@pytest.mark.parametrize("split", ["train", "val"])
def test_mixed_decode_runs_on_the_gpu(shards, split):
    loader, steps = open_loader(shards, split, batch_size=8, device="cuda", backend="dali")
    batches = list(loader)
    assert len(batches) == steps
    images, labels = batches[0]
    assert images.is_cuda and images.shape == (8, 32, 32, 3) and images.dtype == torch.uint8
    assert labels.is_cuda and labels.dtype == torch.int64 and int(labels.max()) >= 10
