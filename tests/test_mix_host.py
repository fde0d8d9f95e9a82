"""The host side of a mixing step (issue 11): what the kernel is handed, no host sync, no pinned
allocation per step.

The rows the kernel gets for a sampler's draw are checked against a per-sample transcription of the
row layout from the draw's public fields (mode, lam, boxes, partner): the draw arrives packed, so
these rows never pass through resolve_mix's checks. Syncs are counted by tests/sync_counter.py on
the CPU; the pinned ring is driven with stand-in events that say when a copy has run. On a GPU the
same step runs under torch.cuda.set_sync_debug_mode("error"), with pin_memory forbidden and the
pinned allocator's hand-outs counted.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sync_counter import SyncCounter

import pipeline.mix.rows as rows_module
import pipeline.mix.staging as staging
import pipeline.mix.triton_kernel as triton_kernel
from pipeline.mix import MixParams, MixSampler, apply_mix, resolve_mix
from pipeline.mix.params import image_holes, resolve_holes
from pipeline.mix.sampler import LOOKAHEAD

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)
NUM_CLASSES = 5
BATCH, HEIGHT, WIDTH = 8, 12, 10
LAYER_SHAPES = {"layer1": (6, 5)}
# Every image-level mode, per batch and per sample, the three partner layouts, Cutout + Mixup and
# a feature-level mode (its rows are the ones the layer's hooks get).
SAMPLERS = {
    "cutmix": dict(mode="cutmix"),
    "mixup": dict(mode="mixup", mixup_alpha=0.4),
    "cutmix_or_mixup_gated": dict(mode="cutmix_or_mixup", prob=0.6),
    "cutmix_or_mixup_elem": dict(mode="cutmix_or_mixup", per="elem", prob=0.7),
    "cutmix_minmax_elem": dict(mode="cutmix", per="elem", cutmix_minmax=(0.3, 0.8)),
    "cutout": dict(mode="cutout", cutout_size=5),
    "cutout_elem": dict(mode="cutout", cutout_size=5, per="elem", prob=0.5),
    "cutout_then_mixup": dict(mode="mixup", cutout_size=4),
    "flip": dict(mode="cutmix", partner="flip", prob=0.5),
    "roll_elem": dict(mode="mixup", partner="roll", per="elem"),
    "feature_cutmix": dict(mode="feature_cutmix", layers=("input", "layer1"), layer_shapes=LAYER_SHAPES),
}


def make_batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (BATCH, HEIGHT, WIDTH, 3), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (BATCH,), generator=generator)
    return images, labels


def naive_rows(params: MixParams, *, height: int, width: int) -> np.ndarray:
    """int32 [B, 10] from the draw's public fields, one sample at a time: box, partner, then the
    float32 bits of (own in box, partner in box, own outside, partner outside, label lambda)."""
    rows = []
    for n in range(BATCH):
        mode = params.mode if isinstance(params.mode, str) else params.mode[n]
        box = tuple(params.boxes[n].tolist()) if mode in ("cutmix", "cutout") else (0, 0, 0, 0)
        partner = int(params.partner[n]) if mode in ("cutmix", "mixup") else n
        y1, y2, x1, x2 = box
        lam = np.float32(1)
        if mode == "cutmix":
            lam = np.float32(1 - (y2 - y1) * (x2 - x1) / (height * width))
        elif mode == "mixup":
            lam = np.float32(params.lam[n])
        one = np.float32(1)
        weights = {"none": (1, 0, 1, 0), "cutmix": (0, 1, 1, 0), "mixup": (lam, one - lam, lam, one - lam),
                   "cutout": (0, 0, 1, 0)}[mode]
        floats = np.array([*weights, lam], dtype=np.float32).view(np.int32)
        rows.append([*box, partner, *floats.tolist()])
    return np.array(rows, dtype=np.int32)


@pytest.fixture
def launches(monkeypatch):
    """The kernel launches apply_mix makes (backend="triton" on CPU tensors), recorded, not run."""
    recorded = []
    monkeypatch.setattr(triton_kernel, "_is_interpreted", lambda: True)
    monkeypatch.setattr(triton_kernel, "launch_mix_kernel", lambda *args, **kwargs: recorded.append(kwargs))
    return recorded


def mix_step(sampler, images, labels, **options):
    """One training step's mixing (pipeline/training.py): draw, then apply_mix on the image part."""
    params = sampler.sample(batch_size=BATCH, height=HEIGHT, width=WIDTH)
    image_params = params if params.layer is None else MixParams(mode="none")
    apply_mix(images, labels, params=image_params, mean=MEAN, std=STD, num_classes=NUM_CLASSES,
              **{"check_labels": False, **options})
    return params


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_the_kernel_gets_the_rows_the_draw_describes(name, launches):
    sampler = MixSampler(seed=3, **SAMPLERS[name])
    images, labels = make_batch()
    for _ in range(LOOKAHEAD + 4):  # across a boundary of the blocks the sampler draws at once
        params = mix_step(sampler, images, labels, backend="triton")
        packed = launches[-1]["packed"].numpy()
        if params.layer is not None:  # the image is only normalized; the layer's rows go to its hooks
            height, width = LAYER_SHAPES[params.layer]
            assert np.array_equal(packed, naive_rows(MixParams(mode="none", partner=params.partner), height=HEIGHT,
                                                     width=WIDTH))
            packed = resolve_mix(params, batch_size=BATCH, height=height, width=width).rows
        else:
            height, width = HEIGHT, WIDTH
        if params.cutout_boxes is not None:  # one pass: the holes, with the mixing's partner and lambda
            expected = naive_rows(MixParams(mode="cutout", boxes=params.cutout_boxes), height=height, width=width)
            mixing = naive_rows(params, height=height, width=width)
            expected[:, [4, 9]] = mixing[:, [4, 9]]
        else:
            expected = naive_rows(params, height=height, width=width)
        assert np.array_equal(packed, expected), (name, packed, expected)


