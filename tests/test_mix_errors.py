"""Bad arguments give a ValueError whose message starts with the argument's name."""

import numpy as np
import pytest
import torch

from pipeline.mix import MixParams, MixSampler, apply_mix

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def call_apply_mix(**overrides):
    arguments = dict(
        images=torch.zeros(4, 6, 5, 3, dtype=torch.uint8),
        labels=torch.tensor([0, 1, 2, 3]),
        params=MixParams(mode="cutmix", boxes=(1, 3, 0, 2), partner=torch.tensor([3, 2, 1, 0])),
        mean=MEAN,
        std=STD,
        num_classes=4,
    )
    arguments.update(overrides)
    images, labels = arguments.pop("images"), arguments.pop("labels")
    return apply_mix(images, labels, **arguments)


def test_valid_call_passes():
    images, targets = call_apply_mix()
    assert images.shape == (4, 3, 6, 5) and targets.shape == (4, 4)


@pytest.mark.parametrize(
    "overrides, name",
    [
        (dict(images=torch.zeros(4, 6, 5, dtype=torch.uint8)), "images"),
        (dict(images=torch.zeros(4, 6, 5, 3, dtype=torch.int32)), "images"),
        (dict(images=torch.zeros(4, 3, 6, 5, dtype=torch.uint8)), "images"),  # uint8 NCHW by mistake
        (dict(images=torch.zeros(4, 6, 5, 3)), "images"),  # float NHWC by mistake
        (dict(labels=torch.tensor([0, 1, 2, 4])), "labels"),
        (dict(labels=torch.tensor([0, 1, -1, 3])), "labels"),
        (dict(labels=torch.tensor([0.0, 1.0, 2.0, 3.0])), "labels"),
        (dict(labels=torch.tensor([0, 1, 2])), "labels"),
        (dict(num_classes=0), "num_classes"),
        (dict(params=MixParams(mode="cutmix", boxes=(1, 7, 0, 2), partner=torch.arange(4))), "boxes"),
        (dict(params=MixParams(mode="cutmix", boxes=(-1, 3, 0, 2), partner=torch.arange(4))), "boxes"),
        (dict(params=MixParams(mode="cutmix", boxes=(3, 1, 0, 2), partner=torch.arange(4))), "boxes"),
        (dict(params=MixParams(mode="cutmix", boxes=(1.0, 3.0, 0.0, 2.0), partner=torch.arange(4))), "boxes"),
        (dict(params=MixParams(mode="cutmix", partner=torch.arange(4))), "boxes"),
        (dict(params=MixParams(mode="cutmix", boxes=(1, 3, 0, 2))), "partner"),
        (dict(params=MixParams(mode="cutmix", boxes=(1, 3, 0, 2), partner=torch.arange(3))), "partner"),
        (dict(params=MixParams(mode="cutmix", boxes=(1, 3, 0, 2), partner=torch.tensor([0, 1, 2, 4]))), "partner"),
        (dict(params=MixParams(mode="cutmix", lam=0.5, boxes=(1, 3, 0, 2), partner=torch.arange(4))), "lam"),
        (dict(params=MixParams(mode="mixup", partner=torch.arange(4))), "lam"),
        (dict(params=MixParams(mode="mixup", lam=1.5, partner=torch.arange(4))), "lam"),
        (dict(params=MixParams(mode="cutout", lam=0.5, boxes=(1, 3, 0, 2))), "lam"),
        (dict(params=MixParams(mode="blend")), "mode"),
        (dict(params=MixParams(mode=("none", "none"))), "mode"),
        (dict(mean=(0.5, 0.5)), "images"),
        (dict(std=(0.25, 0.25)), "mean, std"),
        (dict(std=(0.25, 0.0, 0.25)), "std"),
        (dict(out_dtype=torch.float64), "out_dtype"),
        (dict(memory_format=torch.channels_last_3d), "memory_format"),
        (dict(label_smoothing=1.0), "label_smoothing"),
        (dict(backend="cuda"), "backend"),
        # Each of these ran without a word: 0..255 floats, normalized images, a mean in 0..255 units.
        (dict(images=torch.full((4, 3, 6, 5), 200.0)), "images"),
        (dict(images=torch.full((4, 3, 6, 5), -2.1)), "images"),
        (dict(images=torch.full((4, 3, 6, 5), float("nan"))), "images"),
        (dict(mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4)), "mean"),
        (dict(params=None), "params"),
        (dict(params={"mode": "cutmix"}), "params"),
    ],
)
def test_apply_mix_names_the_bad_argument(overrides, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        call_apply_mix(**overrides)


@pytest.mark.parametrize(
    "options, name",
    [
        (dict(mode="cutmix", cutmix_alpha=0.0), "cutmix_alpha"),
        (dict(mode="cutmix_or_mixup", cutmix_alpha=-1.0), "cutmix_alpha"),
        (dict(mode="mixup", mixup_alpha=0.0), "mixup_alpha"),
        (dict(mode="cutmix_or_mixup", mixup_alpha=0.0), "mixup_alpha"),
        (dict(mode="cutout"), "cutout_size"),
        (dict(mode="cutout", cutout_size=0), "cutout_size"),
        (dict(mode="cutmix", cutmix_minmax=(0.8, 0.2)), "cutmix_minmax"),
        (dict(mode="cutmix", prob=1.5), "prob"),
        (dict(mode="cutmix_or_mixup", switch_prob=-0.1), "switch_prob"),
        (dict(mode="cutmiks"), "mode"),
        (dict(per="pair"), "per"),
        (dict(partner="shuffle"), "partner"),
        (dict(seed=None), "seed"),  # numpy would seed from the OS: no run would repeat
        (dict(seed=-5), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(rank=-1), "rank"),
        (dict(cutmix_alpha="1.0"), "cutmix_alpha"),
        (dict(prob=None), "prob"),
        (dict(mode="mixup", cutout_size=4.5), "cutout_size"),
        (dict(cutmix_minmax=("0.2", "0.8")), "cutmix_minmax"),
        # inf drew lam 0 with an inverted box (cutmix: unmixed images, the partner's target) or NaN
        # (mixup); 1e308 drew lam 0 (walkthrough). The config refuses them too.
        (dict(mode="cutmix", cutmix_alpha=float("inf")), "cutmix_alpha"),
        (dict(mode="mixup", mixup_alpha=float("inf")), "mixup_alpha"),
        (dict(mode="cutmix", cutmix_alpha=1e308), "cutmix_alpha"),
        (dict(mode="mixup", mixup_alpha=float("nan")), "mixup_alpha"),
    ],
)
def test_sampler_names_the_bad_argument(options, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        MixSampler(**options)


def test_minmax_too_small_for_a_layer_fails_at_construction():
    # Sides lie in [int(H * 0.3), int(H * 0.4)): empty on a 2x2 layer ([0, 0)) and on a 7x7 one
    # ([2, 2)), known before any draw; [3, 4) on a 10x10 one.
    options = dict(mode="feature_cutmix", cutmix_minmax=(0.3, 0.4), layers=("input", "layer2", "layer3"))
    for small in (2, 7):
        with pytest.raises(ValueError, match=rf"^cutmix_minmax: .* on a {small}x{small} grid"):
            MixSampler(**options, layer_shapes={"layer2": (28, 28), "layer3": (small, small)})
    sampler = MixSampler(**options, layer_shapes={"layer2": (28, 28), "layer3": (10, 10)}, seed=3)
    sides = {}
    for _ in range(40):
        params = sampler.sample(batch_size=2, height=50, width=50)
        boxes = params.boxes
        sides.setdefault(params.layer, set()).update((boxes[:, 1] - boxes[:, 0]).tolist())
    assert sides["layer3"] == {3} and sides["layer2"] <= set(range(8, 11)) and sides[None] <= set(range(15, 20))


def test_minmax_alpha_is_not_needed():
    # timm's convention: with cutmix_minmax the box ignores alpha (0 would be refused without it).
    sampler = MixSampler(mode="cutmix", cutmix_alpha=0.0, cutmix_minmax=(0.2, 0.8), per="elem", seed=3)
    boxes = sampler.sample(batch_size=64, height=20, width=30).boxes
    sides = torch.stack([boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]], dim=1)
    assert ((sides >= torch.tensor([4, 6])) & (sides < torch.tensor([16, 24]))).all()  # [int(H*0.2), int(H*0.8))


@pytest.mark.parametrize(
    "options, batch_size",
    [
        (dict(mode="cutmix"), 1),
        (dict(mode="mixup"), 1),
        (dict(mode="cutmix_or_mixup", partner="roll"), 1),
        (dict(mode="cutmix", partner="flip"), 5),
    ],
)
def test_batch_too_small_for_the_partner(options, batch_size):
    with pytest.raises(ValueError, match="^batch_size:"):
        MixSampler(**options).sample(batch_size=batch_size, height=8, width=8)


def test_batch_of_one_without_partner_is_fine():
    params = MixSampler(mode="cutout", cutout_size=4).sample(batch_size=1, height=8, width=8)
    images, targets = apply_mix(torch.zeros(1, 8, 8, 3, dtype=torch.uint8), torch.tensor([2]), params=params,
                                mean=MEAN, std=STD, num_classes=3)  # fmt: skip
    assert torch.equal(targets, torch.tensor([[0.0, 0.0, 1.0]]))


@pytest.mark.parametrize("name, value", [("height", 0), ("height", -5), ("width", 32.0), ("batch_size", -1),
                                         ("batch_size", 4.0)])
def test_the_sampler_refuses_a_batch_shape_that_is_not_one(name, value):
    # height 0 drew NaN lambdas, -5 boxes outside the image, both with at most a numpy warning.
    arguments = dict(batch_size=4, height=8, width=8) | {name: value}
    with pytest.raises(ValueError, match=rf"^{name}: must be an integer >= [01] \(the batch's shape\)"):
        MixSampler(seed=1).sample(**arguments)


def test_float_images_slightly_outside_0_1_are_taken():
    # A resize overshoots [0, 1] a little, and the ImageNet recipe's colour step as a step of its own
    # (unclamped, as the paper's code) reached -0.84 and 2.23: not a mistake of units.
    images = torch.linspace(-0.9, 2.3, 4 * 3 * 6 * 5).reshape(4, 3, 6, 5)
    mixed, _ = call_apply_mix(images=images, params=MixParams(mode="none"))
    expected = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(mixed, expected)
    # The check off: a hot loop over trusted data does not pay for it.
    call_apply_mix(images=torch.full((4, 3, 6, 5), 200.0), params=MixParams(mode="none"), check_range=False)


def test_a_draw_applied_to_images_of_another_size_says_to_draw_for_them():
    sampler = MixSampler(mode="cutmix", seed=3)
    params = sampler.sample(batch_size=4, height=64, width=64)
    with pytest.raises(ValueError, match=r"^params: drawn for 4 images of 64x64, applied to 4 of 6x5: draw them "
                                         r"with MixSampler.sample\(batch_size=4, height=6, width=5\)"):
        call_apply_mix(params=params)


@pytest.mark.parametrize("options, name", [(dict(mode="cutmix", mixup_alpha=0.2), "mixup_alpha"),
                                           (dict(mode="mixup", switch_prob=0.3), "switch_prob"),
                                           (dict(mode="none", partner="roll"), "partner"),
                                           (dict(mode="cutout", cutout_size=4, partner="flip"), "partner")])
def test_the_sampler_refuses_an_option_its_mode_never_reads(options, name):
    # As the config and the preview CLI do: the value would change nothing.
    with pytest.raises(ValueError, match=rf"^{name}: mode='{options['mode']}' does not use it \(only .* do\), so "):
        MixSampler(**options)
    MixSampler(**{**options, name: MixSampler.__init__.__kwdefaults__[name]})  # its default is fine


def test_cutmix_minmax_may_be_an_array_or_a_tensor():
    for pair in (np.array([0.2, 0.8]), torch.tensor([0.2, 0.8]), [0.2, 0.8]):
        boxes = MixSampler(mode="cutmix", cutmix_minmax=pair, seed=3).sample(batch_size=4, height=20, width=20).boxes
        assert ((boxes[:, 1] - boxes[:, 0] >= 4) & (boxes[:, 1] - boxes[:, 0] < 16)).all()


def test_a_layer_draw_resolved_on_another_grid_names_the_layer_shapes():
    from pipeline.mix import resolve_mix

    sampler = MixSampler(mode="feature_cutmix", layers=("layer2",), layer_shapes={"layer2": (8, 8)}, seed=3)
    params = sampler.sample(batch_size=4, height=64, width=64)
    assert params.layer == "layer2"
    with pytest.raises(ValueError, match=r"^params: drawn on a 8x8 grid for layer 'layer2', whose output here is "
                                         r"4x4: give MixSampler layer_shapes=\{'layer2': \(4, 4\)\}"):
        resolve_mix(params, batch_size=4, height=4, width=4)


@pytest.mark.parametrize("edit", ["partner", "boxes", "lam", "cutout_boxes"])
def test_a_draw_changed_in_place_is_checked_and_used_as_changed(edit):
    """A draw's tensors edited in place were ignored: its packed rows were used as drawn, while
    the params showed the edit (walkthrough). Reference: the same edit as hand-written params."""
    from dataclasses import replace

    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    labels = torch.tensor([0, 1, 2, 3])
    options = dict(mode="mixup", cutout_size=4) if edit == "cutout_boxes" else dict(mode="cutmix")
    drawn = MixSampler(seed=0, **options).sample(batch_size=4, height=8, width=8)
    edited = {"partner": lambda p: p.partner.copy_(torch.tensor([3, 2, 1, 0])),
              "boxes": lambda p: p.boxes.copy_(torch.tensor([[0, 4, 0, 8]] * 4)),
              "lam": lambda p: p.lam.fill_(0.5),
              "cutout_boxes": lambda p: p.cutout_boxes.copy_(torch.tensor([[0, 2, 0, 2]] * 4))}
    before = apply_mix(images, labels, params=drawn, mean=MEAN, std=STD, num_classes=4)
    edited[edit](drawn)
    if edit in ("boxes", "lam"):  # a cutmix lambda that no longer fits its box: refused, not used
        with pytest.raises(ValueError, match="^lam"):
            apply_mix(images, labels, params=drawn, mean=MEAN, std=STD, num_classes=4)
        return
    after = apply_mix(images, labels, params=drawn, mean=MEAN, std=STD, num_classes=4)
    expected = apply_mix(images, labels, params=replace(drawn), mean=MEAN, std=STD, num_classes=4)  # hand-written
    assert all(torch.equal(a, b) for a, b in zip(after, expected))
    assert not all(torch.equal(a, b) for a, b in zip(after, before))


def test_a_draw_made_under_inference_mode_is_applied_as_drawn():
    """Inference tensors keep no version counter (reading it raised a RuntimeError from apply_mix):
    such a draw is checked from its fields, and mixes as the same draw made outside."""
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    labels = torch.tensor([0, 1, 2, 3])
    arguments = dict(mean=MEAN, std=STD, num_classes=4)
    with torch.inference_mode():
        inside = apply_mix(images, labels, params=MixSampler(mode="cutmix", seed=2).sample(batch_size=4, height=8,
                                                                                            width=8), **arguments)
    outside = apply_mix(images, labels, params=MixSampler(mode="cutmix", seed=2).sample(batch_size=4, height=8,
                                                                                         width=8), **arguments)
    assert all(torch.equal(a, b) for a, b in zip(inside, outside))
