"""Feature CutMix and Manifold Mixup (pipeline.mix.feature): the sampler draws a layer per batch
and a box on that layer's grid, lambda from the box's area there; the hooks mix exactly what a
naive per-sample loop mixes; the model's forward with the hook equals the forward run by hand
with the naively mixed features; gradients reach both samples of a pair; and the real CLI trains
with either mode."""

from __future__ import annotations

import pytest
import timm
import torch
from train_helpers import cli_here, run_train, small_run_args

from pipeline.mix import MixParams, resolve_mix
from pipeline.mix.feature import FeatureMixer, batch_mode, layer_names, layer_shapes, mix_features, mix_rows
from pipeline.mix.sampler import MixSampler

SHAPES = {"layer1": (8, 8), "layer2": (4, 4)}


def sampler(mode="feature_cutmix", **options):
    return MixSampler(mode=mode, layers=("input", "layer1", "layer2"), layer_shapes=SHAPES, seed=3, **options)


def test_each_batch_draws_a_layer_and_a_box_on_its_grid():
    drawing = sampler()
    draws = [drawing.sample(batch_size=6, height=32, width=32) for _ in range(1500)]
    counts = {layer: sum(p.layer == layer for p in draws) for layer in (None, "layer1", "layer2")}
    assert all(abs(count / 1500 - 1 / 3) < 0.05 for count in counts.values()), counts  # uniform over 3
    for params in draws:
        height, width = SHAPES.get(params.layer, (32, 32))
        y1, y2, x1, x2 = params.boxes[0].tolist()
        assert 0 <= y1 <= y2 <= height and 0 <= x1 <= x2 <= width
        assert float(params.lam[0]) == pytest.approx(1 - (y2 - y1) * (x2 - x1) / (height * width), abs=1e-6)
        assert params.mode == "cutmix" and sorted(params.partner.tolist()) == list(range(6))
    # The same seed repeats the same draws; Manifold Mixup blends (no box) at a drawn layer.
    again = sampler()
    assert all(a.layer == b.layer and torch.equal(a.boxes, b.boxes) for a, b in
               zip(draws[:50], (again.sample(batch_size=6, height=32, width=32) for _ in range(50))))
    blend = sampler("manifold_mixup").sample(batch_size=6, height=32, width=32)
    assert blend.mode == "mixup" and not blend.boxes.any()


def test_feature_modes_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="per='batch'"):
        sampler(per="elem")
    with pytest.raises(ValueError, match=r"no \(height, width\) for layers \['layer3'\]"):
        MixSampler(mode="feature_cutmix", layers=("layer3",), layer_shapes=SHAPES)
    with pytest.raises(ValueError, match="not the images"):
        from pipeline.mix import apply_mix

        drawing = sampler()
        params = next(p for p in (drawing.sample(batch_size=4, height=32, width=32) for _ in range(100))
                      if p.layer is not None)
        apply_mix(torch.zeros(4, 32, 32, 3, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), params=params,
                  mean=(0.5,) * 3, std=(0.5,) * 3, num_classes=2)


def naive_mix(features, *, mode, box, partner, lam):
    """One sample at a time, one position at a time."""
    out = features.clone()
    for i in range(features.shape[0]):
        j = int(partner[i])
        if mode == "mixup":
            out[i] = lam * features[i] + (1 - lam) * features[j]
            continue
        y1, y2, x1, x2 = box
        for y in range(y1, y2):
            for x in range(x1, x2):
                out[i, :, y, x] = features[j, :, y, x]
    return out


def rows_mix(features, resolved):
    """`mix_rows`, what the compiled hooks run: from the rows as a device tensor."""
    return mix_rows(features, mode=batch_mode(resolved), rows=resolved.on_device(features.device))