# Cutout + Manifold Mixup: on a layer's steps the images get the draw's holes (training.train_step).
BLOCK_SAMPLERS = {name: SAMPLERS[name] for name in ("cutmix_or_mixup_elem", "cutout_then_mixup", "feature_cutmix")}
BLOCK_SAMPLERS["cutout_then_manifold_mixup"] = dict(mode="manifold_mixup", cutout_size=4, layers=("input", "layer1"),
                                                    layer_shapes=LAYER_SHAPES)


@pytest.mark.parametrize("name", list(BLOCK_SAMPLERS))
def test_a_samplers_rows_go_to_a_device_once_per_block(name, monkeypatch):
    copies = []

    def stand_in_copy(array, device):  # the copy to a GPU, recorded (a CPU tensor stands in)
        copies.append((array.shape, device.type))
        return torch.from_numpy(array.copy())

    monkeypatch.setattr(rows_module, "to_device", stand_in_copy)
    device = torch.device("meta")  # not the CPU: so the rows take the copy path
    sampler = MixSampler(seed=8, **BLOCK_SAMPLERS[name])
    layers = set()
    for step in range(LOOKAHEAD + 4):  # a block, then 4 steps of the next
        params = sampler.sample(batch_size=BATCH, height=HEIGHT, width=WIDTH)
        height, width = LAYER_SHAPES.get(params.layer, (HEIGHT, WIDTH))
        resolved = resolve_mix(params, batch_size=BATCH, height=height, width=width)
        on_device = resolved.on_device(device)
        assert np.array_equal(on_device.numpy(), naive_rows(params, height=height, width=width)), step
        assert resolved.on_device(device) is on_device  # a second use of the step copies nothing
        layers.add(params.layer)
        if params.cutout_boxes is not None:  # the holes as apply_mix (image steps) or train_step (layer steps) get them
            if params.layer is None:
                holes = resolve_holes(params, resolved, batch_size=BATCH, height=HEIGHT, width=WIDTH)
            else:
                holes = resolve_mix(image_holes(params), batch_size=BATCH, height=HEIGHT, width=WIDTH)
            expected = naive_rows(MixParams(mode="cutout", boxes=params.cutout_boxes), height=HEIGHT, width=WIDTH)
            expected[:, [4, 9]] = on_device[:, [4, 9]].numpy()
            assert np.array_equal(holes.on_device(device).numpy(), expected), step
    assert len(layers) == (2 if "layers" in BLOCK_SAMPLERS[name] else 1)  # both kinds of step were drawn
    blocks = 2 if params.cutout_boxes is None else 4  # the holes' rows are a block of their own
    assert copies == [((LOOKAHEAD, BATCH, 10), "meta")] * blocks
    # Another batch shape drops the rest of the block: the new draw's block is copied anew.
    params = sampler.sample(batch_size=BATCH - 2, height=HEIGHT, width=WIDTH)
    height, width = LAYER_SHAPES.get(params.layer, (HEIGHT, WIDTH))
    resolve_mix(params, batch_size=BATCH - 2, height=height, width=width).on_device(device)
    assert copies[-1] == ((LOOKAHEAD, BATCH - 2, 10), "meta") and len(copies) == blocks + 1


def test_a_changed_copy_of_a_drawn_step_goes_to_the_device_with_its_own_rows(monkeypatch):
    monkeypatch.setattr(rows_module, "to_device", lambda array, device: torch.from_numpy(array.copy()))
    device = torch.device("meta")  # not the CPU: so the rows take the copy path
    params = MixSampler(seed=9, mode="cutmix").sample(batch_size=BATCH, height=HEIGHT, width=WIDTH)
    resolved = resolve_mix(params, batch_size=BATCH, height=HEIGHT, width=WIDTH)
    assert resolved.on_device(device).any()  # the block is on the "device" now
    changed = dataclasses.replace(resolved, rows=np.zeros_like(resolved.rows))
    assert not changed.on_device(device).any()  # its own rows, not the block's


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_mix_step_reads_no_device_value(name, backend, launches):
    sampler = MixSampler(seed=4, **SAMPLERS[name])
    images, labels = make_batch()
    with SyncCounter() as counter:
        counter.mark(images, labels)
        for _ in range(3):
            mix_step(sampler, images, labels, backend=backend)
    assert counter.syncs == []
    # The control: apply_mix's label check reads the labels' min and max (two syncs on a GPU).
    with SyncCounter() as counter:
        counter.mark(images, labels)
        mix_step(sampler, images, labels, backend=backend, check_labels=True)
    assert [place.split(":")[0] for _, place in counter.syncs] == ["pipeline/mix/core.py"] * 2


class InFlight:
    """A stand-in CUDA event: `query` says whether the copy it follows has run."""

    def __init__(self) -> None:
        self.done = True

    def query(self) -> bool:
        return self.done

    def record(self, stream=None) -> None:
        self.done = False  # a copy was just queued behind it

    def synchronize(self) -> None:
        self.done = True


def ring_with_stand_in_events(monkeypatch) -> staging.PinnedRing:
    ring = staging.PinnedRing(torch.device("cpu"))
    new_slot = ring._new_slot

    def slot_with_stand_in(nbytes):
        slot = new_slot(nbytes)
        slot.event = InFlight()
        return slot

    monkeypatch.setattr(ring, "_new_slot", slot_with_stand_in)
    return ring


def test_the_ring_reuses_its_slots_once_their_copies_have_run(monkeypatch):
    ring = ring_with_stand_in_events(monkeypatch)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda *args, **kwargs: pytest.fail("pin_memory called"))
    payloads = [np.arange(start, start + 2560, dtype=np.int32).reshape(256, 10) for start in range(6)]
    for payload in payloads:
        copied = ring.to_device(payload)
        assert copied.dtype == torch.int32 and np.array_equal(copied.numpy(), payload)
        for slot in ring.slots:
            slot.event.done = True  # the GPU caught up
    assert len(ring.slots) == 1
    buffer = ring.slots[0].host.data_ptr()
    for payload in payloads:
        assert np.array_equal(ring.to_device(payload).numpy(), payload)
        ring.slots[0].event.done = True
    assert len(ring.slots) == 1 and ring.slots[0].host.data_ptr() == buffer  # no allocation after the first
    # Other dtypes and shapes go through the same bytes.
    floats = np.linspace(0, 1, 7, dtype=np.float32)
    assert np.array_equal(ring.to_device(floats).numpy(), floats)