@pytest.mark.parametrize("mix", [mix_features, rows_mix], ids=["eager", "tensors_only"])
@pytest.mark.parametrize("mode", ["cutmix", "mixup"])
def test_mixed_features_equal_a_per_sample_loop_and_gradients_reach_both_samples(mode, mix):
    features = torch.randn(5, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    partner = torch.tensor([2, 0, 4, 1, 3])
    box, lam = (1, 4, 2, 6), 0.3
    params = MixParams(mode=mode, boxes=box if mode == "cutmix" else None, partner=partner,
                       lam=None if mode == "cutmix" else lam)
    resolved = resolve_mix(params, batch_size=5, height=6, width=7)
    mixed = mix(features, resolved)
    reference = naive_mix(features.detach(), mode=mode, box=box, partner=partner, lam=float(resolved.lam[0]))
    assert torch.equal(mixed.detach(), reference)
    if mode == "cutmix":
        assert float(resolved.lam[0]) == pytest.approx(1 - 3 * 4 / 42)  # the box's area on this 6x7 grid
    mixed.sum().backward()
    # d(sum)/d(features[j]) = own weight + the weight of every sample that takes from j (once each here).
    inside = torch.zeros(6, 7, dtype=torch.float64)
    inside[1:4, 2:6] = 1
    expected = torch.ones_like(inside) if mode == "mixup" else (1 - inside) + inside
    assert torch.allclose(features.grad, expected.expand_as(features.grad))


class TwoStages(torch.nn.Module):
    """A model small enough to compile in seconds, with two feature maps to mix at. The BatchNorm
    in training mode after the mixed stem is what a ResNet has there: the compiled graph updates its
    running statistics from the mixed features as eager does."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(4)
        self.body = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, images):
        return self.head(self.body(torch.relu(self.norm(self.stem(images)))).mean((2, 3)))


@pytest.mark.slow
def test_compiled_hooks_mix_as_eager_ones_with_a_graph_per_layer_and_mode_not_per_batch():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = TwoStages()
    mixer = FeatureMixer(model, ["input", "stem", "body"])
    compiled = torch.compile(model, dynamic=False)
    images = torch.randn(6, 3, 8, 8)
    draws = [("stem", "cutmix", (1, 5, 0, 3)), ("stem", "cutmix", (0, 8, 2, 7)), ("body", "mixup", 0.3),
             ("stem", "cutmix", (4, 6, 4, 6)), ("body", "cutmix", (2, 3, 1, 8)), ("body", "mixup", 0.81),
             ("stem", "mixup", 0.55), ("body", "cutmix", (0, 0, 0, 0)), ("stem", "none", None),
             ("stem", "mixup", 0.05), ("body", "cutmix", (3, 8, 0, 8))]
    seen, graphs = set(), []
    for layer, mode, value in draws:
        params = MixParams(mode=mode, partner=torch.randperm(6), layer=layer, boxes=value if mode == "cutmix" else None,
                           lam=value if mode == "mixup" else None)
        resolved = resolve_mix(params, batch_size=6, height=8, width=8)
        results, start = [], {name: buffer.clone() for name, buffer in model.named_buffers()}
        for forward in (model, compiled):
            for name, buffer in model.named_buffers():
                buffer.copy_(start[name])  # both forwards update the running statistics from the same start
            model.zero_grad()
            with mixer.mixing(layer, resolved):
                logits = forward(images)
            logits.square().sum().backward()
            results.append([logits.detach()] + [parameter.grad.clone() for parameter in model.parameters()]
                           + [buffer.clone() for buffer in model.buffers()])
        for eager, traced in zip(*results):
            torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-5)
        # A new graph only for a (layer, mode) not seen before; "none" is the unhooked forward.
        seen.add("plain" if mode == "none" else (layer, mode))
        graphs.append(counters["stats"]["unique_graphs"])
        assert graphs[-1] == len(seen), (layer, mode, graphs)
    assert sum(counters["graph_break"].values()) == 0
    mixer.remove()


@pytest.mark.parametrize("layer", ["layer2", "layer3"])
def test_a_hooked_forward_equals_the_forward_by_hand_with_naively_mixed_features(layer):
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=5).eval()
    images = torch.randn(4, 3, 64, 64)
    partner = torch.tensor([3, 2, 1, 0])
    shapes = layer_shapes(model, ["input", layer], image_size=64)
    assert shapes["input"] == (64, 64) and shapes[layer] == {"layer2": (8, 8), "layer3": (4, 4)}[layer]
    height, width = shapes[layer]
    params = MixParams(mode="cutmix", boxes=(1, height - 1, 0, width // 2), partner=partner, layer=layer)
    resolved = resolve_mix(params, batch_size=4, height=height, width=width)

    captured = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, a, out: captured.update(out=out))
    with torch.no_grad():
        plain = model(images)  # unmixed, to capture the layer's output
    handle.remove()
    mixed = naive_mix(captured["out"], mode="cutmix", box=(1, height - 1, 0, width // 2), partner=partner, lam=None)
    rest = [model.layer3, model.layer4] if layer == "layer2" else [model.layer4]
    with torch.no_grad():
        by_hand = mixed
        for stage in rest:
            by_hand = stage(by_hand)
        by_hand = model.forward_head(by_hand)

        mixer = FeatureMixer(model, ["input", "layer2", "layer3"])
        with mixer.mixing(layer, resolved):
            hooked = model(images)
        unhooked = model(images)  # outside `mixing` the hooks change nothing
    mixer.remove()
    assert torch.allclose(hooked, by_hand, atol=1e-5)
    assert torch.equal(unhooked, plain) and not torch.allclose(hooked, unhooked)


def test_layer_names_are_the_feature_maps_of_timm_feature_info():
    assert layer_names(timm.create_model("resnet10t"), image_size=64) == [
        "input", "act1", "layer1", "layer2", "layer3", "layer4"]
    # A ViT's blocks put out tokens, a Swin's stages channels-last maps: no box to cut there.
    from pipeline.mix.feature import model_layer_names

    assert model_layer_names("vit_tiny_patch16_224", image_size=224) == ["input"]
    assert model_layer_names("swin_tiny_patch4_window7_224", image_size=224) == ["input"]
    assert model_layer_names("pyramidnet20_a48", image_size=32) == ["input", "bn1", "layer1", "layer2", "layer3"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["feature_cutmix", "manifold_mixup"])
def test_the_cli_trains_with_a_feature_level_mode(demo_shards, tmp_path, mode):
    # The demo's 32 px: layer3 is 2x2, too small for a CutMix box (refused), not for mixup.
    layers = "input,layer1,layer2" + (",layer3" if mode == "manifold_mixup" else "")
    done = run_train(small_run_args(demo_shards, tmp_path, "schedule.epochs=1", "run.max_train_steps=3",
                                    "loader.batch_size=32", f"mix.mode={mode}", f"mix.feature_layers=[{layers}]"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "val top-1 error" in done.stdout


def test_a_layer_the_model_lacks_is_one_error_line(demo_shards, tmp_path, capsys):
    code, _, err = cli_here(small_run_args(demo_shards, tmp_path, "mix.mode=feature_cutmix",
                                           "mix.feature_layers=[layer9]"), capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        "error: mix.feature_layers: resnet10t has no layers ['layer9']; it has "
        "['input', 'act1', 'layer1', 'layer2', 'layer3', 'layer4']"]


def test_cutout_then_mixup_equals_normalizing_cutting_and_blending_by_hand():
    from pipeline.mix import apply_mix

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8, generator=generator)
    labels, partner, lam = torch.tensor([0, 1, 2, 3]), torch.tensor([2, 3, 0, 1]), 0.3
    holes = torch.tensor([[0, 3, 0, 3], [2, 6, 4, 8], [5, 8, 1, 4], [3, 5, 3, 5]])
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    params = MixParams(mode="mixup", lam=lam, partner=partner, cutout_boxes=holes)
    out, targets = apply_mix(images, labels, params=params, mean=mean, std=std, num_classes=5,
                             memory_format=torch.contiguous_format)
    normalized = (images.permute(0, 3, 1, 2).double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / \
        torch.tensor(std).view(1, 3, 1, 1)
    for i, (y1, y2, x1, x2) in enumerate(holes.tolist()):
        normalized[i, :, y1:y2, x1:x2] = 0  # Cutout: the mean colour, i.e. 0 after normalization
    expected = torch.stack([lam * normalized[i] + (1 - lam) * normalized[int(partner[i])] for i in range(4)])
    assert torch.allclose(out.double(), expected, atol=1e-5)
    onehot = torch.eye(5)[labels]
    assert torch.allclose(targets, lam * onehot + (1 - lam) * onehot[partner])


def test_cutout_with_a_mixing_mode_draws_a_hole_in_every_image_on_the_image_grid():
    drawing = MixSampler(mode="manifold_mixup", cutout_size=4, layers=("input", "layer2"),
                         layer_shapes={"layer2": (4, 4)}, seed=1)
    for params in (drawing.sample(batch_size=6, height=16, width=16) for _ in range(40)):
        y1, y2, x1, x2 = params.cutout_boxes.unbind(1)
        assert params.cutout_boxes.shape == (6, 4)
        # Side 4 around a uniform centre, clipped at the border: 2 to 4 pixels each way.
        assert bool(((y2 - y1) <= 4).all() and ((x2 - x1) <= 4).all() and (y2 <= 16).all() and (x2 <= 16).all())
        assert bool(((y2 - y1) >= 2).all() and ((x2 - x1) >= 2).all())
    with pytest.raises(ValueError, match="Cutout goes alone"):
        MixSampler(mode="cutmix", cutout_size=4)


def test_a_feature_level_training_step_uses_the_layer_grids_lambda_for_its_targets(monkeypatch):
    # train_step's feature branch: the images are only normalized, the layer's output is mixed, and
    # the targets weigh the partner's label by the box's share of the layer's grid, not the image's.
    from contextlib import nullcontext
    from types import SimpleNamespace

    import pipeline.training as training

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=4)
    shapes = layer_shapes(model, ["layer3"], image_size=32)  # 2 x 2 grid at 32 px
    options = training.MixOptions(mean=(0.5,) * 3, std=(0.5,) * 3, num_classes=4, label_smoothing=0.0,
                                  out_dtype=torch.float32, memory_format=torch.contiguous_format,
                                  features=FeatureMixer(model, ["layer3"]), layer_shapes=shapes)
    params = MixParams(mode="cutmix", boxes=(0, 1, 0, 2), partner=torch.tensor([1, 0]), layer="layer3")
    seen = {}
    monkeypatch.setattr(training, "soft_target_cross_entropy",
                        lambda logits, targets: seen.update(targets=targets) or logits.sum() * 0)
    accelerator = SimpleNamespace(autocast=nullcontext, backward=lambda loss: loss.backward())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    training.train_step(model=model, optimizer=optimizer, scheduler=SimpleNamespace(step=lambda: None),
                        images=torch.zeros(2, 32, 32, 3, dtype=torch.uint8), labels=torch.tensor([0, 3]),
                        params=params, accelerator=accelerator, mix=options)
    # The box is half of the 2 x 2 grid: lambda 0.5 (it would be 1 - 2/1024 on the image).
    assert shapes["layer3"] == (2, 2)
    assert torch.allclose(seen["targets"], torch.tensor([[0.5, 0, 0, 0.5], [0.5, 0, 0, 0.5]]))


@pytest.mark.parametrize("name, size", [("hrnet_w18_small", 32), ("twins_pcpvt_small", 224)])
def test_feature_info_entries_naming_modules_a_model_lacks_are_no_layers(name, size):
    """timm's feature_info of some models names modules they do not have (hrnet's 'stem', twins'
    'block'): --check of any feature mode was a traceback from get_submodule (walkthrough). The
    layers offered are those that resolve in the model, found here with plain torch."""
    from pipeline.mix.feature import model_layer_names

    with torch.device("meta"):
        model = timm.create_model(name, num_classes=10)
    modules = dict(model.named_modules())
    missing = [entry["module"] for entry in model.feature_info if entry["module"] not in modules]
    assert missing, "the model no longer shows the fault this test is about"
    names = model_layer_names(name, image_size=size)
    assert names[0] == "input" and all(layer in modules for layer in names[1:]) and not set(missing) & set(names)