def test_a_slot_still_being_copied_from_is_not_overwritten(monkeypatch):
    ring = ring_with_stand_in_events(monkeypatch)
    first = np.full((256, 10), 7, dtype=np.int32)
    ring.to_device(first)
    ring.slots[0].event.done = True
    ring.to_device(first)  # slot 0 again, its copy now in flight
    in_flight = ring.slots[0]
    for value in range(8):  # the host runs ahead of a GPU that has run none of these copies
        assert np.array_equal(ring.to_device(np.full((256, 10), value, dtype=np.int32)).numpy(),
                              np.full((256, 10), value))
    assert len(ring.slots) == 9 and in_flight in ring.slots
    assert np.array_equal(in_flight.host_bytes[: first.nbytes].view(np.int32), first.reshape(-1))
    for slot in ring.slots:
        slot.event.done = True
    ring.to_device(first)
    assert len(ring.slots) == 9  # caught up: the ring keeps its size and allocates nothing more


def test_a_bigger_payload_grows_its_slot():
    ring = staging.PinnedRing(torch.device("cpu"))
    small, big = np.ones(4, dtype=np.int64), np.arange(staging.INITIAL_SLOT_BYTES, dtype=np.int64)
    assert np.array_equal(ring.to_device(small).numpy(), small)
    assert np.array_equal(ring.to_device(big).numpy(), big)
    assert len(ring.slots) == 1 and len(ring.slots[0].host_bytes) >= big.nbytes


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU tests above stand in)")
CUDA_SAMPLERS = ["cutmix", "cutmix_or_mixup_elem", "cutout_elem", "cutout_then_mixup", "roll_elem",
                 "feature_cutmix"]


def cuda_batch():
    images, labels = make_batch()
    return images.cuda(), labels.cuda()


@needs_cuda
@pytest.mark.parametrize("name", CUDA_SAMPLERS)
def test_cuda_mix_steps_under_sync_debug_mode_error(name):
    sampler = MixSampler(seed=5, **SAMPLERS[name])
    images, labels = cuda_batch()
    mix_step(sampler, images, labels)  # compiles the kernel, copies the normalization constants
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(20):
            mix_step(sampler, images, labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@needs_cuda
@pytest.mark.parametrize("name", CUDA_SAMPLERS)
def test_cuda_mix_steps_allocate_no_pinned_memory(name, monkeypatch):
    sampler = MixSampler(seed=6, **SAMPLERS[name])
    images, labels = cuda_batch()
    for _ in range(5):
        mix_step(sampler, images, labels)
    torch.cuda.synchronize()
    ring = staging.ring_for(images.device)
    buffers = [slot.host.data_ptr() for slot in ring.slots]
    handed_out = torch.cuda.host_memory_stats().get("active_requests.allocated", 0)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda *args, **kwargs: pytest.fail("pin_memory called"))
    for _ in range(50):
        mix_step(sampler, images, labels)
        torch.cuda.synchronize()  # the GPU keeps up: the ring needs no more slots
    assert torch.cuda.host_memory_stats().get("active_requests.allocated", 0) == handed_out
    assert [slot.host.data_ptr() for slot in ring.slots] == buffers


@needs_cuda
def test_cuda_copies_queued_behind_a_busy_gpu_arrive_intact():
    device = torch.device("cuda")
    payloads = [np.full((256, 10), value, dtype=np.int32) for value in range(40)]
    torch.cuda._sleep(200_000_000)  # the stream is busy for a while: the copies queue behind it
    copied = [staging.to_device(payload, device) for payload in payloads]
    torch.cuda.synchronize()
    for payload, on_device in zip(payloads, copied):
        assert np.array_equal(on_device.cpu().numpy(), payload)
